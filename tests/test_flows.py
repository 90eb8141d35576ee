"""Prefect flows for real, under one session harness (`prefect_harness`, ~12-20 s once), on the tiny model.

Pure parts first (parameter validation, the retry policy, threshold drift): no Prefect server needed.
Then: the sweep trains its shards as train-shard subflow runs in subprocesses (progress artifacts per shard), a
re-run starts no shard and trains nothing, a deleted run dir is retrained, a failed config is reported while the
others of its shard complete, a ConfigError is not retried while an OSError is, and the
pipeline produces a DuckDB with every run and step, a calibration, a report and the artifacts.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
from pathlib import Path

import duckdb
import pydantic
import pytest

from dlm_triage.config import ConfigError, RunConfig
from dlm_triage.params import CalibrateParams, IngestParams, PipelineParams, ReportParams, SweepParams

STEPS = 12  # steps per tiny run: enough rows for the step-k sweep at k=5, 10; each run takes ~1 s


# -- parameters (pure) --------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, named", [
    ("ranks", [0], "ranks [0]"),
    ("mask_ratios", [0.5, 1.0], "mask_ratios [1.0]"),
    ("learning_rates", [0.0], "learning_rates [0.0]"),
    ("seeds", [-1], "seeds [-1]"),
    ("seeds", [], "seeds is empty"),
    ("ranks", [4, 4], "ranks repeats 4"),
    ("families", ["gpt"], "'gpt'"),
    ("steps", 0, "greater than or equal to 1"),
    ("extra", {"nope": 1}, "['nope']"),
    ("extra", {"rank": 3}, "['rank']"),
    ("extra", {"clip_grad_norm": -1.0}, "clip_grad_norm=-1.0"),  # caught by RunConfig through SweepSpec
    ("gpu_slots", 0, "greater than or equal to 1"),
])
def test_sweep_params_reject_bad_values_naming_them(field, value, named):
    with pytest.raises(pydantic.ValidationError) as e:
        SweepParams(**{field: value})
    assert named in str(e.value)


def test_sweep_params_build_the_same_spec_and_configs():
    p = SweepParams(ranks=[4, 8], mask_ratios=[0.5], seeds=[1, 2], steps=7, extra={"top1_every": 3})
    configs = p.to_spec().expand()
    assert len(configs) == 4
    assert {c.rank for c in configs} == {4, 8} and all(c.steps == 7 and c.top1_every == 3 for c in configs)
    # the UI sends JSON; the same JSON gives the same object and the same run ids
    again = SweepParams.model_validate(json.loads(p.model_dump_json()))
    assert [c.run_id for c in again.to_spec().expand()] == [c.run_id for c in configs]


def test_runs_are_placed_round_robin_over_gpus_or_on_the_device_asked_for():
    p = SweepParams(ranks=[4], mask_ratios=[0.5], seeds=[1, 2, 3], steps=3)
    assert [c.device for c in p.placed_configs(2)] == ["cuda:0", "cuda:1", "cuda:0"]
    assert [c.device for c in p.placed_configs(0)] == ["cpu"] * 3
    pinned = p.model_copy(update={"device": "cuda:3"})
    assert pinned.devices(2) == ["cuda:3"] and {c.device for c in pinned.placed_configs(2)} == {"cuda:3"}
    # placement is not part of a run's identity: the same run ids wherever the runs go
    assert [c.run_id for c in p.placed_configs(2)] == [c.run_id for c in p.to_spec().expand()]


def test_thread_runner_refuses_parallel_slots():
    with pytest.raises(pydantic.ValidationError, match="gpu_slots=2 with task_runner='thread'"):
        SweepParams(task_runner="thread", gpu_slots=2)
    assert SweepParams(task_runner="thread").gpu_slots is None  # resolved to one slot by plan_runs


def test_other_params_validate_and_pipeline_chains_paths(tmp_path):
    with pytest.raises(pydantic.ValidationError, match="'median'"):
        CalibrateParams(group_by="median")
    with pytest.raises(pydantic.ValidationError, match="ks \\[-1\\]"):
        CalibrateParams(ks=[5, -1])
    with pytest.raises(pydantic.ValidationError, match="bonferroni_m"):
        CalibrateParams(bonferroni_m=0)
    assert CalibrateParams(bonferroni_m=6).calibrate_kwargs()["bonferroni_m"] == 6
    assert CalibrateParams().calibrate_kwargs()["bonferroni_m"] is None  # default: the groups tested
    from prefect.utilities.callables import parameter_schema

    from flows.calibrate import calibrate_flow

    form = parameter_schema(calibrate_flow).model_dump()["definitions"]["CalibrateParams"]["properties"]
    assert form["bonferroni_m"]["default"] is None and "the paper: 6" in form["bonferroni_m"]["description"]
    with pytest.raises(pydantic.ValidationError, match="without import_format"):
        IngestParams(import_paths=[tmp_path])
    # stage parameters given with their own paths hand them to the pipeline's one db / out / runs_dir
    p = PipelineParams(sweep={"runs_dir": tmp_path / "runs"}, ingest={"db": tmp_path / "t.duckdb"})
    assert p.runs_dir == p.ingest_params().runs_dir == p.sweep_params().runs_dir == tmp_path / "runs"
    assert p.sweep_params().db == p.calibrate_params().db == p.report_params().db == tmp_path / "t.duckdb"
    with pytest.raises(pydantic.ValidationError, match="ingest.db='a.duckdb' and calibrate.db='b.duckdb' differ"):
        PipelineParams(ingest={"db": "a.duckdb"}, calibrate={"db": "b.duckdb"})
    schema = PipelineParams.model_json_schema()  # what Prefect renders as the form
    assert "description" in schema["$defs"]["SweepGrid"]["properties"]["gpu_slots"]


# -- failure policy and drift (pure) ----------------------------------------------------------------------

@pytest.mark.parametrize("exc, retry", [
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (OSError("Stale file handle"), True),
    (TimeoutError("database locked"), True),
    (ConnectionResetError("peer"), True),
    (ConfigError(["rank=0 is out of range"]), False),
    (ValueError("bad value"), False),
    (TypeError("bad type"), False),
    (FileNotFoundError("no such dataset"), False),
    (PermissionError("read-only"), False),
    (RuntimeError("shape mismatch"), False),
    (None, False),
])
def test_is_transient(exc, retry):
    from tasks.train import is_transient

    assert is_transient(exc) is retry


def test_a_config_entering_a_worker_is_validated_once(monkeypatch):
    """The shard, the cache key, the task run's name and the task body each need the config typed: one
    validation in the process, the same frozen RunConfig for all; a bad config still fails every time."""
    from dlm_triage import config
    from dlm_triage.config import ConfigError, RunConfig
    from tasks.train import config_of

    calls = []
    real = config._validate_run
    monkeypatch.setattr(config, "_validate_run", lambda c: calls.append(c.seed) or real(c))
    d = RunConfig(seed=90817, steps=3).to_dict()
    calls.clear()
    first = config_of(d)
    assert all(config_of(dict(d)) is first for _ in range(3)) and calls == [90817]
    assert config_of({**d, "device": "cpu"}).device == "cpu" and len(calls) == 2  # another dict, its own config
    for _ in range(2):
        with pytest.raises(ConfigError, match="rank"):
            config_of({**d, "rank": 0})


def test_threshold_drift_rules():
    from dlm_triage.drift import threshold_drift

    old = {"a": {"threshold": 1.0, "ci_low": 0.9, "ci_high": 1.1}, "b": {"threshold": 1.0, "ci_low": 0.9,
           "ci_high": 1.1}, "d": {"threshold": 1.0, "ci_low": None, "ci_high": None},
           "e": {"threshold": 1.0, "ci_low": 0.9, "ci_high": 1.1}}
    new = {"a": {"threshold": 1.05, "ci_low": 1.0, "ci_high": 1.2, "accepted": True},
           "b": {"threshold": 2.0, "ci_low": 1.5, "ci_high": 2.5, "accepted": True},
           "c": {"threshold": 3.0, "ci_low": 2.0, "ci_high": 4.0, "accepted": True},
           "d": {"threshold": 1.0, "ci_low": 0.5, "ci_high": 1.5, "accepted": True},
           "e": {"threshold": None, "ci_low": None, "ci_high": None, "accepted": False}}
    rows = {r["group"]: r for r in threshold_drift(old, new)}
    assert rows["a"]["drift"] == "within CI overlap" and rows["a"]["ci_overlap"] is True
    assert math.isclose(rows["a"]["change"], 0.05)
    assert rows["b"]["drift"] == "CIs disjoint" and rows["b"]["ci_overlap"] is False
    assert rows["c"]["drift"] == "new"
    assert rows["d"]["drift"] == "CI unavailable"
    assert rows["e"]["drift"] == "rejected (previous kept)"


# -- flows (one Prefect harness per session) ----------------------------------------------------------------

def _sweep_params(tiny_model_dir: Path, tmp: Path, **changes) -> SweepParams:
    base = dict(families=["tiny"], ranks=[4], mask_ratios=[0.3, 0.7], seeds=[1], steps=STEPS, batch_size=2,
                model_id=str(tiny_model_dir), runs_dir=tmp / "runs", db=tmp / "none.duckdb",
                early_warning_step=5, gpu_slots=2)
    base.update(changes)
    return SweepParams(**base)


def manifest_max_grad_up_to(run_dir: str, k: int) -> list[float]:
    import polars as pl

    steps = pl.read_parquet(Path(run_dir) / "steps.parquet")
    return steps.filter(pl.col("step") <= k)["grad_norm"].to_list()


def _recorded_task_run(state, timeout_s: float = 60):
    """The task run as the server recorded it. Task states reach the server as events, recorded asynchronously:
    wait (bounded) until the record exists and shows the same final state before reading run_count. A task run
    called outside a flow can still be unknown to the server (404) when its call returns."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            try:
                tr = client.read_task_run(state.state_details.task_run_id)
            except ObjectNotFound:
                tr = None
            if tr is not None and tr.state is not None and tr.state.type == state.type:
                return tr
            if time.monotonic() > deadline:
                assert tr is not None, (f"the server never recorded task run {state.state_details.task_run_id} "
                                        f"within {timeout_s:.0f} s")
                return tr  # the caller's assertions show the state it has
            time.sleep(0.5)


