"""runsummary.py: the one run summary and the one max-grad-up-to-k, in every form (a log, live, many runs, SQL)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from dlm_triage import runsummary, store
from dlm_triage.config import RunConfig
from dlm_triage.runlog import read_run

from runfactory import make_run


def test_max_grad_so_far_skips_unlogged_steps_and_counts_a_diverged_last_step_as_inf():
    g = [np.nan, 1.0, np.nan, 3.0, 2.0, np.nan]
    np.testing.assert_array_equal(runsummary.max_grad_so_far(g), [np.nan, 1.0, 1.0, 3.0, 3.0, 3.0])
    got = runsummary.max_grad_so_far(g, diverged=True)
    assert got[-1] == math.inf and np.array_equal(got[:-1], [np.nan, 1.0, 1.0, 3.0, 3.0], equal_nan=True)
    assert runsummary.max_grad_so_far([1.0, math.inf, 2.0])[-1] == math.inf  # an infinite norm counts anywhere


def test_the_live_fold_agrees_with_the_log_form_on_a_trainer_log():
    # a trainer log: finite norms, then the non-finite step that ended the run
    g = [0.5, 2.0, 1.0, np.nan]
    live, acc = [], -math.inf
    for v in g:
        acc = runsummary.fold_max_grad(acc, v)
        live.append(acc)
    np.testing.assert_array_equal(live, runsummary.max_grad_so_far(g, diverged=True))


def test_running_max_over_segments_equals_one_run_at_a_time():
    rng = np.random.default_rng(0)
    lens = [5, 1, 7, 3]
    vals = [np.where(rng.random(n) < 0.3, np.nan, rng.random(n)) for n in lens]
    seg = np.repeat(np.arange(len(lens)), lens)
    got = runsummary.running_max(np.concatenate(vals), seg)
    want = np.concatenate([runsummary.max_grad_so_far(v) for v in vals])
    np.testing.assert_array_equal(got, want)


def test_frame_form_and_sql_macro_read_the_same_value_as_the_log_form(tmp_path: Path):
    run = make_run(tmp_path / "runs", RunConfig(steps=12, seed=3), unstable=True)
    db = tmp_path / "t.duckdb"
    store.ingest_runs(db, tmp_path / "runs")
    steps = read_run(run).steps
    so_far = runsummary.max_grad_so_far(steps["grad_norm"].to_numpy())
    frame = steps.select(pl.lit(run.name).alias("run_id"), "step", "max_grad_norm")
    con = store.connect(db, read_only=True)
    try:
        for k in (0, 4, 12, 40):
            want = so_far[min(k, steps.height - 1)]
            assert runsummary.max_grad_up_to_k(frame, k)["max_grad_up_to_k"].item() == pytest.approx(want)
            got = con.execute("SELECT max_grad_up_to(?, ?)", [run.name, k]).fetchone()[0]
            assert got == pytest.approx(want)
        assert con.execute("SELECT max_grad_up_to('no-such-run', 5)").fetchone()[0] is None
    finally:
        con.close()


def test_every_reader_of_max_grad_up_to_k_counts_a_diverged_nan_last_norm_as_inf(tmp_path: Path):
    """The trainer's diverged run ends on a NaN grad norm (NaN gradients): the live warning, calibration's step-k
    predictor, the report's monitor and the SQL macro must read the same +inf from step 10 on, and the same
    finite max before it (the threshold is calibrated on what the live warning sees)."""
    from dlm_triage.calibrate import stepk_predictors
    from dlm_triage.runlog import write_run_atomic

    from runfactory import make_manifest, make_steps

    runs = tmp_path / "runs"
    cfg = RunConfig(steps=10, seed=5)
    steps = make_steps(cfg, unstable=True)
    grad = steps["grad_norm"].to_numpy().copy()
    grad[-1] = np.nan
    steps = steps.with_columns(pl.Series("grad_norm", grad),
                               pl.Series("max_grad_norm", runsummary.max_grad_so_far(grad, diverged=True)))
    write_run_atomic(runs / cfg.run_id, steps, make_manifest(cfg, steps, status="diverged"))
    make_run(runs, RunConfig(steps=10, seed=6))  # a second, finished run beside it
    db = tmp_path / "t.duckdb"
    store.ingest_runs(db, runs)

    live, acc = [], -math.inf
    for v in grad:
        acc = runsummary.fold_max_grad(acc, v)
        live.append(acc)
    assert live[-1] == math.inf and math.isfinite(live[-2])
    ks = (0, 4, 9, 10, 25)
    con = store.connect(db, read_only=True)
    try:
        inputs = store.load_calibration_inputs(con)
        frame = store.connection._pl(con, "SELECT run_id, step, max_grad_norm FROM steps")
        row = inputs.runs["run_id"].to_list().index(cfg.run_id)
        calib = stepk_predictors(inputs.traj, np.array([row]), ks)["max_grad"][:, 0]
        for i, k in enumerate(ks):
            want = live[min(k, len(live) - 1)]
            sql = con.execute("SELECT max_grad_up_to(?, ?)", [cfg.run_id, k]).fetchone()[0]
            report = (runsummary.max_grad_up_to_k(frame, k).filter(pl.col("run_id") == cfg.run_id)
                      ["max_grad_up_to_k"].item())
            assert calib[i] == pytest.approx(want) and sql == pytest.approx(want) and report == pytest.approx(want), k
    finally:
        con.close()


def test_summary_of_a_diverged_log_leaves_the_bad_step_out_of_final_loss_and_max_grad(tmp_path: Path):
    run = make_run(tmp_path / "runs", RunConfig(steps=10, seed=1), status="diverged")  # NaN loss, inf grad last
    steps = read_run(run).steps
    s = runsummary.summarise(steps, status="diverged")
    assert s.final_loss is None
    assert s.max_grad_norm == pytest.approx(float(steps["grad_norm"][:-1].max()))
    as_import = runsummary.summarise(steps)  # a foreign log's status is unknown: the last finite loss
    assert as_import.final_loss == pytest.approx(float(steps["loss"][-2]))
    assert as_import.max_grad_norm == math.inf
    assert s.n_steps == steps.height and s.grad_gini is not None and set(s.row()) == set(runsummary.ROW_FIELDS)


def test_summary_without_top1_leaves_the_top1_fields_undefined():
    steps = pl.DataFrame({"step": [0, 1, 2], "loss": [3.0, 2.0, 1.0], "grad_norm": [1.0, 2.0, 0.5],
                          "top1_freq": [np.nan] * 3})
    s = runsummary.summarise(steps)
    assert (s.final_loss, s.max_grad_norm) == (1.0, 2.0)
    assert all(getattr(s, k) is None for k in ("top1_step0", "top1_warning_detected", "top1_fire_step",
                                               "top1_cross_050", "collapsed"))
    assert s.grad_gini is None and s.grad_concentration is None


def test_a_legacy_detector_stop_is_never_a_collapse():
    n = 20
    steps = pl.DataFrame({"step": np.arange(n), "loss": np.full(n, 3.0), "grad_norm": np.ones(n),
                          "top1_freq": np.full(n, 0.99)})
    assert runsummary.summarise(steps).collapsed is True
    assert runsummary.summarise(steps, status="stopped_by_legacy_detector").collapsed is False
