"""Reliability: the pipeline keeps working and loses nothing when things go wrong.

End to end, with real processes, files and databases: a training process SIGKILLed mid-run (then resumed by
train_run and by the Prefect sweep flow), a failed attempt, an ingesting process SIGKILLed inside its transaction,
a diverging run carried through ingest, calibration and report, damaged import files, invalid arguments at the
CLI, an output path that cannot be a directory, a file-size limit that makes writes fail like a full disk
(RLIMIT_FSIZE: the kernel's EFBIG), and property tests of the run-log reader on damaged run directories and of
the statistics on random inputs.
What these tests back is listed, claim by claim, in docs/GUARANTEES.md.

Already covered elsewhere (not repeated here): the kill between the fsync'd tmp manifest and its rename
(test_runlog, test_train), corrupted/duplicated/conflicting run directories and the rollback of a failed ingest
(test_store), bad import files (test_importers), two ingest processes on one DuckDB file (test_store).
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cli.main as cli
from dlm_triage import stats, store, train
from dlm_triage.config import RunConfig
from dlm_triage.runlog import RunLogError, read_run
from dlm_triage.schema import MANIFEST_FILENAME, MANIFEST_KEYS, STEPLOG_FILENAME
from dlm_triage.train import train_run

from runfactory import db_rows, make_run, make_sweep

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def small(tiny_model_dir: Path, **kw) -> RunConfig:
    base = dict(model_id=str(tiny_model_dir), steps=8, batch_size=2, seq_len=16, rank=4, device="cpu",
                save_adapter=False)
    base.update(kw)
    return RunConfig(**base)


# -- SIGKILL mid-run ---------------------------------------------------------------------------------------

_VICTIM = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from dlm_triage.config import RunConfig
    from dlm_triage.train import train_run

    def progress(step, total):
        print(f"step {step}/{total}", flush=True)
        time.sleep(0.4)  # slow the victim down so the kill lands mid-run on any machine (test-side only)

    train_run(RunConfig.from_dict(json.loads(sys.argv[1])), Path(sys.argv[2]), progress=progress)
    print("finished", flush=True)
""")


def kill_mid_run(cfg: RunConfig, runs: Path, tmp: Path, *, at_step: int = 3) -> None:
    """Train `cfg` in a child process and SIGKILL it once its progress callback reported `at_step`."""
    err = tmp / f"victim-{cfg.seed}.err"
    with open(err, "w") as ferr:
        proc = subprocess.Popen([sys.executable, "-c", _VICTIM, cfg.to_json(), str(runs)], stdout=subprocess.PIPE,
                                stderr=ferr, text=True, env=ENV)
        seen = []
        try:
            for line in proc.stdout:
                seen.append(line.strip())
                if line.startswith(f"step {at_step}/"):
                    proc.send_signal(signal.SIGKILL)
                    break
        finally:
            proc.kill()
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (seen, err.read_text()[-2000:])
    assert seen[-1] == f"step {at_step}/{cfg.steps}" and "finished" not in seen