def _artifact_keys(flow_run_names: list[str] | None = None) -> set[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {a.key for a in client.read_artifacts() if a.key}


def _shard_runs_of(parent_flow_run_id) -> list[object]:
    """The train-shard flow runs under a sweep's flow run (subflows: their parent task run is in the sweep)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["train-shard"])),
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_flow_run_id])))


@pytest.mark.slow
def test_sweep_trains_in_shard_runs_then_reruns_train_nothing_and_deleted_runs_retrain(prefect_harness,
                                                                                        tiny_model_dir, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.sweep import sweep_flow

    # four configs, two shards in subprocesses of this machine (the local 'process' path)
    params = _sweep_params(tiny_model_dir, tmp_path, seeds=[1, 2])
    state = sweep_flow(params, return_state=True)
    first = state.result()
    assert len(first) == 4
    assert all(r["status"] == "completed" and not r["reused"] for r in first), first
    for r in first:
        assert (Path(r["run_dir"]) / "manifest.json").is_file()
        assert r["final_loss"] is not None and math.isfinite(r["final_loss"]) and r["max_grad_norm"] > 0
    shards = _shard_runs_of(state.state_details.flow_run_id)
    assert len(shards) == 2 and all(fr.state.is_completed() for fr in shards), shards
    assert sorted(len(fr.parameters["configs"]) for fr in shards) == [2, 2]
    trained_in = {tr.name for tr in _train_task_runs([r["run_id"] for r in first]).values()}
    assert trained_in == {f"train-{r['run_id']}" for r in first}  # one train-config task run per config
    with get_client(sync_client=True) as client:
        arts = {a.key: a for a in client.read_latest_artifacts() if a.key in ("sweep-progress", "sweep-shards")}
        assert arts["sweep-progress"].data == 100.0
        rows = json.loads(arts["sweep-shards"].data)  # the latest version: the sweep's last word
        assert sorted((r["done"], r["runs"], r["state"]) for r in rows) == [(2, 2, "COMPLETED")] * 2
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        for fr in shards:  # each shard run's page: its own progress bar and a row per config
            own = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
                any_=[fr.id])))
            assert [a.data for a in own if a.type == "progress"] == [100.0], own
            (table,) = [json.loads(a.data) for a in own if a.type == "table"]
            assert sorted(r["run_id"] for r in table) == sorted(
                RunConfig.from_dict(c).run_id for c in fr.parameters["configs"])

    params = params.model_copy(update={"task_runner": "thread", "gpu_slots": 1})
    state = sweep_flow(params, return_state=True)  # every run dir is finished: no shard, nothing trained
    second = state.result()
    assert [r["run_id"] for r in second] == [r["run_id"] for r in first]
    assert all(r["reused"] for r in second), second
    assert [r["final_loss"] for r in second] == [r["final_loss"] for r in first]
    assert _shard_runs_of(state.state_details.flow_run_id) == []

    shutil.rmtree(first[0]["run_dir"])  # a deleted run dir is trained again, the others are kept
    third = {r["run_id"]: r for r in sweep_flow(params)}
    gone, kept = third[first[0]["run_id"]], third[first[1]["run_id"]]
    assert not gone["reused"] and (Path(gone["run_dir"]) / "manifest.json").is_file()
    assert kept["reused"]
    assert gone["final_loss"] == pytest.approx(first[0]["final_loss"], rel=1e-6)  # same seed, same numbers
    assert "sweep-runs" in _artifact_keys()


def _train_task_runs(run_ids: list[str], timeout_s: float = 60) -> dict[str, object]:
    """The server's records of the training task runs of `run_ids`, once each shows a final state with an end
    time (states reach the server as events, recorded asynchronously)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    names = [f"train-{r}" for r in run_ids]
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=names)))
            done = {tr.name: tr for tr in runs if tr.state is not None and tr.state.is_final() and tr.end_time}
            if len(done) == len(names) or time.monotonic() > deadline:
                return done
            time.sleep(0.5)


