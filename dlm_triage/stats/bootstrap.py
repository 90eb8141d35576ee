"""Resampling: the split bootstrap (paper 4.1: resample configurations, redraw the split, reselect on
train), percentile CIs, and the percentile-bootstrap CI of a ratio of two samples' medians or means."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dlm_triage.stats.thresholds import Confusion, confusion_at, select_threshold
from dlm_triage.stats.validate import _as_1d, _check_level, _check_resamples, _check_rng, _warn

def n_test_of(n: int, test_size: float) -> int:
    """Test-set size: ceil(test_size * n) (sklearn's train_test_split rule), at least 1 and at most n-1."""
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"`test_size` must be in (0, 1), got {test_size!r}")
    return int(min(max(math.ceil(test_size * n), 1), max(n - 1, 1)))


def draw_splits(rng: np.random.Generator, n: int, n_resamples: int, *, resample: bool) -> tuple[np.ndarray | None, np.ndarray]:
    """Random draws of a split bootstrap: (idx (B, n) configuration resample or None, perm (B, n)).

    Replicate b uses configurations idx[b] (identity when idx is None); its test set is positions
    perm[b, :n_test] and its training set perm[b, n_test:]. Two calls on the generator, in this order.
    """
    rng = _check_rng(rng)
    idx = rng.integers(0, n, size=(n_resamples, n)) if resample else None
    perm = rng.permuted(np.broadcast_to(np.arange(n), (n_resamples, n)), axis=1)
    return idx, perm


def split_weights(idx: np.ndarray | None, perm: np.ndarray, n_test: int) -> tuple[np.ndarray, np.ndarray]:
    """Multiplicity of each configuration in each replicate's train and test sets: two (B, n) int arrays.

    Train = all drawn - test, so only the test positions (n_test per replicate) are gathered and counted.
    """
    B, n = perm.shape
    offs = (np.arange(B) * n)[:, None]
    test_members = perm[:, :n_test] if idx is None else np.take_along_axis(idx, perm[:, :n_test], axis=1)
    test = np.bincount((test_members + offs).ravel(), minlength=B * n).reshape(B, n)
    if idx is None:
        total = np.ones((B, n), np.int64)
    else:
        total = np.bincount((idx + offs).ravel(), minlength=B * n).reshape(B, n)
    return total - test, test


@dataclass(frozen=True)
class SplitEvaluation:
    """Per-replicate threshold, test confusion and always-positive baseline; (B,) arrays."""

    threshold: np.ndarray
    train_f1: np.ndarray
    test: Confusion
    baseline_precision: np.ndarray  # prevalence in test = precision of 'always positive' (the top-1 warning)
    n_positive_train: np.ndarray
    n_positive_test: np.ndarray
    n_train: int
    n_test: int
    n_no_positive_train: int
    n_no_positive_test: int
    n_no_predicted_positive: int
    flags: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def split_evaluate(values, positives, train_w: np.ndarray, test_w: np.ndarray) -> SplitEvaluation:
    """Select the threshold on each replicate's training weights and evaluate it on its test weights."""
    y = _as_1d(positives, "positives", dtype=bool)
    sel = select_threshold(values, y, train_w, warn=False)
    conf = confusion_at(values, y, sel.threshold, test_w)
    undefined = np.isnan(sel.threshold)  # no threshold (no positive in train): no metric, counted below
    if undefined.any():
        conf = Confusion(conf.tp, conf.fp, conf.fn, conf.tn, *(np.where(undefined, np.nan, a)
                                                               for a in (conf.precision, conf.recall, conf.f1)))
    n_test_total = test_w.sum(1)
    pos_test = (test_w * y).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        base = np.where(n_test_total > 0, pos_test / np.maximum(n_test_total, 1), np.nan)
    flags: list[str] = []
    msgs: list[str] = []
    R = train_w.shape[0]
    n_np_train = int((sel.n_positive == 0).sum())
    n_np_test = int((pos_test == 0).sum())
    n_np_pred = int(((conf.tp + conf.fp) == 0).sum())
    if n_np_train:
        _warn(msgs, flags, "no_positive_train",
              f"{n_np_train} of {R} split(s) have no positive in train: no threshold, metrics undefined")
    if n_np_test:
        _warn(msgs, flags, "no_positive_test",
              f"{n_np_test} of {R} split(s) have no positive in test: recall undefined")
    if n_np_pred:
        _warn(msgs, flags, "no_predicted_positive",
              f"{n_np_pred} of {R} split(s) predict no positive in test: precision undefined")
    return SplitEvaluation(sel.threshold, sel.f1, conf, base, sel.n_positive, pos_test,
                           int(train_w[0].sum()), int(test_w[0].sum()), n_np_train, n_np_test, n_np_pred,
                           tuple(flags), tuple(msgs))


