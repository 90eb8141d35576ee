"""dlm_triage.calibrate: the fast protocol equals the straightforward reference (benchmarks/), the JSON contract
holds, degenerate groups give warnings and flags (never a crash, never NaN), and the stated rules hold."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from dlm_triage import stats
from dlm_triage.calibrate import (CalibrationInputs, Trajectories, calibrate, default_threshold_step, group_rng,
                                  run_calibration, stepk_predictors, write_json_atomic)
from dlm_triage.synthetic import paper_corpus, synthetic_inputs

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("reference_calibration", ROOT / "benchmarks" / "reference_calibration.py")
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)

pytestmark = pytest.mark.filterwarnings("ignore::dlm_triage.stats.DegenerateDataWarning")

SMALL = dict(n_resamples=40, stepk_resamples=20)


@pytest.fixture(scope="module")
def corpus():
    return synthetic_inputs({"llada": 120, "dream": 60, "mdlm": 45}, n_steps=40, seed=1)


@pytest.fixture(scope="module")
def fast(corpus):
    return calibrate(corpus, ks=(5, 25, 50), **SMALL)


@pytest.fixture(scope="module")
def ref(corpus):
    return reference.reference_calibrate(corpus, ks=(5, 25, 50), keep_replicates=True, **SMALL)


def _same(a, b) -> bool:
    if b is None or (isinstance(b, float) and math.isnan(b)):
        return a is None
    return a == b if isinstance(b, (int, np.integer)) and not isinstance(b, bool) else a == pytest.approx(b, rel=1e-12)


def _compare(a, b, path=""):
    """Every number of the reference b must be in a (the fast result) with the same value."""
    diffs = []
    if isinstance(b, dict):
        for k, v in b.items():
            if k == "replicates":
                continue
            assert k in a, f"{path}.{k} missing from the fast result"
            diffs += _compare(a[k], v, f"{path}.{k}")
    elif isinstance(b, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            diffs += _compare(x, y, f"{path}[{i}]")
    elif isinstance(b, (int, float, np.integer, np.floating)) and not isinstance(b, bool):
        if not _same(a, b):
            diffs.append(f"{path}: fast {a!r} vs reference {b!r}")
    return diffs


def test_fast_equals_reference(fast, ref):
    diffs = _compare(fast["groups"], ref["groups"], "groups") + _compare(fast["transfer"], ref["transfer"], "transfer")
    diffs += _compare(fast["fire_step_kruskal"], ref["fire_step_kruskal"], "fire_step_kruskal")
    assert not diffs, "\n".join(diffs[:20])


def test_first_replicates_identical(corpus, ref):
    """Split-bootstrap and step-k replicates, one by one, on the same streams: thresholds and counts exact."""
    name = "llada"
    runs = corpus.runs.filter(pl.col("family") == name)
    g = runs.get_column("max_grad_norm").to_numpy()
    lab = stats.stability_labels(runs.get_column("final_loss").to_numpy(), runs.get_column("diverged").to_numpy())
    n = runs.height
    nt = stats.n_test_of(n, 0.2)
    idx, perm = stats.draw_splits(group_rng(0, name, "split_bootstrap"), n, SMALL["n_resamples"], resample=True)
    ev = stats.split_evaluate(g, lab.unstable, *stats.split_weights(idx, perm, nt))
    for b, rep in enumerate(ref["groups"][name]["split_bootstrap"]["replicates"][:20]):
        assert _same(ev.threshold[b], rep["threshold"])
        assert (ev.test.tp[b], ev.test.fp[b], ev.test.fn[b], ev.test.tn[b]) == (rep["tp"], rep["fp"], rep["fn"], rep["tn"])
        for m in ("precision", "recall", "f1"):
            x, y = getattr(ev.test, m)[b], rep[m]
            assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=1e-12)
    rows = np.array([corpus.traj.run_ids.index(r) for r in runs.get_column("run_id")])
    preds = stepk_predictors(corpus.traj, rows, [25])
    _, perm = stats.draw_splits(group_rng(0, name, "stepk"), n, SMALL["stepk_resamples"], resample=False)
    ev = stats.split_evaluate(preds["max_grad"][0], lab.unstable, *stats.split_weights(None, perm, nt))
    for b, rep in enumerate(ref["groups"][name]["stepk"]["25"]["max_grad"]["replicates"][:20]):
        assert _same(ev.threshold[b], rep["threshold"]) and ev.test.tp[b] == rep["tp"] and ev.test.fp[b] == rep["fp"]


def test_stepk_predictors_rules():
    """'Up to step k' includes step 0; missing steps are skipped by the running max; loss-at-k is the step-k value;
    a run without a trajectory (row -1) has no value."""
    g = np.array([[5.0, 1.0, np.nan, 2.0], [1.0, 2.0, 3.0, 4.0]])
    loss = np.array([[9.0, 8.0, 7.0, 6.0], [4.0, 3.0, np.nan, 1.0]])
    traj = Trajectories(["a", "b"], loss, g, g / 10)
    p = stepk_predictors(traj, np.array([0, 1, -1]), [0, 1, 2, 3])
    np.testing.assert_array_equal(p["max_grad"][:, 0], [5.0, 5.0, 5.0, 5.0])  # the step-0 spike counts at every k
    np.testing.assert_array_equal(p["max_grad"][:, 1], [1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(p["loss"][:, 1], [4.0, 3.0, np.nan, 1.0])
    assert np.isnan(p["max_grad"][:, 2]).all() and np.isnan(p["max_top1"][:, 2]).all()
    np.testing.assert_allclose(p["max_top1"][:, 0], [0.5] * 4)


def test_json_contract(fast):
    for key in ("groups", "group_by", "fire_step_kruskal", "provenance", "calibration_id", "transfer", "warnings"):
        assert key in fast
    assert set(fast["fire_step_kruskal"]) >= {"H", "p"}
    assert set(fast["groups"]) == {"llada", "dream", "mdlm"}
    contract = {
        "top1": {"fire_rate", "collapse_rate", "precision_collapse", "precision_unstable"},
        "maxgrad": {"median_stable", "median_unstable", "median_ratio", "ratio_ci_low", "ratio_ci_high", "mw_u",
                    "mw_p_one_sided", "mw_p_two_sided", "mw_p_bonferroni", "bonferroni_m"},
        "heldout": {"threshold", "precision", "recall", "f1", "baseline_precision", "n_train", "n_test"},
        "split_bootstrap": {"B", "precision_median", "precision_ci_low", "precision_ci_high", "f1_ci_low", "f1_ci_high"},
        "registry": {"monitor", "k", "threshold", "ci_low", "ci_high", "n", "precision", "recall", "f1"},
    }
    for g in fast["groups"].values():
        assert {"n", "n_unstable", "n_stable", "unstable_final_loss_threshold", "stepk", "warnings"} <= set(g)
        for part, keys in contract.items():
            assert keys <= set(g[part]), (part, keys - set(g[part]))
        for k, block in g["stepk"].items():
            for p in ("max_grad", "loss", "max_top1"):
                assert {"precision_median", "precision_ci_low", "precision_ci_high", "f1_median", "f1_ci_low",
                        "f1_ci_high"} <= set(block[p])
        assert g["maxgrad"]["bonferroni_m"] == 3
    json.dumps(fast, allow_nan=False)  # raises on NaN/Inf
    prov = fast["provenance"]
    assert prov["seed"] == 0 and prov["snapshot"]["n_runs"] == 225 and len(prov["snapshot"]["run_ids_sha256"]) == 64
    assert prov["packages"]["numpy"] == np.__version__


def test_paper_shaped_facts(fast, corpus):
    g = fast["groups"]["llada"]
    assert g["top1"]["fire_rate"] == 1.0 and g["top1"]["collapse_rate"] == 0.0
    assert g["top1"]["precision_collapse"] == 0.0  # fires everywhere, never collapses: zero precision
    # the top-1 warning fires everywhere: as an unstable-run detector its precision is the prevalence
    assert g["top1"]["precision_unstable"] == pytest.approx(g["n_unstable"] / g["n"])
    ho = g["heldout"]
    assert ho["baseline_precision"] == pytest.approx((ho["tp"] + ho["fn"]) / ho["n_test"])
    assert ho["tp"] + ho["fp"] + ho["fn"] + ho["tn"] == ho["n_test"] and ho["n_train"] + ho["n_test"] == g["n"]
    assert g["maxgrad"]["median_ratio"] > 1 and g["maxgrad"]["mw_p_bonferroni"] < 0.05
    assert g["registry"]["k"] == 25 and g["degenerate"] is False and g["registry"]["degenerate"] is False
    assert default_threshold_step(fast)["llada"] == g["registry"]
    # transfer: a group's own threshold on itself; the diagonal is marked
    assert fast["transfer"]["llada"]["llada"]["same_group"] is True


def test_label_rule_in_groups(fast, corpus):
    runs = corpus.runs.filter(pl.col("family") == "dream")
    loss = runs.get_column("final_loss").to_numpy()
    g = fast["groups"]["dream"]
    assert g["unstable_final_loss_threshold"] == np.percentile(loss[np.isfinite(loss)], 90)
    assert g["n_unstable"] == int((loss >= np.percentile(loss, 90)).sum())


def test_deterministic_given_seed(corpus):
    a = calibrate(corpus, ks=(5,), **SMALL)
    b = calibrate(corpus, ks=(5,), **SMALL)
    c = calibrate(corpus, ks=(5,), seed=1, **SMALL)
    assert a["groups"] == b["groups"]
    assert a["groups"]["llada"]["split_bootstrap"] != c["groups"]["llada"]["split_bootstrap"]


def _pin_inputs() -> tuple[CalibrationInputs, CalibrationInputs]:
    """Two inputs that reach every branch of a group's calibration: (with step logs, no diverged run) runs without a
    final loss, without a max grad, of another horizon, without a step log, a group whose horizon (19) stops short
    of REGISTRY_K and a one-run group; (no step logs) diverged runs and the whole-run registry."""
    base = synthetic_inputs({"llada": 150, "dream": 30, "mdlm": 12}, n_steps=30, seed=3, diverged_fraction=0.0)
    i = pl.col("_i")
    runs = base.runs.with_row_index("_i").with_columns(
        pl.when(i.is_in([1, 2])).then(None).otherwise(pl.col("final_loss")).alias("final_loss"),
        pl.when(i == 3).then(None).otherwise(pl.col("max_grad_norm")).alias("max_grad_norm"),
        pl.when(i.is_in([4, 5, 6])).then(10).when(pl.col("family") == "dream").then(20)
        .otherwise(pl.col("steps")).alias("steps"),
        pl.when(i == 190).then(pl.lit("solo")).otherwise(pl.col("family")).alias("family"),
    ).drop("_i")
    loss, grad, top1 = base.traj.dense()
    keep = np.ones(len(base.traj.run_ids), bool)
    keep[[7, 8]] = False
    traj = Trajectories([r for r, k in zip(base.traj.run_ids, keep) if k], loss[keep], grad[keep], top1[keep])
    no_traj = synthetic_inputs({"llada": 50, "dream": 20}, n_steps=30, seed=4, with_traj=False,
                               diverged_fraction=0.06)
    return CalibrationInputs(runs, traj), no_traj


def test_calibration_json_is_pinned_byte_for_byte():
    """Regression pin, not a correctness check: the sha256 of the calibration JSON (every key but the id, the
    creation time and the provenance, in their order) as the code computed it when the pin was taken, on the
    inputs of `_pin_inputs`. It holds a refactoring of the protocol to the same keys, key order, numbers and
    random draws; a change meant to move the numbers re-pins it and says why. Floats as numpy and scipy of the
    project's environment give them: another numpy/scipy release may move a last digit and need a re-pin."""
    with_traj, no_traj = _pin_inputs()
    kw = dict(n_resamples=30, stepk_resamples=10, seed=5)
    results = [calibrate(with_traj, ks=(5, 10), **kw), calibrate(with_traj, ks=(5, 25), **kw),
               calibrate(no_traj, ks=(5,), **kw)]
    text = json.dumps([{k: v for k, v in r.items() if k not in ("calibration_id", "created_at", "provenance")}
                       for r in results])
    assert hashlib.sha256(text.encode()).hexdigest() == \
        "05973d9e66a2b74a3e7a48163c041bc35fdab4d604e24bccd4e1471e0660f69a"


