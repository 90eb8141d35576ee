"""Loading the families whose checkpoints ship their own modeling code (`trust_remote_code`), under both
transformers lines this package supports: 4.57.x and 5.x (>= 5.23).

The published files (LLaDA's modeling_llada.py, Dream's modeling_dream.py, ...) were written against
transformers 4.4x-4.5x. Each compat shim below is named, scoped to the one dynamic-module class or module
it patches (never a transformers class), idempotent, and applied only on the line that needs it (`SHIMS`
says which). Nothing edits a checkpoint's files on disk.

Flow (`load_class` -> construct / from_pretrained -> `after_load`):
1. `check_code_files`: a local checkpoint directory must hold every .py file its config's `auto_map` names and
   every sibling file those import; the error names the family, the file and the fix.
2. `before_import`: shims that must exist before the modeling file is executed (LLaDA2 imports
   `is_torch_fx_available`, removed in transformers 5).
3. `load_class`: the config (AutoConfig, trust_remote_code) and the class its `auto_map` names, patched.
4. `after_load`: what `from_pretrained` leaves wrong under transformers 5 (rotary `inv_freq` buffers are
   non-persistent: transformers 5 allocates them on the meta device and materialises them with
   `torch.empty_like`; only its own `_init_weights` refills them, and every remote class overrides
   `_init_weights`, so they hold uninitialised memory: recomputed here from the module's own formula).
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, Iterator

from importlib.metadata import version as _dist_version

import torch
from packaging.version import Version
from torch import nn

# Read from the installed distribution: importing transformers here would cost every light import of families.
TRANSFORMERS_VERSION = Version(_dist_version("transformers"))
TRANSFORMERS_5 = TRANSFORMERS_VERSION.major >= 5

# name -> (families, the transformers line that needs it, why)
SHIMS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "post_init": (("llada", "mdlm"), ">=5",
                  "LLaDAModelLM.__init__ and MDLM.__init__ never call post_init(); transformers 5's "
                  "from_pretrained reads all_tied_weights_keys, which only post_init() sets (AttributeError)"),
    "tie_weights_kwargs": (("llada",), ">=5",
                           "LLaDAModelLM.tie_weights(self) takes no arguments; transformers 5 calls "
                           "tie_weights(missing_keys=..., recompute_mapping=False) (TypeError)"),
    "rope_default": (("dream", "llada2", "llada_moe"), ">=5",
                     "ROPE_INIT_FUNCTIONS['default'] was removed in transformers 5 (KeyError in the rotary "
                     "constructor): the modeling module's own global gets the 4.x default formula back"),
    "is_torch_fx_available": (("llada2",), ">=5",
                              "modeling_llada2_moe.py imports transformers.utils.import_utils."
                              "is_torch_fx_available, removed in transformers 5 (ImportError at import)"),
    "attn_mask_utils": (("llada2", "llada_moe"), ">=5.24",
                        "modeling_llada2_moe.py and modeling_lladamoe.py import transformers.modeling_attn_mask_utils, "
                        "removed in transformers 5.24 (ModuleNotFoundError at import): dlm_triage.attn_mask_compat "
                        "is registered under that name, with the three names they import"),
    "generation_config_validate": (("dream",), ">=5",
                                   "Dream's from_pretrained builds DreamGenerationConfig, whose validate(self, "
                                   "is_init=False) rejects the user_set_attributes= that transformers 5 passes"),
    "rotary_inv_freq": (("dream", "llada2", "llada_moe"), ">=5",
                        "non-persistent rotary inv_freq buffers are left as uninitialised memory by "
                        "from_pretrained (the remote _init_weights never refills them): recomputed after load"),
    "use_cache_false": (("llada", "dream", "llada2", "llada_moe"), "all",
                        "training forwards pass use_cache=False: LLaDA asserts no kv cache and reads "
                        "config.use_cache (absent from transformers 5 configs); Dream's checkpoint says "
                        "use_cache: true, which would build a cache on every training step"),
    "mem_efficient_sdp_restored": (("llada",), "all",
                                   "LLaDAModel.__init__ calls torch.backends.cuda.enable_mem_efficient_sdp(False) "
                                   "for the whole process; the previous setting is restored after construction "
                                   "so a long-lived worker's later runs (any family) keep their kernels"),
}


class RemoteCodeError(ValueError):
    """A remote-code checkpoint that cannot be loaded as given; the message names family, file and fix."""


# -- 1. files ---------------------------------------------------------------------------------------------

def _sibling_imports(py: Path) -> set[str]:
    """Modules a remote file imports relatively (`from .configuration_x import ...`): files that must sit beside it."""
    try:
        tree = ast.parse(py.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return set()
    return {f"{node.module}.py" for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}


def module_level_imports(py: Path) -> set[str]:
    """Top-level package names a file imports unconditionally at module level (not inside try/if/def)."""
    tree = ast.parse(py.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def check_code_files(family: str, model_dir: Path, auto_class: str) -> list[Path]:
    """The .py files a local checkpoint needs, all present; else RemoteCodeError naming the missing file."""
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise RemoteCodeError(f"family {family!r}: {model_dir} has no config.json; give the checkpoint directory "
                              "(config.json, weights, tokenizer files and the family's modeling .py files)")
    auto_map = json.loads(cfg_path.read_text()).get("auto_map") or {}
    ref = auto_map.get(auto_class)
    if not ref:
        raise RemoteCodeError(
            f"family {family!r}: {cfg_path} has no auto_map entry for {auto_class} (it has {sorted(auto_map)}); "
            "use the checkpoint's published config.json, or pick the family that matches this checkpoint")
    needed = {f"{r.rsplit('.', 1)[0]}.py" for r in (ref, auto_map.get("AutoConfig")) if r and "--" not in r}
    seen: set[str] = set()
    while needed - seen:
        name = sorted(needed - seen)[0]
        seen.add(name)
        path = model_dir / name
        if not path.is_file():
            raise RemoteCodeError(
                f"family {family!r}: {model_dir} lacks {name} (named by config.json auto_map or imported by its "
                f"modeling code); copy the checkpoint's published {name} into {model_dir} (trust_remote_code "
                "runs the checkpoint's own code, so the .py files must sit beside config.json)")
        needed |= _sibling_imports(path)
    return [model_dir / n for n in sorted(seen)]


# -- 2./3. shims applied before and at class resolution -------------------------------------------------------

def default_rope_parameters(config: Any = None, device: Any = None, seq_len: int | None = None,
                            **rope_kwargs: Any) -> tuple[torch.Tensor, float]:
    """transformers 4.x's 'default' RoPE: inv_freq = 1 / base^(2i/dim), dim = head_dim * partial_rotary_factor."""
    if config is not None:
        base = getattr(config, "rope_theta", None)
        if base is None:  # transformers 5 configs may keep it only in rope_parameters
            base = (getattr(config, "rope_parameters", None) or {}).get("rope_theta")
        factor = getattr(config, "partial_rotary_factor", None) or 1.0
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        dim = int(head_dim * factor)
    else:
        base, dim = rope_kwargs["base"], rope_kwargs["dim"]
    exponent = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim
    return 1.0 / (float(base) ** exponent), 1.0


