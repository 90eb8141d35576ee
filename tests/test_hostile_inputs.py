"""Hostile inputs (and bad `--db` paths): one bad value, file or directory is that input's
problem, reported with its path and reason; it never stops an ingestion, never loses, duplicates or moves data it
does not own, and never turns a mistyped path into a new empty database.

Real DuckDB files, real run directories (runfactory, through the one writer), real CLI calls; permission errors
come from a child process that drops root to `nobody`. docs/GUARANTEES.md lists each guarantee with its test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

import cli.main as cli
from dlm_triage import importers, store
from dlm_triage.config import RunConfig
from dlm_triage.schema import MANIFEST_FILENAME, STEPLOG_FILENAME

from runfactory import db_rows, make_run, make_sweep

REPO = Path(__file__).resolve().parents[1]


def _tables(db: Path) -> dict[str, list[tuple]]:
    return {t: db_rows(db, f"SELECT * FROM {t} ORDER BY ALL") for t in ("runs", "steps")}


# -- --db: never a silent in-memory database, never an accidental empty one ----------------------------------

FOREIGN_FILES = {
    "csv": b"run,loss\na,1.0\nb,2.0\n",
    "tsv": b"run\tloss\na\t1.0\n",
    "json": b'{"runs": [1, 2, 3]}\n',
    "parquet": None,  # written below with polars
    "binary": bytes(range(256)),
    "sqlite": None,  # written below with sqlite3
    "jsonl": b'{"step": 0, "loss": 1.0}\n{"step": 1, "loss": 0.9}\n',
    "zip-xlsx": b"PK\x03\x04\x14\x00\x06\x00" + bytes(200),
    "gzip": b"\x1f\x8b\x08\x00" + bytes(100),
    "text-named-duckdb": b"this is my notes file, not a database\n",
}


@pytest.mark.parametrize("kind", sorted(FOREIGN_FILES))
def test_db_that_is_another_kind_of_file_is_refused_and_left_unchanged(tmp_path, kind, capsys):
    db = tmp_path / ("notes.duckdb" if kind == "text-named-duckdb" else f"data.{kind}")
    if kind == "parquet":
        pl.DataFrame({"run": ["a"], "loss": [1.0]}).write_parquet(db)
    elif kind == "sqlite":
        import sqlite3

        with sqlite3.connect(db) as lite:
            lite.execute("CREATE TABLE runs (run_id TEXT)")
    else:
        db.write_bytes(FOREIGN_FILES[kind])
    before = db.read_bytes()
    make_sweep(tmp_path / "runs", 2)
    with pytest.raises(store.StoreError, match="not a DuckDB database"):
        store.ingest_runs(db, tmp_path / "runs")
    assert cli.main(["ingest", str(tmp_path / "runs"), "--db", str(db)]) == 2
    cells = tmp_path / "cells.csv"
    cells.write_text(",".join(importers.CELLS_COLUMNS) + "\ntiny,m,4,0.5,1,1e-4,False,None,False,1.0,2.0\n")
    assert cli.main(["import", "--format", "cells", str(cells), "--db", str(db)]) == 2
    for verb in (["calibrate"], ["report"], ["queue"], ["thresholds"]):
        assert cli.main([*verb, "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert "not a DuckDB database" in err and "added" not in err
    assert db.read_bytes() == before  # nothing written into the user's file, nothing kept elsewhere


def test_empty_and_truncated_database_files_give_a_clear_error(tmp_path):
    empty = tmp_path / "empty.duckdb"
    empty.write_bytes(b"")
    with pytest.raises(store.StoreError, match=r"empty file \(0 bytes\)"):
        store.connect(empty)
    good = tmp_path / "good.duckdb"
    make_sweep(tmp_path / "runs", 3)
    store.ingest_runs(good, tmp_path / "runs")
    truncated = tmp_path / "truncated.duckdb"
    truncated.write_bytes(good.read_bytes()[:5000])
    for read_only in (False, True):
        with pytest.raises(store.StoreError, match="damaged or truncated"):
            store.connect(truncated, read_only=read_only)


def test_connect_checks_the_attached_database_is_the_file_asked_for(tmp_path):
    db = tmp_path / "t.duckdb"
    con = store.connect(db)
    try:
        assert Path(con.execute("SELECT file FROM pragma_database_list WHERE name = current_database()")
                    .fetchall()[0][0]) == db
    finally:
        con.close()
    # DuckDB opens a CSV as an in-memory database with a view: the attached-file check would refuse it too
    csv = tmp_path / "x.csv"
    csv.write_text("a\n1\n")
    raw = duckdb.connect(str(csv))
    try:
        with pytest.raises(store.StoreError, match="not opened as a database file"):
            store._check_attached_file(raw, csv)
    finally:
        raw.close()


@pytest.mark.parametrize("verb", [["calibrate"], ["report"], ["queue"], ["thresholds"]])
def test_reading_verbs_refuse_a_mistyped_db_and_leave_the_reports_alone(tmp_path, verb, capsys):
    out = tmp_path / "out"
    make_sweep(out / "runs", 12, steps=30, unstable_every=3)
    assert cli.main(["--out", str(out), "ingest"]) == 0
    assert cli.main(["--out", str(out), "calibrate", "--resamples", "30", "--stepk-resamples", "10"]) == 0
    assert cli.main(["--out", str(out), "report"]) == 0
    reports = out / "reports"
    before = {p.relative_to(reports): p.read_bytes() for p in reports.rglob("*") if p.is_file()}
    assert any(p.name == "report.html" for p in before) and any(p.name == "calibration.json" for p in before)
    capsys.readouterr()
    typo = tmp_path / "typo.duckdb"
    assert cli.main(["--out", str(out), *verb, "--db", str(typo)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not typo.exists()
    after = {p.relative_to(reports): p.read_bytes() for p in reports.rglob("*") if p.is_file()}
    assert after == before


def test_each_calibration_and_report_has_its_own_folder_and_latest_points_at_the_newest(tmp_path, capsys):
    out = tmp_path / "out"
    make_sweep(out / "runs", 12, steps=30, unstable_every=3)
    assert cli.main(["--out", str(out), "ingest"]) == 0
    ids = []
    for seed in (1, 2):
        assert cli.main(["--out", str(out), "calibrate", "--resamples", "30", "--stepk-resamples", "10",
                         "--seed", str(seed)]) == 0
        assert cli.main(["--out", str(out), "report"]) == 0
        ids.append(json.loads((out / "reports" / "latest" / "calibration.json").read_text())["calibration_id"])
    assert ids[0] != ids[1]
    for cal_id in ids:  # the first report is still complete beside the second
        folder = out / "reports" / cal_id
        assert cal_id in (folder / "report.html").read_text()
        assert (folder / "calibration.json").is_file() and any((folder / "figures").iterdir())
    assert (out / "reports" / "latest").resolve() == (out / "reports" / ids[1]).resolve()
    # an older calibration's report goes to its own folder and does not move `latest`
    assert cli.main(["--out", str(out), "report", "--calibration", ids[0]]) == 0
    assert (out / "reports" / "latest").resolve() == (out / "reports" / ids[1]).resolve()


# -- manifests: one bad value quarantines that run, the rest ingests ----------------------------------------

def _deep(n: int) -> str:
    return "[" * n + "]" * n


# (manifest key, raw JSON text of the value, what the reason says)
BAD_MANIFEST_VALUES = {
    "infinity-in-int": ("top1_fire_step", "Infinity", "top1_fire_step"),
    "nan-in-int": ("top1_cross_050", "NaN", "top1_cross_050"),
    "huge-int": ("top1_cross_080", str(10**30), "out of range"),
    "int32-fire-step": ("top1_fire_step", str(2**31), "out of range"),
    "int32-diverged-at": ("diverged_at_step", str(2**31 + 5), "out of range"),
    "negative-int32": ("top1_cross_095", str(-(2**31) - 1), "out of range"),
    "float-in-int": ("top1_fire_step", "3.5", "not an integer"),
    "infinity-in-float": ("final_loss", "Infinity", "final_loss"),
    "overflowing-float": ("max_grad_norm", "1" + "0" * 400, "out of range"),
    "5000-digit-int": ("final_loss", "7" * 5000, "not valid JSON"),
    "100k-deep": ("routing", _deep(100_000), "nested too deeply"),
    "string-no-in-bool": ("collapsed", '"no"', "not a JSON boolean"),
    "string-false-in-bool": ("top1_warning_detected", '"false"', "not a JSON boolean"),
    "string-in-routed": ("routed_for_inspection", '"false"', "not a JSON boolean"),
    "int-run-id": ("run_id", "5", "run_id"),
    "string-in-float": ("grad_gini", '"0.3"', "not a number"),
    "true-in-int": ("top1_fire_step", "true", "top1_fire_step"),
    "object-in-float": ("final_loss", '{"v": 1.0}', "final_loss"),
    "minus-infinity-in-float": ("max_grad_norm", "-Infinity", "max_grad_norm"),
    "exponent-overflow": ("grad_top1_share", "1e999", "grad_top1_share"),
    "list-in-bool": ("collapsed", "[true]", "not a JSON boolean"),
}


def _set_raw(run_dir: Path, key: str, raw: str) -> None:
    """Replace one manifest value with raw JSON text (Infinity, 5,000 digits, 100,000 brackets)."""
    m = json.loads((run_dir / MANIFEST_FILENAME).read_text())
    marker = "__DLMT_RAW__"
    m[key] = marker
    (run_dir / MANIFEST_FILENAME).write_text(json.dumps(m).replace(f'"{marker}"', raw))


@pytest.mark.parametrize("case", sorted(BAD_MANIFEST_VALUES))
def test_one_bad_manifest_value_quarantines_that_run_and_the_rest_ingests(tmp_path, case):
    key, raw, says = BAD_MANIFEST_VALUES[case]
    root = tmp_path / "runs"
    good = make_sweep(root, 4)
    bad = make_run(root, RunConfig(steps=20, seed=99), status="diverged" if key == "diverged_at_step" else "completed")
    _set_raw(bad, key, raw)
    qdir = tmp_path / "q"
    r = store.ingest_runs(tmp_path / "t.duckdb", root, quarantine_dir=qdir)
    assert r.added == len(good)
    assert [p for p, _ in r.quarantined] == [str(bad)]
    assert says in r.quarantined[0][1], r.quarantined[0][1]
    assert len(r.quarantined[0][1]) < 2000  # the reason names the value, it does not echo 100,000 brackets
    assert (qdir / r.ingest_id / bad.name / MANIFEST_FILENAME).is_file()
    assert {row[0] for row in db_rows(tmp_path / "t.duckdb", "SELECT run_id FROM runs")} == {g.name for g in good}
    # the next scheduled ingest is not blocked by it either
    make_run(root, RunConfig(steps=20, seed=100))
    assert store.ingest_runs(tmp_path / "t.duckdb", root, quarantine_dir=qdir).added == 1


def test_a_bad_value_in_the_manifest_config_quarantines_only_that_run(tmp_path):
    root = tmp_path / "runs"
    make_sweep(root, 3)
    bad = make_run(root, RunConfig(steps=20, seed=50))
    m = json.loads((bad / MANIFEST_FILENAME).read_text())
    m["config"]["learning_rate"] = 10**400  # math.isfinite raises OverflowError on it
    (bad / MANIFEST_FILENAME).write_text(json.dumps(m))
    r = store.ingest_runs(tmp_path / "t.duckdb", root, quarantine_dir=tmp_path / "q")
    assert r.added == 3 and [p for p, _ in r.quarantined] == [str(bad)]
    assert "config" in r.quarantined[0][1]


# -- ingest moves only what is recognisably a run -------------------------------------------------------------

def _web_app(d: Path) -> Path:
    d.mkdir(parents=True)
    (d / MANIFEST_FILENAME).write_text(json.dumps({"name": "My app", "manifest_version": 3, "icons": {}}))
    (d / "index.html").write_text("<html></html>")
    return d


def test_directories_that_are_not_runs_are_skipped_listed_and_never_moved(tmp_path):
    root = tmp_path / "work"
    runs = make_sweep(root, 2)
    app = _web_app(root / "webapp")
    ext = root / "extension"
    ext.mkdir()
    (ext / MANIFEST_FILENAME).write_text("{ not json")  # damaged, but no step log beside it: not ours
    only_log = root / "half"
    only_log.mkdir()
    (only_log / MANIFEST_FILENAME).write_text(json.dumps({"schema_version": 1}))  # ours, but no step log
    r = store.ingest_runs(tmp_path / "t.duckdb", root, quarantine_dir=tmp_path / "q")
    assert r.added == len(runs) and r.quarantined == ()
    assert {p for p, _ in r.skipped} == {str(app), str(ext), str(only_log)}
    assert all("left in place" in why for _, why in r.skipped)
    assert (app / "index.html").is_file() and (ext / MANIFEST_FILENAME).is_file() and only_log.is_dir()
    assert not (tmp_path / "q").exists()


def test_the_ingest_artifact_lists_skipped_directories_and_duplicates(tmp_path):
    root = tmp_path / "work"
    make_sweep(root, 1)
    app = _web_app(root / "webapp")
    r = store.ingest_runs(tmp_path / "t.duckdb", root, quarantine_dir=tmp_path / "q")
    log = tmp_path / "a.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 2.0 - s / 10, "max_grad_norm": 1.0,
                                       "top1_token_freq": 0.1, "mask_ratio": 0.15}) + "\n" for s in range(3)))
    shutil.copy(log, tmp_path / "b.jsonl")
    r2 = importers.import_logs(tmp_path / "t.duckdb", "reference-jsonl", [log, tmp_path / "b.jsonl"], family="llada")
    md = r.markdown("Ingestion", str(root)) + r2.markdown("Import", "a, b")
    assert "## Skipped: not run directories (left in place)" in md and f"`{app}`" in md
    assert "## Duplicates (stored once)" in md and f"`{tmp_path / 'b.jsonl'}`" in md


def test_another_tools_manifest_beside_a_steps_parquet_is_skipped_and_ours_damaged_is_quarantined(tmp_path):
    root = tmp_path / "work"
    runs = make_sweep(root, 2)
    foreign = root / "other-tool"
    foreign.mkdir()
    pl.DataFrame({"step": [0, 1], "value": [1.0, 2.0]}).write_parquet(foreign / STEPLOG_FILENAME)
    (foreign / MANIFEST_FILENAME).write_text(json.dumps({"tool": "x", "version": 3}))
    listed = root / "list-manifest"
    shutil.copytree(foreign, listed)
    (listed / MANIFEST_FILENAME).write_text("[1, 2, 3]")
    ours = make_run(root, RunConfig(steps=20, seed=42))
    (ours / MANIFEST_FILENAME).write_text('{"schema_version": 1, "run_id": ')  # ours, cut mid-write
    r = store.ingest_runs(tmp_path / "t.duckdb", root, quarantine_dir=tmp_path / "q")
    assert r.added == len(runs)
    assert {p for p, _ in r.skipped} == {str(foreign), str(listed)}
    assert [p for p, _ in r.quarantined] == [str(ours)] and not ours.exists()
    assert (foreign / STEPLOG_FILENAME).is_file() and (listed / MANIFEST_FILENAME).read_text() == "[1, 2, 3]"


def test_ingest_of_an_ancestor_of_the_working_directory_moves_nothing_above_it(tmp_path, monkeypatch):
    run = make_run(tmp_path / "runs", RunConfig(steps=20, seed=5))
    (run / MANIFEST_FILENAME).write_text("{ broken")
    monkeypatch.chdir(run)
    reports = [store.ingest_runs(tmp_path / "t.duckdb", "..", quarantine_dir=tmp_path / "q")  # `ingest ..`
               for _ in range(3)]
    assert all(len(r.quarantined) == 1 and "left in place" in r.quarantined[0][1] for r in reports)
    assert (run / STEPLOG_FILENAME).is_file() and (run / MANIFEST_FILENAME).read_text() == "{ broken"
    # a scheduled ingest meeting it again reports it; the quarantine holds one copy, not one per ingest
    assert "already quarantined" in reports[2].quarantined[0][1]
    assert len(list((tmp_path / "q").rglob(MANIFEST_FILENAME))) == 1
    assert db_rows(tmp_path / "t.duckdb", "SELECT count(*) FROM quarantine") == [(1,)]


def test_ingest_dot_inside_a_foreign_or_broken_directory_moves_nothing(tmp_path, monkeypatch, capsys):
    app = _web_app(tmp_path / "site")
    (app / "src").mkdir()
    (app / "src" / "main.js").write_text("x")
    monkeypatch.chdir(app)
    assert cli.main(["ingest", ".", "--db", str(tmp_path / "t.duckdb")]) == 0
    assert "skipped" in capsys.readouterr().out
    assert sorted(p.name for p in app.iterdir()) == sorted([MANIFEST_FILENAME, "index.html", "src"])
    # a broken run directory given as the root itself, or the working directory, is reported, never moved
    run = make_run(tmp_path / "runs", RunConfig(steps=20, seed=3))
    (run / MANIFEST_FILENAME).write_text("{ broken")
    monkeypatch.chdir(run)
    r = store.ingest_runs(tmp_path / "t.duckdb", ".", quarantine_dir=tmp_path / "q")
    assert len(r.quarantined) == 1 and "left in place" in r.quarantined[0][1]
    assert (run / STEPLOG_FILENAME).is_file() and (run / MANIFEST_FILENAME).is_file()
    (run / "logs").mkdir()
    monkeypatch.chdir(run / "logs")  # the working directory's ancestors are protected as well
    r = store.ingest_runs(tmp_path / "t.duckdb", [tmp_path / "runs"], quarantine_dir=tmp_path / "q")
    assert "left in place" in r.quarantined[0][1] and (run / STEPLOG_FILENAME).is_file()


def test_same_named_bad_runs_from_two_roots_get_separate_quarantine_folders(tmp_path):
    a = make_run(tmp_path / "a", RunConfig(steps=20, seed=1))
    b = make_run(tmp_path / "b", RunConfig(steps=20, seed=1))
    assert a.name == b.name
    (a / MANIFEST_FILENAME).write_text("{ broken a")
    (b / MANIFEST_FILENAME).write_text("{ broken b")
    r = store.ingest_runs(tmp_path / "t.duckdb", [tmp_path / "a", tmp_path / "b"], quarantine_dir=tmp_path / "q")
    assert len(r.quarantined) == 2
    folder = tmp_path / "q" / r.ingest_id
    got = sorted(p.name for p in folder.iterdir())
    assert got == [a.name, f"{a.name}-2"]
    manifests = sorted((folder / n / MANIFEST_FILENAME).read_text() for n in got)
    assert manifests == ["{ broken a", "{ broken b"]  # neither nested inside the other
    assert not (folder / a.name / a.name).exists()


def test_a_conflicting_run_is_copied_to_quarantine_once_not_on_every_ingest(tmp_path):
    db, q = tmp_path / "t.duckdb", tmp_path / "q"
    run = make_run(tmp_path / "runs", RunConfig(steps=20, seed=1))
    store.ingest_runs(db, tmp_path / "runs", quarantine_dir=q)
    dup = tmp_path / "elsewhere" / run.name
    shutil.copytree(run, dup)
    m = json.loads((dup / MANIFEST_FILENAME).read_text())
    m["final_loss"] = 123.0
    (dup / MANIFEST_FILENAME).write_text(json.dumps(m))
    reports = [store.ingest_runs(db, tmp_path / "elsewhere", quarantine_dir=q) for _ in range(3)]
    assert all(len(r.conflicts) == 1 for r in reports)
    assert "already quarantined" in reports[2].conflicts[0][1]
    copies = [p for p in q.rglob(MANIFEST_FILENAME)]
    assert len(copies) == 1 and dup.is_dir()
    assert db_rows(db, "SELECT count(*) FROM quarantine") == [(1,)]


def test_same_named_bad_runs_from_many_roots_and_a_name_ending_in_2_never_nest(tmp_path):
    roots = [tmp_path / r for r in "abcd"]
    runs = [make_run(r, RunConfig(steps=20, seed=1)) for r in roots[:3]]
    odd = roots[3] / f"{runs[0].name}-2"  # a bad directory whose own name is what the second one would get
    shutil.copytree(runs[0], odd)
    for i, d in enumerate([*runs, odd]):
        (d / MANIFEST_FILENAME).write_text("{ broken %d" % i)
    r = store.ingest_runs(tmp_path / "t.duckdb", roots, quarantine_dir=tmp_path / "q")
    assert len(r.quarantined) == 4
    folder = tmp_path / "q" / r.ingest_id
    got = sorted(p.name for p in folder.iterdir())
    assert len(got) == 4 and all((folder / n / MANIFEST_FILENAME).is_file() for n in got)
    assert sorted((folder / n / MANIFEST_FILENAME).read_text() for n in got) == ["{ broken %d" % i for i in range(4)]
    assert not [p for p in folder.rglob(MANIFEST_FILENAME) if p.parent.parent != folder]  # nothing nested


def test_a_conflict_inside_one_batch_does_not_grow_the_quarantine_on_every_ingest(tmp_path):
    db, q = tmp_path / "t.duckdb", tmp_path / "q"
    run = make_run(tmp_path / "a", RunConfig(steps=20, seed=1))
    other = tmp_path / "b" / run.name
    shutil.copytree(run, other)
    m = json.loads((other / MANIFEST_FILENAME).read_text())
    m["final_loss"] = 99.0
    (other / MANIFEST_FILENAME).write_text(json.dumps(m))
    counts = []
    for _ in range(4):
        r = store.ingest_runs(db, [tmp_path / "a", tmp_path / "b"], quarantine_dir=q)
        assert [p for p, _ in r.conflicts] == [str(other)]
        counts.append((db_rows(db, "SELECT count(*) FROM quarantine")[0][0], len(list(q.rglob(MANIFEST_FILENAME)))))
    assert counts[-1] == counts[-2] == counts[-3] and counts[-1][0] <= 2, counts  # bounded, not one per ingest
    assert db_rows(db, "SELECT count(*) FROM runs") == [(1,)] and other.is_dir()


# -- unreadable run directories (a child process without root's override) ---------------------------------------

_AS_NOBODY = textwrap.dedent("""
    import json, os, sys
    import concurrent.futures
    from dlm_triage import runlog, store  # imported first: the interpreter's own files may be root's only
    runlog._reference_footer()
    os.setgid(65534); os.setuid(65534)
    r = store.ingest_runs(sys.argv[1], sys.argv[2], quarantine_dir=sys.argv[3])
    print(json.dumps({"added": r.added, "quarantined": r.quarantined, "skipped": r.skipped}))