@dataclass(frozen=True)
class SplitBootstrapResult:
    """Split bootstrap: the per-replicate evaluation and percentile CIs {metric: (median, low, high, n_defined)}."""

    evaluation: SplitEvaluation
    ci: dict
    confidence_level: float
    n_resamples: int
    flags: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def split_bootstrap(values, positives, *, n_resamples: int = 1000, test_size: float = 0.2,
                    confidence_level: float = 0.95, rng: np.random.Generator, resample: bool = True) -> SplitBootstrapResult:
    """Paper 4.1: each replicate resamples configurations (resample=True), redraws the split, reselects the
    threshold on train and evaluates on test; percentile CIs of precision, recall, F1, threshold and of the
    always-positive baseline's precision over the replicates where each is defined.

    Draws: `draw_splits(rng, n, n_resamples, resample=resample)`; n_test = `n_test_of(n, test_size)`.
    """
    v = _as_1d(values, "values")
    B = _check_resamples(n_resamples)
    cl = _check_level(confidence_level)
    if v.size < 2:
        raise ValueError(f"`values` needs at least 2 configurations for a train/test split, got {v.size}")
    idx, perm = draw_splits(_check_rng(rng), v.size, B, resample=resample)
    ev = split_evaluate(v, positives, *split_weights(idx, perm, n_test_of(v.size, test_size)))
    arrays = {"precision": ev.test.precision, "recall": ev.test.recall, "f1": ev.test.f1,
              "threshold": ev.threshold, "baseline_precision": ev.baseline_precision}
    ci = {m: percentile_ci(a, confidence_level=cl) for m, a in arrays.items()}
    return SplitBootstrapResult(ev, ci, cl, B, ev.flags, ev.warnings)


def percentile_ci(samples, *, confidence_level: float = 0.95) -> tuple[float, float, float, int]:
    """(median, low, high, n_defined) of the defined (non-NaN) replicates; percentile method, numpy 'linear'.

    All replicates undefined -> NaN triple with n_defined = 0 (the caller flags it).
    """
    a = _as_1d(samples, "samples")
    cl = _check_level(confidence_level)
    a = a[~np.isnan(a)]
    if a.size == 0:
        return math.nan, math.nan, math.nan, 0
    with np.errstate(invalid="ignore"):
        med, lo, hi = np.percentile(a, [50.0, 100 * (1 - cl) / 2, 100 * (1 - (1 - cl) / 2)])
    return float(med), float(lo), float(hi), int(a.size)


# ---------------------------------------------------------------------------------- ratio bootstrap


def draw_resamples(rng: np.random.Generator, n_x: int, n_y: int, n_resamples: int) -> tuple[np.ndarray, np.ndarray]:
    """Independent resample indices of two samples: (B, n_x) then (B, n_y), in this order."""
    rng = _check_rng(rng)
    return rng.integers(0, n_x, size=(n_resamples, n_x)), rng.integers(0, n_y, size=(n_resamples, n_y))


@dataclass(frozen=True)
class RatioCIResult:
    """statistic(x) / statistic(y) with a percentile bootstrap CI (x and y resampled independently)."""

    ratio: float
    ci_low: float
    ci_high: float
    stat_x: float
    stat_y: float
    n_x: int
    n_y: int
    n_resamples: int
    n_undefined: int  # replicates with a zero or non-finite ratio denominator
    statistic: str
    flags: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def ratio_ci(x, y, *, statistic: str = "median", n_resamples: int = 1000, confidence_level: float = 0.95,
             rng: np.random.Generator) -> RatioCIResult:
    """Percentile bootstrap CI of statistic(x)/statistic(y) (paper 4.1: unstable/stable median max-grad)."""
    x = _as_1d(x, "x")
    y = _as_1d(y, "y")
    x = x[~np.isnan(x)]
    y = y[~np.isnan(y)]
    if statistic not in ("median", "mean"):
        raise ValueError(f"`statistic` must be 'median' or 'mean', got {statistic!r}")
    B = _check_resamples(n_resamples)
    cl = _check_level(confidence_level)
    f = np.median if statistic == "median" else np.mean
    flags: list[str] = []
    msgs: list[str] = []
    if x.size < 2 or y.size < 2:
        _warn(msgs, flags, "too_few_runs", f"ratio CI needs >= 2 values per sample: n_x={x.size}, n_y={y.size}")
        sx = float(f(x)) if x.size else math.nan
        sy = float(f(y)) if y.size else math.nan
        r = sx / sy if (x.size and y.size and sy != 0) else math.nan
        return RatioCIResult(r, math.nan, math.nan, sx, sy, x.size, y.size, B, B, statistic, tuple(flags), tuple(msgs))
    sx, sy = float(f(x)), float(f(y))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = sx / sy if sy != 0 else math.nan
        ix, iy = draw_resamples(rng, x.size, y.size, B)
        bx = f(x[ix], axis=1)
        by = f(y[iy], axis=1)
        rb = np.where(by != 0, bx / np.where(by != 0, by, 1.0), np.nan)
    rb = np.where(np.isfinite(rb), rb, np.nan)
    n_bad = int(np.isnan(rb).sum())
    if not math.isfinite(r):
        _warn(msgs, flags, "undefined_ratio", f"{statistic} of the denominator sample is 0 or not finite")
        r = math.nan
    if n_bad:
        _warn(msgs, flags, "undefined_replicates", f"{n_bad} of {B} bootstrap ratios undefined (excluded)")
    _, lo, hi, _ = percentile_ci(rb, confidence_level=cl)
    return RatioCIResult(r, float(lo), float(hi), sx, sy, x.size, y.size, B, n_bad, statistic, tuple(flags), tuple(msgs))
