"""Base models kept resident across the runs one process trains.

Loading LLaDA-8B takes longer than many of the short runs a sweep trains on it, so a long-lived process (a
Prefect shard worker, the training pool's workers, a notebook calling `train.train_run` in a loop) loads each
base model once and wraps a new adapter on it per run. `acquire` hands out the base, `Lease.release` gives it
back as it was loaded:

- the adapter is taken off: peft's `unload()` (the original Linear modules back in place, nothing merged),
  `nara.remove_nara` or `lora_diffusion.remove_lora_diffusion`; attributes an adapter left on the root model
  (peft's `peft_config`) are deleted;
- weights an adapter method edits are restored bitwise: PiSSA replaces each target weight W by its residual
  W - B A at init, so those weights are copied to host memory before the wrap and copied back on release
  (for LLaDA-8B's q,k,v,attn_out in bf16: ~4.3 GB of host memory during a PiSSA run, none otherwise);
- hooks registered during the run (the input-grad hooks of PEFT / gradient checkpointing, NaRA's pre-hook)
  are removed, gradient checkpointing is turned off, `requires_grad` flags and eval mode are restored;
- process-wide torch settings a model's code changes when it is built (LLaDA's constructor calls
  `torch.backends.cuda.enable_mem_efficient_sdp(False)` and `enable_flash_sdp(True)`) are applied while a run
  on that model trains, and the process's own settings are put back when it ends, so the next run on another
  family sees the process as it was.

A structural fingerprint (module names and types, parameter names, shapes, dtypes, devices, requires_grad, hook
counts, root attributes) taken at load is compared on release; any difference evicts the model (the next run
loads it afresh) with a warning, so an adapter or shim that leaves something behind costs a reload, never a
wrong run. A failed release evicts too.

Key: (family, model_id with the family default resolved, dtype, device, the family's extra load options, and
for a local directory the names, mtimes and sizes of its files: a checkpoint rewritten in place is loaded
afresh). At most `max_resident()` models stay loaded (env DLM_TRIAGE_RESIDENT_MODELS, default 1: a shard that
moves to another base model frees the previous one first; 0 turns the cache off). A model in use by one run is
never handed to a second concurrent run in the same process: that run gets a private load.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

ENV_MAX_RESIDENT = "DLM_TRIAGE_RESIDENT_MODELS"
BASE_EDITING_METHODS = ("pissa",)
"""Adapter methods whose initialisation rewrites the targeted base weights (PiSSA: W -> W - B A)."""


def max_resident() -> int:
    raw = os.environ.get(ENV_MAX_RESIDENT, "1")
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"{ENV_MAX_RESIDENT}={raw!r} is not an integer: set it to 0 (no cache) or a count >= 1") from None
    if n < 0:
        raise ValueError(f"{ENV_MAX_RESIDENT}={raw!r} is negative: set it to 0 (no cache) or a count >= 1")
    return n


# -- process-wide torch settings ---------------------------------------------------------------------------

def _sdp(name: str) -> tuple[Callable[[], bool], Callable[[bool], None]]:
    b = torch.backends.cuda
    return getattr(b, f"{name}_sdp_enabled"), getattr(b, f"enable_{name}_sdp")


_SETTINGS: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = {
    **{f"sdp.{n}": _sdp(n) for n in ("flash", "mem_efficient", "math", "cudnn")},
    "float32_matmul_precision": (torch.get_float32_matmul_precision, torch.set_float32_matmul_precision),
    "default_dtype": (torch.get_default_dtype, torch.set_default_dtype),
}


def process_settings() -> dict[str, Any]:
    """The process-wide torch settings that model code is known to change (SDP backends, matmul precision,
    default dtype)."""
    return {k: get() for k, (get, _) in _SETTINGS.items()}


def apply_process_settings(settings: dict[str, Any]) -> None:
    for k, v in settings.items():
        get, put = _SETTINGS[k]
        if get() != v:
            put(v)


# -- fingerprint ---------------------------------------------------------------------------------------------

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def fingerprint(model: nn.Module) -> tuple:
    """Structure of `model` (not its weight values): what a clean release must give back unchanged."""
    modules = tuple((n, type(m).__qualname__, tuple(len(getattr(m, h)) for h in _HOOK_DICTS))
                    for n, m in model.named_modules())
    params = tuple((n, tuple(p.shape), str(p.dtype), str(p.device), p.requires_grad)
                   for n, p in model.named_parameters())
    return modules, params, tuple(sorted(vars(model))), model.training


def _hook_ids(model: nn.Module) -> dict[int, dict[str, set]]:
    return {id(m): {h: set(getattr(m, h)) for h in _HOOK_DICTS} for m in model.modules()}


def _remove_new_hooks(model: nn.Module, before: dict[int, dict[str, set]]) -> None:
    for m in model.modules():
        old = before.get(id(m), {})
        for h in _HOOK_DICTS:
            hooks = getattr(m, h)
            for k in [k for k in hooks if k not in old.get(h, ())]:
                del hooks[k]
                # companion dicts of forward hooks registered with with_kwargs / always_call
                for extra in ("_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                              "_forward_pre_hooks_with_kwargs"):
                    getattr(m, extra, {}).pop(k, None)


# -- the cache ---------------------------------------------------------------------------------------------------

@dataclass
class _Entry:
    key: tuple
    loaded: Any  # families.LoadedModel
    settings: dict[str, Any]  # the process settings as the model's construction left them
    fingerprint: tuple
    requires_grad: dict[str, bool]
    load_s: float
    in_use: bool = False


@dataclass
class Lease:
    """One run's use of a base model. `loaded` is the families.LoadedModel; `resident` says whether the base
    came from the cache (no load this run); `load_s` the wall time of this run's load (0 when resident)."""

    loaded: Any
    resident: bool
    load_s: float
    _entry: _Entry | None
    _family: Any
    _process_settings: dict[str, Any]
    _hooks: dict[int, dict[str, set]] = field(default_factory=dict)
    _root_attrs: frozenset = frozenset()
    _saved_weights: dict[str, torch.Tensor] = field(default_factory=dict)
    _checkpointing: bool = False
    _released: bool = False

    @property
    def model(self) -> nn.Module:
        return self.loaded.model

    def enable_gradient_checkpointing(self) -> str | None:
        """Gradient checkpointing on the base through the family's hook (turned off again on release)."""
        self._checkpointing = True
        return self._family.set_gradient_checkpointing(self.model, True)

    def before_adapter(self, method: str, targets: tuple[str, ...]) -> None:
        """Call right before the adapter of `method` wraps the base on `targets`: saves (to host memory) the
        weights that method's initialisation overwrites, for the release."""
        if self._entry is None or method not in BASE_EDITING_METHODS:
            return
        from dlm_triage.targets import resolve_targets

        names = sorted({n for hits in resolve_targets(self.model, targets).values() for n in hits})
        for name in names:
            self._saved_weights[name] = self.model.get_submodule(name).weight.detach().to("cpu", copy=True)

    def release(self, wrapped: nn.Module | None) -> None:
        """Take the adapter off `wrapped` (the model the run trained; None when no adapter was applied) and
        give the base back clean, or evict it. Idempotent."""
        if self._released:
            return
        self._released = True
        try:
            if self._entry is not None:
                try:
                    self._clean(wrapped)
                except Exception:  # a base we cannot clean is never reused
                    log.warning("could not clean the resident model %s: evicting it", self._entry.key[:2],
                                exc_info=True)
                    _evict(self._entry)
                else:
                    with _lock:
                        self._entry.in_use = False
        finally:
            apply_process_settings(self._process_settings)

    def _clean(self, wrapped: nn.Module | None) -> None:
        from dlm_triage import lora_diffusion, nara

        base = self.model
        if wrapped is not None and nara.is_nara_model(wrapped):
            nara.remove_nara(wrapped)
        elif wrapped is not None and lora_diffusion.is_lora_diffusion_model(wrapped):
            lora_diffusion.remove_lora_diffusion(wrapped)
        elif wrapped is not None and wrapped is not base:
            unwrapped = wrapped.unload()  # peft: original modules back in place, nothing merged
            if unwrapped is not base:
                raise RuntimeError("peft unload() returned another module than the resident base")
        for name, w in self._saved_weights.items():
            with torch.no_grad():
                base.get_submodule(name).weight.copy_(w.to(base.get_submodule(name).weight.device))
        self._saved_weights.clear()
        if self._checkpointing:
            self._family.set_gradient_checkpointing(base, False)
        _remove_new_hooks(base, self._hooks)
        for attr in set(vars(base)) - self._root_attrs:
            delattr(base, attr)
        entry = self._entry
        for n, p in base.named_parameters():
            p.requires_grad_(entry.requires_grad.get(n, p.requires_grad))
            p.grad = None
        base.train(entry.fingerprint[-1])  # the mode the load left it in
        if fingerprint(base) != entry.fingerprint:
            raise RuntimeError("the model's structure differs from the one loaded (an adapter left something behind)")