""")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user (chmod alone binds only others)")
@pytest.mark.parametrize("what", ["run_dir", "manifest", "steplog", "folder_of_runs"])
def test_an_unreadable_run_is_reported_and_the_rest_ingests(what):
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="dlmt-perm-"))  # pytest's tmp_path lies under a root-only folder
    try:
        _unreadable_case(work, what)
    finally:
        for p in work.rglob("*"):
            os.chmod(p, 0o777) if p.is_dir() else None
        shutil.rmtree(work)


def _unreadable_case(work: Path, what: str) -> None:
    os.chmod(work, 0o777)
    runs = make_sweep(work / "runs", 3)
    locked = make_run(work / "runs" / "group" if what == "folder_of_runs" else work / "runs",
                      RunConfig(steps=20, seed=77))
    for p in (work / "runs").rglob("*"):
        os.chmod(p, 0o777 if p.is_dir() else 0o666)
    os.chmod(work / "runs", 0o777)
    target = {"run_dir": locked, "manifest": locked / MANIFEST_FILENAME, "steplog": locked / STEPLOG_FILENAME,
              "folder_of_runs": locked.parent}[what]
    if what == "folder_of_runs":  # a group folder nobody else may list: reported as the folder
        locked = locked.parent
    os.chmod(target, 0o000)
    out = subprocess.run([sys.executable, "-c", _AS_NOBODY, str(work / "t.duckdb"), str(work / "runs"),
                          str(work / "q")], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HOME": str(work)})
    assert out.returncode == 0, out.stderr[-3000:]
    rep = json.loads(out.stdout.strip().splitlines()[-1])
    assert rep["added"] == len(runs)
    assert [p for p, _ in rep["quarantined"]] == [str(locked)]
    assert "unreadable" in rep["quarantined"][0][1] and "ermission" in rep["quarantined"][0][1]
    os.chmod(target, 0o755)
    assert locked.is_dir() and not (work / "q").exists()  # reported, left in place


# -- imports: identity from content --------------------------------------------------------------------------

CELLS_HEADER = ",".join(importers.CELLS_COLUMNS)


def _cell(seed: int, loss: float = 1.5) -> str:
    return f"llada,GSAI-ML/LLaDA-8B-Base,8,0.5,{seed},1e-4,True,11,False,{2.0 + seed},{loss}"


def test_a_grown_cells_file_adds_only_the_new_row_and_a_repeated_row_is_stored_once(tmp_path):
    db, f = tmp_path / "t.duckdb", tmp_path / "cells.csv"
    f.write_text("\n".join([CELLS_HEADER, _cell(1), _cell(2), _cell(1)]) + "\n")  # row 1 repeated
    r = importers.import_logs(db, "cells", [f])
    assert r.added == 2 and len(r.duplicates) == 1 and f"{f}:2" in r.duplicates[0][1]
    f.write_text(f.read_text() + _cell(3) + "\n")  # one appended row
    r = importers.import_logs(db, "cells", [f])
    assert (r.added, r.already_present) == (1, 3)
    assert db_rows(db, "SELECT count(*) FROM runs") == [(3,)]
    # the same rows in another file (another order) are the same runs
    g = tmp_path / "copy.csv"
    g.write_text("\n".join([CELLS_HEADER, _cell(3), _cell(2), _cell(1)]) + "\n")
    assert importers.import_logs(db, "cells", [g]).added == 0
    assert db_rows(db, "SELECT count(*) FROM runs") == [(3,)]


def test_a_grown_json_rows_file_adds_only_the_new_record_and_a_repeated_one_is_stored_once(tmp_path):
    db, f = tmp_path / "t.duckdb", tmp_path / "paper.json"

    def rec(seed: int) -> dict:
        return dict(zip(importers.CELLS_COLUMNS, _cell(seed).split(",")))

    f.write_text(json.dumps({"rows": [rec(1), rec(2), rec(1)]}))
    r = importers.import_logs(db, "json-rows", [f])
    assert r.added == 2 and len(r.duplicates) == 1 and "duplicate of" in r.duplicates[0][1]
    f.write_text(json.dumps({"rows": [rec(1), rec(2), rec(1), rec(3)]}))  # one record appended
    r = importers.import_logs(db, "json-rows", [f])
    assert (r.added, r.already_present) == (1, 3)
    # the same configurations as a CSV are the same runs
    csv = tmp_path / "same.csv"
    csv.write_text("\n".join([CELLS_HEADER, _cell(3), _cell(2), _cell(1)]) + "\n")
    assert importers.import_logs(db, "cells", [csv]).added == 0
    assert db_rows(db, "SELECT count(*), count(DISTINCT run_id) FROM runs") == [(3, 3)]


def test_a_cells_file_is_streamed_in_batches_and_a_late_bad_row_still_rejects_it_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(importers, "STAGE_BATCH_ROWS", 3)  # several staged batches before the bad row
    db, f, good = tmp_path / "t.duckdb", tmp_path / "cells.csv", tmp_path / "good.csv"
    rows = [_cell(i) for i in range(10)]
    f.write_text("\n".join([CELLS_HEADER, *rows, _cell(99).replace(",8,", f",{2**31},")]) + "\n")
    good.write_text("\n".join([CELLS_HEADER, *rows[:4]]) + "\n")
    r = importers.import_logs(db, "cells", [f, good])
    assert r.added == 4 and [p for p, _ in r.quarantined] == [str(f)] and f"{f}:12" in r.quarantined[0][1]
    assert db_rows(db, "SELECT count(*) FROM runs") == [(4,)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.csv", "good.csv", "t.duckdb"]  # no staging left
    f.write_text("\n".join([CELLS_HEADER, *rows, rows[0]]) + "\n")  # fixed; the first 4 rows are stored already
    r = importers.import_logs(db, "cells", [f])
    assert (r.added, r.already_present, len(r.duplicates)) == (6, 5, 1) and f"{f}:2" in r.duplicates[0][1]
    assert db_rows(db, "SELECT count(*), count(DISTINCT run_id) FROM runs") == [(10, 10)]
    assert sorted(r.added_run_ids) == sorted(set(r.added_run_ids))


def test_an_import_whose_memory_limit_is_too_small_for_duckdb_is_retried_without_it(tmp_path, monkeypatch):
    monkeypatch.setattr(importers, "IMPORT_MEMORY_FLOOR_MB", 1)  # below what DuckDB needs for anything
    calls = []
    real = store._write_batch

    def spy(*a, **kw):
        calls.append(kw.get("memory_limit_mb"))
        return real(*a, **kw)

    monkeypatch.setattr(store, "_write_batch", spy)
    db, f = tmp_path / "t.duckdb", tmp_path / "cells.csv"
    f.write_text("\n".join([CELLS_HEADER, *(_cell(i) for i in range(50))]) + "\n")
    r = importers.import_logs(db, "cells", [f])
    assert calls == [1, None] and r.added == 50
    assert db_rows(db, "SELECT count(*), count(DISTINCT run_id) FROM runs") == [(50, 50)]
    assert db_rows(db, "SELECT count(*) FROM ingests") == [(1,)]  # the failed attempt wrote nothing


def _jsonl(n: int, *, seed_shift: float = 0.0) -> str:
    return "\n".join(json.dumps({"step": t, "loss": 3.0 - 0.01 * t + seed_shift, "max_grad_norm": 1.0 + 0.1 * t,
                                 "top1_token_freq": 0.3, "mask_ratio": 0.5, "rank": 8, "model_family": "llada"})
                     for t in range(n)) + "\n"


def _hf(n: int) -> str:
    return json.dumps({"max_steps": 500, "log_history": [
        {"step": t, "loss": 3.0 - 0.01 * t, "grad_norm": 1.0 + 0.1 * t, "learning_rate": 1e-4} for t in range(1, n + 1)
    ] + [{"step": n, "eval_loss": 2.0}]}, indent=1)


def _wandb(n: int) -> str:
    return "_step,loss,grad_norm\n" + "".join(f"{t},{3.0 - 0.01 * t},{1.0 + 0.1 * t}\n" for t in range(n))


GROWN = {"reference-jsonl": (_jsonl, "jsonl", {}), "hf-trainer": (_hf, "json", {"family": "llada"}),
         "wandb-csv": (_wandb, "csv", {"family": "llada"})}


@pytest.mark.parametrize("fmt", sorted(GROWN))
def test_a_grown_time_series_updates_its_run_in_place(tmp_path, fmt):
    make, ext, kw = GROWN[fmt]
    db, f = tmp_path / "t.duckdb", tmp_path / f"log.{ext}"
    f.write_text(make(10))
    first = importers.import_logs(db, fmt, [f], **kw)
    assert first.added == 1
    (run_id,) = first.added_run_ids
    f.write_text(make(25))  # re-exported after more steps
    grown = importers.import_logs(db, fmt, [f], **kw)
    assert (grown.added, grown.updated_run_ids) == (0, (run_id,))
    assert db_rows(db, "SELECT run_id, n_steps FROM runs") == [(run_id, 25)]
    assert db_rows(db, f"SELECT count(*), max(step) FROM steps WHERE run_id = '{run_id}'")[0][0] == 25
    # the older, shorter export again: nothing changes; the longer one again: already present
    old = tmp_path / f"old.{ext}"
    old.write_text(make(10))
    again = importers.import_logs(db, fmt, [old, f], **kw)
    assert (again.added, again.updated_run_ids) == (0, ())
    assert db_rows(db, "SELECT count(*) FROM steps") == [(25,)]


def test_the_same_log_from_two_files_is_stored_once_and_reported(tmp_path):
    db = tmp_path / "t.duckdb"
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(_jsonl(12))
    b.write_text(_jsonl(12))
    r = importers.import_logs(db, "reference-jsonl", [a, b])
    assert r.added == 1 and r.already_present == 1 and [p for p, _ in r.duplicates] == [str(b)]
    other = tmp_path / "other.jsonl"  # same config, other values from step 0 on: another run
    other.write_text(_jsonl(12, seed_shift=0.5))
    assert importers.import_logs(db, "reference-jsonl", [other]).added == 1
    assert db_rows(db, "SELECT count(*) FROM runs") == [(2,)]


INT32_CASES = {
    "jsonl-step": ("reference-jsonl", "jsonl", lambda: _jsonl(3) + json.dumps(
        {"step": 2**31, "loss": 1.0, "max_grad_norm": 1.0, "top1_token_freq": None, "mask_ratio": None}) + "\n",
        {}, "step=2147483648"),
    "jsonl-rank": ("reference-jsonl", "jsonl", lambda: _jsonl(3).replace('"rank": 8', f'"rank": {2**40}'), {},
                   "rank="),
    "cells-rank": ("cells", "csv", lambda: f"{CELLS_HEADER}\nllada,m,{2**33},0.5,1,1e-4,True,11,False,2.0,1.0\n",
                   {}, "rank='8589934592'"),
    "cells-fire-step": ("cells", "csv", lambda: f"{CELLS_HEADER}\nllada,m,8,0.5,1,1e-4,True,{2**31},False,2.0,1.0\n",
                        {}, "top1_fire_step="),
    "wandb-step": ("wandb-csv", "csv", lambda: f"_step,loss,grad_norm\n0,1.0,1.0\n{10**12},1.0,1.0\n",
                   {"family": "llada"}, "_step='1000000000000'"),
    "option-steps": ("wandb-csv", "csv", lambda: _wandb(3), {"family": "llada", "steps": str(2**40)}, "steps="),
    "hf-step": ("hf-trainer", "json", lambda: _hf(3).replace('"step": 3,', f'"step": {2**31},'), {"family": "llada"},
                "step=2147483648"),
    "cells-seed-beyond-int64": ("cells", "csv",
                                lambda: f"{CELLS_HEADER}\nllada,m,8,0.5,{2**64},1e-4,True,11,False,2.0,1.0\n", {},
                                "seed="),
    "json-rows-fire-step": ("json-rows", "json", lambda: json.dumps([{
        "family": "llada", "model_name": "m", "rank": 8, "rho": 0.5, "seed": 1, "lr": 1e-4, "top1_fired": True,
        "top1_fire_step": 2**40, "collapsed": False, "max_grad_norm": 2.0, "final_loss": 1.0}]), {}, "top1_fire_step="),
}


@pytest.mark.parametrize("case", sorted(INT32_CASES))
def test_an_integer_beyond_int32_fails_its_file_naming_the_value_and_the_good_files_import(tmp_path, case):
    fmt, ext, make, kw, says = INT32_CASES[case]
    db = tmp_path / "t.duckdb"
    bad = tmp_path / f"bad.{ext}"
    bad.write_text(make())
    goods = {"reference-jsonl": _jsonl(5), "cells": f"{CELLS_HEADER}\n{_cell(1)}\n", "wandb-csv": _wandb(5),
             "hf-trainer": _hf(5), "json-rows": json.dumps([dict(zip(importers.CELLS_COLUMNS, _cell(1).split(",")))])}
    good = tmp_path / f"good.{ext}"
    good.write_text(goods[fmt])
    opts = {k: v for k, v in kw.items() if k != "steps"}
    r = importers.import_logs(db, fmt, [bad, good], **kw) if "steps" not in kw else None
    if r is None:  # a bad option applies to every file of the call: each is reported, nothing half-written
        r = importers.import_logs(db, fmt, [bad, good], **kw)
        assert r.added == 0 and len(r.quarantined) == 2 and all(says in why for _, why in r.quarantined)
        assert importers.import_logs(db, fmt, [good], **opts).added == 1
        return
    assert r.added == 1, r.quarantined
    assert [p for p, _ in r.quarantined] == [str(bad)] and says in r.quarantined[0][1], r.quarantined


# -- calibration memory follows the rows stored --------------------------------------------------------------

def test_calibration_inputs_hold_one_entry_per_stored_step_whatever_the_step_numbers(tmp_path):
    db = tmp_path / "t.duckdb"
    make_sweep(tmp_path / "runs", 30, steps=30, unstable_every=3)
    store.ingest_runs(db, tmp_path / "runs")
    f = tmp_path / "huge-steps.csv"  # W&B `_step` / HF global steps in the millions
    f.write_text("_step,loss,grad_norm\n0,3.0,1.0\n1,2.9,1.1\n2500000,2.0,0.5\n")
    assert importers.import_logs(db, "wandb-csv", [f], family="tiny").added == 1
    con = store.connect(db, read_only=True)
    try:
        inp = store.load_calibration_inputs(con)
        n_stored = con.execute("SELECT count(*) FROM steps").fetchall()[0][0]
    finally:
        con.close()
    t = inp.traj
    assert t.n_steps == 2_500_001
    assert t.step.size == n_stored == 30 * 31 + 3
    assert t.loss.nbytes + t.grad_norm.nbytes + t.top1.nbytes + t.step.nbytes == 32 * n_stored
    from dlm_triage.calibrate import calibrate

    res = calibrate(inp, n_resamples=30, stepk_resamples=10, ks=(5, 25))
    assert res["groups"]["tiny"]["n"] == 31


def test_stepk_predictors_on_sparse_steps_match_the_dense_rule():
    from dlm_triage.calibrate import Trajectories, stepk_predictors

    rng = np.random.default_rng(0)
    n, width = 7, 40
    loss, grad, top1 = (rng.random((n, width)) for _ in range(3))
    grad[rng.random((n, width)) < 0.3] = np.nan
    dense = Trajectories([f"r{i}" for i in range(n)], loss, grad, top1)
    keep = rng.random((n, width)) < 0.5
    keep[:, 0] = True
    rows_, cols_ = np.nonzero(keep)
    offsets = np.concatenate([[0], np.cumsum(keep.sum(axis=1))])
    sparse = Trajectories.from_long(dense.run_ids, offsets, cols_, loss[rows_, cols_], grad[rows_, cols_],
                                    top1[rows_, cols_])
    g2 = np.where(keep, grad, np.nan)
    ks = [0, 3, 11, 25, 39, 1000]
    rows = np.array([3, -1, 0, 6, 2])
    got = stepk_predictors(sparse, rows, ks)
    with np.errstate(all="ignore"):
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i, k in enumerate(ks):
                for j, r in enumerate(rows):
                    if r < 0:
                        assert np.isnan(got["max_grad"][i, j]) and np.isnan(got["loss"][i, j])
                        continue
                    exp = np.nanmax(g2[r, :k + 1]) if np.isfinite(g2[r, :k + 1]).any() else np.nan
                    np.testing.assert_equal(got["max_grad"][i, j], exp)
                    exp_loss = loss[r, k] if k < width and keep[r, k] else np.nan
                    np.testing.assert_equal(got["loss"][i, j], exp_loss)


# -- a commit that fails on a full disk says so (not "cannot rollback") -------------------------------------

_FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    from pathlib import Path
    from dlm_triage import store
    db, runs = Path(sys.argv[1]), Path(sys.argv[2])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, like ENOSPC
    limit = max(f.stat().st_size for f in db.parent.glob(db.name + "*")) + 50_000
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        store.ingest_runs(db, runs)
    except store.StoreError as e:
        print("STORE-ERROR", e)
""")


