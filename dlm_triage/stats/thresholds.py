"""F1-optimal threshold selection over many replicates at once, and confusion counts at a threshold."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlm_triage.stats.validate import _as_1d, _warn

@dataclass(frozen=True)
class ThresholdSelection:
    """Best-F1 threshold per replicate (arrays of shape (R,)); NaN threshold where undefined."""

    threshold: np.ndarray
    f1: np.ndarray  # training F1 at the threshold
    n_positive: np.ndarray  # positives in train (with multiplicity)
    flags: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def select_threshold(values, positives, weights=None, *, warn: bool = True) -> ThresholdSelection:
    """Threshold maximising training F1, for R replicates at once.

    values: (n,) predictor per configuration; positives: (n,) labels; weights: (R, n) non-negative integer
    multiplicity of each configuration in each replicate's training set (None: one replicate, every weight 1).

    Cost O(R n) after one sort of the n values: configurations are sorted once (descending), grouped by equal
    value, and K(t) = #(train value >= t) and TP(t) come from cumulative sums along the sorted order, for every
    candidate t and every replicate at once; F1(t) = 2 TP / (K + P). Only value groups holding a training
    positive can maximise F1 (a group of training negatives adds to K, not to TP: its F1 is strictly below the
    previous candidate's), so F1 is evaluated on those groups only (~prevalence x n columns), which gives the
    same argmax and the same tie rule as scanning every distinct training value.
    """
    v = _as_1d(values, "values")
    y = _as_1d(positives, "positives", dtype=bool)
    n = v.size
    if y.shape != v.shape:
        raise ValueError(f"`positives` has shape {y.shape}, `values` has {v.shape}: they must match")
    if weights is None:
        w = np.ones((1, n), np.int64)
    else:
        w = np.asarray(weights)
        if w.ndim != 2 or w.shape[1] != n:
            raise ValueError(f"`weights` must have shape (R, {n}), got {w.shape}")
    R = w.shape[0]
    flags: list[str] = []
    msgs: list[str] = []
    n_pos = w[:, y].sum(axis=1)  # NaN-valued positives still count: they are false negatives
    order = np.flatnonzero(~np.isnan(v))
    order = order[np.argsort(-v[order], kind="stable")]
    thr = np.full(R, np.nan)
    f1_best = np.full(R, np.nan)
    ys = y[order]
    if ys.any():
        vs = v[order]
        last = np.r_[vs[1:] != vs[:-1], True]  # last position of each value group
        gid = np.cumsum(np.r_[True, last[:-1]]) - 1  # group of each position
        ends = np.flatnonzero(last)
        pos_at = np.flatnonzero(ys)  # positions of positive configurations
        pg = np.unique(gid[pos_at])  # groups holding a positive configuration
        # last positive position within each such group: the TP count there includes the whole group
        last_pos_in_group = pos_at[np.r_[gid[pos_at][1:] != gid[pos_at][:-1], True]]
        wo = w[:, order]
        K = np.cumsum(wo, axis=1)[:, ends[pg]]  # (R, Gp): train items with value >= group value
        wp = wo[:, pos_at]
        TPc = np.cumsum(wp, axis=1)
        TP = TPc[:, np.searchsorted(pos_at, last_pos_in_group)]  # (R, Gp)
        gained = np.diff(np.c_[np.zeros((R, 1), TP.dtype), TP], axis=1) > 0  # a training positive in the group
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = (2 * TP) / (K + n_pos[:, None])
        f1 = np.where(gained, f1, -1.0)
        Gp = pg.size
        j = Gp - 1 - np.argmax(f1[:, ::-1], axis=1)  # last maximum in descending order = lowest threshold
        fj = f1[np.arange(R), j]
        ok = (n_pos > 0) & (fj >= 0)
        thr[ok] = vs[ends[pg[j[ok]]]]
        f1_best[ok] = fj[ok]
    bad = int((n_pos == 0).sum())
    if bad and warn:
        _warn(msgs, flags, "no_positive_train", f"{bad} of {R} training set(s) hold no positive: no threshold")
    return ThresholdSelection(thr, f1_best, n_pos, tuple(flags), tuple(msgs))


@dataclass(frozen=True)
class Confusion:
    """Confusion counts and metrics per replicate (arrays of shape (R,)); NaN where a metric is undefined."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray


def _metrics(tp, fp, fn, tn) -> Confusion:
    tp, fp, fn, tn = (np.asarray(a, np.int64) for a in (tp, fp, fn, tn))
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), np.nan)
        rec = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), np.nan)
        den = 2 * tp + fp + fn
        f1 = np.where(den > 0, (2 * tp) / np.maximum(den, 1), np.nan)
    return Confusion(tp, fp, fn, tn, prec, rec, f1)


def confusion_at(values, positives, threshold, weights=None) -> Confusion:
    """Counts of (value >= threshold) vs positives, per replicate; weights (R, n) as in `select_threshold`.

    A NaN threshold predicts nothing positive; a NaN value is never positive.
    """
    v = _as_1d(values, "values")
    y = _as_1d(positives, "positives", dtype=bool)
    t = np.atleast_1d(np.asarray(threshold, float))
    w = np.ones((t.size, v.size), np.int64) if weights is None else np.asarray(weights)
    if w.shape != (t.size, v.size):
        raise ValueError(f"`weights` must have shape ({t.size}, {v.size}), got {w.shape}")
    with np.errstate(invalid="ignore"):
        pred = v[None, :] >= t[:, None]  # NaN on either side compares False
    wpos = w[:, y]  # positives are ~10% of the columns: count TP/FN on those only
    tp = (wpos * pred[:, y]).sum(1)
    fp = (w * pred).sum(1) - tp
    fn = wpos.sum(1) - tp
    tn = w.sum(1) - tp - fp - fn
    return _metrics(tp, fp, fn, tn)
