"""Training monitors as pure functions: gradient norms, top-1 frequency, legacy warning, crossings, collapse, Gini.

Nothing here touches a model's state or an optimizer. Tensor functions return tensors (no host sync: the
caller decides when to pay for `.item()`); series functions take plain sequences / numpy arrays indexed by step.

Costs, measured against a LoRA training step of the same batch: the global grad norm through
`torch._foreach_norm` is < 1% of a LoRA step; top-1 on the training logits ~0.1%; top-1 on the clean batch
needs an extra forward (~35% of a step), which is why the trainer runs it every `cfg.top1_every` steps.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import torch

from dlm_triage.schema import LEGACY_FIRST_STEP, LEGACY_TOP1_THRESHOLD

LAST_FRACTION = 0.1
"""The 'last 10% of the run' used by the collapse definition and by our gradient-mass Gini/top-share."""
CONCENTRATION_LAST_STEPS = 10
"""The paper's gradient-concentration window (App. D): "last 10 steps"."""
CONCENTRATION_DEFINITIONS = {
    "paper_last10_steps": "per-step Gini and top-matrix share of the per-LoRA-matrix gradient L2 norms, averaged "
                          "over the last 10 logged steps (paper App. D; averaged over seeds downstream)",
    "mass_last10pct": "Gini and top-matrix share of the per-matrix gradient mass (sum over steps of squared "
                      "norms) over the last 10% of logged steps (dlm-triage's own summary)",
}


# -- gradient norms ------------------------------------------------------------------------------------

def global_grad_norm(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of the gradients of `params` (pre-clip), as a 0-dim float32 tensor.

    ||g|| = sqrt(sum_p ||g_p||^2), one fused `torch._foreach_norm` kernel per device/dtype group, accumulated in
    float32 (bf16 gradients would otherwise be summed in bf16). Parameters without a gradient count as zero.
    No host sync: call `.item()` when the value is needed (that is the sync point).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), dtype=torch.float32)
    norms = torch._foreach_norm(grads, 2, dtype=torch.float32)
    return torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]), 2)


def matrix_grad_norms(named_params: Sequence[tuple[str, torch.Tensor]]) -> torch.Tensor:
    """L2 gradient norm of each parameter, in the order given, as a float32 tensor [n] (0 where no gradient).

    With `peft_methods.adapter_matrices(model)` as input this is the per-adapter-matrix norm the step log
    stores; `global_grad_norm` equals `vector_norm(matrix_grad_norms(...))`.
    """
    if not named_params:
        return torch.zeros(0, dtype=torch.float32)
    device = named_params[0][1].device
    grads = [p.grad for _, p in named_params]
    if all(g is not None and g.device == device for g in grads):  # the training case: one kernel, one stack
        return torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float32))
    if all(g is not None for g in grads):  # adapters spread over devices (device_map): gather on the first
        return torch.stack([n.to(device) for n in torch._foreach_norm(grads, 2, dtype=torch.float32)])
    out = torch.zeros(len(grads), dtype=torch.float32, device=device)
    idx = [i for i, g in enumerate(grads) if g is not None]
    if idx:
        norms = torch._foreach_norm([grads[i] for i in idx], 2, dtype=torch.float32)
        out[idx] = torch.stack([n.to(device) for n in norms])
    return out


# -- top-1 frequency -----------------------------------------------------------------------------------

def top1_frequency(logits: torch.Tensor, positions_mask: torch.Tensor) -> torch.Tensor:
    """Argmax mode frequency (paper App. D): max_v |{i in I : argmax_i = v}| / |I|, as a 0-dim float32 tensor.

    `logits` [B, L, V] (aligned: logits[:, i] predicts token i), `positions_mask` [B, L] bool = the evaluated
    positions I. The frequency is POOLED over all evaluated positions of the batch (not averaged per
    sequence): one histogram of argmax tokens over I. NaN when I is empty (0 / 0). No host sync: the histogram
    is a scatter-add of the mask over all positions (a boolean index would need the count of I on the host).
    """
    if logits.dim() != 3 or positions_mask.shape != logits.shape[:2]:
        raise ValueError(
            f"top1_frequency: logits must be [B, L, V] and positions_mask [B, L]; got {tuple(logits.shape)} "
            f"and {tuple(positions_mask.shape)}"
        )
    return top1_frequency_of_predictions(logits.argmax(dim=-1), positions_mask, logits.shape[-1])