def test_a_commit_failing_on_a_full_disk_names_the_real_error_and_stores_nothing(tmp_path):
    db = tmp_path / "t.duckdb"
    make_sweep(tmp_path / "a", 2)
    store.ingest_runs(db, tmp_path / "a")
    before = _tables(db)
    make_sweep(tmp_path / "b", 200, steps=200)
    out = subprocess.run([sys.executable, "-c", _FULL_DISK, str(db), str(tmp_path / "b")], capture_output=True,
                         text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    text = out.stdout + out.stderr
    assert "STORE-ERROR" in out.stdout, text[-3000:]
    assert "File too large" in out.stdout and "free disk space" in out.stdout
    assert "cannot rollback" not in text and "no transaction is active" not in text
    assert _tables(db) == before  # the database opens and holds what it held
    assert store.ingest_runs(db, tmp_path / "b").added == 200  # and takes the batch once there is room


def test_calibrate_whose_output_cannot_be_written_registers_no_threshold(tmp_path, capsys):
    out = tmp_path / "out"
    make_sweep(out / "runs", 12, steps=30, unstable_every=3)
    assert cli.main(["--out", str(out), "ingest"]) == 0
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the output folder should be")
    assert cli.main(["--out", str(out), "calibrate", "--out", str(blocker / "cal"), "--resamples", "30",
                     "--stepk-resamples", "10"]) == 2
    assert "not-a-dir" in capsys.readouterr().err
    assert db_rows(out / "triage.duckdb", "SELECT count(*) FROM calibrations") == [(0,)]
    assert db_rows(out / "triage.duckdb", "SELECT count(*) FROM thresholds") == [(0,)]


def _fill(folder: Path) -> None:
    """Write one file until its file system is full (ENOSPC)."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"x" * 1024):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


@pytest.fixture
def small_fs(tmp_path):
    """A real small file system (a tmpfs of 8 MiB; `_fill` makes it full: writes fail with ENOSPC). Needs the
    right to mount (root in a container that allows it); skipped elsewhere."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture
def full_disk(small_fs):
    _fill(small_fs)
    return small_fs


def test_an_ingest_into_a_database_on_a_full_disk_names_the_error_and_keeps_what_was_stored(tmp_path, small_fs):
    db = small_fs / "t.duckdb"
    make_sweep(tmp_path / "a", 3)
    store.ingest_runs(db, tmp_path / "a")
    before = _tables(db)
    _fill(small_fs)
    make_sweep(tmp_path / "b", 100, steps=200)
    with pytest.raises(store.StoreError) as e:
        store.ingest_runs(db, tmp_path / "b")
    assert "No space left" in str(e.value) and "cannot rollback" not in str(e.value), str(e.value)
    (small_fs / "filler").unlink()
    assert _tables(db) == before  # the database opens and holds what it held
    assert store.ingest_runs(db, tmp_path / "b").added == 100  # and takes the batch once there is room


def test_calibrate_on_a_full_disk_registers_no_threshold_and_then_registers_once_there_is_room(tmp_path, full_disk,
                                                                                               capsys):
    out = tmp_path / "out"
    make_sweep(out / "runs", 12, steps=30, unstable_every=3)
    assert cli.main(["--out", str(out), "ingest"]) == 0
    args = ["--out", str(out), "calibrate", "--out", str(full_disk / "cal"), "--resamples", "30",
            "--stepk-resamples", "10"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "No space left" in err and "Traceback" not in err, err
    assert db_rows(out / "triage.duckdb", "SELECT count(*) FROM calibrations") == [(0,)]
    assert db_rows(out / "triage.duckdb", "SELECT count(*) FROM thresholds") == [(0,)]
    assert not [p for p in full_disk.rglob("*") if p.name != "filler" and p.is_file()]  # no partial file left
    (full_disk / "filler").unlink()
    assert cli.main(args) == 0
    assert db_rows(out / "triage.duckdb", "SELECT count(*) FROM calibrations") == [(1,)]


# -- small ones: configs, CLI files, devices, queue reasons, echoed secrets ----------------------------------

BAD_SETS = {
    "target-modules-number": (["--set", "target_modules=5"], ["target_modules=5"]),
    "target-modules-string": (["--set", 'target_modules="q_proj"'], ["target_modules='q_proj'"]),
    "adapter-dir-number": (["--set", "adapter_dir=5"], ["adapter_dir=5"]),
    "save-adapter-no": (["--set", 'save_adapter="no"'], ["save_adapter='no'"]),
    "unknown-key-and-bad-rank": (["--set", "rnak=4", "--set", "rank=0", "--set", "mask_ratio=2"],
                                 ["['rnak']", "rank=0", "mask_ratio=2"]),
    "two-unknown-keys-and-a-bad-adapter-dir": (["--set", "lerning_rate=1e-4", "--set", "sed=3", "--set",
                                                "adapter_dir=5"], ["lerning_rate", "sed", "adapter_dir=5"]),
    "save-adapter-number": (["--set", "save_adapter=2"], ["save_adapter=2"]),
    "target-modules-list-of-numbers": (["--set", "target_modules=[1, 2]"], ["target_modules"]),
}


@pytest.mark.parametrize("case", sorted(BAD_SETS))
def test_bad_train_settings_are_all_named_at_once_and_nothing_is_created(tmp_path, case, capsys):
    argv, named = BAD_SETS[case]
    out = tmp_path / "out"
    assert cli.main(["--out", str(out), "train", *argv]) == 2
    err = capsys.readouterr().err
    assert all(n in err for n in named), err
    assert "Traceback" not in err and not out.exists()


def test_a_string_target_module_is_never_split_into_characters():
    from dlm_triage.config import ConfigError, SweepSpec

    with pytest.raises(ConfigError, match="target_modules='q_proj'"):
        RunConfig(target_modules="q_proj")
    with pytest.raises(ConfigError, match="target_modules='q_proj'"):
        SweepSpec(base={"target_modules": "q_proj"})
    assert RunConfig(target_modules=["q_proj"]).target_modules == ("q_proj",)


BAD_JSON_FILES = {"invalid": ("{ rank: 4 ", ":1:3: not valid JSON"), "number": ("5", "holds a JSON int"),
                  "list": ("[]", "holds a JSON list"), "string": ('"rank=4"', "holds a JSON str")}


@pytest.mark.parametrize("verb", ["train --config", "sweep --spec"])
@pytest.mark.parametrize("case", sorted(BAD_JSON_FILES))
def test_config_and_spec_files_must_hold_a_json_object_and_errors_name_the_file(tmp_path, verb, case, capsys,
                                                                                  monkeypatch):
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    text, says = BAD_JSON_FILES[case]
    f = tmp_path / "settings.json"
    f.write_text(text)
    out = tmp_path / "out"
    assert cli.main(["--out", str(out), *verb.split(), str(f)]) == 2
    err = capsys.readouterr().err
    assert f"{f}{says}" in err or (str(f) in err and says in err), err
    assert "Traceback" not in err and not out.exists()  # `[]` never trains the default
    missing = tmp_path / "missing.json"
    assert cli.main(["--out", str(out), *verb.split(), str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the machine without CUDA")
def test_sweep_on_a_missing_cuda_device_fails_before_prefect_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    import flows.sweep as sweep_mod

    def no_prefect(*a, **k):
        raise AssertionError("the sweep flow started")

    monkeypatch.setattr(sweep_mod, "sweep_flow", no_prefect)
    assert cli.main(["--out", str(tmp_path / "out"), "sweep", "--device", "cuda:0", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "device='cuda:0'" in err and "CUDA is not available" in err
    assert not (tmp_path / "out").exists()


def test_an_adapter_dir_that_is_a_file_fails_before_training_with_the_right_hint(tmp_path):
    from dlm_triage.train import train_run

    f = tmp_path / "adapter.bin"
    f.write_text("x")
    cfg = RunConfig(steps=2, adapter_dir=str(f))
    with pytest.raises(NotADirectoryError, match="adapter_dir .* is a file"):
        train_run(cfg, tmp_path / "runs")
    assert not (tmp_path / "runs").exists()  # no empty run directory left behind


def test_queue_reasons_name_whole_run_thresholds(tmp_path):
    db = tmp_path / "t.duckdb"
    rows = [CELLS_HEADER] + [f"llada,m,8,0.5,{i},1e-4,True,11,False,{50.0 if i % 4 == 0 else 1.0 + i / 10},"
                             f"{3.0 if i % 4 == 0 else 1.0 + i / 100}" for i in range(40)]
    f = tmp_path / "cells.csv"
    f.write_text("\n".join(rows) + "\n")
    importers.import_logs(db, "cells", [f])
    con = store.connect(db)
    try:
        store.save_calibration(con, {"calibration_id": "cal-whole", "group_by": "family", "groups": {
            "llada": {"n": 40, "registry": {"monitor": "max_grad_norm", "k": None, "threshold": 40.0,
                                            "ci_low": 30.0, "ci_high": 45.0, "n": 40}}}})
        q = store.inspection_queue(con, calibration_id="cal-whole")
    finally:
        con.close()
    assert q.height == 10
    assert all(r and r.startswith("whole-run max grad = 50 >= threshold 40 (") for r in q["reason"].to_list())


WRONG_FILES = {  # (file name, text, secrets that must not appear, options)
    "dotenv": (".env", "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE1234,DATABASE_PASSWORD=hunter2," + "x" * 500
               + "\nmore,lines,here\n", ["AKIAIOSFODNN7EXAMPLE1234", "hunter2", "x" * 30], {}),
    "ssh-key": ("id_ed25519", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n"
                "-----END OPENSSH PRIVATE KEY-----\n", ["b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ", "OPENSSH"], {}),
    "bare-token": ("token.txt", "ghp_16C7e42F292c6912E7710c838347Ae178B4a\n", ["ghp_16C7e42F292c6912E7710c838347Ae178B4a"],
                   {}),
    "netrc": ("netrc.csv", "machine api.example.com login me password s3cr3t-passw0rd-value,x\n",
              ["s3cr3t-passw0rd-value"], {}),
    "secret-in-a-value": ("cells.csv", CELLS_HEADER + "\nllada,m,sk_live_51HxYzABCdef0123456789,0.5,1,1e-4,True,11,"
                          "False,2.0,1.0\n", ["sk_live_51HxYzABCdef0123456789"], {}),
    "secret-column-named-by-map": (".env.csv", "API_TOKEN_ab12cd34ef56gh78ij90kl,b\n1,2\n",
                                   ["API_TOKEN_ab12cd34ef56gh78ij90kl"], {"map": "rank=lora_r"}),
}


@pytest.mark.parametrize("case", sorted(WRONG_FILES))
def test_a_wrong_file_imported_as_cells_is_not_echoed(tmp_path, case):
    name, text, secrets, opts = WRONG_FILES[case]
    f = tmp_path / name
    f.write_text(text)
    r = importers.import_logs(tmp_path / "t.duckdb", "cells", [f], **opts)
    (path, why), = r.quarantined
    assert path == str(f) and len(why) < 1200
    assert not [x for x in secrets if x in why], why
    stored = db_rows(tmp_path / "t.duckdb", "SELECT reason FROM quarantine")[0][0]
    assert not [x for x in secrets if x in stored]
    assert f.read_text() == text  # a user's file is never moved or changed


def test_hf_trainer_entry_lines_are_counted_in_one_pass_and_stay_exact():
    history = [{"step": i, "loss": 1.0, "grad_norm": 1.0, "nested": {"a": [1, 2, {"b": "c\n"}]}} for i in range(50)]
    text = json.dumps({"best_metric": None, "log_history": history}, indent=2)
    got = importers._entry_lines(text, len(history))
    expected = [i + 1 for i, line in enumerate(text.split("\n")) if line.startswith("    {")]
    assert got == expected


# -- fuzz: no ingestion aborted by one input, no row lost or duplicated ---------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from dlm_triage.schema import MANIFEST_KEYS  # noqa: E402

_RAW = st.sampled_from(["Infinity", "-Infinity", "NaN", str(2**31), str(-(2**31) - 1), str(10**30), "1e400",
                        "7" * 5000, _deep(5000), '"no"', '"false"', '"yes"', "[]", "{}", "null", "true", "3.5",
                        '"\\u0000"', '"x"'])
_JSON = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=6)
_KEYS = st.sampled_from(list(MANIFEST_KEYS)) | st.sampled_from([f"config.{k}" for k in sorted(RunConfig().to_dict())])
_EDIT = st.tuples(_KEYS, st.one_of(_RAW.map(lambda r: ("raw", r)), _JSON.map(lambda v: ("value", v)),
                                   st.just(("delete", None))))


def _edit_manifest(run_dir: Path, edits) -> None:
    m = json.loads((run_dir / MANIFEST_FILENAME).read_text())
    raws = {}
    for i, (key, (how, v)) in enumerate(edits):
        target, k = (m.get("config"), key[7:]) if key.startswith("config.") else (m, key)
        if not isinstance(target, dict):
            continue
        if how == "delete":
            target.pop(k, None)
        elif how == "raw":
            raws[f"__DLMT_RAW_{i}__"] = v
            target[k] = f"__DLMT_RAW_{i}__"
        else:
            target[k] = v
    text = json.dumps(m)
    for marker, raw in raws.items():
        text = text.replace(f'"{marker}"', raw)
    (run_dir / MANIFEST_FILENAME).write_text(text)


@pytest.fixture(scope="module")
def run_templates(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("fuzz-templates")
    return [make_run(root, RunConfig(steps=6, seed=i), status="diverged" if i == 2 else "completed")
            for i in range(4)]


# example counts are modest on purpose (each example writes run directories and a DuckDB file): ~10 s each
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(_EDIT, max_size=3), min_size=4, max_size=4))
def test_fuzz_manifests_never_abort_an_ingestion_or_lose_or_duplicate_a_run(run_templates, edits_per_run):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "runs"
        dirs = []
        for src, edits in zip(run_templates, edits_per_run):
            dst = root / src.name
            shutil.copytree(src, dst)
            if edits:
                _edit_manifest(dst, edits)
            dirs.append(dst)
        db = Path(d) / "t.duckdb"
        r = store.ingest_runs(db, root, quarantine_dir=Path(d) / "q")  # never raises for one bad input
        stored = db_rows(db, "SELECT run_id, n_steps FROM runs")
        untouched = {src.name for src, e in zip(run_templates, edits_per_run) if not e}
        ids = [rid for rid, _ in stored]
        assert len(ids) == len(set(ids)) == r.added
        assert untouched <= set(ids)  # a good run is never lost beside a bad one
        accounted = r.added + r.incomplete + len(r.quarantined) + len(r.skipped) + r.already_present
        assert accounted == len(dirs)
        n_steps = db_rows(db, "SELECT run_id, count(*) FROM steps GROUP BY ALL")
        assert dict(n_steps) == {rid: n for rid, n in stored}  # every stored run has exactly its steps
        again = store.ingest_runs(db, root, quarantine_dir=Path(d) / "q")
        assert again.added == 0 and db_rows(db, "SELECT count(*) FROM runs") == [(len(ids),)]


_CELL_FIELD = st.one_of(st.sampled_from(["None", "", "True", "False", "nan", "inf", str(2**31), "²", "-1", "0.5",
                                         "1e400", "x,y", '"q"', "8"]),
                        st.integers(-5, 40).map(str), st.floats(0.01, 100).map(repr))


def _cells_row(seed: int, bad: list[tuple[int, str]]) -> str:
    fields = ["llada", "m", "8", "0.5", str(seed), "1e-4", "True", "11", "False", f"{2.0 + seed}", "1.5"]
    for i, v in bad:
        fields[i % len(fields)] = v
    return ",".join(fields)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.tuples(st.integers(0, 8), st.lists(st.tuples(st.integers(0, 10), _CELL_FIELD),
                                                                 max_size=1)), min_size=1, max_size=5),
                min_size=1, max_size=4))
def test_fuzz_import_files_never_abort_an_import_or_lose_or_duplicate_a_row(tmp_path, files):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        paths, expected = [], set()
        for i, rows in enumerate(files):
            p = Path(d) / f"cells-{i}.csv"
            p.write_text("\n".join([CELLS_HEADER] + [_cells_row(seed, bad) for seed, bad in rows]) + "\n")
            paths.append(p)
            try:  # the oracle: each file on its own, all or nothing
                expected |= {q.row["run_id"] for q in importers.parse_cells(p)}
            except importers.LogFormatError:
                pass
        db = Path(d) / "t.duckdb"
        r = importers.import_logs(db, "cells", paths)  # never raises for one bad file
        ids = [row[0] for row in db_rows(db, "SELECT run_id FROM runs")]
        assert len(ids) == len(set(ids)) and set(ids) == expected  # nothing lost, nothing twice
        assert r.added == len(expected)
        grown = paths[0]
        grown.write_text(grown.read_text() + _cells_row(99, []) + "\n")  # a file that grows by one row
        r2 = importers.import_logs(db, "cells", paths)
        ids2 = [row[0] for row in db_rows(db, "SELECT run_id FROM runs")]
        assert len(ids2) == len(set(ids2)) and r2.added <= 1 and set(ids) <= set(ids2)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.integers(2, 30), st.integers(1, 30), st.booleans())