def test_sigkill_mid_run_leaves_an_incomplete_run_and_resume_retrains_only_it(tiny_model_dir, tmp_path):
    runs, db = tmp_path / "runs", tmp_path / "db" / "triage.duckdb"
    cfgs = [small(tiny_model_dir, seed=s) for s in (1, 2, 3)]
    victim = cfgs[2]
    for cfg in cfgs[:2]:
        assert train_run(cfg, runs).status == "completed"
    kill_mid_run(victim, runs, tmp_path)

    vdir = runs / victim.run_id
    assert vdir.is_dir() and not (vdir / MANIFEST_FILENAME).exists()  # visible, and visibly incomplete
    with pytest.raises(RunLogError, match="no manifest"):
        read_run(vdir)
    rep = store.ingest_runs(db, runs)
    assert (rep.added, rep.already_present, rep.incomplete, rep.quarantined) == (2, 0, 1, ())
    assert rep.incomplete_paths == (str(vdir),)
    assert db_rows(db, "SELECT run_id FROM runs ORDER BY run_id") == sorted((c.run_id,) for c in cfgs[:2])
    assert db_rows(db, f"SELECT count(*) FROM steps WHERE run_id = '{victim.run_id}'") == [(0,)]

    # Re-running the whole set trains the killed config only; the finished ones are reused from their run dirs.
    stale = vdir / f".{STEPLOG_FILENAME}.999999.tmp"  # what a kill inside the final write leaves (test_runlog)
    stale.write_bytes(b"half a parquet file")
    results = [train_run(cfg, runs, resume=True) for cfg in cfgs]
    assert not stale.exists()
    assert [r.reused for r in results] == [True, True, False]
    assert all(r.status == "completed" for r in results)
    rep = store.ingest_runs(db, runs)
    assert (rep.added, rep.already_present, rep.incomplete, rep.quarantined) == (1, 2, 0, ())
    assert db_rows(db, "SELECT count(*), count(DISTINCT run_id), min(status), max(status) FROM runs") == [
        (3, 3, "completed", "completed")]
    assert db_rows(db, "SELECT count(*) FROM steps") == [(3 * (victim.steps + 1),)]


def test_a_failed_attempt_is_never_stored_and_its_rerun_ingests(tiny_model_dir, tmp_path, monkeypatch):
    runs, db = tmp_path / "runs", tmp_path / "triage.duckdb"
    cfg = small(tiny_model_dir)

    def boom(step, model):
        if step == 2:
            raise RuntimeError("simulated device error")

    with pytest.raises(RuntimeError, match="simulated"):
        train_run(cfg, runs, hooks=train.FaultHooks(after_backward=boom))
    assert read_run(runs / cfg.run_id).manifest["status"] == "failed"  # a record of the attempt, 2 steps
    rep = store.ingest_runs(db, runs)
    assert (rep.added, rep.incomplete, rep.quarantined) == (0, 1, ())  # not a result: not stored
    assert db_rows(db, "SELECT count(*) FROM runs") == [(0,)]
    assert not train_run(cfg, runs).reused  # the sweep's re-run
    rep = store.ingest_runs(db, runs)
    assert (rep.added, rep.incomplete, rep.quarantined) == (1, 0, ())  # no conflict with the failed attempt
    assert db_rows(db, "SELECT status, n_steps FROM runs") == [("completed", cfg.steps + 1)]


@pytest.mark.slow
def test_sigkill_then_the_sweep_flow_retrains_only_the_killed_config(prefect_harness, tiny_model_dir, tmp_path):
    from dlm_triage.params import SweepParams
    from flows.sweep import sweep_flow

    params = SweepParams(families=["tiny"], ranks=[4], mask_ratios=[0.5], seeds=[1, 2, 3], steps=8, batch_size=2,
                         seq_len=16, model_id=str(tiny_model_dir), runs_dir=tmp_path / "runs",
                         db=tmp_path / "none.duckdb", device="cpu", task_runner="thread", gpu_slots=1,
                         early_warning=False, extra={"save_adapter": False})
    cfgs = params.to_spec().expand()
    runs = params.resolved_runs_dir()
    for cfg in cfgs[:2]:
        train_run(cfg, runs)
    kill_mid_run(cfgs[2], runs, tmp_path)

    records = {r["run_id"]: r for r in sweep_flow(params)}
    assert set(records) == {c.run_id for c in cfgs}
    assert all(r["status"] == "completed" for r in records.values()), records
    trained = [rid for rid, r in records.items() if not r["reused"]]
    assert trained == [cfgs[2].run_id]
    assert all((runs / c.run_id / MANIFEST_FILENAME).is_file() for c in cfgs)


_KILLED_INGEST = textwrap.dedent("""
    import os, signal, sys
    from dlm_triage import store

    insert_steps = store.ingest._insert_steps

    def insert_then_die(con, steps_df):  # runs and steps are inserted, the transaction is still open
        insert_steps(con, steps_df)
        os.kill(os.getpid(), signal.SIGKILL)

    store.ingest._insert_steps = insert_then_die  # the module whose _write_batch calls it
    store.ingest_runs(sys.argv[1], sys.argv[2])
""")


