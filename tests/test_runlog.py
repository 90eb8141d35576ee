"""Atomic run writing and validated reading."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import polars as pl
import pytest

from dlm_triage import runlog
from dlm_triage.runlog import RunLogError, read_run, write_run_atomic
from dlm_triage.schema import MANIFEST_FILENAME, MANIFEST_KEYS, STEP_COLUMNS, STEPLOG_FILENAME


def make_steps(n=5, n_matrices=2, bad_last=False):
    rows = {
        "step": list(range(n)),
        "loss": [2.0 - 0.1 * i for i in range(n)],
        "grad_norm": [1.0 + i for i in range(n)],
        "max_grad_norm": [1.0 + i for i in range(n)],
        "top1_freq": [0.3 if i % 2 == 0 else float("nan") for i in range(n)],
        "mask_ratio": [0.5] * n,
        "n_masked": [16] * n,
        "lr": [1e-4] * n,
        "clipped": [True] * n,
        "step_time_ms": [10.0] * n,
        "monitor_time_ms": [0.1] * n,
        "top1_forward_ms": [3.0] * n,
        "matrix_grad_norms": [[0.5] * n_matrices for _ in range(n)],
    }
    if bad_last:
        rows["loss"][-1] = float("nan")
        rows["grad_norm"][-1] = float("inf")
        rows["max_grad_norm"][-1] = float("inf")
        rows["matrix_grad_norms"][-1] = [float("nan")] * n_matrices
    return pl.DataFrame(rows)


def make_manifest(n=5, status="completed", n_matrices=2):
    man = {k: None for k in MANIFEST_KEYS}
    man.update(run_id="r1", config={"steps": n - 1}, config_hash="abc", status=status,
               matrix_names=[f"m{i}" for i in range(n_matrices)], final_loss=float("nan"))
    return man


def test_round_trip(tmp_path):
    written = write_run_atomic(tmp_path / "r1", make_steps(), make_manifest())
    rec = read_run(tmp_path / "r1")
    assert rec.manifest == written
    assert rec.manifest["final_loss"] is None  # NaN -> null, never NaN in JSON
    assert rec.manifest["n_steps_logged"] == 5
    assert list(rec.steps.columns) == list(STEP_COLUMNS)
    assert rec.steps.schema == runlog.steps_schema()
    assert not list(tmp_path.glob("r1/.*tmp"))


def test_rewrite_replaces_old_run(tmp_path):
    write_run_atomic(tmp_path / "r", make_steps(5), make_manifest(5))
    write_run_atomic(tmp_path / "r", make_steps(3), make_manifest(3))
    assert read_run(tmp_path / "r").steps.height == 3


def test_kill_before_manifest_rename_leaves_no_manifest(tmp_path):
    # A real SIGKILL between the fsync'd tmp manifest and its rename (a subprocess kills itself).
    run_dir = tmp_path / "killed"
    code = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(tmp_path)!r})
        from dlm_triage import runlog
        from test_helpers_runlog import make_steps, make_manifest
        runlog.write_run_atomic({str(run_dir)!r}, make_steps(), make_manifest(),
                                before_manifest_rename=lambda tmp: os.kill(os.getpid(), signal.SIGKILL))
    """)
    helper = tmp_path / "test_helpers_runlog.py"
    helper.write_text(open(__file__).read())
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert (run_dir / STEPLOG_FILENAME).is_file()
    assert not (run_dir / MANIFEST_FILENAME).exists()
    with pytest.raises(RunLogError, match="no manifest"):
        read_run(run_dir)


def test_crash_during_rewrite_does_not_leave_the_old_manifest(tmp_path):
    write_run_atomic(tmp_path / "r", make_steps(), make_manifest())

    def boom(tmp):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_run_atomic(tmp_path / "r", make_steps(3), make_manifest(3), before_manifest_rename=boom)
    assert not (tmp_path / "r" / MANIFEST_FILENAME).exists()