def test_fuzz_grown_jsonl_logs_are_stored_once_at_their_longest(tmp_path, n1, extra, twice):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        db, f = Path(d) / "t.duckdb", Path(d) / "run.jsonl"
        f.write_text(_jsonl(n1))
        importers.import_logs(db, "reference-jsonl", [f])
        f.write_text(_jsonl(n1 + extra))
        copies = [f] + ([Path(d) / "copy.jsonl"] if twice else [])
        if twice:
            copies[1].write_text(_jsonl(n1))  # the old export beside the grown one, in the same call
        importers.import_logs(db, "reference-jsonl", copies)
        assert db_rows(db, "SELECT count(*), max(n_steps) FROM runs") == [(1, n1 + extra)]
        assert db_rows(db, "SELECT count(*), count(DISTINCT step) FROM steps") == [(n1 + extra, n1 + extra)]


# -- remote code only from the allow-list -------------------------------------------------------------------

def test_remote_code_runs_only_for_allow_listed_ids_and_local_directories(tmp_path, monkeypatch):
    from dlm_triage import trust
    from dlm_triage.families import FamilyError, get_family

    monkeypatch.delenv(trust.TRUSTED_MODELS_ENV, raising=False)
    llada = get_family("llada")
    cfg = RunConfig(family="llada", model_id="attacker/innocent-looking-model", steps=2)
    with pytest.raises(FamilyError, match="not on the allow-list") as e:
        llada.load(cfg, "cpu", __import__("torch").float32)  # refused before anything is downloaded or run
    assert trust.TRUSTED_MODELS_ENV in str(e.value)
    assert trust.is_trusted("GSAI-ML/LLaDA-8B-Instruct") and trust.is_trusted(str(tmp_path))
    assert not trust.is_trusted("attacker/innocent-looking-model")
    monkeypatch.setenv(trust.TRUSTED_MODELS_ENV, "myorg/*, other/model")
    assert trust.is_trusted("myorg/llada-ft") and trust.is_trusted("other/model")
    assert not trust.is_trusted("myorgx/llada") and not trust.is_trusted("attacker/innocent-looking-model")
    # families that never run remote code are not restricted
    assert get_family("ar").trust_remote_code is False


