"""Gradient concentration: the Gini coefficient and largest share of non-negative masses (paper App. D)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlm_triage.series import gini_top_share
from dlm_triage.stats.validate import _warn

@dataclass(frozen=True)
class ConcentrationResult:
    """Gini coefficient and largest share of non-negative masses along the last axis."""

    gini: np.ndarray | float
    top1_share: np.ndarray | float
    n: int
    flags: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def concentration(x) -> ConcentrationResult:
    """Gini = sum_i (2i - n - 1) x_(i) / (n sum x) (ascending order, i = 1..n) and max(x) / sum(x).

    Closed forms: equal masses -> 0 and 1/n; one non-zero among n -> (n-1)/n and 1. Zero total -> NaN, flagged.
    """
    a = np.asarray(x, float)
    if a.ndim < 1 or a.shape[-1] < 1:
        raise ValueError(f"`x` must have at least one value along its last axis, got shape {a.shape}")
    if np.any(a < 0) or not np.all(np.isfinite(a)):
        raise ValueError("`x` must hold finite non-negative masses (e.g. per-matrix gradient norms)")
    n = a.shape[-1]
    g, top = gini_top_share(a)
    flags: list[str] = []
    msgs: list[str] = []
    if np.any(a.sum(-1) == 0):
        _warn(msgs, flags, "zero_mass", "zero total mass: concentration undefined")
    if g.ndim == 0:
        g, top = float(g), float(top)
    return ConcentrationResult(g, top, n, tuple(flags), tuple(msgs))