def test_no_trajectories_skips_stepk():
    inp = synthetic_inputs({"llada": 80}, with_traj=False)
    res = calibrate(inp, **SMALL)
    g = res["groups"]["llada"]
    assert g["stepk"] == {} and any("step-k sweep skipped" in w for w in res["warnings"])
    assert g["registry"]["k"] is None and g["registry"]["threshold"] == g["heldout"]["threshold"]


def test_ks_beyond_horizon_are_skipped():
    inp = synthetic_inputs({"llada": 50}, n_steps=30)
    res = calibrate(inp, ks=(5, 25, 50, 200), **SMALL)
    assert set(res["groups"]["llada"]["stepk"]) == {"5", "25"} and res["ks_used"] == [5, 25]
    assert any("exceed the logged horizon" in w for w in res["warnings"])
    # the registry reads max-grad-up-to-25 whenever the logs reach step 25, swept or not
    res = calibrate(inp, ks=(5,), **SMALL)
    reg, ref = res["groups"]["llada"]["registry"], calibrate(inp, ks=(5, 25), **SMALL)["groups"]["llada"]["registry"]
    assert reg["k"] == 25 and reg == ref
    res = calibrate(synthetic_inputs({"llada": 50}, n_steps=20), ks=(5,), **SMALL)
    assert res["groups"]["llada"]["registry"]["k"] is None  # horizon 19 < 25: whole-run max grad