def test_setup_script_binds_locally_and_documents_authentication():
    text = (REPO / "deployments" / "setup.sh").read_text()
    assert all(line.lstrip().startswith("#") and "without either" in line
               for line in text.splitlines() if "0.0.0.0" in line)  # named only as what not to do
    assert "--host 127.0.0.1" in text and "PREFECT_SERVER_API_AUTH_STRING" in text
    assert "DLM_TRIAGE_TRUSTED_MODELS" in text
    readme = (REPO / "deployments" / "README.md").read_text()
    assert "PREFECT_SERVER_API_AUTH_STRING" in readme and "DLM_TRIAGE_TRUSTED_MODELS" in readme


# -- the temporary Prefect server dies with its CLI ----------------------------------------------------------

def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.server
@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process tree from /proc")
def test_kill_9_of_sweep_takes_its_temporary_prefect_server_down(tmp_path):
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PREFECT_HOME=str(tmp_path / "prefect"))
    cli_proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "--out", str(tmp_path / "out"), "sweep", "--ranks", "4",
         "--mask-ratios", "0.5", "--seeds", "1", "--steps", "100000", "--device", "cpu"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    server = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and cli_proc.poll() is None:
            # Prefect's own temporary server (uvicorn) or ours (flows.tempserver): whichever serves this sweep
            found = [c for c in _children(cli_proc.pid) if any(w in _cmdline(c) for w in ("uvicorn", "tempserver"))]
            if found and (tmp_path / "out" / "runs").is_dir():  # the server answered: the sweep is running
                server = found[0]
                break
            time.sleep(0.5)
        assert server is not None, (cli_proc.poll(), cli_proc.stderr.read().decode()[-2000:]
                                    if cli_proc.poll() is not None else "")
        os.kill(cli_proc.pid, 9)
        cli_proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _alive(server) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _alive(server), f"the temporary server {server} outlived its sweep: {_cmdline(server)}"
    finally:
        if cli_proc.poll() is None:
            os.kill(cli_proc.pid, 9)
        if server is not None and _alive(server):
            os.kill(server, 9)
        # the sweep's own shard processes (its session) are the sweep's business: end those left behind
        for pid in [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]:
            try:
                if os.getsid(pid) == cli_proc.pid:
                    os.kill(pid, 9)
            except (ProcessLookupError, PermissionError):
                pass
