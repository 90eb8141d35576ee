"""Deployments for real: a Prefect server subprocess, the shipped prefect.yaml deployed with `prefect deploy`,
a process worker, a deployment run triggered with parameters through the API (as the UI does), its artifacts,
and the cron schedule materialising scheduled runs. Plus quick checks of the shipped files without a server.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flows import tempserver

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deployments"


def _load_entrypoint(entrypoint: str):
    import importlib

    path, name = entrypoint.split(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)


# -- shipped files, no server -------------------------------------------------------------------------------

def test_prefect_yaml_entrypoints_pools_and_parameters_are_valid():
    spec = yaml.safe_load((DEPLOY / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert {"sweep", "train-shard", "pipeline", "ingest", "calibrate-report", "recalibrate"} <= set(deployments)
    # the sweep only orchestrates (CPU pool); its shards train on the GPU pool, through the train-shard deployment
    assert deployments["sweep"]["work_pool"]["name"] == "cpu-pool"
    assert deployments["train-shard"]["work_pool"]["name"] == "gpu-pool"
    shard_dep = deployments["sweep"]["parameters"]["params"]["shard_deployment"]
    assert shard_dep == "train-shard/train-shard"
    assert _load_entrypoint(deployments["train-shard"]["entrypoint"]).name == shard_dep.split("/")[0]
    assert deployments["ingest"]["work_pool"]["name"] == deployments["calibrate-report"]["work_pool"]["name"] == "cpu-pool"
    assert [s["cron"] for s in deployments["recalibrate"]["schedules"]] == ["0 3 * * *"]
    assert list(spec["pull"][0]) == ["prefect.deployments.steps.set_working_directory"]
    for d in deployments.values():
        fl = _load_entrypoint(d["entrypoint"])
        sig = inspect.signature(fl.fn)
        for pname, value in (d.get("parameters") or {}).items():
            model = sig.parameters[pname].annotation  # a pydantic model: the defaults must validate
            model = eval(model, fl.fn.__globals__) if isinstance(model, str) else model
            model.model_validate(value)


def test_deployment_defaults_are_the_embedded_default_of_dlm_triage_run():
    from dlm_triage.defaults import EMBEDDED_DEFAULT_SWEEP
    from dlm_triage.params import PipelineParams, SweepParams

    spec = yaml.safe_load((DEPLOY / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    sweep = dict(deployments["sweep"]["parameters"]["params"])
    assert sweep.pop("shard_deployment") == "train-shard/train-shard"  # the one difference: where shards train
    pipeline = deployments["pipeline"]["parameters"]["params"]["sweep"]
    run_default = SweepParams(**EMBEDDED_DEFAULT_SWEEP)
    for name, form in (("sweep", sweep), ("pipeline", pipeline)):
        assert form == EMBEDDED_DEFAULT_SWEEP, f"deployment {name!r} differs from `dlm-triage run`'s default"
        # the same grid once validated: the UI form trains the runs `dlm-triage run` trains (same run ids)
        assert [c.run_id for c in SweepParams(**form).to_spec().expand()] == \
            [c.run_id for c in run_default.to_spec().expand()]
    assert PipelineParams.model_validate(deployments["pipeline"]["parameters"]["params"]).sweep.families == \
        EMBEDDED_DEFAULT_SWEEP["families"]


def test_k8s_template_declares_every_placeholder_and_requests_a_gpu():
    tpl = json.loads((DEPLOY / "k8s-gpu-job-template.json").read_text())
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(tpl["job_configuration"])))
    assert used <= set(tpl["variables"]["properties"]), used - set(tpl["variables"]["properties"])
    container = tpl["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert tpl["variables"]["properties"]["gpu_count"]["default"] == 1


def test_setup_script_parses():
    subprocess.run(["bash", "-n", str(DEPLOY / "setup.sh")], check=True)


def test_result_storage_block_per_url_kind_and_the_pool_env_merges_under_a_deployments_env(prefect_harness):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.filesystems import LocalFileSystem, RemoteFileSystem
    from prefect.workers.process import ProcessJobConfiguration, ProcessWorker

    sys.path.insert(0, str(DEPLOY))
    try:
        import result_storage as rs
    finally:
        sys.path.remove(str(DEPLOY))
    # a path every machine mounts: LocalFileSystem (Prefect's RemoteFileSystem refuses paths without a scheme)
    assert rs.save_block("/shared/dlm-triage/results") == "local-file-system/dlm-triage-results"
    assert rs.save_block("file:///shared/x") == "local-file-system/dlm-triage-results"
    assert LocalFileSystem.load(rs.BLOCK_NAME).basepath == "/shared/x"
    assert rs.save_block("s3://bucket/dlm-triage/results") == "remote-file-system/dlm-triage-results"
    assert RemoteFileSystem.load(rs.BLOCK_NAME).basepath == "s3://bucket/dlm-triage/results"
    with pytest.raises(SystemExit, match="'relative/results'.*must be absolute"):
        rs.save_block("relative/results")

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="rs-test-pool", type="process",
                                               base_job_template=ProcessWorker.get_default_base_job_template()))
    rs.set_pool_env("rs-test-pool", "local-file-system/dlm-triage-results")
    with get_client(sync_client=True) as client:
        template = client.read_work_pool("rs-test-pool").base_job_template
    # what a worker builds for a flow run of a deployment with its own env (prefect.yaml's gpu_job has one)
    job = asyncio.run(ProcessJobConfiguration.from_template_and_values(template, {"env": {"OMP_NUM_THREADS": "2"}}))
    assert job.env == {rs.SETTING: "local-file-system/dlm-triage-results", "OMP_NUM_THREADS": "2"}


# -- a real server ------------------------------------------------------------------------------------------

def _wait(what: str, predicate, timeout_s: float, every_s: float = 1.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError(f"gave up after {timeout_s:.0f} s waiting for {what}")


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is not None:
        tempserver.stop(proc, 20, group=True)  # its own process group: the server's/worker's children too


@pytest.mark.server
@pytest.mark.slow
def test_deploy_trigger_with_parameters_and_cron_schedule(tmp_path, tiny_model_dir):
    import prefect.settings as ps
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterId, FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    port = tempserver.free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
        "PREFECT_LOCAL_STORAGE_PATH": str(tmp_path / "results"),
        "DLM_TRIAGE_REPO": str(REPO),  # resolved by the pull step on the worker at run time
        "DLM_TRIAGE_OUT": str(tmp_path / "out"),
    }
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("server", "worker")}
    cli = [sys.executable, "-m", "prefect"]

    def prefect(*args: str, timeout: float = 120) -> str:
        r = subprocess.run([*cli, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, f"prefect {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
        return r.stdout

    t0 = time.monotonic()
    phases: dict[str, float] = {}

    def mark(name: str) -> None:
        phases[name] = round(time.monotonic() - t0, 1)

    server = worker = None
    try:
        server = subprocess.Popen([*cli, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                                  stdout=logs["server"], stderr=subprocess.STDOUT, start_new_session=True)
        tempserver.wait_healthy(server, api, 120, what="the test's Prefect server", fix="see server.log")
        mark("server healthy")

        # independent CLI calls at once: each pays the prefect import (~5-8 s on a busy 2-core box)
        setup = [["work-pool", "create", pool, "--type", "process"] for pool in ("gpu-pool", "cpu-pool")]
        procs = [subprocess.Popen([*cli, *args], env=env, cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for args in setup]
        for args, proc in zip(setup, procs):
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"prefect {' '.join(args)} failed:\n{out}"
        mark("pools")
        prefect("--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml", timeout=180)
        mark("deployed")

        worker = subprocess.Popen([*cli, "worker", "start", "--pool", "cpu-pool", "--type", "process",
                                   "--prefetch-seconds", "5"], env=env, cwd=tmp_path,
                                  stdout=logs["worker"], stderr=subprocess.STDOUT, start_new_session=True)

        runs_dir = tmp_path / "runs"
        parameters = {"params": {  # what the UI form sends: JSON of SweepParams (here: trained in the sweep's process)
            "families": ["tiny"], "ranks": [4], "mask_ratios": [0.4, 0.6], "seeds": [3], "steps": 4,
            "batch_size": 2, "model_id": str(tiny_model_dir), "runs_dir": str(runs_dir),
            "task_runner": "thread", "gpu_slots": 1, "early_warning": False,
        }}
        with ps.temporary_settings(updates={ps.PREFECT_API_URL: api}):
            with get_client(sync_client=True) as client:
                sweep = client.read_deployment_by_name("sweep/sweep")
                recal = client.read_deployment_by_name("recalibrate/recalibrate")
                run = client.create_flow_run_from_deployment(sweep.id, parameters=parameters)

                def finished():
                    fr = client.read_flow_run(run.id)
                    return fr if fr.state is not None and fr.state.is_final() else None

                final = _wait("the sweep deployment run", finished, 200, every_s=2)
                mark("deployment run final")
                assert final.state.is_completed(), (final.state, (tmp_path / "worker.log").read_text()[-4000:])
                assert final.parameters["params"]["ranks"] == [4]

                artifacts = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
                assert "sweep-runs" in {a.key for a in artifacts}
                table = next(a for a in artifacts if a.key == "sweep-runs")
                assert len(json.loads(table.data)) == 2

                def scheduled():
                    return client.read_flow_runs(
                        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[recal.id])),
                        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                            type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
                    )

                upcoming = _wait("scheduled runs of the cron deployment", scheduled, 60)
                mark("cron runs scheduled")
                assert all(r.expected_start_time.hour == 3 and r.expected_start_time.minute == 0 for r in upcoming)
        manifests = sorted(runs_dir.glob("*/manifest.json"))
        assert len(manifests) == 2
    finally:
        _stop(worker)
        _stop(server)
        for f in logs.values():
            f.close()
        mark("stopped")
        print("phases (s since start):", phases)
