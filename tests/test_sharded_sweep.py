"""A sweep across "machines" for real: a Prefect server, the shipped prefect.yaml deployed, TWO process workers
on the GPU pool (two machines on one box) and one on the CPU pool (the sweep's orchestrator).

One module-scoped server (start-up costs ~30-60 s here). In order: a sweep of 6 tiny configs spreads over both
workers and a re-run trains nothing; cancelling a sweep stops every training process; a worker killed with SIGKILL
mid-shard loses no finished run and its unfinished runs finish on the other worker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from flows import tempserver
from test_deployments import REPO, _stop, _wait

pytestmark = [pytest.mark.server, pytest.mark.slow]

HEARTBEAT_S, STALE_AFTER_S = 2.0, 30.0  # a killed worker's shard is declared crashed ~30 s after its last beat


class Cluster:
    def __init__(self, tmp: Path, tiny_model_dir: Path) -> None:
        self.tmp, self.tiny = tmp, tiny_model_dir
        port = tempserver.free_port()
        self.api = f"http://127.0.0.1:{port}/api"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "PREFECT_HOME": str(tmp / "prefect-home"),
            "PREFECT_API_URL": self.api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_LOOP_SECONDS": "5",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
            # one shared result storage for all workers: set on the pools by setup.sh (RESULT_STORAGE_URL below);
            # each process's own default lies elsewhere, so a record found there came through the pools' env
            "PREFECT_LOCAL_STORAGE_PATH": str(tmp / "unshared-results"),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "DLM_TRIAGE_REPO": str(REPO),
            "DLM_TRIAGE_OUT": str(tmp / "out"),
            "OMP_NUM_THREADS": "1",
        }
        self.results = tmp / "shared-results"
        self.cli = [sys.executable, "-m", "prefect"]
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    def prefect(self, *args: str, timeout: float = 180) -> str:
        r = subprocess.run([*self.cli, *args], env=self.env, cwd=REPO, capture_output=True, text=True,
                           timeout=timeout)
        assert r.returncode == 0, f"prefect {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
        return r.stdout

    def spawn(self, name: str, args: list[str]) -> None:
        self.logs[name] = self.tmp / f"{name}.log"
        self.procs[name] = subprocess.Popen(
            [*self.cli, *args], env=self.env, cwd=self.tmp, stdout=open(self.logs[name], "a"),
            stderr=subprocess.STDOUT, start_new_session=True)  # own process group: a "machine" to kill

    def worker(self, name: str, pool: str) -> None:
        self.spawn(name, ["worker", "start", "--pool", pool, "--type", "process", "--name", name, "--limit", "1",
                          "--prefetch-seconds", "5"])

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")

    def start(self) -> None:
        port = self.api.rsplit(":", 1)[1].split("/")[0]
        self.spawn("server", ["server", "start", "--host", "127.0.0.1", "--port", port])
        tempserver.wait_healthy(self.procs["server"], self.api, 180, what="the test's Prefect server",
                                fix="see its log in the test's tmp dir")
        # the shipped one-time setup: pools, the GPU cap for both "machines", shared result storage, deploy --all
        r = subprocess.run(["bash", str(REPO / "deployments" / "setup.sh"), "--no-workers"], cwd=REPO,
                           env={**self.env, "GPU_SLOTS": "2", "RESULT_STORAGE_URL": str(self.results)},
                           capture_output=True, text=True, timeout=400)
        assert r.returncode == 0, f"setup.sh failed:\n{r.stdout}\n{r.stderr}"
        for name in ("gpu-a", "gpu-b"):
            self.worker(name, "gpu-pool")
        self.worker("cpu", "cpu-pool")

    def stop(self) -> None:
        for p in reversed(list(self.procs.values())):  # workers before the server
            _stop(p)

    @contextmanager
    def client(self):
        import prefect.settings as ps
        from prefect.client.orchestration import get_client

        with ps.temporary_settings(updates={ps.PREFECT_API_URL: self.api}), get_client(sync_client=True) as c:
            yield c

    def sweep_parameters(self, runs_dir: Path, steps: int, seeds: list[int]) -> dict:
        return {"params": {
            "families": ["tiny"], "ranks": [4], "mask_ratios": [0.3, 0.7], "seeds": seeds,
            "steps": steps, "batch_size": 2, "model_id": str(self.tiny), "runs_dir": str(runs_dir),
            "early_warning": False, "gpu_slots": 2, "shard_deployment": "train-shard/train-shard",
            "heartbeat_s": HEARTBEAT_S, "stale_after_s": STALE_AFTER_S,
        }}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_model_dir):
    c = Cluster(tmp_path_factory.mktemp("cluster"), tiny_model_dir)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        for name in c.logs:
            print(f"--- {name}.log (tail)\n{c.log(name)[-3000:]}")


def _final(client, flow_run_id, timeout_s: float):
    def done():
        fr = client.read_flow_run(flow_run_id)
        return fr if fr.state is not None and fr.state.is_final() else None

    return _wait(f"flow run {flow_run_id} to end", done, timeout_s, every_s=2)


def _shard_runs(client, sweep_id) -> list:
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterParentFlowRunId

    return client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=["train-shard"])),
        flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[sweep_id])))


def _artifacts(client, flow_run_id) -> list:
    """The artifacts a flow run created (every version), oldest first."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.client.schemas.sorting import ArtifactSort

    arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
        any_=[flow_run_id])), sort=ArtifactSort.CREATED_DESC)
    return arts[::-1]