def test_failed_config_is_reported_and_others_complete(prefect_harness, tiny_model_dir, tmp_path):
    from flows.shard import train_shard_flow

    good = RunConfig(model_id=str(tiny_model_dir), steps=3, batch_size=2, rank=4, seed=5)
    bad = good.replace(dataset=str(tmp_path / "missing.jsonl"), seed=6)
    records = {r["run_id"]: r for r in train_shard_flow([bad.to_dict(), good.to_dict()], str(tmp_path / "runs"))}
    assert records[good.run_id]["status"] == "completed"
    failed = records[bad.run_id]
    assert failed["status"] == "task_failed" and "missing.jsonl" in failed["error"], failed


def test_config_error_is_not_retried_but_oserror_is(prefect_harness, tiny_model_dir, tmp_path):
    import dlm_triage.train as train_mod
    from tasks.train import train_config

    fast = train_config.with_options(retry_delay_seconds=0)
    bad = RunConfig(steps=3).to_dict() | {"rank": 0}  # what a hand-edited deployment parameter could send
    state = fast(bad, str(tmp_path / "runs"), return_state=True)
    assert state.is_failed() and "rank=0" in state.message
    assert _recorded_task_run(state).run_count == 1  # no retry

    calls = []

    def flaky(step, model):  # the trainer's own fault-injection hook: one transient I/O error, then fine
        calls.append(step)
        if len(calls) == 1:
            raise OSError("transient: stale NFS handle")

    cfg = RunConfig(model_id=str(tiny_model_dir), steps=3, batch_size=2, rank=4, seed=9)
    # the task starts its run through train.train_run: wrapped so the trainer's fault hook reaches it
    real_train_run = train_mod.train_run
    train_mod.train_run = functools.partial(real_train_run, hooks=train_mod.FaultHooks(after_backward=flaky))
    try:
        state = fast(cfg.to_dict(), str(tmp_path / "runs"), return_state=True)
    finally:
        train_mod.train_run = real_train_run
    assert state.is_completed(), state.message
    assert _recorded_task_run(state).run_count == 2  # retried once


