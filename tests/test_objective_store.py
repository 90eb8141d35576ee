"""The objective of a run reaches DuckDB (a column of `runs`, back-filled in databases made before it existed)
and calibration groups by it."""

from __future__ import annotations

import contextlib

import pytest

from dlm_triage import calibrate, store
from dlm_triage.config import RunConfig
from dlm_triage.train import train_run


@pytest.fixture(scope="module")
def two_recipes(tiny_model_dir, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    base = dict(model_id=str(tiny_model_dir), steps=3, batch_size=2, seq_len=48, device="cpu", save_adapter=False)
    ids = {}
    for objective, dataset in (("paper", "tiny-shifted"), ("llada_sft", "tiny-instruct")):
        for seed in (1, 2, 3):
            res = train_run(RunConfig(objective=objective, dataset=dataset, seed=seed, **base), runs)
            ids[res.run_id] = objective
    return runs, ids


@contextlib.contextmanager
def _ingested(runs, db):
    """`runs` ingested into the new database `db`, open read-only for the block."""
    store.ingest_runs(db, runs)
    with store.connect(db, read_only=True) as con:
        yield con


def test_runs_table_records_the_objective(two_recipes, tmp_path):
    runs, ids = two_recipes
    with _ingested(runs, tmp_path / "t.duckdb") as con:
        got = dict(con.execute("SELECT run_id, objective FROM runs").fetchall())
    assert got == ids


def test_a_version_1_database_is_upgraded_and_back_filled(two_recipes, tmp_path):
    runs, ids = two_recipes
    db = tmp_path / "old.duckdb"
    store.ingest_runs(db, runs)
    with store.connect(db) as con:  # make it what a version-1 database is: no objective column, version 1
        con.execute("ALTER TABLE runs DROP COLUMN objective")
        con.execute("DELETE FROM schema_version")
        con.execute("INSERT INTO schema_version VALUES (1, now())")
    with store.connect(db) as con:
        got = dict(con.execute("SELECT run_id, objective FROM runs").fetchall())
        versions = [v for (v,) in con.execute("SELECT version FROM schema_version ORDER BY version").fetchall()]
    assert got == ids  # back-filled from each run's stored config
    assert versions == [1, store.DB_SCHEMA_VERSION]


def test_calibration_groups_by_objective(two_recipes, tmp_path):
    runs, ids = two_recipes
    with _ingested(runs, tmp_path / "c.duckdb") as con:
        inputs = store.load_calibration_inputs(con)
    result = calibrate.calibrate(inputs, group_by="objective", n_resamples=10, stepk_resamples=10, ks=(1, 2))
    assert result["group_by"] == "objective"
    assert set(result["groups"]) == {"paper", "llada_sft"}


def test_rank_mask_figure_places_t_sampled_runs_at_the_t_of_their_max_grad_step():
    import polars as pl

    from dlm_triage import report

    runs = pl.DataFrame({"run_id": ["a", "b", "c"], "objective": ["llada_sft", "paper", None],
                         "mask_ratio": [0.5, 0.15, 0.3]})
    steps = pl.DataFrame({"run_id": ["a", "a", "a", "b", "b", "c"], "step": [0, 1, 2, 0, 1, 0],
                          "grad_norm": [1.0, 3.0, 2.0, 9.0, 1.0, 4.0], "mask_ratio": [0.33, 0.71, 0.2, 0.15, 0.15, 0.3]})
    data = report._Data(calibration={}, result={}, runs=runs, steps=steps, monitor_label="", notes=[])
    out = dict(zip(*report._binned_realised_t(data).select("run_id", "mask_ratio").to_dict(as_series=False).values()))
    assert out == {"a": 0.75, "b": 0.15, "c": 0.3}  # a: t 0.71 at its max grad -> bin [0.7, 0.8); others as set
