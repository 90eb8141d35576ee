"""LoRA-Diffusion: noise-scheduled low-rank residuals on hidden states (seed lora-diffusion-review.txt).

Instead of a low-rank update of a weight, each chosen module's OUTPUT h (a hidden state of the denoising
network) gets a low-rank residual whose active rank depends on the batch's noise level:

    h' = h + B[:, :k] (A[:k] h),        k = k(lambda) = ceil(f(lambda) * r)

- Chosen modules: the run's targets, resolved and checked exactly as for every other method
  (`peft_methods.resolve_targets`; cfg.target_modules or the family's attention modules). h is the module's
  output, of width d_out (nn.Linear.out_features; GPT-2 Conv1D.nf).
- A [r, d_out]: Kaiming-uniform (a = sqrt 5, fan-in d_out, as peft's lora_A); B [d_out, r]: zeros, so the model
  is exactly the base model at init. Adapter tensors are float32 whatever the base dtype. No alpha scale: the
  residual is B A h as written (cfg.alpha is not used, as for NaRA).
- Schedule f: `cfg.lora_diffusion_schedule`, piecewise constant by noise phase ('u1:f1,...,1:fn': the first
  piece with lambda <= u_i gives f_i; `config.parse_rank_schedule`). Default '0.33:0.25,0.67:0.5,1:1': more
  capacity at high-noise (early, global) steps, less at low-noise (late, local refinement) ones, the review's
  reading of the paper's "step-adaptive rank allocation across diffusion phases".
- lambda = the batch's mask ratio, one per forward, set by the trainer exactly as for NaRA
  (`peft_methods.set_noise_level` / `noise_level`).

Sharing across steps. The review notes: "The methodology is ambiguous about whether modules are shared across
timesteps or learned per-step (and how this interacts with the step-adaptive ranks)." Choice here: ONE (A, B)
per chosen module, shared by every noise level, with nested slices: the rank-k module of a low-noise phase is
the leading k components of the high-noise one. So the parameter count does not grow with the number of
phases, every noise level trains the leading components, and a step sees (and its gradient reaches) only the
active slice A[:k], B[:, :k].

Trainable parameters: sum over wrapped modules of 2 * r * d_out (`expected_parameter_count`); logged at apply
time and written to the adapter config. Adapter directory: `lora_diffusion_config.json` +
`adapter_model.safetensors`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from dlm_triage import adapter_parts
from dlm_triage.adapter_parts import set_submodule
from dlm_triage.config import RunConfig, parse_rank_schedule
from dlm_triage.targets import check_wrapped, resolve_targets

log = logging.getLogger(__name__)

CONFIG_FILENAME = "lora_diffusion_config.json"
WEIGHTS_FILENAME = adapter_parts.WEIGHTS_FILENAME
STATE_ATTR = "_lora_diffusion_state"
MARKER = "lora_diffusion_A"


class RankSchedule:
    """Noise level lambda in [0, 1] -> active rank k of a rank-r module, piecewise by noise phase."""

    def __init__(self, spec: str, rank: int):
        self.spec = spec
        self.pieces = parse_rank_schedule(spec)
        self.rank = int(rank)

    def fraction(self, lam: float) -> float:
        return next(f for u, f in self.pieces if lam <= u)  # the last bound is 1: every lambda in [0, 1] has one

    def active_rank(self, lam: float) -> int:
        # - 1e-9: a product that is an integer up to rounding (0.28 * 25 = 7.000000000000001) stays that integer
        return max(1, min(self.rank, math.ceil(self.fraction(lam) * self.rank - 1e-9)))


class _NoiseState:
    """The noise level of the next forwards and its active rank, shared (by reference) by every wrapped module."""

    def __init__(self, schedule: RankSchedule):
        self.schedule = schedule
        self.lam: float | None = None
        self.k: int | None = None

    def set_lam(self, lam: float | None) -> None:
        """The noise level of the following forwards and its active rank (None: unset)."""
        self.lam, self.k = lam, (None if lam is None else self.schedule.active_rank(lam))

    def active_rank(self) -> int:
        if self.k is None:
            raise RuntimeError(
                "lora_diffusion needs the batch's noise level before a forward: call "
                "peft_methods.set_noise_level(model, rho) or use `with peft_methods.noise_level(model, rho):`"
            )
        return self.k


def _out_features(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    return int(module.nf)  # GPT-2 Conv1D (weight [in, out])


class LoRADiffusionResidual(nn.Module):
    """A frozen module plus the residual B[:, :k] A[:k] h on its output h."""

    def __init__(self, base: nn.Module, rank: int, state: _NoiseState):
        super().__init__()
        self.base = base
        self.rank = rank
        weight = base.weight
        d = _out_features(base)
        self.lora_diffusion_A = nn.Parameter(torch.empty(rank, d, device=weight.device, dtype=torch.float32))
        self.lora_diffusion_B = nn.Parameter(torch.zeros(d, rank, device=weight.device, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.lora_diffusion_A, a=math.sqrt(5))
        object.__setattr__(self, "_state", state)  # a plain reference: not a submodule, not in the state dict

    def forward(self, *args, **kwargs) -> torch.Tensor:
        h = self.base(*args, **kwargs)
        k = self._state.active_rank()
        # Slices are views: the inactive components take no part in the forward and get a zero gradient.
        z = h.to(self.lora_diffusion_A.dtype) @ self.lora_diffusion_A[:k].T   # [..., k]
        return h + (z @ self.lora_diffusion_B[:, :k].T).to(h.dtype)


def is_lora_diffusion_model(model: nn.Module) -> bool:
    return isinstance(getattr(model, STATE_ATTR, None), _NoiseState)


def _state_of(model: nn.Module) -> _NoiseState:
    state = getattr(model, STATE_ATTR, None)
    if not isinstance(state, _NoiseState):
        raise ValueError(f"{type(model).__name__} has no lora_diffusion adapter: apply it with apply_lora_diffusion first")
    return state


def set_noise_level(model: nn.Module, lam: float) -> None:
    """Set lambda (the batch's mask ratio) and so the active rank for the following forwards."""
    adapter_parts.set_noise_level(_state_of(model), lam, "lora_diffusion")


@contextlib.contextmanager
def noise_level(model: nn.Module, lam: float) -> Iterator[None]:
    with adapter_parts.noise_level(_state_of(model), lam, "lora_diffusion"):
        yield


def active_rank(model: nn.Module) -> int:
    """The active rank of the current noise level."""
    return _state_of(model).active_rank()


def wrapped_modules(model: nn.Module) -> list[tuple[str, LoRADiffusionResidual]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRADiffusionResidual)]