def _holder(cluster: Cluster, flow_run_name: str) -> str | None:
    """Which worker ran this flow run: the one that logged it "submitted to infrastructure" (both workers may try
    to submit a run; the server lets one of them, and the other logs an aborted submission)."""
    for name in ("gpu-a", "gpu-b"):
        if f"Flow run '{flow_run_name}' submitted to infrastructure" in cluster.log(name):
            return name
    return None


def _training_processes(shard_ids: set[str]) -> list[int]:
    """PIDs of live processes that belong to these flow runs (the worker sets PREFECT__FLOW_RUN_ID for them)."""
    import psutil

    pids = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.environ().get("PREFECT__FLOW_RUN_ID") in shard_ids and p.status() != psutil.STATUS_ZOMBIE:
                pids.append(p.pid)
        except (psutil.Error, OSError):
            continue
    return pids


def test_a_sweep_spreads_over_both_workers_and_a_rerun_trains_nothing(cluster, tmp_path):
    runs = tmp_path / "runs"
    with cluster.client() as client:
        dep = client.read_deployment_by_name("sweep/sweep")
        run = client.create_flow_run_from_deployment(dep.id, parameters=cluster.sweep_parameters(runs, 3, [1, 2, 3]))
        final = _final(client, run.id, 600)
        assert final.state.is_completed(), (final.state, cluster.log("cpu")[-4000:])
        manifests = sorted(runs.glob("*/manifest.json"))
        assert len(manifests) == 6
        shards = _shard_runs(client, run.id)
        assert len(shards) == 2 and all(s.state.is_completed() for s in shards), [s.state for s in shards]
        holders = {_holder(cluster, s.name) for s in shards}
        assert holders == {"gpu-a", "gpu-b"}, f"both workers must run a shard, got {holders}"
        assert sorted(len(s.parameters["configs"]) for s in shards) == [3, 3]
        # per-run job variables reach each shard run (merged over the deployment's env)
        assert all(s.job_variables["env"]["DLM_TRIAGE_SHARD"] == s.name for s in shards), [
            s.job_variables for s in shards]
        mtimes = {p: p.stat().st_mtime_ns for p in manifests}
        # setup.sh's shared result storage: the pools carry it, and every train-config record was persisted there
        for pool in ("gpu-pool", "cpu-pool"):
            env = client.read_work_pool(pool).base_job_template["variables"]["properties"]["env"]["default"]
            assert env["PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"] == "local-file-system/dlm-triage-results", env
        assert client.read_work_pool("gpu-pool").concurrency_limit == 2
        stored = [p for p in cluster.results.rglob("*") if p.is_file()]
        assert len(stored) >= 6, stored  # one record per trained config (the cache's metadata beside them)
        assert not (cluster.tmp / "unshared-results").exists() or not any(
            (cluster.tmp / "unshared-results").rglob("*")), "a record went to a process's own storage"
        # the UI's view, read back from the server: the sweep's progress bar (updated in place) ...
        arts = _artifacts(client, run.id)
        (progress,) = [a for a in arts if a.type == "progress"]
        assert progress.key == "sweep-progress" and progress.data == 100.0
        assert progress.description.startswith("6 of 6 run(s) finished"), progress.description
        # ... and its per-shard table, a new version each time what the shards report changes
        tables = [json.loads(a.data) for a in arts if a.key == "sweep-shards"]
        assert len(tables) >= 2, tables
        assert sum(r["done"] for r in tables[0]) < 6  # the first version: before the shards had finished
        assert sorted((r["done"], r["runs"], r["state"]) for r in tables[-1]) == [(3, 3, "COMPLETED")] * 2
        for s in shards:  # each shard run's own page: its progress bar and one row per config it trained
            own = _artifacts(client, s.id)
            assert [a.data for a in own if a.type == "progress"] == [100.0], own
            (table,) = [json.loads(a.data) for a in own if a.type == "table"]
            assert sorted(r["run_id"] for r in table) == sorted(_run_id(c) for c in s.parameters["configs"])
            assert {(r["status"], r["how"]) for r in table} == {("completed", "trained")}, table

        again = client.create_flow_run_from_deployment(dep.id, parameters=cluster.sweep_parameters(runs, 3, [1, 2, 3]))
        assert _final(client, again.id, 300).state.is_completed()
        assert _shard_runs(client, again.id) == []  # every run dir finished: no shard run at all
        assert {p: p.stat().st_mtime_ns for p in manifests} == mtimes  # nothing rewritten


