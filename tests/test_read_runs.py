"""runlog.read_runs (batched) gives exactly read_run's result for every run directory: the same errors (path,
reason, fix) and the same step logs, whichever mix of valid and damaged directories it is given."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import polars as pl
import pytest
from runfactory import make_run

from dlm_triage import runlog
from dlm_triage.config import RunConfig
from dlm_triage.runlog import RunLogError, RunRecord, read_run, read_runs
from dlm_triage.schema import MANIFEST_FILENAME, STEPLOG_FILENAME


def _outcome(r):
    if isinstance(r, RunLogError):
        return ("error", str(r.path), r.reason, r.fix)
    return ("ok", r.manifest, r.steps)


def _single(d: Path):
    try:
        return read_run(d)
    except RunLogError as e:
        return e


def _assert_same(dirs):
    batch = read_runs(dirs)
    assert len(batch) == len(dirs)
    for d, b in zip(dirs, batch):
        a = _single(d)
        oa, ob = _outcome(a), _outcome(b)
        assert oa[0] == ob[0], (d, oa[:2], ob[:2])
        if oa[0] == "error":
            assert oa == ob
            assert str(a) == str(b)
        else:
            assert oa[1] == ob[1]
            assert oa[2].equals(ob[2]) and oa[2].schema == ob[2].schema


def _rewrite(run_dir: Path, df: pl.DataFrame, **manifest_changes) -> None:
    df.write_parquet(run_dir / STEPLOG_FILENAME)
    man = json.loads((run_dir / MANIFEST_FILENAME).read_text())
    man["steplog_sha256"] = runlog.sha256_file(run_dir / STEPLOG_FILENAME)
    man["n_steps_logged"] = df.height
    man.update(manifest_changes)
    (run_dir / MANIFEST_FILENAME).write_text(json.dumps(man))


STEP_DAMAGE = {
    "nan_body": lambda df: df.with_columns(pl.when(pl.col("step") == 2).then(float("nan")).otherwise(pl.col("loss"))
                                           .alias("loss")),
    "inf_lr_last": lambda df: df.with_columns(pl.when(pl.col("step") == df.height - 1).then(float("inf"))
                                              .otherwise(pl.col("lr")).alias("lr")),
    "null_grad": lambda df: df.with_columns(pl.when(pl.col("step") == 1).then(None).otherwise(pl.col("grad_norm"))
                                            .alias("grad_norm")),
    "gap": lambda df: df.with_columns((pl.col("step") + (pl.col("step") > 3).cast(pl.Int32)).alias("step")),
    "swap": lambda df: df.with_columns(pl.col("step").reverse()),
    "short_matrix": lambda df: df.with_columns(pl.col("matrix_grad_norms").list.head(3)),
    "nan_matrix": lambda df: df.with_columns(pl.when(pl.col("step") == 3).then(pl.lit([float("nan")] * 4))
                                             .otherwise(pl.col("matrix_grad_norms")).alias("matrix_grad_norms")),
    "wrong_dtype": lambda df: df.with_columns(pl.col("n_masked").cast(pl.Float64)),
    "missing_col": lambda df: df.drop("lr"),
    "extra_col": lambda df: df.with_columns(extra=pl.lit("x")),
    "fewer_rows": lambda df: df.head(df.height - 2),
    "empty": lambda df: df.head(0),
    "nan_top1": lambda df: df.with_columns(pl.lit(float("nan")).alias("top1_freq")),
}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("zoo")
    dirs = []
    for i in range(6):
        dirs.append(make_run(root, RunConfig(steps=12, seed=i), unstable=i % 2 == 0))
    dirs.append(make_run(root, RunConfig(steps=12, seed=50), status="diverged"))
    dirs.append(make_run(root, RunConfig(steps=12, seed=51), status="stopped_early", n_rows=5))
    for j, (name, damage) in enumerate(sorted(STEP_DAMAGE.items())):
        for status in ("completed", "diverged"):
            d = make_run(root, RunConfig(steps=12, seed=100 + 2 * j + (status == "diverged")), status=status)
            _rewrite(d, damage(read_run(d).steps))
            dirs.append(d)
    d = make_run(root, RunConfig(steps=12, seed=300))
    (d / STEPLOG_FILENAME).write_bytes((d / STEPLOG_FILENAME).read_bytes()[:-30])
    dirs.append(d)
    d = make_run(root, RunConfig(steps=12, seed=301))
    (d / MANIFEST_FILENAME).unlink()
    dirs.append(d)
    d = make_run(root, RunConfig(steps=12, seed=302))
    _rewrite(d, read_run(d).steps, n_steps_logged=99)
    dirs.append(d)
    d = make_run(root, RunConfig(steps=12, seed=303))
    (d / STEPLOG_FILENAME).write_bytes(b"PAR1 not parquet PAR1")
    _rewrite_sha(d)
    dirs.append(d)
    return dirs


def _rewrite_sha(d: Path) -> None:
    man = json.loads((d / MANIFEST_FILENAME).read_text())
    man["steplog_sha256"] = runlog.sha256_file(d / STEPLOG_FILENAME)
    (d / MANIFEST_FILENAME).write_text(json.dumps(man))


def test_read_runs_matches_read_run_on_a_mixed_batch(zoo):
    n_bad = sum(isinstance(_single(d), RunLogError) for d in zoo)
    assert 0 < n_bad < len(zoo)
    _assert_same(zoo)


@pytest.mark.parametrize("seed", range(5))
def test_read_runs_matches_read_run_in_any_order_and_subset(zoo, seed):
    rng = random.Random(seed)
    dirs = rng.sample(zoo, rng.randint(1, len(zoo)))
    _assert_same(dirs)


def test_valid_writer_files_take_the_bulk_path(zoo):
    batch = runlog.read_runs_batch(zoo[:8])
    assert all(isinstance(r, dict) for r in batch.results)
    assert not batch.separate and batch.steps.height == sum(s[1] for s in batch.spans)
    assert isinstance(read_runs(zoo[:1])[0], RunRecord)


def test_read_runs_empty():
    assert read_runs([]) == []


def test_one_unreadable_file_in_the_bulk_does_not_hide_the_others(tmp_path, zoo):
    # a file with the writer's footer but damaged data pages and a matching sha: the bulk read fails, every
    # file is then read on its own and only the damaged one is rejected
    dirs = [shutil.copytree(d, tmp_path / d.name) for d in zoo[:4]]
    p = dirs[1] / STEPLOG_FILENAME
    b = bytearray(p.read_bytes())
    for k in range(8, 200):
        b[k] = 0xFF
    p.write_bytes(bytes(b))
    _rewrite_sha(dirs[1])
    _assert_same(dirs)


def test_ingest_stores_exactly_the_validated_rows_when_runs_in_the_middle_are_dropped(tmp_path):
    # runs valid for runlog but rejected or skipped by the store (bad config, a failed attempt) sit between
    # stored ones: the stored steps must still be each run's own rows
    from dlm_triage import store

    root = tmp_path / "runs"
    dirs = [make_run(root, RunConfig(steps=8, seed=i), unstable=i % 2 == 1) for i in range(5)]
    man = json.loads((dirs[1] / MANIFEST_FILENAME).read_text())
    man["config"]["rank"] = -3
    (dirs[1] / MANIFEST_FILENAME).write_text(json.dumps(man))
    failed = make_run(root, RunConfig(steps=8, seed=10), status="failed", n_rows=3)
    r = store.ingest_runs(tmp_path / "db.duckdb", root, quarantine_dir=tmp_path / "q")
    assert (r.added, r.incomplete, len(r.quarantined)) == (4, 1, 1)
    assert r.incomplete_paths == (str(failed),) and "config" in r.quarantined[0][1]
    con = store.connect(tmp_path / "db.duckdb", read_only=True)
    try:
        got = con.sql("SELECT * FROM steps ORDER BY run_id, step").pl()
    finally:
        con.close()
    want = pl.concat([read_run(d).steps.select(list(store.STEPS_COLUMNS)).with_columns(run_id=pl.lit(d.name))
                      for d in dirs if d != dirs[1]]).select(got.columns).sort("run_id", "step")
    assert got.equals(want.cast(got.schema))
