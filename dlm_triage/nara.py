"""NaRA, noise-aware LoRA (Wang et al., facts from its public release).

    h = W0 x + s * B C(lambda) A x,        C(lambda) = I_r + eta * F(e_lambda)

- e_lambda: Gaussian Fourier projection of the noise level, [sin(lambda W), cos(lambda W)], with a FIXED
  (non-trainable, saved) buffer W ~ N(0, 1) * 16 of shape [1, d/2], d = 64. As the release: no 2*pi factor
  (the release computes sin(lambda W); the score-SDE projection multiplies by 2*pi: `FOURIER_TWO_PI` says which).
- F: Linear(64, 256) - SiLU - Linear(256, 512) - SiLU - Linear(512, r*r), last layer zero-initialised so
  C(lambda) = I exactly at start; ONE F shared by all wrapped layers.
- A [r, in]: Kaiming-uniform (a = sqrt 5); B [out, r]: zeros, so the model equals the base model at init.
- eta = cfg.nara_eta (the release's c_scale, 0.1); s = 1.0 (the release's default; cfg.alpha is NOT used by NaRA).
- lambda = the batch's mask ratio, one per forward: `set_noise_level(model, lam)` or `with noise_level(model, lam)`.
  C is computed once per forward of the root model (a forward pre-hook drops the cached C) and shared by all
  layers.

Trainable parameters: every A, B and F. Adapter directory: `nara_config.json` + `adapter_model.safetensors`.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from dlm_triage import adapter_parts
from dlm_triage.adapter_parts import set_submodule
from dlm_triage.config import RunConfig
from dlm_triage.targets import check_wrapped, resolve_targets

FOURIER_DIM = 64
FOURIER_SCALE = 16.0
FOURIER_TWO_PI = False
HIDDEN = (256, 512)
DEFAULT_SCALE = 1.0
CONFIG_FILENAME = "nara_config.json"
WEIGHTS_FILENAME = adapter_parts.WEIGHTS_FILENAME
CORE_ATTR = "nara_core"


class GaussianFourierProjection(nn.Module):
    """e_lambda = [sin(lambda W), cos(lambda W)], W ~ N(0,1) * scale fixed at construction ([1, d/2] buffer)."""

    def __init__(self, dim: int = FOURIER_DIM, scale: float = FOURIER_SCALE):
        super().__init__()
        self.register_buffer("W", torch.randn(1, dim // 2) * scale)

    def forward(self, lam: torch.Tensor) -> torch.Tensor:
        proj = lam.reshape(-1, 1).to(self.W.dtype) * self.W
        if FOURIER_TWO_PI:
            proj = proj * (2 * math.pi)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)  # [1, d]


class NaRACore(nn.Module):
    """The shared hypernetwork: lambda -> C(lambda) = I_r + eta * F(e_lambda), [r, r]."""

    def __init__(self, rank: int, eta: float):
        super().__init__()
        self.rank = rank
        self.eta = float(eta)
        self.embed = GaussianFourierProjection()
        self.F = nn.Sequential(
            nn.Linear(FOURIER_DIM, HIDDEN[0]), nn.SiLU(),
            nn.Linear(HIDDEN[0], HIDDEN[1]), nn.SiLU(),
            nn.Linear(HIDDEN[1], rank * rank),
        )
        nn.init.zeros_(self.F[-1].weight)
        nn.init.zeros_(self.F[-1].bias)
        self.register_buffer("eye", torch.eye(rank), persistent=False)
        self.lam: float | None = None
        self._cached: torch.Tensor | None = None

    def core(self, lam: float | torch.Tensor) -> torch.Tensor:
        """C(lambda) for an explicit lambda (no caching)."""
        lam_t = torch.as_tensor(lam, dtype=torch.float32, device=self.eye.device)
        delta = self.F(self.embed(lam_t)).reshape(self.rank, self.rank)
        return self.eye + self.eta * delta

    def current(self) -> torch.Tensor:
        """C at the current noise level, computed once per root forward and shared by all layers."""
        if self.lam is None:
            raise RuntimeError(
                "NaRA needs the batch's noise level before a forward: call nara.set_noise_level(model, rho) "
                "or use `with nara.noise_level(model, rho):`"
            )
        if self._cached is None:
            self._cached = self.core(self.lam)
        return self._cached

    def invalidate(self) -> None:
        self._cached = None

    def set_lam(self, lam: float | None) -> None:
        """The noise level of the following forwards; the cached C is dropped."""
        self.lam = lam
        self.invalidate()

    def refresh(self) -> None:
        """Compute C for the coming root forward now, outside every layer: under activation checkpointing a
        layer's recomputation must save what its first run saved, so C cannot be built inside the first layer."""
        self._cached = None if self.lam is None else self.core(self.lam)