_lock = threading.Lock()
_entries: OrderedDict[tuple, _Entry] = OrderedDict()
_stats = {"loads": 0, "reuses": 0, "evictions": 0}


def stats() -> dict[str, int]:
    """Counts since the process started (or `clear()`): loads, reuses, evictions."""
    with _lock:
        return dict(_stats)


def resident_keys() -> list[tuple]:
    with _lock:
        return list(_entries)


def loaded_models() -> list[Any]:
    """The families.LoadedModel of every resident base (for inspection: do not train on them directly)."""
    with _lock:
        return [e.loaded for e in _entries.values()]


def _free(entry: _Entry) -> None:
    device = getattr(entry.loaded, "device", torch.device("cpu"))
    entry.loaded = None
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()  # give the evicted model's blocks back, so the next load fits


def _evict(entry: _Entry) -> None:
    with _lock:
        if _entries.get(entry.key) is entry:
            del _entries[entry.key]
            _stats["evictions"] += 1
    _free(entry)


def clear() -> None:
    """Drop every resident model that no run is using (and reset the counts)."""
    with _lock:
        idle = [e for e in _entries.values() if not e.in_use]
        for e in idle:
            del _entries[e.key]
        _stats.update(loads=0, reuses=0, evictions=0)
    for e in idle:
        _free(e)