def top1_frequency_of_predictions(pred_ids: torch.Tensor, positions_mask: torch.Tensor, n_classes: int) -> torch.Tensor:
    """`top1_frequency` from the argmax ids [B, L] already taken (what the trainer keeps per micro-batch, so
    micro-batches pool into one histogram without holding their logits); `n_classes` = the vocabulary size."""
    if pred_ids.shape != positions_mask.shape:
        raise ValueError(f"top1_frequency: pred_ids {tuple(pred_ids.shape)} and positions_mask "
                         f"{tuple(positions_mask.shape)} must have the same shape")
    pred = pred_ids.flatten()  # [B*L]
    w = positions_mask.flatten().to(torch.float32)
    counts = torch.zeros(n_classes, dtype=torch.float32, device=pred_ids.device).scatter_add_(0, pred, w)
    return counts.max() / w.sum()


# -- series monitors ----------------------------------------------------------------------------------

def _series(values: Sequence[float] | np.ndarray, steps: Sequence[int] | np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(values, dtype=np.float64)
    s = np.arange(len(v), dtype=np.int64) if steps is None else np.asarray(steps, dtype=np.int64)
    if s.shape != v.shape:
        raise ValueError(f"steps has {s.shape[0]} entries but the series has {v.shape[0]}: give one step per value")
    return v, s


def legacy_warning(top1_series: Sequence[float] | np.ndarray, steps: Sequence[int] | None = None) -> tuple[bool, int | None]:
    """The legacy top-1 detector (schema.LEGACY_*; paper 4.5 "samples at step 11"): it first samples at step
    LEGACY_FIRST_STEP (11), then every step until it fires. Returns (detected, fire step), fire step = the first
    evaluated step t >= 11 with top-1 > LEGACY_TOP1_THRESHOLD (0.5, strict); (False, None) when top-1 never
    exceeds 0.5 from step 11 on. Steps before 11 are never looked at, whatever their value.

    `top1_series` is indexed by step (or by `steps`); NaN marks a step where top-1 was not evaluated.
    """
    v, s = _series(top1_series, steps)
    hit = (s >= LEGACY_FIRST_STEP) & np.isfinite(v) & (v > LEGACY_TOP1_THRESHOLD)
    if not hit.any():
        return False, None
    return True, int(s[np.argmax(hit)])


def legacy_fires(step: int, top1: float) -> bool:
    """One sample of the live legacy detector: True iff `step` >= LEGACY_FIRST_STEP and top-1 > 0.5 (finite).
    The first step where this holds is `legacy_warning`'s fire step."""
    return step >= LEGACY_FIRST_STEP and math.isfinite(top1) and top1 > LEGACY_TOP1_THRESHOLD


def first_crossing(series: Sequence[float] | np.ndarray, level: float, steps: Sequence[int] | None = None) -> int | None:
    """First step whose (finite) value is >= `level`; None when it never gets there. NaN steps are skipped."""
    v, s = _series(series, steps)
    hit = np.isfinite(v) & (v >= level)
    return int(s[np.argmax(hit)]) if hit.any() else None


def last_fraction_start(n: int, fraction: float = LAST_FRACTION) -> int:
    """Index of the first row of the last `fraction` of `n` logged rows: the last max(1, ceil(fraction*n))."""
    if n <= 0:
        return 0
    return n - max(1, math.ceil(fraction * n))


def is_collapsed(top1_series: Sequence[float] | np.ndarray, losses: Sequence[float] | np.ndarray) -> bool:
    """schema.COLLAPSE_DEFINITION: top-1 >= 0.95 at every evaluated step of the last 10% of the run (at least
    one evaluated step there) AND final loss >= step-0 loss.

    Both series are indexed by step over the logged rows; 'last 10%' = `last_fraction_start(n)` onwards.
    A non-finite final loss is not collapse (that is divergence).
    """
    top1 = np.asarray(top1_series, dtype=np.float64)
    loss = np.asarray(losses, dtype=np.float64)
    if top1.shape != loss.shape or top1.size == 0:
        return False
    window = top1[last_fraction_start(top1.size):]
    evaluated = window[np.isfinite(window)]
    if evaluated.size == 0 or not bool(np.all(evaluated >= 0.95)):
        return False
    final, first = loss[-1], loss[0]
    return bool(np.isfinite(final) and np.isfinite(first) and final >= first)


def gini(x: Sequence[float] | np.ndarray) -> float:
    """Gini coefficient of non-negative values: sum_ij |x_i - x_j| / (2 n^2 mean(x)).

    Computed from the sorted values, G = 2 sum_i i x_(i) / (n sum x) - (n + 1) / n (i = 1..n).
    Uniform -> 0; one-hot -> (n-1)/n. NaN when the sum is 0 or x is empty.
    """
    a = np.sort(np.asarray(x, dtype=np.float64).ravel())
    if a.size and (a[0] < 0 or not np.all(np.isfinite(a))):
        raise ValueError("gini: values must be finite and non-negative (got a negative or non-finite value)")
    total = a.sum()
    if a.size == 0 or total <= 0:
        return float("nan")
    n = a.size
    i = np.arange(1, n + 1, dtype=np.float64)
    return float(2.0 * np.dot(i, a) / (n * total) - (n + 1.0) / n)


def top_share(x: Sequence[float] | np.ndarray) -> float:
    """Share of the largest value in the total, max(x) / sum(x) (non-negative values). NaN when the sum is 0."""
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size and (a.min() < 0 or not np.all(np.isfinite(a))):
        raise ValueError("top_share: values must be finite and non-negative")
    total = a.sum() if a.size else 0.0
    return float(a.max() / total) if total > 0 else float("nan")


def gradient_concentration(matrix_norms: Sequence[Sequence[float]] | np.ndarray) -> dict[str, dict[str, float | None]]:
    """Concentration of the per-LoRA-matrix gradient norms of one run ([n_steps, n_matrices], steps in order),
    under both named definitions of CONCENTRATION_DEFINITIONS. Rows with a non-finite norm (a diverged step) are
    left out; each value is None when no row is left or the mass is zero.

    'paper_last10_steps' = mean over the last CONCENTRATION_LAST_STEPS finite rows of gini(row), top_share(row);
    'mass_last10pct' = gini, top_share of sum(row**2) over the last LAST_FRACTION of the logged rows.
    """
    mat = np.asarray(matrix_norms, dtype=np.float64)
    if mat.ndim != 2:
        raise ValueError(f"gradient_concentration: expected [n_steps, n_matrices], got shape {mat.shape}")
    out: dict[str, dict[str, float | None]] = {}
    finite = mat[np.all(np.isfinite(mat), axis=1)] if mat.size else mat
    last = finite[-CONCENTRATION_LAST_STEPS:] if mat.shape[1] else finite[:0]
    last = last[last.sum(axis=1) > 0] if last.size else last
    out["paper_last10_steps"] = {
        "gini": float(np.mean([gini(r) for r in last])) if len(last) else None,
        "top_share": float(np.mean([top_share(r) for r in last])) if len(last) else None,
        "n_steps": int(len(last)),
    }
    window = mat[last_fraction_start(mat.shape[0]):]
    window = window[np.all(np.isfinite(window), axis=1)]
    mass = (window**2).sum(axis=0) if window.size else np.zeros(0)
    ok = mass.size and mass.sum() > 0
    out["mass_last10pct"] = {"gini": gini(mass) if ok else None, "top_share": top_share(mass) if ok else None,
                             "n_steps": int(window.shape[0])}
    return out


def finite_or_diverged(loss: float, grad_norm: float) -> str | None:
    """None when loss and grad norm are finite; otherwise the reason ('loss=nan', 'grad_norm=inf', ...)."""
    bad = [f"{name}={v}" for name, v in (("loss", loss), ("grad_norm", grad_norm)) if not math.isfinite(v)]
    return ", ".join(bad) if bad else None