class NaRALinear(nn.Module):
    """A frozen nn.Linear plus s * B C(lambda) A x. The core is held by reference (not a submodule), so the
    shared F appears once in the model's parameters and state dict."""

    def __init__(self, base: nn.Linear, rank: int, scale: float, core: NaRACore):
        super().__init__()
        self.base = base
        self.rank = rank
        self.scale = float(scale)
        device = base.weight.device
        # Adapter tensors in float32 whatever the base dtype (as peft does): bf16 Adam states lose updates.
        self.nara_A = nn.Parameter(torch.empty(rank, base.in_features, device=device, dtype=torch.float32))
        self.nara_B = nn.Parameter(torch.zeros(base.out_features, rank, device=device, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.nara_A, a=math.sqrt(5))
        object.__setattr__(self, "_core", core)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        C = self._core.current().to(self.nara_A.device)  # [r, r], shared (no-op unless layers span devices)
        z = x.to(self.nara_A.dtype) @ self.nara_A.T  # [..., r]
        z = z @ C.T                                   # C A x
        return out + (self.scale * (z @ self.nara_B.T)).to(out.dtype)


def is_nara_model(model: nn.Module) -> bool:
    return isinstance(getattr(model, CORE_ATTR, None), NaRACore)


def _core_of(model: nn.Module) -> NaRACore:
    core = getattr(model, CORE_ATTR, None)
    if not isinstance(core, NaRACore):
        raise ValueError(f"{type(model).__name__} has no NaRA adapter: apply it with nara.apply_nara first")
    return core


def set_noise_level(model: nn.Module, lam: float) -> None:
    """Set lambda (the batch's mask ratio) for the following forwards."""
    adapter_parts.set_noise_level(_core_of(model), lam, "NaRA")


@contextlib.contextmanager
def noise_level(model: nn.Module, lam: float) -> Iterator[None]:
    with adapter_parts.noise_level(_core_of(model), lam, "NaRA"):
        yield


def apply_nara(model: nn.Module, cfg: RunConfig, targets: Sequence[str], *, scale: float = DEFAULT_SCALE) -> nn.Module:
    """Replace every nn.Linear matching `targets` by a NaRALinear; freeze everything else. Returns `model`."""
    if is_nara_model(model):
        raise ValueError("model already has a NaRA adapter: apply it to a fresh base model")
    found = resolve_targets(model, targets)
    not_linear = sorted({n for hits in found.values() for n in hits if not isinstance(model.get_submodule(n), nn.Linear)})
    if not_linear:
        raise ValueError(f"NaRA wraps nn.Linear only; these targets are not: {not_linear}")
    for p in model.parameters():
        p.requires_grad_(False)
    device = next(model.parameters()).device
    core = NaRACore(cfg.rank, cfg.nara_eta).to(device)
    model.add_module(CORE_ATTR, core)  # registered once: F lives in the model's parameters/state dict here
    for name in sorted({n for hits in found.values() for n in hits}):
        set_submodule(model, name, NaRALinear(model.get_submodule(name), cfg.rank, scale, core))
    check_wrapped(model, targets, "nara_A")
    # One C per root forward, computed before every forward of the whole model (see NaRACore.refresh).
    model._nara_hook = model.register_forward_pre_hook(lambda module, args: core.refresh())
    model._nara_meta = {"rank": cfg.rank, "eta": cfg.nara_eta, "scale": scale, "targets": list(targets),
                        "fourier_dim": FOURIER_DIM, "fourier_scale": FOURIER_SCALE,
                        "fourier_two_pi": FOURIER_TWO_PI, "hidden": list(HIDDEN)}
    return model


def remove_nara(model: nn.Module) -> nn.Module:
    """Undo `apply_nara` in place: every NaRALinear back to its base Linear (the same module object), the
    shared core, its pre-hook and the metadata removed. `requires_grad` of the base stays as apply_nara left it
    (frozen). Returns `model`."""
    _core_of(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, NaRALinear):
            set_submodule(model, name, module.base)
    delattr(model, CORE_ATTR)
    hook = model.__dict__.pop("_nara_hook", None)
    if hook is not None:
        hook.remove()
    model.__dict__.pop("_nara_meta", None)
    return model


def nara_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every NaRA tensor: the A/B of each layer, F's weights and the fixed Fourier buffer W."""
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()
            if ".nara_A" in k or ".nara_B" in k or k.startswith(CORE_ATTR + ".")}


def save_nara(model: nn.Module, path: Path | str) -> Path:
    _core_of(model)
    return adapter_parts.save_adapter_dir(path, nara_state_dict(model), {"method": "nara", **model._nara_meta},
                                          CONFIG_FILENAME)


def load_nara(base_model: nn.Module, path: Path | str, cfg: RunConfig) -> nn.Module:
    """Apply NaRA to a fresh base model with the saved structure and load the saved tensors (strictly)."""
    meta = adapter_parts.read_adapter_config(path, CONFIG_FILENAME, "NaRA")
    saved_cfg = cfg.replace(rank=int(meta["rank"]), nara_eta=float(meta["eta"]))
    model = apply_nara(base_model, saved_cfg, meta["targets"], scale=float(meta["scale"]))
    return adapter_parts.load_adapter_tensors(model, path, set(nara_state_dict(model)), "NaRA")
