"""store.py against real DuckDB files: ingestion (idempotent, transactional, quarantine, two processes),
calibration inputs, threshold registry, inspection queue."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

from dlm_triage import importers, store
from dlm_triage.config import RunConfig
from dlm_triage.schema import MANIFEST_FILENAME, STEPLOG_FILENAME

from runfactory import make_run, make_sweep

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "db" / "triage.duckdb"


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    make_sweep(root, 6)
    return root


def tables(db: Path) -> dict[str, list[tuple]]:
    """Full contents of the data tables, sorted, for before/after comparisons."""
    con = store.connect(db, read_only=True)
    try:
        return {t: sorted(con.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in ("runs", "steps")}
    finally:
        con.close()


def count(db: Path, sql: str):
    con = store.connect(db, read_only=True)
    try:
        return con.execute(sql).fetchall()[0][0]
    finally:
        con.close()


# -- connect ---------------------------------------------------------------------------------------------

def test_connect_creates_schema_and_version(db: Path) -> None:
    con = store.connect(db)
    names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert {"runs", "steps", "ingests", "quarantine", "calibrations", "thresholds", "schema_version"} <= names
    assert con.execute("SELECT version FROM schema_version").fetchall() == [(store.DB_SCHEMA_VERSION,)]
    con.close()
    con = store.connect(db)  # reopening does not re-create or duplicate the version row
    assert con.execute("SELECT count(*) FROM schema_version").fetchall() == [(1,)]
    con.close()


def test_read_only_connect_to_missing_db_says_what_to_do(db: Path) -> None:
    with pytest.raises(store.StoreError, match="does not exist"):
        store.connect(db, read_only=True)


def test_newer_schema_version_is_refused(db: Path) -> None:
    store.connect(db).close()
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO schema_version VALUES (99, now())")
    con.close()
    with pytest.raises(store.StoreError, match="upgrade dlm-triage"):
        store.connect(db)


def _hold_lock_in_subprocess(db: Path, seconds: float) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        import duckdb, sys, time
        con = duckdb.connect({str(db)!r})
        print("locked", flush=True)
        time.sleep({seconds})
        con.close()
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_connect_waits_for_another_process_lock(db: Path) -> None:
    store.connect(db).close()
    holder = _hold_lock_in_subprocess(db, 1.0)
    t0 = time.monotonic()
    con = store.connect(db, timeout_s=30)
    waited = time.monotonic() - t0
    con.close()
    holder.wait(10)
    assert waited > 0.3  # it did wait for the holder, then got in


def test_connect_times_out_naming_file_and_holder(db: Path) -> None:
    store.connect(db).close()
    holder = _hold_lock_in_subprocess(db, 5.0)
    try:
        with pytest.raises(store.StoreLockedError) as ei:
            store.connect(db, timeout_s=0.5)
        msg = str(ei.value)
        assert str(db) in msg and f"PID {holder.pid}" in msg and "timeout_s" in msg
    finally:
        holder.kill()
        holder.wait(10)


# -- ingestion ---------------------------------------------------------------------------------------------

def test_ingest_then_reingest_adds_nothing(db: Path, runs: Path) -> None:
    r1 = store.ingest_runs(db, runs)
    assert (r1.added, r1.already_present, r1.incomplete, r1.quarantined) == (6, 0, 0, ())
    before = tables(db)
    assert len(before["runs"]) == 6 and len(before["steps"]) == 6 * 21
    r2 = store.ingest_runs(db, runs)
    assert (r2.added, r2.already_present, r2.quarantined) == (0, 6, ())
    assert tables(db) == before
    assert count(db, "SELECT count(*) FROM ingests") == 2


def test_runs_row_carries_config_and_manifest_monitors(db: Path, tmp_path: Path) -> None:
    cfg = RunConfig(steps=10, seed=3, rank=16, mask_ratio=0.15, cohort="a")
    d = make_run(tmp_path / "r", cfg, routed=True)
    store.ingest_runs(db, d)
    con = store.connect(db, read_only=True)
    row = store.list_runs(con).row(0, named=True)
    man = json.loads((d / MANIFEST_FILENAME).read_text())
    assert row["run_id"] == cfg.run_id and row["source"] == "dlm-triage" and row["source_path"] == str(d.resolve())
    assert (row["rank"], row["mask_ratio"], row["cohort"], row["seed"]) == (16, 0.15, "a", 3)
    assert row["final_loss"] == man["final_loss"] and row["max_grad_norm"] == man["max_grad_norm"]
    assert (row["grad_gini"], row["grad_top1_share"], row["routed_for_inspection"]) == (0.3, 0.4, True)
    assert row["n_steps"] == 11 and row["config_hash"] == cfg.config_hash
    steps = con.sql("SELECT * FROM steps ORDER BY step").pl()
    log = pl.read_parquet(d / STEPLOG_FILENAME)
    assert steps.columns == ["run_id", *store.STEPS_COLUMNS]
    for c in store.STEPS_COLUMNS:
        assert steps[c].to_list() == log[c].to_list()
    con.close()


def test_incomplete_runs_are_skipped_not_quarantined(db: Path, runs: Path) -> None:
    crashed = make_run(runs, RunConfig(steps=20, seed=100))
    (crashed / MANIFEST_FILENAME).unlink()  # killed before the manifest: steps.parquet only
    (runs / "just-started").mkdir()
    r = store.ingest_runs(db, runs)
    assert (r.added, r.incomplete, r.quarantined) == (6, 2, ())
    assert set(r.incomplete_paths) == {str(crashed), str(runs / "just-started")}
    assert crashed.exists() and not (db.parent / "quarantine").exists()


def _truncate(d: Path) -> None:
    p = d / STEPLOG_FILENAME
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _malformed_manifest(d: Path) -> None:
    (d / MANIFEST_FILENAME).write_text('{"run_id": "x", "config": {')


def _missing_keys(d: Path) -> None:
    m = json.loads((d / MANIFEST_FILENAME).read_text())
    del m["steplog_sha256"], m["status"]
    (d / MANIFEST_FILENAME).write_text(json.dumps(m))


def _schema_drift(d: Path) -> None:
    """A renamed column, with the manifest's sha updated so only the column check can catch it."""
    from dlm_triage.runlog import sha256_file

    p = d / STEPLOG_FILENAME
    pl.read_parquet(p).rename({"grad_norm": "gradnorm"}).write_parquet(p)
    m = json.loads((d / MANIFEST_FILENAME).read_text())
    m["steplog_sha256"] = sha256_file(p)
    (d / MANIFEST_FILENAME).write_text(json.dumps(m))