@pytest.mark.slow
def test_pipeline_end_to_end(prefect_harness, tiny_model_dir, tmp_path):
    from flows.pipeline import pipeline_flow

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, TaskRunFilter, \
        TaskRunFilterName, TaskRunFilterStartTime

    from dlm_triage import store

    db, out = tmp_path / "triage.duckdb", tmp_path / "report"
    con = store.connect(db)  # an earlier calibration's live threshold, so low that every run is routed live
    try:
        store.save_calibration(con, {"calibration_id": "cal-earlier", "group_by": "family", "groups": {"tiny": {
            "n": 40, "n_unstable": 4, "registry": {"monitor": "max_grad_norm", "k": 5, "threshold": 1e-6, "n": 40,
                                                   "precision": 1.0, "accepted": True}}}})
    finally:
        con.close()
    params = PipelineParams(
        sweep=_sweep_params(tiny_model_dir, tmp_path, seeds=[1, 2], task_runner="thread", gpu_slots=1, db=db),
        ingest=IngestParams(db=db),
        calibrate=CalibrateParams(out=out, n_resamples=20, stepk_resamples=10, ks=[5, 10]),
        report=ReportParams(),
    )
    state = pipeline_flow(params, return_state=True)
    result = state.result()

    run_ids = sorted(r["run_id"] for r in result["runs"])
    assert len(run_ids) == 4 and all(r["status"] == "completed" for r in result["runs"])
    assert result["ingest"]["runs"]["added"] == 4
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert sorted(r[0] for r in con.execute("SELECT run_id FROM runs").fetchall()) == run_ids
        per_run = dict(con.execute("SELECT run_id, count(*) FROM steps GROUP BY run_id").fetchall())
        assert per_run == {rid: STEPS + 1 for rid in run_ids}  # steps 0..STEPS, every run
        cal = con.execute("SELECT calibration_id FROM calibrations").fetchall()
    finally:
        con.close()
    assert [c[0] for c in cal] == ["cal-earlier", result["calibration"]["calibration_id"]]
    assert json.loads(Path(result["calibration"]["json_path"]).read_text())["groups"].keys() == {"tiny"}
    # Reports live per calibration id, with out/latest pointing at the newest one (nothing is overwritten).
    html = Path(result["report"]["html"])
    assert html.is_file() and html.parent == out / result["calibration"]["calibration_id"]
    assert (out / "latest").resolve() == html.parent.resolve()
    assert {"sweep-runs", "ingest-summary", "calibration-summary", "calibration-thresholds",
            "triage-report"} <= _artifact_keys()

    # The Prefect UI: the pipeline run's own artifact leads with the answer and carries the verdict table inline;
    # the report's text is an artifact too; routed runs read 'Routed' and the run is tagged.
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        own = {a.key: a for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))}
        this_run = client.read_flow_run(run_id)
        tags = this_run.tags
        # names alone also match earlier tests' task runs of the same configs on this shared server
        marks = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(
            any_=[f"routed-{r}" for r in run_ids] + [f"train-{r}" for r in run_ids]),
            start_time=TaskRunFilterStartTime(after_=this_run.start_time)))
        text = client.read_artifacts(artifact_filter=ArtifactFilter(key={"any_": ["triage-report-text"]}))[0].data
    summary = own["pipeline-summary"].data
    answer = summary.index("## Answer, per group")
    assert answer < summary.index("| Recommendation |") < summary.index("## Runs routed to inspection (4)")
    line = next(x for x in summary.splitlines() if x.startswith("- ") and "tiny (n=" in x)
    assert "this calibration registered none" in line and "cal-earlier stays live" in line
    assert "4 run(s) routed to inspection" in line and all(r in summary for r in run_ids)
    assert "routed live at step 5: max-grad so far" in summary and '{"' not in summary  # a sentence, not JSON
    assert "routed" in tags
    assert sorted((m.name, m.state.name) for m in marks) == sorted(
        [(f"routed-{r}", "Routed") for r in run_ids] + [(f"train-{r}", "Routed") for r in run_ids])
    assert text.index("## Answer, per group") < text.index("## Verdicts")
    # the figures travel inside the artifact (the UI renders data-URI images): the report needs no file access
    assert text.count("](data:image/png;base64,") == len(result["report"]["figures"]) > 0