def test_cancelling_a_sweep_stops_every_training_process(cluster, tmp_path):
    from prefect.states import Cancelling

    runs = tmp_path / "runs"
    with cluster.client() as client:
        dep = client.read_deployment_by_name("sweep/sweep")
        # long runs: they are still training when the sweep is cancelled
        run = client.create_flow_run_from_deployment(dep.id, parameters=cluster.sweep_parameters(runs, 5000, [1]))

        def both_training():
            shards = _shard_runs(client, run.id)
            return shards if len(shards) == 2 and all(
                s.state.is_running() for s in shards) and _training_processes({str(s.id) for s in shards}) else None

        shards = _wait("both shard runs training", both_training, 400, every_s=2)
        ids = {str(s.id) for s in shards}
        client.set_flow_run_state(run.id, Cancelling(), force=True)  # what the UI's Cancel button does
        assert _final(client, run.id, 180).state.is_cancelled()
        _wait("every shard run to end", lambda: all(client.read_flow_run(s.id).state.is_final() for s in shards), 180)
        assert all(client.read_flow_run(s.id).state.is_cancelled() for s in shards)
        _wait("every training process to end", lambda: not _training_processes(ids), 60)
        assert not list(runs.glob("*/manifest.json"))  # nothing finished: none of the 5000-step runs


def test_a_worker_killed_mid_shard_loses_no_finished_run_and_its_runs_finish_elsewhere(cluster, tmp_path):
    runs = tmp_path / "runs"
    with cluster.client() as client:
        dep = client.read_deployment_by_name("sweep/sweep")
        run = client.create_flow_run_from_deployment(dep.id, parameters=cluster.sweep_parameters(runs, 150, [1, 2, 3]))

        def a_shard_with_a_finished_run():
            for s in _shard_runs(client, run.id):
                ids = {c_id for c_id in (_run_id(c) for c in s.parameters["configs"])}
                done = [m for m in runs.glob("*/manifest.json") if m.parent.name in ids]
                holder = _holder(cluster, s.name)
                if done and holder and s.state.is_running() and len(done) < len(ids):
                    return s, holder, done
            return None

        victim, holder, done = _wait("a shard with one finished run", a_shard_with_a_finished_run, 600, every_s=1)
        kept = {m: m.read_bytes() for m in done}
        # the machine is gone: its worker and the shard's flow-run process die at once, nobody reports anything
        training = _training_processes({str(victim.id)})
        assert training, "the victim shard's process was not found"
        os.killpg(cluster.procs[holder].pid, signal.SIGKILL)
        for pid in training:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        cluster.procs[holder].wait(10)
        survivor = ({"gpu-a", "gpu-b"} - {holder}).pop()

        final = _final(client, run.id, 900)
        assert final.state.is_completed(), (final.state, cluster.log("cpu")[-4000:])
        assert len(list(runs.glob("*/manifest.json"))) == 6  # every run finished
        assert {m: m.read_bytes() for m in kept} == kept  # the finished ones were not retrained
        crashed = client.read_flow_run(victim.id)
        assert crashed.state.is_crashed(), crashed.state  # marked by the sweep: its lease went silent
        retries = [s for s in _shard_runs(client, run.id) if s.name.startswith(victim.name + "-attempt-")]
        assert len(retries) == 1 and retries[0].state.is_completed()
        assert _holder(cluster, retries[0].name) == survivor
        left = {_run_id(c) for c in retries[0].parameters["configs"]}
        assert left and not (left & {m.parent.name for m in kept})  # only the unfinished runs were handed on
        # the UI shows the crash with the config it was training and where the rest went
        assert "crashed while training" in crashed.state.message and retries[0].name in crashed.state.message
        assert any(rid in crashed.state.message.split("crashed while training")[1].split(":")[0] for rid in left), \
            crashed.state.message
    cluster.worker(holder, "gpu-pool")  # restore the pair for any later test


def _run_id(cfg_dict: dict) -> str:
    from dlm_triage.config import RunConfig

    return RunConfig.from_dict(cfg_dict).run_id