def before_import(family: str) -> list[str]:
    """Shims the modeling file needs to import at all. Returns their names."""
    applied = []
    if family == "llada2" and TRANSFORMERS_5:
        import transformers.utils.import_utils as iu

        if not hasattr(iu, "is_torch_fx_available"):
            # Additive: the name the 4.x file imports, with 4.x's answer (torch.fx ships with every torch >= 1.10).
            iu.is_torch_fx_available = lambda: True
        applied.append("is_torch_fx_available")
    if family in SHIMS["attn_mask_utils"][0] and TRANSFORMERS_VERSION >= Version("5.24"):
        name = "transformers.modeling_attn_mask_utils"
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            from dlm_triage import attn_mask_compat

            sys.modules[name] = attn_mask_compat  # the import system returns it for that name from now on
        applied.append("attn_mask_utils")
    return applied


def _patch_module_rope(module: Any) -> bool:
    table = getattr(module, "ROPE_INIT_FUNCTIONS", None)
    if table is None or "default" in table:
        return False
    # The dynamic module's own global only: transformers' ROPE_INIT_FUNCTIONS is left as it is.
    module.ROPE_INIT_FUNCTIONS = {**table, "default": default_rope_parameters}
    return True


def _patch_class(family: str, cls: type) -> list[str]:
    applied = []
    done: set[str] = set(getattr(cls, "_dlm_triage_compat", ()))
    if family in SHIMS["post_init"][0] and TRANSFORMERS_5:
        if "post_init" not in done and "post_init" not in _own_init_calls(cls):
            init = cls.__init__

            def __init__(self, *args, _init=init, **kwargs):
                _init(self, *args, **kwargs)
                if not hasattr(self, "all_tied_weights_keys"):
                    self.post_init()

            cls.__init__ = __init__
        applied.append("post_init")
    if family == "llada" and TRANSFORMERS_5:
        if "tie_weights_kwargs" not in done:
            tie = cls.tie_weights

            def tie_weights(self, *args, _tie=tie, **kwargs):  # 5.x passes missing_keys / recompute_mapping
                return _tie(self)

            cls.tie_weights = tie_weights
        applied.append("tie_weights_kwargs")
    if family == "dream" and TRANSFORMERS_5:
        gen_cls = getattr(sys.modules.get(cls.__module__), "DreamGenerationConfig", None)
        if gen_cls is not None and "generation_config_validate" not in done:
            validate = gen_cls.validate

            def validate_(self, *args, _validate=validate, **kwargs):
                kwargs.pop("user_set_attributes", None)  # 5.x-only argument; the 4.x signature has no room for it
                return _validate(self, *args, **kwargs)

            gen_cls.validate = validate_
        applied.append("generation_config_validate")
    cls._dlm_triage_compat = tuple(sorted(done | set(applied)))
    return applied