@pytest.mark.slow
def test_recalibrate_only_groups_with_enough_new_runs(prefect_harness, tiny_model_dir, tmp_path):
    from runfactory import make_sweep  # synthetic run dirs through the real run-log writer: no training

    from dlm_triage.params import RecalibrateParams
    from flows.recalibrate import recalibrate_flow

    runs = tmp_path / "runs"
    make_sweep(runs, 24, steps=30)
    make_sweep(runs, 12, steps=30, family="mdlm")
    params = RecalibrateParams(runs_dir=runs, min_new_runs=10, write_report=False, calibrate=CalibrateParams(
        db=tmp_path / "t.duckdb", out=tmp_path / "cal", n_resamples=20, stepk_resamples=10, ks=[5, 10]))

    first = recalibrate_flow(params)  # never calibrated: every group counts all its runs
    assert first["ingest"]["added"] == 36 and first["due"]["due"] == ["mdlm", "tiny"]
    assert {r["group"]: r["drift"] for r in first["drift"]}["tiny"] == "new"

    # the registered threshold reaches live training (the ThresholdRecord through the shard run's JSON parameters and the cache key)
    from dlm_triage import store
    from flows.sweep import sweep_flow

    con = store.connect(tmp_path / "t.duckdb", read_only=True)
    try:
        registered = store.latest_threshold(con, "tiny")
    finally:
        con.close()
    assert registered is not None
    (rec,) = sweep_flow(_sweep_params(tiny_model_dir, tmp_path, mask_ratios=[0.5], steps=6, task_runner="thread",
                                      gpu_slots=1, db=tmp_path / "t.duckdb", early_warning_step=3,
                                      runs_dir=tmp_path / "live-runs"))
    manifest = json.loads((Path(rec["run_dir"]) / "manifest.json").read_text())
    assert rec["status"] == "completed" and rec["routed"] == manifest["routed_for_inspection"]
    assert rec["routed"] == (max(manifest_max_grad_up_to(rec["run_dir"], 3)) >= registered.threshold)

    idle = recalibrate_flow(params)  # nothing new: nothing recalibrated
    assert idle["due"]["due"] == [] and idle["calibration"] is None

    make_sweep(runs, 12, steps=30, cohort="later")  # 12 new tiny runs (new configs), no new mdlm runs
    third = recalibrate_flow(params.model_copy(update={"write_report": True}))
    assert third["due"]["groups"]["tiny"]["new"] == 12 and third["due"]["due"] == ["tiny"]
    (row,) = third["drift"]
    assert row["group"] == "tiny" and row["old_threshold"] is not None and row["new_n"] == 36
    assert row["drift"] in ("within CI overlap", "CIs disjoint", "CI unavailable", "rejected (previous kept)")
    assert Path(third["report"]["html"]).is_file()
    con = duckdb.connect(str(tmp_path / "t.duckdb"), read_only=True)
    try:
        n_cal = con.execute("SELECT count(*) FROM calibrations").fetchone()[0]
        groups_of_last = con.execute(
            "SELECT group_name FROM thresholds WHERE calibration_id = ?", [third["calibration"]["calibration_id"]]
        ).fetchall()
    finally:
        con.close()
    assert n_cal == 2 and groups_of_last == [("tiny",)]
    assert "what-changed" in _artifact_keys()