def _empty_steplog(d: Path) -> None:
    (d / STEPLOG_FILENAME).write_bytes(b"")


def _empty_manifest(d: Path) -> None:
    (d / MANIFEST_FILENAME).write_bytes(b"")


CORRUPTIONS = {
    "truncated_parquet": (_truncate, "sha256"),
    "malformed_json": (_malformed_manifest, "not valid JSON"),
    "missing_manifest_keys": (_missing_keys, "lacks required keys"),
    "schema_drift": (_schema_drift, "missing columns"),
    "empty_steplog": (_empty_steplog, "sha256"),
    "empty_manifest": (_empty_manifest, "not valid JSON"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_bad_run_is_quarantined_and_the_rest_ingests(db: Path, runs: Path, tmp_path: Path, kind: str) -> None:
    store.ingest_runs(db, runs)
    before = tables(db)
    new_root = tmp_path / "batch2"
    bad = make_run(new_root, RunConfig(steps=20, seed=200))
    good = make_run(new_root, RunConfig(steps=20, seed=201))
    corrupt, expected = CORRUPTIONS[kind]
    corrupt(bad)
    qdir = tmp_path / "q"
    r = store.ingest_runs(db, [runs, new_root], quarantine_dir=qdir)
    assert (r.added, r.already_present) == (1, 6)
    assert len(r.quarantined) == 1
    path, reason = r.quarantined[0]
    assert path == str(bad) and expected in reason
    assert not bad.exists() and (qdir / r.ingest_id / bad.name).is_dir()  # moved out of the runs root
    after = tables(db)
    old_ids = {row[0] for row in before["runs"]}
    assert [row for row in after["runs"] if row[0] in old_ids] == before["runs"]
    assert [row for row in after["steps"] if row[0] in old_ids] == before["steps"]
    assert {row[0] for row in after["runs"]} == old_ids | {good.name}
    con = store.connect(db, read_only=True)
    q = con.execute("SELECT path, reason, ingest_id, quarantined_to FROM quarantine").fetchall()
    con.close()
    assert q == [(str(bad), q[0][1], r.ingest_id, str(qdir / r.ingest_id / bad.name))] and expected in q[0][1]


def test_default_quarantine_dir_is_next_to_the_db(db: Path, runs: Path) -> None:
    bad = make_run(runs, RunConfig(steps=20, seed=300))
    _truncate(bad)
    r = store.ingest_runs(db, runs)
    assert (db.parent / "quarantine" / r.ingest_id / bad.name / MANIFEST_FILENAME).exists()


def test_same_run_id_with_different_content_is_a_conflict(db: Path, runs: Path, tmp_path: Path) -> None:
    store.ingest_runs(db, runs)
    before = tables(db)
    victim = sorted(runs.iterdir())[0]
    dup = tmp_path / "elsewhere" / victim.name
    shutil.copytree(victim, dup)
    m = json.loads((dup / MANIFEST_FILENAME).read_text())
    m["final_loss"] = 123.0  # same run_id, different content
    (dup / MANIFEST_FILENAME).write_text(json.dumps(m))
    r = store.ingest_runs(db, dup, quarantine_dir=tmp_path / "q")
    assert r.added == 0 and len(r.conflicts) == 1 and r.conflicts[0][0] == str(dup)
    assert victim.name in r.conflicts[0][1] and "different content" in r.conflicts[0][1]
    assert dup.exists()  # valid data is copied to quarantine, not moved
    assert (tmp_path / "q" / r.ingest_id / victim.name).is_dir()
    assert tables(db) == before


def test_duplicate_within_one_batch(db: Path, runs: Path, tmp_path: Path) -> None:
    victim = sorted(runs.iterdir())[0]
    same = tmp_path / "b" / victim.name
    shutil.copytree(victim, same)
    r = store.ingest_runs(db, [runs, same])
    assert (r.added, r.already_present, r.quarantined) == (6, 1, ())
    assert count(db, "SELECT count(*) FROM runs") == 6


def test_failure_mid_ingest_rolls_back(db: Path, runs: Path, tmp_path: Path, monkeypatch) -> None:
    store.ingest_runs(db, runs)
    before = tables(db)
    n_ingests = count(db, "SELECT count(*) FROM ingests")
    more = tmp_path / "more"
    make_sweep(more, 3, steps=20, mask_ratio=0.3)
    bad = make_run(more, RunConfig(steps=20, seed=400))
    _truncate(bad)

    def exploding_insert_steps(con, steps_df):  # runs already inserted in this transaction, then a failure
        raise OSError("disk full (injected)")

    monkeypatch.setattr(store.ingest, "_insert_steps", exploding_insert_steps)  # where _write_batch looks it up
    with pytest.raises(OSError, match="injected"):
        store.ingest_runs(db, more)
    assert tables(db) == before
    assert count(db, "SELECT count(*) FROM ingests") == n_ingests
    assert count(db, "SELECT count(*) FROM quarantine") == 0
    assert bad.exists()  # quarantine moves happen only after a commit
    monkeypatch.undo()
    r = store.ingest_runs(db, more)
    assert (r.added, len(r.quarantined)) == (3, 1)


def test_two_processes_ingest_the_same_runs(db: Path, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    make_sweep(root, 40, steps=30)
    store.connect(db).close()
    code = textwrap.dedent(f"""
        import json, sys
        from dlm_triage import store
        r = store.ingest_runs({str(db)!r}, {str(root)!r}, timeout_s=60)
        print(json.dumps([r.added, r.already_present, len(r.quarantined)]))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    results = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert sum(r[0] for r in results) == 40  # each run added by exactly one of them
    assert all(r[0] + r[1] == 40 and r[2] == 0 for r in results)
    assert count(db, "SELECT count(*) FROM runs") == 40
    assert count(db, "SELECT count(*) FROM steps") == 40 * 31
    assert count(db, "SELECT count(*) FROM (SELECT run_id, step FROM steps GROUP BY ALL HAVING count(*) > 1)") == 0


# -- calibration inputs ---------------------------------------------------------------------------------------

def test_calibration_inputs_long_and_nan_padded_when_dense(db: Path, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    long_ = make_run(root, RunConfig(steps=20, seed=1))
    short = make_run(root, RunConfig(steps=20, seed=2), n_rows=8, status="diverged")
    store.ingest_runs(db, root)
    cells = tmp_path / "cells.csv"
    cells.write_text(",".join(importers.CELLS_COLUMNS) + "\ntiny,m,None,0.5,9,1e-4,False,None,False,1.0,2.0\n")
    importers.import_logs(db, "cells", [cells])
    con = store.connect(db, read_only=True)
    inp = store.load_calibration_inputs(con)
    runs = inp.runs
    assert runs.height == 3 and runs["run_id"].to_list() == sorted(runs["run_id"].to_list())
    assert runs.filter(pl.col("run_id") == short.name)["diverged"].to_list() == [True]
    assert runs.filter(pl.col("run_id") == long_.name)["diverged"].to_list() == [False]
    t = inp.traj
    assert t.run_ids == runs["run_id"].to_list()
    assert t.step.size == 21 + 8 and t.n_steps == 21  # one entry per stored step, none for the cells row
    loss, grad, top1 = t.dense()
    assert loss.shape == grad.shape == top1.shape == (3, 21) and loss.dtype == np.float64
    i_long, i_short = t.run_ids.index(long_.name), t.run_ids.index(short.name)
    i_cells = next(i for i, r in enumerate(t.run_ids) if r.startswith("import-cells"))
    log = pl.read_parquet(long_ / STEPLOG_FILENAME)
    np.testing.assert_array_equal(grad[i_long], log["grad_norm"].to_numpy())
    np.testing.assert_array_equal(top1[i_long], log["top1_freq"].to_numpy())
    assert np.isfinite(loss[i_short, :7]).all() and np.isnan(loss[i_short, 7:]).all()  # step 7 diverged (NaN)
    assert np.isnan(loss[i_cells]).all()
    only_cells = store.load_calibration_inputs(con, where="source = 'import:cells'")
    assert only_cells.runs.height == 1 and only_cells.traj is None
    con.close()


# -- threshold registry and inspection queue -------------------------------------------------------------------

def _result(groups: dict[str, dict], cal_id: str | None = None) -> dict:
    out = {"group_by": "family", "groups": {}, "params": {"seed": 0}, "warnings": []}
    if cal_id:
        out["calibration_id"] = cal_id
    for name, g in groups.items():
        reg = {"monitor": "max_grad_norm", "k": g.get("k", 10), "threshold": g["threshold"], "ci_low": 0.5,
               "ci_high": 5.0, "n": 12, "n_unstable": 3, "precision": 0.8, "recall": 0.7, "f1": 0.75}
        out["groups"][name] = {"n": 12, "n_unstable": 3, "registry": reg, "flags": g.get("flags", [])}
    return out


def test_threshold_registry_latest_accepted_wins_history_kept(db: Path) -> None:
    con = store.connect(db)
    c1 = store.save_calibration(con, _result({"tiny": {"threshold": 1.0}, "dream": {"threshold": None}}))
    c2 = store.save_calibration(con, _result({"tiny": {"threshold": 2.0}}))
    c3 = store.save_calibration(con, _result({"tiny": {"threshold": 9.0, "flags": ["constant_final_loss"]}}))
    rec = store.latest_threshold(con, "tiny")
    assert isinstance(rec, store.ThresholdRecord)
    assert (rec.threshold, rec.calibration_id, rec.group_by, rec.monitor, rec.k) == (2.0, c2, "family",
                                                                                      "max_grad_norm", 10)
    assert store.latest_threshold(con, "dream") is None  # a null threshold is never 'latest'
    assert store.latest_threshold(con, "tiny", group_by="cohort") is None
    hist = store.threshold_history(con, "tiny")
    assert hist["calibration_id"].to_list() == [c3, c2, c1]
    assert hist["accepted"].to_list() == [False, True, True]
    assert store.threshold_history(con).height == 4
    statuses = dict(con.execute("SELECT calibration_id, status FROM calibrations").fetchall())
    assert statuses == {c1: "accepted", c2: "accepted", c3: "rejected"}
    con.close()


def test_save_calibration_same_id(db: Path) -> None:
    con = store.connect(db)
    res = _result({"tiny": {"threshold": 1.0}}, cal_id="cal-fixed")
    assert store.save_calibration(con, res) == "cal-fixed"
    assert store.save_calibration(con, res) == "cal-fixed"  # same content: no-op
    assert con.execute("SELECT count(*) FROM thresholds").fetchall() == [(1,)]
    with pytest.raises(store.StoreError, match="different result"):
        store.save_calibration(con, _result({"tiny": {"threshold": 3.0}}, cal_id="cal-fixed"))
    with pytest.raises(ValueError, match="groups"):
        store.save_calibration(con, {"nope": 1})
    con.close()


def test_inspection_queue(db: Path, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    calm = make_run(root, RunConfig(steps=30, seed=1))
    wild = make_run(root, RunConfig(steps=30, seed=2), unstable=True)
    routed = make_run(root, RunConfig(steps=30, seed=3), routed=True)
    store.ingest_runs(db, root)
    con = store.connect(db)
    assert store.inspection_queue(con)["run_id"].to_list() == [routed.name]  # no threshold yet: live routing only
    g = {n: pl.read_parquet(d / STEPLOG_FILENAME)["grad_norm"].head(31).max()
         for n, d in (("calm", calm), ("wild", wild), ("routed", routed))}
    thr = (max(g["calm"], g["routed"]) + g["wild"]) / 2
    assert g["wild"] > thr > max(g["calm"], g["routed"])
    cal = store.save_calibration(con, _result({"tiny": {"threshold": thr, "k": 30}}))
    q = store.inspection_queue(con)
    assert set(q["run_id"]) == {wild.name, routed.name}
    reasons = dict(zip(q["run_id"], q["reason"]))
    assert "max-grad-up-to-30" in reasons[wild.name] and cal in reasons[wild.name]
    assert reasons[routed.name].startswith("routed live")
    assert "{" not in reasons[routed.name]  # the routing record as a sentence with rounded numbers, not JSON
    assert {"family", "rank", "mask_ratio", "config_json", "final_loss", "max_grad_up_to_k"} <= set(q.columns)
    assert q.filter(pl.col("run_id") == wild.name)["max_grad_up_to_k"].item() == pytest.approx(g["wild"])
    # a calibration without accepted thresholds: only live routing
    assert set(store.inspection_queue(con, calibration_id="cal-unknown")["run_id"]) == {routed.name}
    con.close()


def test_queue_names_runs_that_end_before_k_and_sorts_by_severity(db: Path, tmp_path: Path) -> None:
    """A 10-step run in a family whose live rule reads step 30 is never evaluated live: the queue lists it,
    says so, and ranks it after the runs the rule did flag."""
    root = tmp_path / "runs"
    wild = make_run(root, RunConfig(steps=30, seed=2), unstable=True)
    calm = make_run(root, RunConfig(steps=30, seed=1))
    smoke_hot = make_run(root, RunConfig(steps=24, seed=5), unstable=True)
    smoke = make_run(root, RunConfig(steps=10, seed=6))
    routed = make_run(root, RunConfig(steps=30, seed=3), routed=True)
    store.ingest_runs(db, root)
    con = store.connect(db)
    g = {d.name: pl.read_parquet(d / STEPLOG_FILENAME)["grad_norm"].max() for d in (wild, calm, smoke_hot, smoke)}
    thr = 0.5 * (max(g[calm.name], g[smoke.name]) + g[smoke_hot.name])
    assert g[wild.name] > g[smoke_hot.name] > thr > max(g[calm.name], g[smoke.name])
    store.save_calibration(con, _result({"tiny": {"threshold": thr, "k": 30}}))
    q = store.inspection_queue(con)
    con.close()
    assert q["run_id"].to_list() == [routed.name, wild.name, smoke_hot.name, smoke.name]
    assert q["severity"].to_list() == [0, 1, 2, 3]
    out = dict(zip(q["run_id"], q["outcome"]))
    assert out[smoke.name] == "ended before k, not evaluated" and out[wild.name] == "above threshold"
    reason = dict(zip(q["run_id"], q["reason"]))[smoke.name]
    assert "ended at step 10 before k=30" in reason and "never evaluated" in reason and "<" in reason


def test_live_threshold_says_which_and_why(db: Path) -> None:
    con = store.connect(db)
    rec, why = store.live_threshold(con, "tiny")
    assert rec is None and "no calibration of this group yet" in why
    c1 = store.save_calibration(con, _result({"tiny": {"threshold": 2.0}}))
    rec, why = store.live_threshold(con, "tiny")
    assert rec.threshold == 2.0 and f"max-grad-up-to-10 >= 2 from calibration {c1}" in why
    rejected = _result({"tiny": {"threshold": 9.0}})
    rejected["groups"]["tiny"]["registry"].update(
        accepted=False, rejection_reasons=["max-grad-up-to-10: precision CI [0, 1] carries no information"])
    c2 = store.save_calibration(con, rejected)
    rec, why = store.live_threshold(con, "tiny")
    # the newer calibration's rejection does not flip the live threshold silently: the previous stays, said so
    assert rec.threshold == 2.0 and rec.calibration_id == c1
    assert f"newer calibration {c2} rejected this group" in why and "precision CI [0, 1]" in why
    rec, why = store.live_threshold(con, "dream")
    assert rec is None and "early warning off for family dream" in why
    store.save_calibration(con, {**rejected, "groups": {"dream": rejected["groups"]["tiny"]}})
    rec, why = store.live_threshold(con, "dream")
    assert rec is None and "registered no live threshold (max-grad-up-to-10: precision CI [0, 1]" in why
    con.close()


def test_summary_and_list_runs(db: Path, runs: Path) -> None:
    store.ingest_runs(db, runs)
    con = store.connect(db, read_only=True)
    s = store.summary(con)
    assert (s["runs"], s["steps"], s["by_family"], s["ingests"]) == (6, 126, {"tiny": 6}, 1)
    assert store.list_runs(con, where="rank = 4", limit=10).height == 2
    con.close()


def test_parallel_validation_matches_serial(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    make_sweep(root, 5)
    bad = make_run(root, RunConfig(steps=20, seed=500))
    _malformed_manifest(bad)
    (root / "incomplete").mkdir()
    serial_q, par_q = tmp_path / "q1", tmp_path / "q2"
    shutil.copytree(root, tmp_path / "runs2")
    r1 = store.ingest_runs(tmp_path / "a.duckdb", root, quarantine_dir=serial_q, workers=1)
    r2 = store.ingest_runs(tmp_path / "b.duckdb", tmp_path / "runs2", quarantine_dir=par_q, workers=2)
    assert (r1.added, r1.incomplete, len(r1.quarantined)) == (r2.added, r2.incomplete, len(r2.quarantined)) == (5, 1, 1)
    assert tables(tmp_path / "a.duckdb")["steps"] == tables(tmp_path / "b.duckdb")["steps"]
