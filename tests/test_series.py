"""series.py: the run-level monitors over a logged series (legacy warning, crossings, collapse, Gini, top share,
gradient concentration) against hand-made series and closed forms. `monitors` re-exports them; they live here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dlm_triage import series as m  # `m`: the tests read as they did through monitors' re-export
from dlm_triage.schema import LEGACY_FIRST_STEP


@pytest.mark.parametrize(
    "series, expected",
    [
        # LLaDA-like: above 0.5 from step 0 (paper 4.5: "100% of configurations are already above 0.5 at step 0")
        # -> the detector's first sample, step 11, fires
        ([0.83] * 40, (True, LEGACY_FIRST_STEP)),
        # an MDLM-like run that crosses 0.5 at step 27: it fires at 27 (sampled every step from 11 on)
        ([0.2] * 27 + [0.6] * 13, (True, 27)),
        # never above 0.5 from step 11 on: not fired, whatever came before (the detector never looked there)
        ([0.9] * 11 + [0.3] * 29, (False, None)),
        ([0.1] * 20, (False, None)),
        ([0.1] * 11 + [0.6] + [0.9] * 5, (True, 11)),
        ([0.5] * 20, (False, None)),                            # strict: > 0.5
        ([0.9] * 11 + [float("nan"), 0.7], (True, 12)),       # NaN = not evaluated: the next sample fires
    ],
)
def test_legacy_warning_fire_step(series, expected):
    assert m.legacy_warning(series) == expected



def test_legacy_warning_with_explicit_steps():
    assert m.legacy_warning([0.9, 0.9], steps=[0, LEGACY_FIRST_STEP - 1]) == (False, None)
    assert m.legacy_warning([0.2, 0.9], steps=[0, 33]) == (True, 33)
    assert m.legacy_warning([0.9, 0.2, 0.9], steps=[5, 11, 40]) == (True, 40)
    with pytest.raises(ValueError, match="one step per value"):
        m.legacy_warning([0.1, 0.2], steps=[0])



def test_first_crossing():
    s = [0.1, float("nan"), 0.5, 0.96, 0.2]
    assert m.first_crossing(s, 0.5) == 2  # >= level
    assert m.first_crossing(s, 0.95) == 3
    assert m.first_crossing(s, 0.99) is None



def test_last_fraction_start():
    assert m.last_fraction_start(201) == 201 - 21  # steps 180..200
    assert m.last_fraction_start(10) == 9
    assert m.last_fraction_start(3) == 2  # at least one row



def test_is_collapsed():
    n = 201
    loss = np.linspace(2.0, 2.5, n)  # got worse
    top1 = np.full(n, 0.3)
    top1[180:] = 0.97
    assert m.is_collapsed(top1, loss)
    assert not m.is_collapsed(top1, loss[::-1])  # learned: final < step 0
    top1b = top1.copy()
    top1b[190] = 0.9
    assert not m.is_collapsed(top1b, loss)
    top1c = top1.copy()
    top1c[180:] = np.nan  # no evaluated step in the window
    assert not m.is_collapsed(top1c, loss)
    top1d = top1.copy()
    top1d[181::2] = np.nan  # evaluated every other step: still collapsed
    assert m.is_collapsed(top1d, loss)



@pytest.mark.parametrize("n", [1, 2, 7, 100])
def test_gini_closed_forms(n):
    assert m.gini(np.full(n, 3.5)) == pytest.approx(0.0, abs=1e-12)
    onehot = np.zeros(n)
    onehot[n // 2] = 2.0
    assert m.gini(onehot) == pytest.approx((n - 1) / n, abs=1e-12)
    assert m.top_share(onehot) == 1.0
    assert m.top_share(np.ones(n)) == pytest.approx(1 / n)



def test_gini_matches_pairwise_definition():
    x = np.random.default_rng(0).exponential(size=37)
    pairwise = np.abs(x[:, None] - x[None, :]).sum() / (2 * x.size**2 * x.mean())
    assert m.gini(x) == pytest.approx(pairwise, rel=1e-12)



def test_gini_degenerate_and_invalid():
    assert math.isnan(m.gini([]))
    assert math.isnan(m.gini([0.0, 0.0]))
    assert math.isnan(m.top_share([0.0]))
    with pytest.raises(ValueError, match="non-negative"):
        m.gini([1.0, -1.0])



def test_finite_or_diverged():
    assert m.finite_or_diverged(1.0, 2.0) is None
    assert m.finite_or_diverged(float("nan"), 2.0) == "loss=nan"
    assert m.finite_or_diverged(1.0, float("inf")) == "grad_norm=inf"



def _gini_pairs(x):
    """Gini from its definition, sum_ij |x_i - x_j| / (2 n^2 mean), independent of monitors.gini."""
    x = np.asarray(x, float)
    return np.abs(x[:, None] - x[None, :]).sum() / (2 * x.size**2 * x.mean())



def test_gradient_concentration_paper_and_ours_by_hand():
    # 2 early rows (outside both windows), then 10 rows alternating one-hot / uniform over 4 matrices
    early = [[100.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 100.0]]
    late = [[1.0, 0.0, 0.0, 0.0] if i % 2 == 0 else [1.0, 1.0, 1.0, 1.0] for i in range(10)]
    c = m.gradient_concentration(early + late)
    paper = c["paper_last10_steps"]
    # per-step Gini: one-hot among 4 -> 3/4, uniform -> 0; top share 1 and 1/4; averaged over the 10 steps
    assert paper["gini"] == pytest.approx((0.75 + 0.0) / 2) and paper["top_share"] == pytest.approx(0.625)
    assert paper["n_steps"] == 10
    # ours: mass = sum of squared norms over the last ceil(0.1 * 12) = 2 rows: [1,0,0,0] + [1,1,1,1] = [2,1,1,1]
    ours = c["mass_last10pct"]
    assert ours["n_steps"] == 2
    assert ours["gini"] == pytest.approx(_gini_pairs([2, 1, 1, 1])) and ours["top_share"] == pytest.approx(2 / 5)
    # a diverged (non-finite) last row is left out of the paper's window: the 10 finite rows before it count
    c2 = m.gradient_concentration(early + late + [[float("nan")] * 4])
    assert c2["paper_last10_steps"]["gini"] == pytest.approx(paper["gini"])
    assert c2["paper_last10_steps"]["n_steps"] == 10
    rng = np.random.default_rng(0)
    mat = rng.lognormal(size=(30, 8))
    got = m.gradient_concentration(mat)["paper_last10_steps"]["gini"]
    assert got == pytest.approx(np.mean([_gini_pairs(r) for r in mat[-10:]]))
    assert set(m.CONCENTRATION_DEFINITIONS) == {"paper_last10_steps", "mass_last10pct"}
    none = m.gradient_concentration(np.zeros((0, 4)))
    assert none["paper_last10_steps"]["gini"] is None and none["mass_last10pct"]["gini"] is None