def expected_parameter_count(model: nn.Module) -> int:
    """2 * r * d_out summed over the wrapped modules (A [r, d_out] + B [d_out, r] each)."""
    return sum(2 * m.rank * _out_features(m.base) for _, m in wrapped_modules(model))


def apply_lora_diffusion(model: nn.Module, cfg: RunConfig, targets: Sequence[str]) -> nn.Module:
    """Wrap every module matching `targets` with a LoRADiffusionResidual; freeze everything else. Returns `model`."""
    if is_lora_diffusion_model(model):
        raise ValueError("model already has a lora_diffusion adapter: apply it to a fresh base model")
    found = resolve_targets(model, targets)
    for p in model.parameters():
        p.requires_grad_(False)
    state = _NoiseState(RankSchedule(cfg.lora_diffusion_schedule, cfg.rank))
    object.__setattr__(model, STATE_ATTR, state)
    for name in sorted({n for hits in found.values() for n in hits}):
        set_submodule(model, name, LoRADiffusionResidual(model.get_submodule(name), cfg.rank, state))
    check_wrapped(model, targets, MARKER)
    n_params = expected_parameter_count(model)
    model._lora_diffusion_meta = {"rank": cfg.rank, "schedule": cfg.lora_diffusion_schedule,
                                  "targets": list(targets), "n_trainable": n_params}
    log.info("lora_diffusion: %d modules, rank %d, schedule %s: %d trainable parameters",
             len(wrapped_modules(model)), cfg.rank, cfg.lora_diffusion_schedule, n_params)
    return model


def remove_lora_diffusion(model: nn.Module) -> nn.Module:
    """Undo `apply_lora_diffusion` in place: every residual wrapper back to its base module (the same object),
    the noise state and the metadata removed. `requires_grad` of the base stays as applied (frozen)."""
    _state_of(model)
    for name, module in wrapped_modules(model):
        set_submodule(model, name, module.base)
    model.__dict__.pop(STATE_ATTR, None)
    model.__dict__.pop("_lora_diffusion_meta", None)
    return model


def lora_diffusion_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()
            if k.endswith((".lora_diffusion_A", ".lora_diffusion_B"))}


def save_lora_diffusion(model: nn.Module, path: Path | str) -> Path:
    _state_of(model)
    return adapter_parts.save_adapter_dir(path, lora_diffusion_state_dict(model),
                                          {"method": "lora_diffusion", **model._lora_diffusion_meta}, CONFIG_FILENAME)


def load_lora_diffusion(base_model: nn.Module, path: Path | str, cfg: RunConfig) -> nn.Module:
    """Apply lora_diffusion to a fresh base model with the saved structure and load the saved tensors (strictly)."""
    meta = adapter_parts.read_adapter_config(path, CONFIG_FILENAME, "lora_diffusion")
    saved_cfg = cfg.replace(rank=int(meta["rank"]), lora_diffusion_schedule=str(meta["schedule"]))
    model = apply_lora_diffusion(base_model, saved_cfg, meta["targets"])
    return adapter_parts.load_adapter_tensors(model, path, set(lora_diffusion_state_dict(model)), "lora_diffusion")