def test_sigkill_inside_the_ingest_transaction_loses_nothing_and_stores_nothing_half(tmp_path):
    db = tmp_path / "triage.duckdb"
    make_sweep(tmp_path / "old", 3)
    store.ingest_runs(db, tmp_path / "old")
    snapshot = lambda: {t: db_rows(db, f"SELECT * FROM {t} ORDER BY ALL") for t in ("runs", "steps", "ingests")}  # noqa: E731
    before = snapshot()
    new = tmp_path / "new"
    make_sweep(new, 4, steps=15)
    p = subprocess.run([sys.executable, "-c", _KILLED_INGEST, str(db), str(new)], capture_output=True, text=True,
                       env=ENV, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert snapshot() == before  # the file opens, and holds exactly what the last commit left
    rep = store.ingest_runs(db, new)
    assert (rep.added, rep.already_present, rep.quarantined) == (4, 0, ())
    assert db_rows(db, "SELECT count(*), count(DISTINCT run_id) FROM runs") == [(7, 7)]
    assert db_rows(db, "SELECT count(*) FROM steps") == [(3 * 21 + 4 * 16,)]


# -- divergence end to end -----------------------------------------------------------------------------------

def test_divergence_is_kept_ingested_labelled_unstable_and_reported(tiny_model_dir, tmp_path, monkeypatch):
    runs, db = tmp_path / "runs", tmp_path / "triage.duckdb"
    make_sweep(runs, 16, steps=12)  # a group of ordinary tiny runs for the calibration to work with
    synthetic = make_run(runs, RunConfig(steps=12, seed=99), status="diverged")  # NaN loss, Inf grad at the end

    def inf_grad(step, model):  # a real run whose gradient overflows at step 3
        if step == 3:
            next(p for p in model.parameters() if p.requires_grad).grad.view(-1)[0] = float("inf")

    real = train_run(small(tiny_model_dir, steps=12, seed=5), runs, hooks=train.FaultHooks(after_backward=inf_grad))
    assert real.status == "diverged"
    assert read_run(real.run_dir).steps.height == 4  # the log is kept up to and including the bad step

    rep = store.ingest_runs(db, runs)
    assert (rep.added, rep.quarantined) == (18, ())
    diverged = {real.run_id, synthetic.name}
    assert set(db_rows(db, "SELECT run_id, status, diverged_at_step, n_steps FROM runs WHERE status = 'diverged'")) \
        == {(real.run_id, "diverged", 3, 4), (synthetic.name, "diverged", 12, 13)}
    last = db_rows(db, f"SELECT grad_norm FROM steps WHERE run_id = '{real.run_id}' AND step = 3")[0][0]
    assert math.isinf(last)

    from dlm_triage.calibrate import run_calibration
    from dlm_triage.report import write_report

    out = run_calibration(db, tmp_path / "reports", n_resamples=50, stepk_resamples=20, ks=(5, 10))
    group = out.result.to_json()["groups"]["tiny"]
    assert group["n_diverged"] == 2 and "diverged" in group["label_rule"]
    # The stated rule: diverged runs are unstable, whatever their final loss, and stay out of the percentiles.
    con = store.connect(db, read_only=True)
    try:
        inputs = store.load_calibration_inputs(con)
        queue = store.inspection_queue(con)
    finally:
        con.close()
    lab = stats.stability_labels(inputs.runs["final_loss"].to_numpy(), inputs.runs["diverged"].to_numpy())
    ids = inputs.runs["run_id"].to_list()
    assert all(lab.unstable[ids.index(rid)] for rid in diverged)
    assert group["n_unstable"] == int(lab.unstable.sum()) and group["n_diverged"] == lab.n_diverged
    assert isinstance(queue, pl.DataFrame)
    paths = write_report(db, tmp_path / "reports")
    assert paths.html.stat().st_size > 0 and paths.markdown.stat().st_size > 0
    assert json.loads((tmp_path / "reports" / "latest" / "calibration.json").read_text())["groups"]["tiny"]["n_diverged"] == 2


# -- damaged import files ---------------------------------------------------------------------------------------

GOOD_CSV = "_step,loss,grad_norm\n0,3.0,1.2\n1,2.8,1.5\n2,2.5,0.9\n"
BAD_CSVS = {  # name: (content, what the reason must say, after "<path>")
    "truncated": (GOOD_CSV + "3,2.4,0.8\n4,", ":6: 2 fields but the header has 3"),
    "duplicated": ("_step,loss,grad_norm\n0,3.0,1.2\n1,2.8,1.5\n1,2.8,1.5\n", ":4: step 1 repeats step 1"),
    "drifted": ("_step,train/loss,grad_norm\n0,3.0,1.2\n", ":1: missing column(s) ['loss']"),
    "empty": ("", ": empty file"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", ": not UTF-8 text"),
}


def test_damaged_csvs_are_quarantined_the_rest_imports_and_stored_data_is_untouched(tmp_path):
    db = tmp_path / "triage.duckdb"
    make_sweep(tmp_path / "runs", 3)
    store.ingest_runs(db, tmp_path / "runs")
    before = {t: db_rows(db, f"SELECT * FROM {t} ORDER BY ALL") for t in ("runs", "steps")}
    good = tmp_path / "good.csv"
    good.write_text(GOOD_CSV)
    bad = {}
    for name, (content, _) in BAD_CSVS.items():
        bad[name] = tmp_path / f"{name}.csv"
        bad[name].write_bytes(content if isinstance(content, bytes) else content.encode())
    from dlm_triage.importers import import_logs

    r = import_logs(db, "wandb-csv", [good, *bad.values(), good], family="tiny")  # the good file twice
    assert (r.added, r.already_present) == (1, 1)
    reasons = dict(r.quarantined)
    assert set(reasons) == {str(p) for p in bad.values()}
    for name, (_, says) in BAD_CSVS.items():
        assert f"{bad[name]}{says}" in reasons[str(bad[name])], reasons[str(bad[name])]
        assert bad[name].exists()  # a user's file is reported, never moved
    after = {t: db_rows(db, f"SELECT * FROM {t} ORDER BY ALL") for t in ("runs", "steps")}
    old_ids = {row[0] for row in before["runs"]}
    assert [row for row in after["runs"] if row[0] in old_ids] == before["runs"]
    assert [row for row in after["steps"] if row[0] in old_ids] == before["steps"]
    assert len(after["runs"]) == len(before["runs"]) + 1
    assert db_rows(db, f"SELECT count(*) FROM quarantine WHERE ingest_id = '{r.ingest_id}'") == [(len(bad),)]
    again = import_logs(db, "wandb-csv", [good], family="tiny")
    assert (again.added, again.already_present, again.quarantined) == (0, 1, ())


# -- invalid configs and CLI arguments ------------------------------------------------------------------------

CLI_CASES = {
    "rank-0": (["train", "--set", "rank=0"], "rank=0"),
    "rho-1": (["train", "--set", "mask_ratio=1.0"], "mask_ratio=1.0"),
    "rho-0": (["train", "--set", "mask_ratio=0"], "mask_ratio=0"),
    "rho-negative": (["train", "--set", "mask_ratio=-0.2"], "mask_ratio=-0.2"),
    "unknown-family": (["train", "--set", "family=gpt"], "family='gpt'"),
    "unknown-method": (["train", "--set", "method=qlora"], "method='qlora'"),
    "unknown-field": (["train", "--set", "rnak=4"], "rnak"),
    "sweep-rank-0": (["sweep", "--ranks", "0,4"], "ranks"),
    "sweep-rho-1": (["sweep", "--mask-ratios", "0.5,1.0"], "mask_ratios"),
    "sweep-family": (["sweep", "--families", "gpt"], "gpt"),
    "sweep-method": (["sweep", "--methods", "lora,qlora"], "qlora"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_invalid_arguments_give_one_clear_message_and_exit_2(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # the sweep verb sets defaults in os.environ
    argv, named = CLI_CASES[case]
    out = tmp_path / "out"
    rc = cli.main(["--out", str(out), *argv])  # an exception escaping here would be a traceback for the user
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith(f"dlm-triage {argv[0]}: ") and named in err and "(1 problem(s))" in err, err
    assert "Traceback" not in err and "errors.pydantic.dev" not in err
    assert not out.exists()  # nothing was started: no runs directory, no database


@pytest.mark.slow
def test_cli_entry_point_rejects_bad_rank_and_unknown_target_module(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    base = [sys.executable, "-m", "cli", "--out", str(out), "train", "--set", "steps=3",
            "--set", "device=cpu", "--set", f"model_id={json.dumps(str(tiny_model_dir))}"]
    p = subprocess.run(base + ["--set", "rank=0"], capture_output=True, text=True, env=ENV, timeout=300)
    assert p.returncode == 2 and "rank=0 is out of range" in p.stderr and "Traceback" not in p.stderr, p.stderr
    p = subprocess.run(base + ["--set", 'target_modules=["q_proj", "qkv_nope"]'], capture_output=True, text=True,
                       env=ENV, timeout=300)
    assert p.returncode == 2 and "qkv_nope" in p.stderr and "Traceback" not in p.stderr, p.stderr
    # it failed before step 0: no step log, no manifest, no run directory left behind
    assert not [f for f in out.rglob("*") if f.is_file()]
    assert not any((out / "runs").iterdir())


# -- unwritable output, full disk -------------------------------------------------------------------------------

def test_output_path_through_a_file_fails_before_any_training(tiny_model_dir, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the output directory should be")
    steps_run = []
    hooks = train.FaultHooks(after_backward=lambda step, model: steps_run.append(step))
    # the CLI below starts its run through train.train_run: the same hooks reach it
    monkeypatch.setattr(train, "train_run", functools.partial(train.train_run, hooks=hooks))
    cfg = small(tiny_model_dir)
    with pytest.raises(NotADirectoryError, match="could not write the run directory") as e:
        train.train_run(cfg, blocker / "runs")
    assert str(blocker / "runs" / cfg.run_id) in str(e.value) and steps_run == []
    rc = cli.main(["--out", str(blocker / "out"), "train", "--set", "steps=2", "--set", "device=cpu",
                   "--set", f"model_id={json.dumps(str(tiny_model_dir))}"])
    err = capsys.readouterr().err
    assert rc == 2 and "could not write the run directory" in err and "Traceback" not in err
    assert blocker.read_text() == "a file where the output directory should be" and steps_run == []


_FULL_DISK = textwrap.dedent("""
    import json, resource, signal, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from dlm_triage.config import RunConfig
    from dlm_triage.train import train_run
    import dlm_triage.data, dlm_triage.families, polars, safetensors.torch  # imported before the limit

    # Writes past the limit fail with EFBIG like writes to a full disk fail with ENOSPC. SIGXFSZ would kill
    # the process instead: ignore it, so the failing write() returns the error to the writer.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2048, resource.RLIM_INFINITY))
    out = []
    for d in json.loads(sys.argv[1]):
        try:
            res = train_run(RunConfig.from_dict(d), Path(sys.argv[2]))
            out.append({"status": res.status})
        except OSError as e:
            out.append({"type": type(e).__name__, "errno": e.errno, "msg": str(e)})
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_full_disk_gives_a_clear_error_and_leaves_no_partial_files(tiny_model_dir, tmp_path):
    runs = tmp_path / "runs"
    cfgs = [small(tiny_model_dir, steps=3, save_adapter=True, seed=1),  # fails writing the adapter
            small(tiny_model_dir, steps=3, save_adapter=False, seed=2)]  # fails writing the step log
    p = subprocess.run([sys.executable, "-c", _FULL_DISK, json.dumps([c.to_dict() for c in cfgs]), str(runs)],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    results = json.loads(p.stdout.strip().splitlines()[-1])
    for cfg, res in zip(cfgs, results):
        assert res.get("errno") == 27, res  # EFBIG
        assert f"in {runs / cfg.run_id}" in res["msg"] and "Free disk space" in res["msg"], res
        assert not (runs / cfg.run_id).exists(), list((runs / cfg.run_id).rglob("*"))
    assert "the adapter" in results[0]["msg"] and STEPLOG_FILENAME in results[1]["msg"]
    assert not [f for f in runs.rglob("*") if f.is_file()]  # no tmp file, no partial adapter, no orphan log
    # with space again, the same configs train normally
    assert [train_run(c, runs).status for c in cfgs] == ["completed", "completed"]


# -- property tests: the run-log reader on damaged run directories ---------------------------------------------

@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("templates")
    return {"completed": make_run(root, RunConfig(steps=6, seed=1)),
            "diverged": make_run(root, RunConfig(steps=6, seed=2), status="diverged")}


DAMAGE = st.lists(
    st.tuples(st.sampled_from([STEPLOG_FILENAME, MANIFEST_FILENAME]),
              st.sampled_from(["flip", "flip", "truncate", "append", "empty", "delete"]),
              st.integers(0, 2**20), st.integers(0, 255)),
    min_size=1, max_size=4,
)


def _damage(path: Path, op: str, pos: int, byte: int) -> None:
    if not path.exists():
        return
    b = bytearray(path.read_bytes())
    if op == "delete":
        path.unlink()
        return
    if op == "flip" and b:
        b[pos % len(b)] = byte
    elif op == "truncate":
        b = b[: pos % (len(b) + 1)]
    elif op == "append":
        b += bytes([byte]) * (1 + pos % 64)
    elif op == "empty":
        b = bytearray()
    path.write_bytes(bytes(b))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["completed", "diverged"]), DAMAGE)
def test_damaged_run_dirs_raise_run_log_error_or_read_back_the_same_log(templates, kind, damage):
    src = templates[kind]
    original = read_run(src)
    with tempfile.TemporaryDirectory() as d:
        run_dir = Path(d) / src.name
        shutil.copytree(src, run_dir)
        for name, op, pos, byte in damage:
            _damage(run_dir / name, op, pos, byte)
        same = {n: (run_dir / n).exists() and (run_dir / n).read_bytes() == (src / n).read_bytes()
                for n in (STEPLOG_FILENAME, MANIFEST_FILENAME)}
        try:
            rec = read_run(run_dir)
        except RunLogError as e:
            assert e.path.is_relative_to(run_dir) and e.reason and not all(same.values())
            return
    # Accepted: the step log must be the one written (it is covered by the manifest's sha256). A damaged step
    # log is never accepted; a damaged manifest may be, when the damage kept it valid (documented: the manifest
    # carries no checksum of its own).
    assert same[STEPLOG_FILENAME]
    assert rec.steps.equals(original.steps)
    assert set(MANIFEST_KEYS) <= set(rec.manifest)


SCALARS = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8)
JSON_VALUES = SCALARS | st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
CONFIG_KEYS = sorted(RunConfig().to_dict())
MANIFEST_EDIT_KEYS = st.sampled_from(list(MANIFEST_KEYS)) | st.sampled_from([f"config.{k}" for k in CONFIG_KEYS])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["completed", "diverged"]),
       st.lists(st.tuples(MANIFEST_EDIT_KEYS, st.just("<delete>") | JSON_VALUES), min_size=1, max_size=3))
def test_any_manifest_value_is_validated_or_rejected_never_a_crash(templates, kind, edits):
    """Whatever a manifest holds, read_run raises RunLogError and ingestion's validation `_Invalid` (quarantine):
    never a TypeError/AttributeError that would abort a whole ingest."""
    src = templates[kind]
    original = read_run(src)
    with tempfile.TemporaryDirectory() as d:
        run_dir = Path(d) / src.name
        shutil.copytree(src, run_dir)
        man = json.loads((run_dir / MANIFEST_FILENAME).read_text())
        for key, value in edits:
            target, k = (man.get("config"), key[7:]) if key.startswith("config.") else (man, key)
            if not isinstance(target, dict):
                continue
            if value == "<delete>":
                target.pop(k, None)
            else:
                target[k] = value
        (run_dir / MANIFEST_FILENAME).write_text(json.dumps(man))
        try:
            rec = read_run(run_dir)
        except RunLogError:
            rec = None
        else:
            assert rec.steps.equals(original.steps)
        try:
            prepared = store.prepare_run_dir(run_dir)
        except store._Invalid as e:
            assert str(e)
        else:
            assert rec is not None and prepared.row["run_id"] == str(man["run_id"])


# -- property tests: statistics on random inputs -------------------------------------------------------------

LOSSES = st.lists(st.one_of(st.floats(-1e6, 1e6), st.sampled_from([math.nan, math.inf, -math.inf])),
                  min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(LOSSES, st.data())
@pytest.mark.filterwarnings("ignore::dlm_triage.stats.DegenerateDataWarning")
def test_stability_labels_partition_every_run_by_the_stated_rule(losses, data):
    loss = np.array(losses)
    div = np.array(data.draw(st.lists(st.booleans(), min_size=loss.size, max_size=loss.size)))
    lab = stats.stability_labels(loss, div)
    masks = np.stack([lab.unstable, lab.stable, lab.mid, lab.excluded])
    assert (masks.sum(axis=0) == 1).all()  # every run has exactly one label
    assert lab.unstable[div].all() and lab.n_diverged == int(div.sum())  # diverged: unstable by definition
    used = ~div & np.isfinite(loss)
    assert lab.excluded.tolist() == (~div & ~np.isfinite(loss)).tolist()
    assert lab.n_used == int(used.sum())
    if used.any():
        p90, med = np.percentile(loss[used], [90, 50])
        assert lab.unstable_threshold == p90 and lab.stable_threshold == med
        assert (lab.unstable[used] == (loss[used] >= p90)).all()
        # stable iff <= median, unless also >= P90 (ties at the top: unstable wins)
        assert (lab.stable[used] == ((loss[used] <= med) & (loss[used] < p90))).all()


SAMPLE = st.lists(st.one_of(st.floats(-1e3, 1e3), st.just(math.nan)), max_size=15)


@settings(max_examples=200, deadline=None)
@given(SAMPLE, SAMPLE)
@pytest.mark.filterwarnings("ignore::dlm_triage.stats.DegenerateDataWarning")
def test_mann_whitney_bounds_and_symmetry_on_random_samples(x, y):
    a, b = stats.mann_whitney(x, y), stats.mann_whitney(y, x)
    nx, ny = sum(not math.isnan(v) for v in x), sum(not math.isnan(v) for v in y)
    assert (a.n_x, a.n_y) == (nx, ny)
    if nx == 0 or ny == 0:
        assert math.isnan(a.u) and math.isnan(a.p_two_sided) and a.flags
        return
    assert 0 <= a.u <= nx * ny and a.u + b.u == pytest.approx(nx * ny)
    for p in (a.p_greater, a.p_two_sided, b.p_greater):
        assert 0.0 <= p <= 1.0
    assert a.p_two_sided == pytest.approx(b.p_two_sided)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.floats(-1e6, 1e6), st.just(math.nan)), max_size=40), st.floats(0.5, 0.999))
def test_percentile_ci_is_ordered_and_counts_defined_replicates(samples, level):
    med, lo, hi, n = stats.percentile_ci(samples, confidence_level=level)
    assert n == sum(not math.isnan(s) for s in samples)
    if n == 0:
        assert math.isnan(med) and math.isnan(lo) and math.isnan(hi)
    else:
        assert lo <= med <= hi


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=40))
@pytest.mark.filterwarnings("ignore::dlm_triage.stats.DegenerateDataWarning")
def test_concentration_bounds_on_random_masses(masses):
    c = stats.concentration(masses)
    if sum(masses) == 0:
        assert math.isnan(c.gini) and c.flags
    else:
        assert -1e-12 <= c.gini <= 1 - 1 / len(masses) + 1e-12
        assert 1 / len(masses) - 1e-12 <= c.top1_share <= 1 + 1e-12
