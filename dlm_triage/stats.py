"""Vectorised statistics primitives for the calibration protocol (paper 4.1, 4.5, App. B-D), in scipy's shape.

Every function validates its input (messages name the argument), computes, and returns a frozen result.
Resampling functions take the random stream as ``rng`` (a ``np.random.Generator``) and draw all replicates at
once, so a straightforward loop that draws with the same calls (`draw_splits`, `draw_resamples`) reproduces
every replicate exactly (``benchmarks/reference_calibration.py`` does, and the tests check it).

Degenerate data (too few values, no positives, constant values, undefined ratios) never raises and never
returns a silent NaN: the result carries ``flags`` (short machine-readable names) and ``warnings`` (sentences),
and a `DegenerateDataWarning` is emitted. NaN in a result field means "undefined" and is always flagged.

Rules (stated here, tested in tests/test_stats.py):

- labels: a run is unstable iff its final loss >= the group's 90th percentile (numpy 'linear'); stable iff its
  final loss < the group's median; otherwise mid-band (excluded from stable/unstable contrasts). Percentiles are
  computed over the non-diverged runs with a finite final loss. Diverged runs are unstable by definition. A run
  neither diverged nor with a finite final loss (e.g. failed) is excluded (flagged, counted).
- thresholds: a predictor is positive iff value >= threshold. Candidates are the training values; the
  threshold maximises F1 on train; among equal-F1 candidates the lowest wins. A NaN value is never positive and
  never a candidate (a run with no value at step k is predicted negative).
- precision = TP/(TP+FP), recall = TP/(TP+FN), F1 = 2TP/(2TP+FP+FN); each is undefined (NaN, flagged) when its
  denominator is 0 (sklearn's ``zero_division=np.nan``). A test split with no positives has undefined recall
  but a defined precision (0 when anything was predicted positive).
- split bootstrap: each replicate resamples the n configurations with replacement, redraws the train/test split
  (n_test = ceil(test_size * n), the first n_test positions of a fresh permutation), reselects the threshold on
  train and evaluates on test. A replicate with no positive in train has no threshold: it is counted
  (``n_no_positive_train``) and its metrics are NaN; one with no positive in test is counted
  (``n_no_positive_test``). Percentile CIs are over the replicates where the metric is defined.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats as _sps

from dlm_triage.series import gini_top_share

__all__ = [
    "DegenerateDataWarning", "Labels", "stability_labels", "ThresholdSelection", "select_threshold",
    "Confusion", "confusion_at", "draw_splits", "split_weights", "SplitEvaluation", "split_evaluate",
    "SplitBootstrapResult", "split_bootstrap",
    "percentile_ci", "MannWhitneyResult", "mann_whitney", "KruskalResult", "kruskal", "bonferroni",
    "draw_resamples", "RatioCIResult", "ratio_ci", "ConcentrationResult", "concentration", "PowerResult",
    "runs_per_cell", "n_test_of", "t_test_power",
]


class DegenerateDataWarning(RuntimeWarning):
    """Too little or degenerate data: the result is flagged, not an error."""


def _warn(msgs: list[str], flags: list[str], flag: str, msg: str) -> None:
    flags.append(flag)
    msgs.append(msg)
    warnings.warn(msg, DegenerateDataWarning, stacklevel=3)


def _as_1d(x, name: str, *, dtype=float) -> np.ndarray:
    a = np.asarray(x, dtype=dtype)
    if a.ndim != 1:
        raise ValueError(f"`{name}` must be one-dimensional, got shape {a.shape}")
    return a


def _check_rng(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"`rng` must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    return rng


def _check_level(confidence_level: float) -> float:
    if not 0.0 < float(confidence_level) < 1.0:
        raise ValueError(f"`confidence_level` must be in (0, 1), got {confidence_level!r}")
    return float(confidence_level)


def _check_resamples(n_resamples: int) -> int:
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"`n_resamples` must be a positive integer, got {n_resamples!r}")
    return int(n_resamples)


# ----------------------------------------------------------------------------------------------- labels


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


# ------------------------------------------------------------------------------------- thresholds


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


# ---------------------------------------------------------------------------------- split bootstrap


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


# ---------------------------------------------------------------------------------- rank tests


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


# ---------------------------------------------------------------------------------- concentration


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


# ---------------------------------------------------------------------------------- power


@dataclass(frozen=True)
class PowerResult:
    """Runs per cell (per arm) for a two-sample t-test on log values to detect a given ratio."""

    n_per_cell: int | None
    ratio: float
    log_sd: float
    effect_size: float  # Cohen's d = ln(ratio) / log_sd
    alpha: float
    power: float
    achieved_power: float
    method: str
    flags: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def t_test_power(d: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided two-sample t-test with n per arm at standardised effect d (noncentral t)."""
    df = 2 * n - 2
    nc = d * math.sqrt(n / 2.0)
    tc = _sps.t.ppf(1 - alpha / 2, df)
    return float(_sps.nct.sf(tc, df, nc) + _sps.nct.cdf(-tc, df, nc))


def runs_per_cell(log_sd: float, *, ratio: float = 2.0, alpha: float = 0.05, power: float = 0.8,
                  n_max: int = 100000) -> PowerResult:
    """Smallest n per arm such that a two-sided two-sample t-test on log max-grad detects `ratio` (a ratio of
    geometric means, = a ratio of medians under log-normality) with the given power; exact noncentral-t power.
    """
    method = ("two-sided two-sample t-test on ln(value), equal n and variance, noncentral t; "
              "d = ln(ratio) / pooled within-cell sd of ln(value)")
    flags: list[str] = []
    msgs: list[str] = []
    if not (ratio > 0 and ratio != 1):
        raise ValueError(f"`ratio` must be positive and != 1, got {ratio!r}")
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"`alpha` and `power` must be in (0, 1), got {alpha!r}, {power!r}")
    if not (math.isfinite(log_sd) and log_sd > 0):
        _warn(msgs, flags, "undefined_sd", f"log-scale sd must be finite and > 0, got {log_sd!r}: no power estimate")
        return PowerResult(None, ratio, float(log_sd), math.nan, alpha, power, math.nan, method, tuple(flags), tuple(msgs))
    d = abs(math.log(ratio)) / log_sd
    z = _sps.norm.ppf(1 - alpha / 2) + _sps.norm.ppf(power)
    n = max(2, int(math.floor(2 * (z / d) ** 2)))  # normal approximation, slightly low: step up from it
    while n > 2 and t_test_power(d, n - 1, alpha) >= power:
        n -= 1
    while t_test_power(d, n, alpha) < power:
        n += 1
        if n > n_max:
            _warn(msgs, flags, "n_too_large", f"more than {n_max} runs per cell needed")
            return PowerResult(None, ratio, float(log_sd), d, alpha, power, math.nan, method, tuple(flags), tuple(msgs))
    return PowerResult(n, ratio, float(log_sd), d, alpha, power, t_test_power(d, n, alpha), method,
                       tuple(flags), tuple(msgs))
