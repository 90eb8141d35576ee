"""dlm_triage.stats against scipy.stats / sklearn.metrics computed the slow way, closed forms, degenerate data.

Tolerance: thresholds and counts exact; floating metrics within 1e-12 (relative) unless stated.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from dlm_triage import stats

pytestmark = pytest.mark.filterwarnings("ignore::dlm_triage.stats.DegenerateDataWarning")


# --------------------------------------------------------------------------------------------- labels


def test_labels_exact_percentile_boundaries():
    loss = np.arange(11.0)  # P90 (linear) = 9.0 exactly, median = 5.0 exactly
    lab = stats.stability_labels(loss)
    assert lab.unstable_threshold == 9.0 and lab.stable_threshold == 5.0
    assert np.flatnonzero(lab.unstable).tolist() == [9, 10]  # >= P90: the boundary value is unstable
    assert np.flatnonzero(lab.stable).tolist() == [0, 1, 2, 3, 4, 5]  # <= median: the median itself is stable
    assert np.flatnonzero(lab.mid).tolist() == [6, 7, 8]
    assert not lab.flags


def test_labels_reproduce_the_paper_counts_at_an_exact_median():
    # paper 4.5: n_stable = 336, n_unstable = 68, "remaining 267 mid-band" of 671 configurations. With n odd the
    # median is itself a configuration: '<= median' counts it (336), '<' would give 335.
    rng = np.random.default_rng(0)
    loss = rng.permutation(np.linspace(0.5, 3.0, 671))  # distinct values, shuffled
    lab = stats.stability_labels(loss)
    assert int(lab.stable.sum()) == 336 and int(lab.unstable.sum()) == 68 and int(lab.mid.sum()) == 267
    srt = np.sort(loss)
    assert lab.stable_threshold == srt[335] and lab.stable[np.argmax(loss == srt[335])]  # the median run
    # linear interpolation (type 7): P90 at h = 0.9 * 670 = 603 exactly -> the 604th smallest value
    assert lab.unstable_threshold == srt[603]
    assert stats.PERCENTILE_METHOD == "linear" and "type 7" in stats.LABEL_RULE
    # interpolated case (n even): the median lies between two runs, <= and < agree
    lab2 = stats.stability_labels(np.arange(10.0))
    assert lab2.stable_threshold == 4.5 and int(lab2.stable.sum()) == 5
    assert lab2.unstable_threshold == pytest.approx(8.1) and np.flatnonzero(lab2.unstable).tolist() == [9]


def test_labels_interpolated_percentile_matches_numpy():
    rng = np.random.default_rng(3)
    loss = rng.lognormal(size=57)
    lab = stats.stability_labels(loss)
    p90, med = np.percentile(loss, [90, 50])
    assert lab.unstable_threshold == p90 and lab.stable_threshold == med
    np.testing.assert_array_equal(lab.unstable, loss >= p90)
    np.testing.assert_array_equal(lab.stable, loss <= med)
    assert not (lab.unstable & lab.stable).any()
    assert (lab.unstable | lab.stable | lab.mid).all()


def test_labels_diverged_are_unstable_and_out_of_percentiles():
    loss = np.array([1.0, 2.0, 3.0, 4.0, np.nan, 100.0, 0.5])
    div = np.array([0, 0, 0, 0, 1, 1, 1], bool)
    lab = stats.stability_labels(loss, div)
    used = loss[:4]
    assert lab.unstable_threshold == np.percentile(used, 90)  # diverged values do not move the percentile
    assert lab.unstable[4:].all()  # diverged: unstable whatever the loss
    assert not lab.stable[4:].any() and lab.n_used == 4 and lab.n_diverged == 3


def test_labels_degenerate_flagged_not_raised():
    lab = stats.stability_labels([2.0, 2.0, 2.0])
    assert "constant_final_loss" in lab.flags and lab.unstable.all() and not lab.stable.any()
    lab = stats.stability_labels([1.0])
    assert "too_few_runs" in lab.flags
    lab = stats.stability_labels([1.0, np.nan, 2.0, 3.0])
    assert "unlabelled_runs" in lab.flags and lab.excluded.tolist() == [False, True, False, False]
    with pytest.warns(stats.DegenerateDataWarning):
        stats.stability_labels([np.nan])
    with pytest.raises(ValueError, match="`diverged`"):
        stats.stability_labels([1.0, 2.0], [True])


# ----------------------------------------------------------------------------------------- thresholds


def brute_threshold(x, y):
    """Every training value as candidate, F1 by sklearn, lowest candidate among the F1 maxima."""
    if not y.any():
        return math.nan
    best, best_f1 = math.nan, -1.0
    for c in sorted(set(x[~np.isnan(x)].tolist())):
        f = f1_score(y, x >= c, zero_division=0.0)
        if f > best_f1:
            best, best_f1 = c, f
    return best


def test_threshold_tie_rule_takes_lowest():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    y = np.array([1, 0, 0, 1], bool)  # F1(1) = 4/6 = F1(4) = 2/3: tie -> the lowest threshold, 1
    assert f1_score(y, x >= 1) == f1_score(y, x >= 4)
    assert stats.select_threshold(x, y).threshold[0] == 1.0


def test_threshold_closed_forms():
    x = np.array([1.0, 2.0, 3.0, 10.0, 11.0])
    y = np.array([0, 0, 0, 1, 1], bool)  # separable: threshold = smallest positive, F1 = 1
    sel = stats.select_threshold(x, y)
    assert sel.threshold[0] == 10.0 and sel.f1[0] == 1.0
    c = stats.confusion_at(x, y, sel.threshold)
    assert c.precision[0] == 1.0 and c.recall[0] == 1.0
    sel = stats.select_threshold(x, np.zeros(5, bool))
    assert np.isnan(sel.threshold[0]) and "no_positive_train" in sel.flags
    # NaN values: never positive, never a candidate; a NaN positive is a false negative
    x = np.array([np.nan, 1.0, 2.0, 3.0])
    y = np.array([1, 0, 1, 1], bool)
    assert stats.select_threshold(x, y).threshold[0] == brute_threshold(x, y) == 2.0


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.booleans()), min_size=1, max_size=25))
def test_threshold_matches_brute_force(pairs):
    x = np.array([p[0] for p in pairs], float)  # small integer range: many ties
    y = np.array([p[1] for p in pairs], bool)
    got = stats.select_threshold(x, y).threshold[0]
    want = brute_threshold(x, y)
    assert (math.isnan(got) and math.isnan(want)) or got == want


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 15), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_threshold_with_multiplicities_matches_expanded_brute_force(n, R, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 5, n).astype(float)
    y = rng.random(n) < 0.4
    w = rng.integers(0, 3, (R, n))
    sel = stats.select_threshold(x, y, w)
    for r in range(R):
        want = brute_threshold(np.repeat(x, w[r]), np.repeat(y, w[r]))
        got = sel.threshold[r]
        assert (math.isnan(got) and math.isnan(want)) or got == want


def test_confusion_matches_sklearn():
    rng = np.random.default_rng(0)
    x = rng.normal(size=80)
    y = rng.random(80) < 0.3
    for t in (-5.0, 0.0, 0.7, 5.0):
        c = stats.confusion_at(x, y, t)
        pred = x >= t
        tn, fp, fn, tp = confusion_matrix(y, pred, labels=[False, True]).ravel()
        p, r, f, _ = precision_recall_fscore_support(y, pred, average="binary", zero_division=np.nan)
        assert (c.tp[0], c.fp[0], c.fn[0], c.tn[0]) == (tp, fp, fn, tn)
        for a, b in ((c.precision[0], p), (c.recall[0], r), (c.f1[0], f)):
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12)


def test_confusion_no_predicted_positive_is_undefined_precision():
    c = stats.confusion_at([1.0, 2.0], [True, False], 5.0)
    assert np.isnan(c.precision[0]) and c.recall[0] == 0.0 and c.f1[0] == 0.0


# ------------------------------------------------------------------------------------- split bootstrap


def loop_split_bootstrap(x, y, rng, B, test_size, resample):
    n = x.size
    nt = stats.n_test_of(n, test_size)
    idx, perm = stats.draw_splits(rng, n, B, resample=resample)
    out = []
    for b in range(B):
        m = perm[b] if idx is None else idx[b][perm[b]]
        te, tr = m[:nt], m[nt:]
        thr = brute_threshold(x[tr], y[tr])
        pred = x[te] >= thr
        tn, fp, fn, tp = confusion_matrix(y[te], pred, labels=[False, True]).ravel()
        out.append((thr, tp, fp, fn, tn, y[te].mean()))
    return out


@pytest.mark.parametrize("resample", [True, False])
def test_split_bootstrap_matches_loop_on_same_stream(resample):
    rng_data = np.random.default_rng(11)
    n = 60
    x = np.round(rng_data.lognormal(size=n), 1)  # rounding makes ties
    y = x + rng_data.normal(0, 0.8, n) > np.quantile(x, 0.8)
    B = 20
    nt = stats.n_test_of(n, 0.2)
    idx, perm = stats.draw_splits(np.random.default_rng(5), n, B, resample=resample)
    trw, tew = stats.split_weights(idx, perm, nt)
    ev = stats.split_evaluate(x, y, trw, tew)
    ref = loop_split_bootstrap(x, y, np.random.default_rng(5), B, 0.2, resample)
    for b, (thr, tp, fp, fn, tn, base) in enumerate(ref):
        assert (math.isnan(thr) and math.isnan(ev.threshold[b])) or ev.threshold[b] == thr
        assert (ev.test.tp[b], ev.test.fp[b], ev.test.fn[b], ev.test.tn[b]) == (tp, fp, fn, tn)
        assert ev.baseline_precision[b] == pytest.approx(base, rel=1e-12)  # always-positive = prevalence
    assert ev.n_train == n - nt and ev.n_test == nt == 12


def test_split_bootstrap_scipy_shape():
    rng_data = np.random.default_rng(2)
    x = rng_data.lognormal(size=80)
    y = x + rng_data.normal(0, 1, 80) > np.quantile(x, 0.85)
    r = stats.split_bootstrap(x, y, n_resamples=200, confidence_level=0.9, rng=np.random.default_rng(7))
    idx, perm = stats.draw_splits(np.random.default_rng(7), 80, 200, resample=True)
    ev = stats.split_evaluate(x, y, *stats.split_weights(idx, perm, 16))
    np.testing.assert_array_equal(r.evaluation.threshold, ev.threshold)
    assert r.ci["precision"] == stats.percentile_ci(ev.test.precision, confidence_level=0.9)
    lo, hi = np.nanpercentile(ev.baseline_precision, [5, 95])
    assert r.ci["baseline_precision"][1:3] == (lo, hi)
    with pytest.raises(ValueError, match="`values`"):
        stats.split_bootstrap([1.0], [True], rng=np.random.default_rng(0))


def test_split_bootstrap_counts_degenerate_replicates():
    x = np.arange(10.0)
    y = np.zeros(10, bool)
    y[9] = True  # one positive: most splits lack it in train or in test
    idx, perm = stats.draw_splits(np.random.default_rng(0), 10, 50, resample=True)
    trw, tew = stats.split_weights(idx, perm, 2)
    ev = stats.split_evaluate(x, y, trw, tew)
    assert ev.n_no_positive_train > 0 and ev.n_no_positive_test > 0
    assert ev.n_no_positive_train == int(np.isnan(ev.threshold).sum())
    assert np.isnan(ev.test.precision[np.isnan(ev.threshold)]).all()  # no threshold -> no metric
    assert {"no_positive_train", "no_positive_test"} <= set(ev.flags)


def test_n_test_rule():
    assert stats.n_test_of(671, 0.2) == 135  # paper: n_train 536, n_test 135
    assert stats.n_test_of(2, 0.2) == 1
    with pytest.raises(ValueError, match="`test_size`"):
        stats.n_test_of(10, 1.5)


def test_percentile_ci_matches_nanpercentile():
    a = np.r_[np.random.default_rng(1).normal(size=99), np.nan]
    med, lo, hi, n = stats.percentile_ci(a, confidence_level=0.9)
    assert (med, lo, hi) == tuple(np.nanpercentile(a, [50, 5, 95])) and n == 99
    assert np.isnan(stats.percentile_ci([np.nan])[0])


# ------------------------------------------------------------------------------------------ rank tests


@pytest.mark.parametrize("seed", range(4))
def test_mann_whitney_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 8, 15 + seed).astype(float)  # ties: the tie correction matters
    y = rng.integers(0, 6, 40).astype(float)
    r = stats.mann_whitney(x, y)
    g = sps.mannwhitneyu(x, y, alternative="greater")
    t = sps.mannwhitneyu(x, y, alternative="two-sided")
    assert r.u == g.statistic and r.p_greater == g.pvalue and r.p_two_sided == t.pvalue
    assert r.median_x == np.median(x)


def test_mann_whitney_small_exact_matches_scipy():
    x, y = [3.1, 4.2, 5.5], [1.0, 2.0, 0.5, 2.5]  # no ties, small: scipy 'auto' picks the exact test
    r = stats.mann_whitney(x, y)
    assert r.p_greater == sps.mannwhitneyu(x, y, alternative="greater").pvalue
    assert r.u == 12.0 and r.p_greater == pytest.approx(1 / 35)  # closed form: 1 of C(7,3) orderings


def test_mann_whitney_degenerate():
    r = stats.mann_whitney([], [1.0, 2.0])
    assert "empty_sample" in r.flags and np.isnan(r.p_two_sided)
    r = stats.mann_whitney([1.0, 1.0], [1.0, 1.0, 1.0])
    assert "all_tied" in r.flags and r.p_two_sided == 1.0 and r.u == 3.0


def test_kruskal_matches_scipy_and_degenerate():
    rng = np.random.default_rng(2)
    a, b, c = rng.integers(0, 12, 30), rng.integers(2, 12, 20), rng.integers(0, 9, 10)
    r = stats.kruskal(a, b, c)
    s = sps.kruskal(a, b, c)
    assert r.H == s.statistic and r.p == s.pvalue
    assert "too_few_groups" in stats.kruskal([1.0, 2.0]).flags
    assert "all_tied" in stats.kruskal([11.0, 11.0], [11.0]).flags
    assert stats.bonferroni(0.02, 3) == pytest.approx(0.06) and stats.bonferroni(0.5, 3) == 1.0


# ------------------------------------------------------------------------------------- ratio bootstrap


def test_ratio_ci_matches_loop_on_same_stream():
    rng = np.random.default_rng(4)
    x, y = rng.lognormal(1.0, 0.5, 31), rng.lognormal(0.0, 0.5, 120)
    r = stats.ratio_ci(x, y, n_resamples=300, confidence_level=0.95, rng=np.random.default_rng(9))
    ix, iy = stats.draw_resamples(np.random.default_rng(9), x.size, y.size, 300)
    reps = [np.median(x[ix[b]]) / np.median(y[iy[b]]) for b in range(300)]
    lo, hi = np.percentile(reps, [2.5, 97.5])
    assert r.ratio == np.median(x) / np.median(y)
    assert r.ci_low == pytest.approx(lo, rel=1e-12) and r.ci_high == pytest.approx(hi, rel=1e-12)


def test_ratio_ci_closed_form_and_degenerate():
    r = stats.ratio_ci([4.0, 4.0, 4.0], [2.0, 2.0], n_resamples=50, rng=np.random.default_rng(0))
    assert (r.ratio, r.ci_low, r.ci_high) == (2.0, 2.0, 2.0)
    r = stats.ratio_ci([1.0, 2.0], [0.0, 0.0, 0.0], n_resamples=50, rng=np.random.default_rng(0))
    assert np.isnan(r.ratio) and "undefined_ratio" in r.flags and r.n_undefined == 50
    r = stats.ratio_ci([1.0], [1.0, 2.0], n_resamples=50, rng=np.random.default_rng(0))
    assert "too_few_runs" in r.flags and np.isnan(r.ci_low)
    with pytest.raises(TypeError, match="`rng`"):
        stats.ratio_ci([1.0, 2.0], [1.0, 2.0], rng=0)


# ---------------------------------------------------------------------------------------- concentration


def test_concentration_closed_forms_and_brute_force():
    c = stats.concentration(np.ones(8))
    assert c.gini == pytest.approx(0.0, abs=1e-15) and c.top1_share == pytest.approx(1 / 8)
    c = stats.concentration(np.r_[5.0, np.zeros(9)])
    assert c.gini == pytest.approx(0.9) and c.top1_share == 1.0  # (n-1)/n
    x = np.random.default_rng(0).lognormal(size=(4, 17))
    c = stats.concentration(x)
    for i in range(4):
        brute = np.abs(x[i][:, None] - x[i][None, :]).sum() / (2 * 17**2 * x[i].mean())
        assert c.gini[i] == pytest.approx(brute, rel=1e-12)
        assert c.top1_share[i] == pytest.approx(x[i].max() / x[i].sum(), rel=1e-12)
    assert "zero_mass" in stats.concentration(np.zeros(3)).flags
    with pytest.raises(ValueError, match="`x`"):
        stats.concentration([-1.0, 2.0])


# ------------------------------------------------------------------------------------------------ power


@pytest.mark.parametrize("d, n", [(0.5, 64), (0.8, 26), (1.0, 17)])  # Cohen's tables (two-sided, 0.05, 0.8)
def test_runs_per_cell_closed_forms(d, n):
    r = stats.runs_per_cell(math.log(2.0) / d)
    assert r.n_per_cell == n and r.effect_size == pytest.approx(d)
    assert r.achieved_power >= 0.8 and stats.t_test_power(d, n - 1) < 0.8


def test_runs_per_cell_degenerate():
    r = stats.runs_per_cell(0.0)
    assert r.n_per_cell is None and "undefined_sd" in r.flags
    with pytest.raises(ValueError, match="`ratio`"):
        stats.runs_per_cell(1.0, ratio=1.0)


def test_degenerate_warning_is_emitted():
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        stats.mann_whitney([], [1.0])
    assert any(issubclass(w.category, stats.DegenerateDataWarning) for w in rec)