def _tiny_runs(n, *, family="x", loss=None, grad=None):
    rng = np.random.default_rng(0)
    return pl.DataFrame({
        "run_id": [f"{family}{i}" for i in range(n)], "family": [family] * n, "model_id": ["m"] * n,
        "cohort": ["c"] * n, "method": ["lora"] * n, "rank": [8] * n, "mask_ratio": [0.5] * n,
        "learning_rate": [1e-4] * n, "seed": list(range(n)), "status": ["completed"] * n,
        "final_loss": rng.normal(size=n) if loss is None else loss,
        "max_grad_norm": rng.lognormal(size=n) if grad is None else grad,
        "top1_step0": [0.8] * n, "top1_warning_detected": [True] * n, "top1_fire_step": [11] * n,
        "top1_cross_095": [None] * n, "collapsed": [False] * n, "diverged": [False] * n,
        "grad_gini": [None] * n, "grad_top1_share": [None] * n,
    }, schema_overrides={"top1_cross_095": pl.Float64, "grad_gini": pl.Float64, "grad_top1_share": pl.Float64})


@pytest.mark.parametrize("case", ["too_few_runs", "one_run", "constant_grad", "constant_loss", "no_positive_split"])
def test_degenerate_groups_warn_and_flag(case):
    if case == "too_few_runs":
        runs = _tiny_runs(4)
    elif case == "one_run":
        runs = _tiny_runs(1)
    elif case == "constant_grad":
        runs = _tiny_runs(30, grad=np.full(30, 3.0))
    elif case == "constant_loss":
        runs = _tiny_runs(30, loss=np.full(30, 1.0))
    else:  # one unstable run among 10: most splits have no positive on one side
        runs = _tiny_runs(10, loss=np.r_[np.zeros(9), 1.0])
    traj = Trajectories([r for r in runs.get_column("run_id")], *(np.ones((runs.height, 12)) for _ in range(3)))
    res = calibrate(CalibrationInputs(runs, traj), ks=(5, 11, 25), **SMALL)
    text = json.dumps(res, allow_nan=False)  # no NaN anywhere
    assert "NaN" not in text
    g = res["groups"]["x"]
    assert g["warnings"] and g["flags"]
    if case == "no_positive_split":
        # nine runs tie at the median (stable, <= median) and one is unstable: a threshold can be chosen, but
        # the fixed split has no unstable test run, so it is flagged unvalidated rather than degenerate
        assert g["n_stable"] == 9 and g["n_unstable"] == 1 and "heldout.unvalidated" in g["flags"]
    else:
        assert g["degenerate"] is True and g["registry"]["degenerate"] is True and "degenerate" in g["flags"]
    if case in ("too_few_runs", "one_run"):
        assert "group.too_few_runs" in g["flags"]
    if case == "constant_grad":
        assert g["heldout"]["threshold"] == 3.0  # every run positive: the only candidate
        assert "maxgrad.all_tied" in g["flags"] and g["maxgrad"]["mw_p_two_sided"] == 1.0
    if case == "constant_loss":
        assert "labels.constant_final_loss" in g["flags"]
    if case == "no_positive_split":
        assert "split_bootstrap.no_positive_train" in g["flags"] or "split_bootstrap.no_positive_test" in g["flags"]
    assert "fire_step_kruskal.H: undefined -> null" in " ".join(res["warnings"])


