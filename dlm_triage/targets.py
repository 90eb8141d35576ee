"""Which modules an adapter targets: PEFT's suffix rule, resolved and checked, in one place.

A target is a module-name suffix ('q_proj' matches 'model.layers.0.self_attn.q_proj'), the rule peft uses for a
list of names. The adapters (`peft_methods`, `nara`, `lora_diffusion`) and the families (`families.check_targets`)
all match through `module_matches` and `linear_module_names`; nothing else spells the rule.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

__all__ = ["AdapterTargetError", "module_matches", "linear_like", "linear_module_names", "available_suffixes",
           "resolve_targets", "check_wrapped"]


class AdapterTargetError(ValueError):
    """A requested target module matched nothing (or received no adapter)."""


def module_matches(name: str, target: str) -> bool:
    """PEFT's rule for a string target: the module name equals it or ends with '.' + target."""
    return name == target or name.endswith("." + target)


def linear_like(module: nn.Module) -> bool:
    """nn.Linear and GPT-2 style Conv1D (weight [in, out]): what peft's LoRA wraps."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def linear_module_names(model: nn.Module) -> list[str]:
    """The names of the model's Linear-like modules, in module order (what a target can match)."""
    return [name for name, m in model.named_modules() if name and linear_like(m)]


def available_suffixes(model: nn.Module) -> list[str]:
    """Sorted unique last name components of the model's Linear-like modules (what a target can name)."""
    return sorted({name.rsplit(".", 1)[-1] for name in linear_module_names(model)})


def resolve_targets(model: nn.Module, targets: Sequence[str]) -> dict[str, list[str]]:
    """target -> the Linear-like module names it matches. Raises AdapterTargetError if any target matches none."""
    if not targets:
        raise AdapterTargetError("no target modules given: pass e.g. ('q_proj', 'v_proj'), or the family's attention targets")
    names = linear_module_names(model)
    found = {t: [n for n in names if module_matches(n, t)] for t in targets}
    missing = [t for t, hits in found.items() if not hits]
    if missing:
        raise AdapterTargetError(
            f"target module(s) {missing} match no Linear module of {type(model).__name__}: "
            f"use names from {available_suffixes(model)} (set RunConfig.target_modules, or fix the family's "
            "attention_targets)"
        )
    return found


def check_wrapped(model: nn.Module, targets: Sequence[str], marker: str) -> None:
    """After wrapping: every target names at least one module that carries `marker` (e.g. 'lora_A')."""
    wrapped = [name for name, m in model.named_modules() if hasattr(m, marker)]
    missing = [t for t in targets if not any(module_matches(n, t) for n in wrapped)]
    if missing:
        raise AdapterTargetError(
            f"target module(s) {missing} received no adapter after wrapping (peft skipped them): "
            f"wrapped modules: {sorted({n.rsplit('.', 1)[-1] for n in wrapped})}; available: {available_suffixes(model)}"
        )