def test_diverged_run_may_end_in_nan(tmp_path):
    write_run_atomic(tmp_path / "d", make_steps(bad_last=True), make_manifest(status="diverged"))
    rec = read_run(tmp_path / "d")
    assert rec.manifest["status"] == "diverged"
    # ... but a completed run may not
    write_run_atomic(tmp_path / "c", make_steps(bad_last=True), make_manifest(status="completed"))
    with pytest.raises(RunLogError, match="'loss' holds 1 NaN/Inf"):
        read_run(tmp_path / "c")


def _corrupt(tmp_path, mutate_manifest=None, mutate_file=None):
    run_dir = tmp_path / "x"
    write_run_atomic(run_dir, make_steps(), make_manifest())
    if mutate_manifest:
        man = json.loads((run_dir / MANIFEST_FILENAME).read_text())
        mutate_manifest(man)
        (run_dir / MANIFEST_FILENAME).write_text(json.dumps(man))
    if mutate_file:
        mutate_file(run_dir)
    return run_dir


@pytest.mark.parametrize(
    "mutate_manifest, mutate_file, match",
    [
        (lambda m: m.pop("grad_gini"), None, "lacks required keys \\['grad_gini'\\]"),
        (lambda m: m.update(schema_version=99), None, "schema_version 99"),
        (lambda m: m.update(status="weird"), None, "status 'weird'"),
        (lambda m: m.update(n_steps_logged=6), None, "n_steps_logged=6"),
        (lambda m: m.update(config={"steps": 10}), None, "status 'completed' but 5 rows"),
        (lambda m: m.update(matrix_names=["a"]), None, "matrix_grad_norms rows"),
        (None, lambda d: (d / STEPLOG_FILENAME).unlink(), "step log is missing"),
        (None, lambda d: (d / MANIFEST_FILENAME).write_text("{not json"), "not valid JSON"),
        (None, lambda d: (d / STEPLOG_FILENAME).write_bytes((d / STEPLOG_FILENAME).read_bytes()[:-20]), "sha256"),
    ],
)
def test_invalid_runs_name_path_reason_and_fix(tmp_path, mutate_manifest, mutate_file, match):
    run_dir = _corrupt(tmp_path, mutate_manifest, mutate_file)
    with pytest.raises(RunLogError, match=match) as e:
        read_run(run_dir)
    assert str(run_dir) in str(e.value) and "fix:" in str(e.value)


def _rewrite_steps(run_dir, df):
    df.write_parquet(run_dir / STEPLOG_FILENAME)
    man = json.loads((run_dir / MANIFEST_FILENAME).read_text())
    man["steplog_sha256"] = runlog.sha256_file(run_dir / STEPLOG_FILENAME)
    (run_dir / MANIFEST_FILENAME).write_text(json.dumps(man))


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda df: df.drop("lr"), "missing columns \\['lr'\\]"),
        (lambda df: df.with_columns(pl.col("n_masked").cast(pl.Float64)), "wrong column dtypes"),
        (lambda df: df.with_columns(step=pl.Series([0, 1, 2, 4, 5], dtype=pl.Int32)), "contiguous"),
        (lambda df: df.with_columns(grad_norm=pl.Series([1.0, float("nan"), 1.0, 1.0, 1.0])), "'grad_norm' holds 1"),
        (lambda df: df.with_columns(loss=pl.Series([1.0, None, 1.0, 1.0, 1.0])), "null values"),
    ],
)
def test_invalid_step_logs(tmp_path, mutate, match):
    run_dir = _corrupt(tmp_path)
    _rewrite_steps(run_dir, mutate(read_run(run_dir).steps))
    with pytest.raises(RunLogError, match=match):
        read_run(run_dir)


def test_write_refuses_incomplete_manifest(tmp_path):
    man = make_manifest()
    del man["routing"]
    with pytest.raises(ValueError, match="routing"):
        write_run_atomic(tmp_path / "r", make_steps(), man)