def _dir_stamp(model_id: str) -> tuple:
    """(name, mtime, size) of the files of a local checkpoint directory: one rewritten in place is a new key."""
    path = Path(model_id).expanduser()
    if not path.is_dir():
        return ()
    return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in path.iterdir() if p.is_file()))


def cache_key(cfg: Any, family: Any, device: torch.device, dtype: torch.dtype) -> tuple:
    # the family default resolved (raises with the fix when there is none); the load checks the hub
    model_id = family.model_id(cfg, check=False)
    return (family.name, model_id, str(dtype), str(device), tuple(family.load_options(cfg)), _dir_stamp(model_id))


def acquire(cfg: Any, family: Any, device: torch.device, dtype: torch.dtype) -> Lease:
    """The base model of `cfg` on `device` in `dtype`: the resident one when there is a free one, else a load
    (kept resident when the cache is on). Call `release` on the returned lease when the run ends."""
    key = cache_key(cfg, family, device, dtype)
    outer = process_settings()
    limit = max_resident()
    with _lock:
        entry = _entries.get(key)
        if entry is not None and not entry.in_use:
            entry.in_use = True
            _entries.move_to_end(key)
            _stats["reuses"] += 1
        else:
            entry = None
            idle = [e for k, e in _entries.items() if not e.in_use and k != key] if limit else []
            # make room before loading: at most `limit` models stay resident
            evict = idle[: max(0, len(_entries) + 1 - limit)] if limit else []
            for e in evict:
                del _entries[e.key]
                _stats["evictions"] += 1
    if entry is not None:
        apply_process_settings(entry.settings)
        lease = Lease(entry.loaded, True, 0.0, entry, family, outer)
    else:
        for e in evict:
            _free(e)
        t0 = time.perf_counter()
        loaded = family.load(cfg, device, dtype)
        load_s = time.perf_counter() - t0
        changed = {k: v for k, v in process_settings().items() if outer.get(k) != v}
        if changed:
            log.info("loading %s changed process-wide torch settings %s: applied only while its runs train",
                     key[:2], changed)
        model = loaded.model
        entry = _Entry(key, loaded, process_settings(), fingerprint(model),
                       {n: p.requires_grad for n, p in model.named_parameters()}, load_s, in_use=True)
        with _lock:
            _stats["loads"] += 1
            if limit > 0 and key not in _entries and len(_entries) < limit:
                _entries[key] = entry
            else:
                entry = None
        lease = Lease(loaded, False, load_s, entry, family, outer)
    model = lease.model
    lease._hooks = _hook_ids(model)
    lease._root_attrs = frozenset(vars(model))
    return lease