@pytest.mark.slow
def test_progress_of_runs_in_shard_processes_reaches_their_task_runs_logs(prefect_harness, tiny_model_dir, tmp_path,
                                                                        monkeypatch):
    """Training runs in a shard subprocess; its 'step i/n' lines must land in the right task run's log."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId

    from flows.sweep import sweep_flow
    from tasks.train import PROGRESS_LOG_EVERY_S_ENV

    monkeypatch.setenv(PROGRESS_LOG_EVERY_S_ENV, "0")  # every step (the shard processes inherit it)
    recs = sweep_flow(_sweep_params(tiny_model_dir, tmp_path, steps=5))  # two configs in two shard processes
    runs = _train_task_runs([r["run_id"] for r in recs])
    assert len(runs) == 2
    for rec in recs:
        task_run = runs[f"train-{rec['run_id']}"]
        wanted = {f"{rec['run_id']}: step {i}/5" for i in range(1, 5)}
        deadline = time.monotonic() + 30  # logs reach the server in batches (every 2 s by default)
        with get_client(sync_client=True) as client:
            while True:
                got = {lg.message for lg in client.read_logs(
                    log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run.id])))}
                if wanted <= got or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        assert wanted <= got, f"missing progress lines {sorted(wanted - got)}; the task run logged {sorted(got)}"


@pytest.mark.slow
def test_a_killed_local_shard_shows_crashed_naming_its_run_and_its_rest_trains_in_a_new_attempt(
        prefect_harness, tiny_model_dir, tmp_path):
    """The local path (shards in subprocesses): SIGKILL one shard process mid-training. The sweep marks its flow
    run Crashed with the run it was training and hands its unfinished configs to an '-attempt-2' shard run."""
    import os
    import signal
    import threading
    import time

    import psutil

    from flows.sweep import sweep_flow

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        TaskRunFilter, TaskRunFilterName, TaskRunFilterState, TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    params = _sweep_params(tiny_model_dir, tmp_path, seeds=[1, 2], steps=150)  # 4 configs, 2 shards of 2
    names = [f"train-{c.run_id}" for c in params.to_spec().expand()]
    killed: list[int] = []

    def kill_one_shard_in_training():
        deadline = time.monotonic() + 300
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline and not killed:
                # shard processes: spawned children of this one; both in training once two of this sweep's
                # train-config task runs are Running
                shard_procs = [p for p in psutil.Process().children(recursive=True)
                               if any("spawn_main" in part for part in p.cmdline())]
                training = client.read_task_runs(task_run_filter=TaskRunFilter(
                    name=TaskRunFilterName(any_=names),
                    state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.RUNNING]))))
                if len(shard_procs) == 2 and len(training) == 2:
                    os.kill(shard_procs[0].pid, signal.SIGKILL)
                    killed.append(shard_procs[0].pid)
                time.sleep(0.3)

    killer = threading.Thread(target=kill_one_shard_in_training, daemon=True)
    killer.start()
    state = sweep_flow(params, return_state=True)
    killer.join(5)
    assert killed, "no shard process was found training"
    recs = state.result()
    assert [r["status"] for r in recs] == ["completed"] * 4, recs  # the killed shard's runs finished elsewhere
    shards = {fr.name: fr for fr in _shard_runs_of(state.state_details.flow_run_id)}
    crashed = [fr for fr in shards.values() if fr.state.is_crashed()]
    assert len(crashed) == 1, {n: fr.state for n, fr in shards.items()}
    (victim,) = crashed
    retry = shards[f"{victim.name}-attempt-2"]
    assert retry.state.is_completed()
    msg = victim.state.message
    in_training = msg.split("crashed while training ")[1].split(":")[0]
    handed_on = {RunConfig.from_dict(c).run_id for c in retry.parameters["configs"]}
    assert in_training in handed_on, msg  # the UI names the run it crashed in, and that run trained again
    assert "its process exited with code -9" in msg and retry.name in msg, msg
    assert handed_on <= {RunConfig.from_dict(c).run_id for c in victim.parameters["configs"]}
