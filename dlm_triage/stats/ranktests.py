"""Rank tests in scipy's defaults (Mann-Whitney U, Kruskal-Wallis), flagged on degenerate samples, and
the Bonferroni correction."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats as _sps

from dlm_triage.stats.validate import _as_1d, _warn

@dataclass(frozen=True)
class MannWhitneyResult:
    """scipy.stats.mannwhitneyu (method 'auto', tie correction, continuity) of x vs y."""

    u: float  # U statistic of x
    p_greater: float  # H1: x stochastically greater than y
    p_two_sided: float
    n_x: int
    n_y: int
    median_x: float
    median_y: float
    flags: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def mann_whitney(x, y) -> MannWhitneyResult:
    """Mann-Whitney U of x vs y (NaN dropped), one-sided 'greater' and two-sided p, as scipy's defaults."""
    x = _as_1d(x, "x")
    y = _as_1d(y, "y")
    x = x[~np.isnan(x)]
    y = y[~np.isnan(y)]
    flags: list[str] = []
    msgs: list[str] = []
    mx = float(np.median(x)) if x.size else math.nan
    my = float(np.median(y)) if y.size else math.nan
    if x.size == 0 or y.size == 0:
        _warn(msgs, flags, "empty_sample", f"Mann-Whitney needs both samples: n_x={x.size}, n_y={y.size}")
        return MannWhitneyResult(math.nan, math.nan, math.nan, x.size, y.size, mx, my, tuple(flags), tuple(msgs))
    combined = np.concatenate([x, y])
    if np.all(combined == combined[0]):
        _warn(msgs, flags, "all_tied", "Mann-Whitney: every value is tied: no evidence either way (p = 1)")
        u = x.size * y.size / 2.0
        return MannWhitneyResult(u, 1.0, 1.0, x.size, y.size, mx, my, tuple(flags), tuple(msgs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        g = _sps.mannwhitneyu(x, y, alternative="greater")
        t = _sps.mannwhitneyu(x, y, alternative="two-sided")
    return MannWhitneyResult(float(g.statistic), float(g.pvalue), float(t.pvalue), x.size, y.size, mx, my,
                             tuple(flags), tuple(msgs))


@dataclass(frozen=True)
class KruskalResult:
    H: float
    p: float
    n_groups: int
    flags: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def kruskal(*samples) -> KruskalResult:
    """scipy.stats.kruskal over the non-empty samples (NaN dropped); fewer than 2 or all tied -> flagged."""
    xs = [np.asarray(s, float) for s in samples]
    xs = [s[~np.isnan(s)] for s in xs]
    xs = [s for s in xs if s.size]
    flags: list[str] = []
    msgs: list[str] = []
    if len(xs) < 2:
        _warn(msgs, flags, "too_few_groups", f"Kruskal-Wallis needs >= 2 non-empty samples, got {len(xs)}")
        return KruskalResult(math.nan, math.nan, len(xs), tuple(flags), tuple(msgs))
    allv = np.concatenate(xs)
    if np.all(allv == allv[0]):
        _warn(msgs, flags, "all_tied", "Kruskal-Wallis: every value is tied: H = 0, p = 1")
        return KruskalResult(0.0, 1.0, len(xs), tuple(flags), tuple(msgs))
    r = _sps.kruskal(*xs)
    return KruskalResult(float(r.statistic), float(r.pvalue), len(xs), tuple(flags), tuple(msgs))


def bonferroni(p, m: int) -> np.ndarray | float:
    """min(1, p * m); NaN stays NaN."""
    if m < 1:
        raise ValueError(f"`m` (number of tests) must be >= 1, got {m!r}")
    out = np.minimum(np.asarray(p, float) * m, 1.0)
    return float(out) if out.ndim == 0 else out
