"""Publishing finished run directories to fsspec storage (memory:// and file://), manifest last; reading them back
with DuckDB natively; a sweep that publishes there and, re-run, trains nothing."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import fsspec
import pytest

from dlm_triage.config import RunConfig
from dlm_triage.runstore import is_url, publish_run, read_manifest_at
from dlm_triage.shards import finished_manifest


@pytest.fixture
def memory_url():
    url = f"memory://dlm-triage-test-{uuid.uuid4().hex[:8]}/runs"
    yield url
    fs = fsspec.filesystem("memory")
    root = url.removeprefix("memory://")
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _made_run(tmp_path: Path, seed: int = 3) -> tuple[RunConfig, Path]:
    from runfactory import make_run  # the real run-log writer, no training

    cfg = RunConfig(steps=5, seed=seed)
    return cfg, make_run(tmp_path / "local", cfg)


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_publish_copies_every_file_and_the_manifest_last(tmp_path, memory_url, kind, monkeypatch):
    url = memory_url if kind == "memory" else f"file://{tmp_path / 'shared'}"
    cfg, run_dir = _made_run(tmp_path)
    assert finished_manifest(url, cfg) is None
    order: list[str] = []
    fs, _ = fsspec.core.url_to_fs(url)
    real_put = type(fs).put_file

    def spy(self, lpath, rpath, *a, **k):
        order.append(Path(rpath).name)
        return real_put(self, lpath, rpath, *a, **k)

    monkeypatch.setattr(type(fs), "put_file", spy)
    published = publish_run(run_dir, url)
    assert published == f"{url}/{cfg.run_id}"
    assert order[-1] == "manifest.json" and "steps.parquet" in order[:-1]  # the commit marker goes last
    assert finished_manifest(url, cfg)["config_hash"] == cfg.config_hash
    assert read_manifest_at(url, cfg.run_id) == json.loads((run_dir / "manifest.json").read_text())
    assert finished_manifest(url, cfg.replace(seed=4)) is None  # another config: not published
    with fs.open(f"{published.split('://', 1)[1]}/steps.parquet", "rb") as fh:
        assert fh.read() == (run_dir / "steps.parquet").read_bytes()


def test_an_unfinished_run_is_never_published_and_a_republish_replaces_the_copy(tmp_path, memory_url):
    cfg, run_dir = _made_run(tmp_path)
    man = run_dir / "manifest.json"
    saved = man.read_bytes()
    man.unlink()
    with pytest.raises(FileNotFoundError, match="not finished"):
        publish_run(run_dir, memory_url)
    assert read_manifest_at(memory_url, cfg.run_id) is None
    man.write_bytes(saved)
    publish_run(run_dir, memory_url)
    publish_run(run_dir, memory_url)  # idempotent: same files, one manifest
    assert read_manifest_at(memory_url, cfg.run_id)["run_id"] == cfg.run_id


def test_duckdb_reads_published_step_logs_natively(tmp_path, memory_url):
    import duckdb
    import polars as pl

    runs = [_made_run(tmp_path, seed=s) for s in (1, 2)]
    for _, d in runs:
        publish_run(d, memory_url)
    con = duckdb.connect()
    con.register_filesystem(fsspec.filesystem("memory"))  # s3/gcs: DuckDB's httpfs, or s3fs/gcsfs the same way
    n = con.execute(f"SELECT count(*) FROM read_parquet('{memory_url}/*/steps.parquet')").fetchone()[0]
    assert n == sum(pl.read_parquet(d / "steps.parquet").height for _, d in runs)


def test_bad_urls_are_refused_naming_the_fix():
    from dlm_triage.params import SweepParams

    assert is_url("s3://b/x") and not is_url("/shared/runs")
    with pytest.raises(ValueError, match="is not a URL"):
        SweepParams(runs_url="/shared/runs")
    with pytest.raises(ValueError, match="fsspec cannot open it"):
        SweepParams(runs_url="nosuchproto://bucket/runs")
    assert SweepParams(runs_url="memory://x/runs/").runs_url == "memory://x/runs"


@pytest.mark.slow
def test_a_sweep_publishes_finished_runs_and_a_rerun_trains_nothing(prefect_harness, tiny_model_dir, tmp_path,
                                                                     memory_url):
    from dlm_triage.params import SweepParams
    from flows.sweep import sweep_flow

    # thread runner: the shard runs in this process, which holds the memory filesystem
    params = SweepParams(families=["tiny"], ranks=[4], mask_ratios=[0.3, 0.7], seeds=[1], steps=3, batch_size=2,
                         model_id=str(tiny_model_dir), runs_dir=tmp_path / "staging", db=tmp_path / "none.duckdb",
                         task_runner="thread", early_warning=False, runs_url=memory_url)
    first = sweep_flow(params)
    assert all(r["status"] == "completed" and r["run_dir"].startswith(memory_url) for r in first), first
    assert all(read_manifest_at(memory_url, r["run_id"]) is not None for r in first)
    # the published copies decide: with the staging folder gone, a re-run still trains nothing
    import shutil

    shutil.rmtree(tmp_path / "staging")
    second = sweep_flow(params)
    assert all(r["reused"] for r in second) and not (tmp_path / "staging").exists()