def test_empty_and_all_diverged_inputs():
    inp = synthetic_inputs({"tiny": 20}, n_steps=30)
    res = calibrate(CalibrationInputs(inp.runs.head(0), None), **SMALL)
    assert res["groups"] == {} and res["fire_step_kruskal"]["H"] is None
    runs = inp.runs.with_columns(pl.lit(True).alias("diverged"), pl.lit(None, pl.Float64).alias("final_loss"))
    res = calibrate(CalibrationInputs(runs, inp.traj), **SMALL)
    g = res["groups"]["tiny"]
    assert g["n_unstable"] == 20 and g["n_stable"] == 0 and g["degenerate"]  # diverged: unstable by definition
    json.dumps(res, allow_nan=False)


def test_inputs_validation_names_the_problem():
    with pytest.raises(ValueError, match="lacks column"):
        CalibrationInputs(pl.DataFrame({"run_id": ["a"]}))
    with pytest.raises(ValueError, match="Trajectories.loss"):
        Trajectories(["a"], np.ones(3), np.ones((1, 3)), np.ones((1, 3)))
    with pytest.raises(ValueError, match="`group_by`"):
        calibrate(synthetic_inputs({"tiny": 12}), group_by="colour")


def test_group_by_cohort_and_model():
    inp = synthetic_inputs({"llada": 200}, n_steps=30)
    res = calibrate(inp, group_by="cohort", ks=(5,), **SMALL)
    assert set(res["groups"]) == set(inp.runs.get_column("cohort").unique())
    assert res["group_by"] == "cohort"
    res = calibrate(inp, group_by="model", ks=(5,), **SMALL)
    assert set(res["groups"]) == set(inp.runs.get_column("model_id").unique())


