"""Stability labels (paper 4.1, 4.5): the label rule, its percentiles, and the masks it gives."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dlm_triage.stats.validate import _as_1d, _warn

@dataclass(frozen=True)
class Labels:
    """Stable / mid / unstable labels of one group (boolean masks aligned with the input)."""

    unstable: np.ndarray
    stable: np.ndarray
    mid: np.ndarray
    excluded: np.ndarray
    unstable_threshold: float  # the q_unstable percentile of non-diverged finite final losses
    stable_threshold: float  # the median of the same
    n_used: int  # finite, non-diverged final losses the percentiles come from
    n_diverged: int
    flags: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


PERCENTILE_METHOD = "linear"
"""How the label percentiles interpolate: numpy's 'linear' (Hyndman-Fan type 7, R's default): the q-th
percentile of n sorted values is x[h] with h = q (n - 1), linearly interpolated between neighbours."""
LABEL_QUANTILES = {"unstable": 0.9, "stable": 0.5}
"""The label percentiles of LABEL_RULE (P90, the median), as calibration records them."""
LABEL_RULE = ("unstable iff final_loss >= P90 or diverged; stable iff final_loss <= P50 (the median); else "
              "mid-band (excluded from stable/unstable contrasts). Percentiles over the group's non-diverged runs "
              f"with a finite final loss, numpy method '{PERCENTILE_METHOD}' (Hyndman-Fan type 7)")
"""Paper 4.1/4.5: unstable = "top-decile final loss", stable = "sub-median final loss", but the paper counts
n_stable = 336 of 671 configurations, which only 'final loss <= median' gives (n odd: the median is itself a
configuration; '<' gives 335). The count wins, so stable is <= median."""


def label_masks(loss: np.ndarray, diverged: np.ndarray, unstable_threshold: float,
                stable_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(unstable, stable) masks for given thresholds: the comparisons of LABEL_RULE, in one place."""
    used = np.isfinite(loss) & ~diverged
    with np.errstate(invalid="ignore"):
        unstable = diverged | (used & (loss >= unstable_threshold))
        stable = used & (loss <= stable_threshold) & ~unstable
    return unstable, stable


def stability_labels(final_loss, diverged=None, *, unstable_quantile: float = LABEL_QUANTILES["unstable"],
                     stable_quantile: float = LABEL_QUANTILES["stable"]) -> Labels:
    """Label runs by LABEL_RULE: unstable iff loss >= P90 or diverged; stable iff loss <= median; else mid-band.

    Percentiles (PERCENTILE_METHOD) come from the non-diverged runs with a finite final loss (paper 4.1:
    "top-decile final-loss"). A run both <= median and >= P90 (constant losses) is unstable.
    """
    loss = _as_1d(final_loss, "final_loss")
    div = np.zeros(loss.shape, bool) if diverged is None else _as_1d(diverged, "diverged", dtype=bool)
    if div.shape != loss.shape:
        raise ValueError(f"`diverged` has shape {div.shape}, `final_loss` has {loss.shape}: they must match")
    if not 0.0 < stable_quantile < unstable_quantile < 1.0:
        raise ValueError("`stable_quantile` and `unstable_quantile` must satisfy 0 < stable < unstable < 1, "
                         f"got {stable_quantile!r}, {unstable_quantile!r}")
    flags: list[str] = []
    msgs: list[str] = []
    finite = np.isfinite(loss)
    used = finite & ~div
    excluded = ~finite & ~div
    if excluded.any():
        _warn(msgs, flags, "unlabelled_runs",
              f"{int(excluded.sum())} run(s) neither diverged nor with a finite final loss: excluded")
    n_used = int(used.sum())
    if n_used >= 1:
        hi, med = np.percentile(loss[used], [100 * unstable_quantile, 100 * stable_quantile],
                                method=PERCENTILE_METHOD)
    else:
        hi = med = math.nan
    if n_used < 2:
        _warn(msgs, flags, "too_few_runs",
              f"only {n_used} non-diverged run(s) with a finite final loss: percentiles are not meaningful")
    elif np.ptp(loss[used]) == 0:
        _warn(msgs, flags, "constant_final_loss",
              "final loss is constant: every non-diverged run is at the 90th percentile (all unstable)")
    unstable, stable = label_masks(loss, div, hi, med)
    mid = used & ~unstable & ~stable
    return Labels(unstable, stable, mid, excluded, float(hi), float(med), n_used, int(div.sum()),
                  tuple(flags), tuple(msgs))