def _own_init_calls(cls: type) -> set[str]:
    """Method names called as self.X() in cls.__init__'s source (to see whether it calls post_init itself)."""
    import inspect

    try:
        src = inspect.getsource(cls.__init__)
    except (OSError, TypeError):
        return set()
    return {name for name in ("post_init",) if f"self.{name}()" in src}


def load_class(family: str, model_dir: str | Path, auto_class: str) -> tuple[Any, type, list[str]]:
    """(config, the checkpoint's own model class, shims applied) for `auto_class`, through the compat layer."""
    from transformers import PretrainedConfig
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    applied = before_import(family)
    config_dict, _ = PretrainedConfig.get_config_dict(str(model_dir))
    auto_map = config_dict.get("auto_map") or {}
    ref, config_ref = auto_map.get(auto_class), auto_map.get("AutoConfig")
    if not ref or not config_ref:
        raise RemoteCodeError(
            f"family {family!r}: the config.json of {model_dir} names no {auto_class if not ref else 'AutoConfig'} "
            f"in auto_map (it has {sorted(auto_map)}); use the checkpoint's published config.json or the family "
            "that matches it")
    # The checkpoint's own config class, not AutoConfig's pick by model_type (see families_remote.RemoteCodeAdapter).
    config = get_class_from_dynamic_module(config_ref, str(model_dir)).from_pretrained(str(model_dir))
    cls = get_class_from_dynamic_module(ref, str(model_dir))
    if TRANSFORMERS_5 and family in SHIMS["rope_default"][0]:
        _patch_module_rope(sys.modules[cls.__module__])  # idempotent: a second load finds 'default' there
        applied.append("rope_default")
    applied += _patch_class(family, cls)
    return config, cls, applied


@contextlib.contextmanager
def process_state_guard() -> Iterator[None]:
    """Restore process-wide torch switches a modeling constructor flips (LLaDA: mem-efficient SDPA off)."""
    cuda = torch.backends.cuda
    mem_eff = cuda.mem_efficient_sdp_enabled()
    try:
        yield
    finally:
        if cuda.mem_efficient_sdp_enabled() != mem_eff:
            cuda.enable_mem_efficient_sdp(mem_eff)


# -- 4. after load ---------------------------------------------------------------------------------------------

def rotary_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules()
            if isinstance(getattr(m, "inv_freq", None), torch.Tensor) and callable(getattr(m, "rope_init_fn", None))]


def expected_inv_freq(module: nn.Module) -> torch.Tensor:
    """What the rotary module's own constructor computes for inv_freq (its rope_init_fn on its config)."""
    device = module.inv_freq.device
    inv, _ = module.rope_init_fn(getattr(module, "config", None), device, **(getattr(module, "rope_kwargs", None) or {}))
    return inv


def after_load(family: str, model: nn.Module) -> list[str]:
    """Repair what from_pretrained leaves wrong (transformers 5: rotary buffers). Returns the shims applied."""
    applied = []
    if TRANSFORMERS_5 and family in SHIMS["rotary_inv_freq"][0]:
        with torch.no_grad():
            for _, m in rotary_modules(model):
                inv = expected_inv_freq(m).to(m.inv_freq.dtype)
                m.inv_freq.copy_(inv)
                if isinstance(getattr(m, "original_inv_freq", None), torch.Tensor):
                    m.original_inv_freq = m.inv_freq  # the constructor aliases the two
        applied.append("rotary_inv_freq")
    return applied


def instantiate(family: str, model_dir: str | Path, auto_class: str | None = None) -> nn.Module:
    """The checkpoint's class constructed directly from its config (random init), through the compat layer."""
    from dlm_triage.families import get_family

    auto_class = auto_class or get_family(family).auto_class
    config, cls, _ = load_class(family, model_dir, auto_class)
    with process_state_guard():
        return cls(config)


def missing_packages(files: list[Path]) -> list[str]:
    """Packages the files import at module level that are not installed (e.g. MDLM's flash_attn)."""
    stdlib = set(getattr(sys, "stdlib_module_names", ()))
    out = set()
    for f in files:
        for name in module_level_imports(f):
            if name in stdlib or name in ("torch", "transformers"):
                continue
            if name in sys.modules:
                continue
            if importlib.util.find_spec(name) is None:
                out.add(name)
    return sorted(out)


INSTALL_HINT: dict[str, str] = {
    "flash_attn": "pip install flash-attn (needs a CUDA GPU and a matching torch build)",
    "einops": "pip install einops",
}


def check_packages(family: str, files: list[Path], hints: dict[str, str] | None = None) -> None:
    missing = missing_packages(files)
    if missing:
        fixes = "; ".join(f"{m}: {(hints or {}).get(m) or INSTALL_HINT.get(m) or f'pip install {m}'}"
                          for m in missing)
        names = ", ".join(f.name for f in files)
        raise RemoteCodeError(f"family {family!r}: the checkpoint's code ({names}) imports {missing} at module "
                              f"level, not installed here. Fix: {fixes}")

