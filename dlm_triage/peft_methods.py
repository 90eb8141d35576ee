"""Adapters through peft (LoRA, rsLoRA, DoRA, PiSSA) with explicit, checked targets; NaRA via `dlm_triage.nara`,
LoRA-Diffusion via `dlm_triage.lora_diffusion`.

Targets are always explicit module-name suffixes ('q_proj' matches 'model.layers.0.self_attn.q_proj'), the
rule peft uses for a list of names (`dlm_triage.targets`). peft silently skips a name that matches nothing on
some paths (paper App. A), so every target is checked twice: before wrapping (it must name at least one Linear module)
and after (at least one module under that name must have received an adapter). A miss raises
`AdapterTargetError` naming the target and listing the module-name suffixes the model does have.

Scale: lora/dora/pissa use alpha/r, rslora alpha/sqrt(r), with alpha = cfg.effective_alpha.
PiSSA uses the exact SVD init (`init_lora_weights='pissa'`): deterministic, so `load_adapter` rebuilds the
same residual base weights before loading the trained factors.

Noise-conditioned methods (nara, lora_diffusion) need the batch's noise level lambda (its mask ratio) before a
forward: `set_noise_level(model, lam)` / `with noise_level(model, lam):` reach whichever the model carries.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from dlm_triage.adapter_parts import WEIGHTS_FILENAME, read_adapter_config
from dlm_triage.config import RunConfig
from dlm_triage.targets import AdapterTargetError, available_suffixes, check_wrapped, resolve_targets

ADAPTER_META = "dlm_triage_adapter.json"
PEFT_METHODS = ("lora", "rslora", "dora", "pissa")


def lora_config(cfg: RunConfig, targets: Sequence[str]):
    from peft import LoraConfig

    if cfg.method not in PEFT_METHODS:
        raise ValueError(f"method={cfg.method!r} is not a peft method: use one of {PEFT_METHODS} (nara: dlm_triage.nara)")
    return LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.effective_alpha,
        target_modules=list(targets),
        lora_dropout=0.0,
        bias="none",
        use_rslora=cfg.method == "rslora",
        use_dora=cfg.method == "dora",
        init_lora_weights="pissa" if cfg.method == "pissa" else True,
    )


def apply_adapter(model: nn.Module, cfg: RunConfig, targets: Sequence[str]) -> nn.Module:
    """Wrap `model` with the adapter of `cfg.method` on exactly `targets`; base weights frozen.

    Returns a peft `PeftModel` (lora/rslora/dora/pissa) or the model with NaRA layers (nara).
    """
    targets = tuple(targets)
    if cfg.method == "nara":
        from dlm_triage import nara

        return nara.apply_nara(model, cfg, targets)
    if cfg.method == "lora_diffusion":
        from dlm_triage import lora_diffusion

        return lora_diffusion.apply_lora_diffusion(model, cfg, targets)
    from peft import get_peft_model

    resolve_targets(model, targets)
    peft_model = get_peft_model(model, lora_config(cfg, targets))
    check_wrapped(peft_model, targets, "lora_A")
    return peft_model


def adapter_matrices(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Trainable adapter tensors (name, param) in module registration order (stable across runs).

    LoRA: lora_A / lora_B per layer; DoRA adds the magnitude vector; NaRA: A, B per layer then the shared
    hypernetwork's weights and biases; lora_diffusion: A, B per wrapped module.
    """
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def _is_nara(model: nn.Module) -> bool:
    from dlm_triage import nara

    return nara.is_nara_model(model)


def _noise_module(model: nn.Module):
    """The module (nara or lora_diffusion) that conditions `model` on the noise level, or None."""
    from dlm_triage import lora_diffusion, nara

    if nara.is_nara_model(model):
        return nara
    if lora_diffusion.is_lora_diffusion_model(model):
        return lora_diffusion
    return None


def is_noise_conditioned(model: nn.Module) -> bool:
    return _noise_module(model) is not None


def set_noise_level(model: nn.Module, lam: float) -> None:
    """Set the noise level lambda for the following forwards of a noise-conditioned adapter (no-op otherwise)."""
    mod = _noise_module(model)
    if mod is not None:
        mod.set_noise_level(model, lam)


@contextlib.contextmanager
def noise_level(model: nn.Module, lam: float):
    """`with noise_level(model, lam):` lambda for the block, restored after (no-op for other methods)."""
    mod = _noise_module(model)
    if mod is None:
        yield
        return
    with mod.noise_level(model, lam):
        yield


def save_adapter(model: nn.Module, path: Path | str, cfg: RunConfig | None = None) -> Path:
    """Save the adapter weights (safetensors) + config JSON under `path`; returns `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    from dlm_triage import lora_diffusion

    if _is_nara(model):
        from dlm_triage import nara

        nara.save_nara(model, path)
    elif lora_diffusion.is_lora_diffusion_model(model):
        lora_diffusion.save_lora_diffusion(model, path)
    else:
        model.save_pretrained(str(path), safe_serialization=True)
    if cfg is not None:
        (path / ADAPTER_META).write_text(json.dumps(
            {"method": cfg.method, "rank": cfg.rank, "effective_alpha": cfg.effective_alpha,
             "config_hash": cfg.config_hash, "run_id": cfg.run_id}, indent=2, sort_keys=True))
    return path


def load_adapter(base_model: nn.Module, path: Path | str, cfg: RunConfig) -> nn.Module:
    """Rebuild the adapter of `cfg` on a fresh `base_model` and load the saved weights from `path`.

    The structure is rebuilt with `apply_adapter` on the saved targets (for PiSSA this recomputes the same
    residual base weights from the exact SVD), then the saved adapter tensors are loaded strictly.
    """
    path = Path(path)
    if cfg.method == "nara":
        from dlm_triage import nara

        return nara.load_nara(base_model, path, cfg)
    if cfg.method == "lora_diffusion":
        from dlm_triage import lora_diffusion

        return lora_diffusion.load_lora_diffusion(base_model, path, cfg)
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    saved_targets = read_adapter_config(path, "adapter_config.json", "peft")["target_modules"]
    targets = tuple(sorted(saved_targets)) if isinstance(saved_targets, list) else (saved_targets,)
    model = apply_adapter(base_model, cfg, targets)
    state = load_file(str(path / WEIGHTS_FILENAME))
    result = set_peft_model_state_dict(model, state)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise ValueError(f"{path}: adapter tensors {unexpected[:5]} do not fit the rebuilt adapter (config mismatch?)")
    model.eval()
    return model


@torch.no_grad()
def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
