"""Run-level monitors over a logged series (numpy only): legacy warning, crossings, collapse, Gini, top share.

Each takes plain sequences / numpy arrays indexed by step; the detectors and crossings also have a vectorised
form over many runs ([n_runs, n_steps]: `legacy_fire_steps`, `first_crossing_steps`) that the one-run functions
call, so the synthetic corpus (synthetic.py) and the run summary (runsummary.py) apply the same definition.
`monitors` re-exports them beside the tensor monitors; no torch here.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from dlm_triage.schema import LEGACY_FIRST_STEP, LEGACY_TOP1_THRESHOLD

__all__ = ["LAST_FRACTION", "CONCENTRATION_LAST_STEPS", "CONCENTRATION_DEFINITIONS", "legacy_warning",
           "legacy_fire_steps", "legacy_fires", "first_crossing", "first_crossing_steps", "last_fraction_start",
           "is_collapsed", "gini", "top_share", "gini_top_share", "gradient_concentration", "finite_or_diverged"]

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
    fire = int(legacy_fire_steps(v, s))
    return (True, fire) if fire >= 0 else (False, None)


def legacy_fire_steps(top1: np.ndarray, steps: np.ndarray | None = None) -> np.ndarray:
    """`legacy_warning`'s fire step of every row of a [n_runs, n_steps] top-1 array (or of one series), -1 where
    the detector never fires; `steps` labels the columns (default 0..n_steps-1). One vectorised pass."""
    v = np.asarray(top1, dtype=np.float64)
    s = np.arange(v.shape[-1], dtype=np.int64) if steps is None else np.asarray(steps, dtype=np.int64)
    return _first_step((s >= LEGACY_FIRST_STEP) & np.isfinite(v) & (v > LEGACY_TOP1_THRESHOLD), s)


def _first_step(hit: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The step of the first True along the last axis, -1 where there is none."""
    return np.where(hit.any(axis=-1), s[np.argmax(hit, axis=-1)] if s.size else -1, -1)


def legacy_fires(step: int, top1: float) -> bool:
    """One sample of the live legacy detector: True iff `step` >= LEGACY_FIRST_STEP and top-1 > 0.5 (finite).
    The first step where this holds is `legacy_warning`'s fire step."""
    return step >= LEGACY_FIRST_STEP and math.isfinite(top1) and top1 > LEGACY_TOP1_THRESHOLD


def first_crossing(series: Sequence[float] | np.ndarray, level: float, steps: Sequence[int] | None = None) -> int | None:
    """First step whose (finite) value is >= `level`; None when it never gets there. NaN steps are skipped."""
    v, s = _series(series, steps)
    step = int(first_crossing_steps(v, level, s))
    return step if step >= 0 else None


def first_crossing_steps(values: np.ndarray, level: float, steps: np.ndarray | None = None) -> np.ndarray:
    """`first_crossing` of every row of a [n_runs, n_steps] array (or of one series), -1 where never reached."""
    v = np.asarray(values, dtype=np.float64)
    s = np.arange(v.shape[-1], dtype=np.int64) if steps is None else np.asarray(steps, dtype=np.int64)
    return _first_step(np.isfinite(v) & (v >= level), s)


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


def gini_top_share(masses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gini and top share along the last axis of finite non-negative masses (any leading shape), unchecked:
    G = sum_i (2i - n - 1) x_(i) / (n sum x) over the ascending values (i = 1..n), which equals
    sum_ij |x_i - x_j| / (2 n^2 mean x); top share = max(x) / sum(x). NaN where the sum is 0. The one formula
    behind `gini`, `top_share` and stats.concentration."""
    a = np.sort(np.asarray(masses, dtype=np.float64), axis=-1)
    n = a.shape[-1]
    tot = a.sum(-1)
    i = np.arange(1, n + 1, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        g = ((2 * i - n - 1) * a).sum(-1) / (n * tot)
        top = a[..., -1] / tot if n else np.full(np.shape(tot), np.nan)
    return g, top


def _checked(x: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size and (a.min() < 0 or not np.all(np.isfinite(a))):
        raise ValueError(f"{name}: values must be finite and non-negative (got a negative or non-finite value)")
    return a


def gini(x: Sequence[float] | np.ndarray) -> float:
    """Gini coefficient of non-negative values (`gini_top_share`). Uniform -> 0; one-hot -> (n-1)/n. NaN when
    the sum is 0 or x is empty."""
    a = _checked(x, "gini")
    if a.size == 0 or a.sum() <= 0:
        return float("nan")
    return float(gini_top_share(a)[0])


def top_share(x: Sequence[float] | np.ndarray) -> float:
    """Share of the largest value in the total, max(x) / sum(x) (non-negative values). NaN when the sum is 0."""
    a = _checked(x, "top_share")
    if a.size == 0 or a.sum() <= 0:
        return float("nan")
    return float(gini_top_share(a)[1])


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