def test_write_json_atomic(tmp_path, fast):
    p = write_json_atomic(fast, tmp_path / "out" / "calibration.json")
    assert json.loads(p.read_text())["calibration_id"] == fast["calibration_id"]
    assert [q.name for q in p.parent.iterdir()] == ["calibration.json"]  # no temp file left


def test_run_calibration_end_to_end_with_store(tmp_path):
    """Real run directories -> real DuckDB (store.ingest_runs) -> run_calibration -> JSON + tables + registry."""
    from runfactory import make_sweep

    from dlm_triage import store

    make_sweep(tmp_path / "runs", 100, steps=30, unstable_every=5)
    db = tmp_path / "t.duckdb"
    store.ingest_runs(db, tmp_path / "runs")
    out = run_calibration(db, tmp_path / "cal", n_resamples=50, stepk_resamples=20)
    on_disk = json.loads(out.json_path.read_text())
    assert out.json_path == tmp_path / "cal" / out.calibration_id / "calibration.json"
    assert (tmp_path / "cal" / "latest" / "calibration.json").read_text() == out.json_path.read_text()
    assert on_disk["calibration_id"] == out.calibration_id == out.result.calibration_id
    g = on_disk["groups"]["tiny"]
    assert g["n"] == 100 and g["registry"]["k"] == 25
    con = store.connect(db, read_only=True)
    try:
        rows = con.execute("SELECT calibration_id, group_by FROM calibrations").fetchall()
        assert rows == [(out.calibration_id, "family")]
        rec = store.latest_threshold(con, "tiny")
    finally:
        con.close()
    assert not g["degenerate"], g["degenerate_reasons"]
    # 10 unstable runs among 100: a 20-run test split often holds none, so the precision CI is [0, 1] and the
    # evidence does not hold: the threshold is recorded as rejected, with its reason, and never goes live
    reg = g["registry"]
    assert reg["k"] == 25 and reg["status"] == "rejected" and reg["accepted"] is False
    assert (reg["precision_ci_low"], reg["precision_ci_high"]) == (0.0, 1.0)
    assert any("precision CI [0, 1]" in r for r in reg["rejection_reasons"])
    assert rec is None


def test_registry_accepts_only_when_the_evidence_holds(tmp_path):
    """The paper-sized corpus: the registered rule (max-grad-up-to-25) carries its own held-out metrics and its
    own split-bootstrap precision CI; accepted iff its lower bound exceeds the baseline ceiling."""
    from dlm_triage import store

    res = calibrate(paper_corpus(n_steps=30), ks=(25,), n_resamples=200, stepk_resamples=20)
    reg = res["groups"]["llada"]["registry"]
    assert reg["k"] == 25 and reg["precision_ci_low"] > reg["baseline_ceiling"] > 0
    assert reg["status"] == "accepted" and reg["rejection_reasons"] == [] and reg["precision"] > 0
    # the registered rule's held-out metrics are those of its own threshold at k=25 on the fixed split
    assert reg["tp"] / (reg["tp"] + reg["fp"]) == pytest.approx(reg["precision"])
    con = store.connect(tmp_path / "t.duckdb")
    try:
        cal = store.save_calibration(con, res)
        rec = store.latest_threshold(con, "llada")
        assert rec.threshold == reg["threshold"] and rec.k == 25 and rec.calibration_id == cal
        # the same numbers, and the reason (none), in the registry's history
        h = store.threshold_history(con, "llada").row(0, named=True)
        assert (h["threshold"], h["k"], h["precision"], h["precision_ci_low"], h["baseline_ceiling"]) == (
            reg["threshold"], 25, reg["precision"], reg["precision_ci_low"], reg["baseline_ceiling"])
        assert h["accepted"] and h["reason"] is None
    finally:
        con.close()


def _with_smoke_runs(inp, n_smoke=3, steps=10, grad=216.0):
    """`inp` plus `n_smoke` runs of `steps` steps: high final loss (they stop early), one huge max grad."""
    base = inp.runs.head(n_smoke)
    smoke = base.with_columns(pl.format("smoke-{}", pl.col("run_id")).alias("run_id"),
                              pl.lit(steps, base.schema["steps"]).alias("steps"),
                              (pl.col("final_loss") * 0 + 50.0).alias("final_loss"),
                              pl.lit(grad).alias("max_grad_norm"))
    runs = pl.concat([inp.runs, smoke])
    t = inp.traj
    def ext(a, fill):
        add = np.full((n_smoke, a.shape[1]), np.nan)
        add[:, :steps + 1] = fill
        return np.vstack([a, add])
    loss, grad_norm, top1 = t.dense()
    traj = Trajectories(t.run_ids + smoke.get_column("run_id").to_list(), ext(loss, 50.0),
                        ext(grad_norm, grad), ext(top1, 0.9))
    return CalibrationInputs(runs, traj), smoke.get_column("run_id").to_list()


def test_smoke_runs_do_not_flip_the_calibration():
    """Three 10-step runs added to a family of 29-step runs are not labelled by their final loss (it is low or
    high by length alone): the labels, the separation and the registered threshold stay as they were, and a
    warning names the runs left out."""
    inp = paper_corpus(n_steps=30)
    kw = dict(ks=(25,), n_resamples=200, stepk_resamples=20)
    before = calibrate(inp, **kw)["groups"]["llada"]
    smoke_inp, ids = _with_smoke_runs(inp)
    after = calibrate(smoke_inp, **kw)["groups"]["llada"]
    for key in ("n", "n_unstable", "n_stable", "unstable_final_loss_threshold"):
        assert after[key] == before[key], key
    assert after["maxgrad"]["median_ratio"] == before["maxgrad"]["median_ratio"]
    for key in ("threshold", "k", "precision", "precision_ci_low", "baseline_ceiling", "status"):
        assert after["registry"][key] == before["registry"][key], key
    assert after["n_other_horizon"] == 3 and after["horizon_steps"] == 29
    assert "labels.other_horizon" in after["flags"]
    msg = next(w for w in after["warnings"] if "instead of the group's 29" in w)
    assert all(i in msg for i in ids) and "10 steps" in msg
    # without the exclusion the smoke runs would be the group's unstable runs (the failure this guards against)
    lab = stats.stability_labels(smoke_inp.runs.get_column("final_loss").to_numpy(),
                                 smoke_inp.runs.get_column("diverged").to_numpy())
    assert lab.unstable[-3:].all()


def test_bonferroni_m_is_an_explicit_parameter(corpus, fast):
    tested = [n for n, g in fast["groups"].items() if g["maxgrad"]["tested"]]
    assert tested and fast["params"]["bonferroni_m"] is None
    for n in tested:  # default: the groups tested
        mg = fast["groups"][n]["maxgrad"]
        assert mg["bonferroni_m"] == len(tested) and "groups tested" in mg["bonferroni_m_source"]
    six = calibrate(corpus, ks=(5, 25, 50), bonferroni_m=6, **SMALL)
    assert six["params"]["bonferroni_m"] == 6
    for n in tested:
        mg = six["groups"][n]["maxgrad"]
        assert mg["bonferroni_m"] == 6 and mg["bonferroni_m_source"] == "given (bonferroni_m=6)"
        # scipy's one-sided Mann-Whitney p times 6, capped at 1
        g = six["groups"][n]
        assert mg["mw_p_bonferroni"] == pytest.approx(min(1.0, 6 * mg["mw_p_one_sided"]))
        assert g["label_percentile_method"] == "linear" and "<= P50" in g["label_rule"]
    one = calibrate(corpus, ks=(5,), bonferroni_m=1, **SMALL)
    assert any("bonferroni_m=1 is below" in w for w in one["warnings"])
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="bonferroni_m"):
            calibrate(corpus, bonferroni_m=bad, **SMALL)


def test_rank_amplification_within_one_model_one_lr_one_mask_ratio():
    # model A: rank 64 / rank 4 = 30 / 3 = 10x; model B: 50 / 50 = 1x; at lr 1e-3 model A is flat (2 / 2).
    # Pooled over models the 4 vs 64 means would be (3+50)/2 vs (30+50)/2 = 1.5x: a number neither model has.
    cells = [("A", 1e-4, 4, 3.0), ("A", 1e-4, 64, 30.0), ("B", 1e-4, 4, 50.0), ("B", 1e-4, 64, 50.0),
             ("A", 1e-3, 4, 2.0), ("A", 1e-3, 64, 2.0)]
    rows = [(m, lr, r, g * (1 + 0.01 * s)) for m, lr, r, g in cells for s in range(3)]  # 3 seeds per cell
    n = len(rows)
    runs = _tiny_runs(n).with_columns(
        pl.Series("model_id", [r[0] for r in rows]), pl.Series("learning_rate", [r[1] for r in rows]),
        pl.Series("rank", [r[2] for r in rows]), pl.Series("max_grad_norm", [r[3] for r in rows]),
        pl.lit(0.95).alias("mask_ratio"))
    res = calibrate(CalibrationInputs(runs, None), **SMALL)
    ra = res["groups"]["x"]["rank_amplification"]
    got = {(e["model_id"], e["learning_rate"], e["mask_ratio"]): e for e in ra}
    assert set(got) == {("A", 1e-4, 0.95), ("B", 1e-4, 0.95), ("A", 1e-3, 0.95)}
    mean = lambda g: np.mean([g * (1 + 0.01 * s) for s in range(3)])  # noqa: E731
    assert got[("A", 1e-4, 0.95)]["ratio"] == pytest.approx(mean(30.0) / mean(3.0))
    assert got[("B", 1e-4, 0.95)]["ratio"] == pytest.approx(1.0)
    assert got[("A", 1e-3, 0.95)]["ratio"] == pytest.approx(1.0)
    assert all(e["rank_low"] == 4 and e["rank_high"] == 64 and e["n_low"] == e["n_high"] == 3 for e in ra)


def test_concentration_names_each_definition_and_averages_over_seeds(corpus, fast):
    conc = fast["groups"]["llada"]["concentration"]
    assert conc["matrix"]["logged"] and "last 10 steps" in conc["matrix"]["definition"]
    assert conc["matrix_mass_last10pct"]["logged"] is False  # synthetic runs have no manifest: ours is absent
    runs = corpus.runs.filter(pl.col("family") == "llada")
    cell = conc["matrix"]["cells"][0]
    sel = runs.filter(*[pl.col(c) == cell[c] for c in ("model_id", "method", "rank", "mask_ratio", "learning_rate")])
    assert cell["n_seeds"] == sel.height >= 2
    assert cell["gini_mean"] == pytest.approx(sel["grad_gini"].mean())
    assert cell["gini_sd"] == pytest.approx(np.std(sel["grad_gini"].to_numpy(), ddof=1))
