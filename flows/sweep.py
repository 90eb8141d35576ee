"""Sweep flow: expand a grid of fine-tunes, split it into shards, train each shard as its own flow run.

    prepare tiny model (family tiny, default model) -> plan (which configs are finished) -> registered thresholds
    -> shards (one per GPU slot, runs of one base model together) -> one `train-shard` flow run per shard,
       supervised -> summarise (records read back from the run manifests)

Where shards run (`SweepParams`):
- `shard_deployment` set (e.g. 'train-shard/train-shard'): each shard is a run of that deployment, created with
  `run_deployment(timeout=0)` as a subflow of the sweep, with per-run job variables; workers on any number of
  machines pick them up, and the work pool's / deployment's concurrency limit caps how many train at once.
- else `task_runner='process'`: each shard is a `train-shard` flow run in a subprocess of this machine
  (`prefect.flow_engine.run_flow_in_subprocess`), `gpu_slots` of them at once;
- `task_runner='thread'`: one shard, trained in this process (no spawn: quickest for a few short runs).

Supervision: every poll the sweep reads its shard runs' states, counts finished run dirs (the manifest is the
commit marker, on storage every worker shares) and updates the 'sweep-progress' (runs done / total) and
'sweep-shards' (per shard) artifacts. A shard run that crashes (its process died, or on the deployment path its
lease file stopped changing: worker or machine gone) is marked Crashed with the config it was training, and its
unfinished configs go to a new shard run (up to `shard_attempts` per shard), which any worker may pick up;
finished runs are never retrained. If the sweep fails or is cancelled, it cancels its shard runs (their workers
end their processes, and with them the trainings).

A config whose training fails (after its retries) is reported in the records and the 'sweep-runs' artifact; the
others continue, and the flow completes. Run it alone: `python -m flows.sweep` or the 'sweep' deployment.

One module, over 400 lines: the flow, its two ways of running shards (local subprocesses, deployment runs) and the
supervisor that hands a crashed shard's runs to a new one share `ShardRun` and one lifecycle; the Prefect-free
parts (shards, records) are in `dlm_triage/shards.py`.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact

from dlm_triage.config import RunConfig
from dlm_triage.params import SweepParams
from dlm_triage.shards import failed_record, finished_manifest, partition, record_from_manifest
from flows.shard import PARENT_PID_ENV, lease_path, revocation_path, train_shard_flow
from tasks.train import (
    _threshold_key, plan_runs, prepare_local_models, prepare_tiny_model, registered_threshold, summarise_sweep,
)

FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
TABLE_EVERY_S = 30.0  # the 'sweep-shards' table's newest version is at most this old (state changes: at once)


@dataclass
class ShardRun:
    """One attempt at one shard: a `train-shard` flow run (and, on the local path, its process)."""

    index: int
    attempt: int
    configs: list[dict[str, Any]]
    name: str
    flow_run_id: uuid.UUID | None = None
    process: Any = None
    state: str = "SCHEDULED"
    message: str = ""
    last_alive: float = field(default_factory=time.monotonic)  # monotonic time of its last sign of life
    done: set[str] = field(default_factory=set)
    final: bool = False
    typed: list[RunConfig] = field(init=False, repr=False)
    """`configs` validated once, when the attempt is made (the supervisor polls them every few seconds)."""

    def __post_init__(self) -> None:
        self.typed = [RunConfig.from_dict(c) for c in self.configs]

    @property
    def run_ids(self) -> list[str]:
        return [c.run_id for c in self.typed]


def _wire_thresholds(thresholds: dict[str, Any]) -> dict[str, Any]:
    """Registered thresholds as JSON for flow-run parameters (see flows.shard.WireThreshold)."""
    out = {}
    for family, rec in thresholds.items():
        key = _threshold_key(rec)
        out[family] = {"threshold": float(key)} if isinstance(key, (int, float)) else key
    return out


# -- launchers: where a shard run executes ------------------------------------------------------------------

class LocalShards:
    """Shard runs as subprocesses of this flow run's process (spawned, each a subflow run of the sweep)."""

    poll_s = 1.0

    def __init__(self, client: Any, torch_threads: int | None) -> None:
        self.client, self.torch_threads = client, torch_threads
        self.api_url = str(client.api_url)

    def start(self, shard: ShardRun, parameters: dict[str, Any]) -> None:
        from prefect.flow_engine import run_flow_in_subprocess

        # The child talks to this process's API (with no server configured, the ephemeral one this process
        # started: without the URL each child would start its own on the same database).
        env = {"PREFECT_API_URL": self.api_url, PARENT_PID_ENV: str(os.getpid())}
        shard.process = run_flow_in_subprocess(train_shard_flow, parameters=parameters, env=env)

    def poll(self, shards: list[ShardRun]) -> None:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

        runs = {fr.name: fr for fr in self.client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[s.name for s in shards])))}
        for s in shards:
            fr = runs.get(s.name)
            if fr is not None:
                s.flow_run_id = fr.id
                s.state, s.message = fr.state.type.value, fr.state.message or ""
            if s.process is not None and not s.process.is_alive() and s.state not in FINAL:
                if fr is not None:  # the engine may still be writing its final state: read once more
                    fr = self.client.read_flow_run(fr.id)
                    s.state, s.message = fr.state.type.value, fr.state.message or ""
                if s.state not in FINAL:
                    s.state, s.message = "CRASHED", f"its process exited with code {s.process.exitcode}"

    def alive(self, shard: ShardRun) -> bool:
        return shard.process is None or shard.process.is_alive() or shard.state in FINAL

    def revoke(self, shard: ShardRun) -> None:
        self.cancel(shard)

    def finish(self, shard: ShardRun) -> None:
        """Wait for a finished shard's process to exit (its engine reports the final state just before), so no
        exited child is left unreaped."""
        if shard.process is not None:
            shard.process.join(30)

    def cancel(self, shard: ShardRun) -> None:
        p = shard.process
        if p is not None and p.is_alive():
            p.terminate()  # SIGTERM: the engine marks the run and exits; a stuck one is killed below
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)


class DeploymentShards:
    """Shard runs as runs of a deployment on a work pool (`run_deployment(timeout=0)`, subflows of the sweep)."""

    def __init__(self, client: Any, deployment: str, job_variables: dict[str, Any], heartbeat_s: float,
                 stale_after_s: float, sweep_id: str, runs_dir: str) -> None:
        self.client, self.deployment, self.job_variables = client, deployment, job_variables
        self.sweep_id, self.runs_dir = sweep_id, runs_dir
        self._leases: dict[Any, bytes] = {}
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self.poll_s = min(5.0, max(0.5, heartbeat_s))

    def start(self, shard: ShardRun, parameters: dict[str, Any]) -> None:
        from prefect.deployments import run_deployment

        jv = dict(self.job_variables)
        jv["env"] = {**(jv.get("env") or {}), "DLM_TRIAGE_SHARD": shard.name}
        # idempotency key: a create call that the client retries (a slow server answering late) must not start
        # the same shard twice (one key per sweep run, shard and attempt)
        fr = run_deployment(self.deployment, parameters=parameters, timeout=0, flow_run_name=shard.name,
                            job_variables=jv, tags=["dlm-triage", "shard"],
                            idempotency_key=f"{self.sweep_id}:{shard.name}")
        shard.flow_run_id = fr.id

    def poll(self, shards: list[ShardRun]) -> None:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        ids = [s.flow_run_id for s in shards if s.flow_run_id is not None]
        runs = {fr.id: fr for fr in self.client.read_flow_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=ids)))}
        for s in shards:
            fr = runs.get(s.flow_run_id)
            if fr is not None:
                if s.state != "RUNNING" and fr.state.type.value == "RUNNING":
                    s.last_alive = time.monotonic()  # silence is counted from the start of this attempt
                s.state, s.message = fr.state.type.value, fr.state.message or ""
        for s in shards:  # a lease that changed since the last poll: alive now, by this process's clock
            if s.state != "RUNNING":
                continue
            try:
                lease = lease_path(self.runs_dir, s.flow_run_id).read_bytes()
            except OSError:
                continue
            if lease != self._leases.get(s.flow_run_id):
                self._leases[s.flow_run_id] = lease
                s.last_alive = time.monotonic()

    def alive(self, shard: ShardRun) -> bool:
        return shard.state != "RUNNING" or time.monotonic() - shard.last_alive < self.stale_after_s

    def finish(self, shard: ShardRun) -> None:
        """Nothing to wait for: the shard's process belongs to its worker."""

    def revoke(self, shard: ShardRun) -> None:
        """Fence off a shard run declared crashed: its heartbeat thread finds the revocation next to its lease and
        ends its process (its worker may be gone, so no Cancelling state would reach it)."""
        from dlm_triage.fsutil import write_bytes_atomic

        try:
            write_bytes_atomic(revocation_path(self.runs_dir, shard.flow_run_id), b"declared crashed by the sweep\n")
        except OSError:
            get_run_logger().warning("could not revoke %s: its process may train on until it ends", shard.name)

    def cancel(self, shard: ShardRun) -> None:
        from prefect.states import Cancelled, Cancelling

        if shard.flow_run_id is None:
            return
        # A run a worker holds is set Cancelling (the worker ends its process); one still queued is Cancelled.
        state = Cancelling() if shard.state in ("RUNNING", "PENDING") else Cancelled()
        self.client.set_flow_run_state(shard.flow_run_id, state, force=True)


# -- supervision ------------------------------------------------------------------------------------------

def _shard_parameters(shard: ShardRun, runs_dir: str, thresholds: dict[str, Any], torch_threads: int | None,
                      heartbeat_s: float, runs_url: str | None) -> dict[str, Any]:
    return {"configs": shard.configs, "runs_dir": runs_dir, "shard": shard.name, "thresholds": thresholds,
            "torch_threads": torch_threads, "heartbeat_s": heartbeat_s, "runs_url": runs_url}


def _task_runs_of(client: Any, flow_run_ids: list[uuid.UUID], state: str) -> dict[str, Any]:
    """train-config task runs of these flow runs in `state` (a StateType name), by run id."""
    from prefect.client.schemas.filters import (
        FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterState, TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    if not flow_run_ids:
        return {}
    runs = client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids)),
        task_run_filter=TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(
            any_=[StateType[state]]))))
    return {tr.name.removeprefix("train-"): tr for tr in runs if tr.name.startswith("train-")}


class Supervisor:
    """Starts the shard runs, follows them to their end, retries crashed ones, publishes progress."""

    def __init__(self, launcher: Any, client: Any, runs_dir: str, thresholds: dict[str, Any],
                 torch_threads: int | None, heartbeat_s: float, attempts: int, label: str,
                 runs_url: str | None = None) -> None:
        self.launcher, self.client, self.runs_dir, self.runs_url = launcher, client, runs_dir, runs_url
        self.root = runs_url or runs_dir  # where finished runs are counted
        self.thresholds, self.torch_threads, self.heartbeat_s = thresholds, torch_threads, heartbeat_s
        self.attempts, self.label = attempts, label
        self.logger = get_run_logger()
        self.all: list[ShardRun] = []
        self.finished: set[str] = set()
        self.total = 0
        self.progress_id: uuid.UUID | None = None
        self._table: list[dict[str, Any]] | None = None
        self._table_at = 0.0
        self._shown: list[dict[str, Any]] | None = None  # what the progress artifact last said

    def _start(self, index: int, attempt: int, configs: list[dict[str, Any]]) -> ShardRun:
        name = f"{self.label}-shard-{index}" + (f"-attempt-{attempt}" if attempt > 1 else "")
        shard = ShardRun(index=index, attempt=attempt, configs=configs, name=name)
        self.launcher.start(shard, _shard_parameters(shard, self.runs_dir, self.thresholds, self.torch_threads,
                                                     self.heartbeat_s, self.runs_url))
        self.all.append(shard)
        return shard

    def run(self, shards: list[list[dict[str, Any]]]) -> None:
        self.total = sum(len(s) for s in shards)
        self.progress_id = create_progress_artifact(0.0, key="sweep-progress",
                                                    description=f"0 of {self.total} run(s) finished")
        try:
            for i, configs in enumerate(shards):
                self._start(i, 1, configs)
            while True:
                active = [s for s in self.all if not s.final]
                if not active:
                    break
                self.launcher.poll(active)
                for s in active:
                    self._count_done(s)
                    self._settle(s)
                self._publish()
                if any(not s.final for s in self.all):
                    time.sleep(self.launcher.poll_s)
        except BaseException:
            # Failing or cancelled (the worker's SIGTERM, Ctrl-C): stop every shard run still going, so no
            # training outlives its sweep. (The server's cancellation service would reach deployment subflows
            # of a cancelled sweep too, one loop later.)
            for s in self.all:
                if not s.final:
                    try:
                        self.launcher.cancel(s)
                    except Exception:  # noqa: BLE001 - cancel the others whatever one of them says
                        self.logger.exception("could not cancel shard run %s", s.name)
            raise
        self._publish(force=True)

    def _count_done(self, s: ShardRun) -> None:
        for cfg in s.typed:
            rid = cfg.run_id
            if rid not in self.finished and finished_manifest(self.root, cfg) is not None:
                self.finished.add(rid)
        s.done = {rid for rid in s.run_ids if rid in self.finished}

    def _settle(self, s: ShardRun) -> None:
        """Final states end a shard run; a crash (or silence) hands its unfinished configs to a new attempt."""
        if s.state == "COMPLETED":
            s.final = True
            self.launcher.finish(s)
        elif s.state == "CANCELLED":
            s.final = True
            self.launcher.finish(s)
            self.logger.warning("shard run %s was cancelled: %s", s.name, s.message)
        elif s.state in ("CRASHED", "FAILED") or not self.launcher.alive(s):
            self._crashed(s)

    def _crashed(self, s: ShardRun) -> None:
        from prefect.states import Crashed

        ids = [s.flow_run_id] if s.flow_run_id else []
        # the config it was training: its task run is still Running (a hard kill) or was crashed with it
        in_training = sorted(set(_task_runs_of(self.client, ids, "RUNNING")) | set(_task_runs_of(self.client, ids,
                                                                                                   "CRASHED")))
        failed = _task_runs_of(self.client, ids, "FAILED")
        left = [(c, rid) for c, rid in zip(s.configs, s.run_ids) if rid not in self.finished and rid not in failed]
        rest = [c for c, _ in left]
        if not in_training and rest:
            # killed between two configs (the next one's task run not yet Running): a shard trains its configs in
            # order, so the run it was on is its first one neither finished nor failed
            in_training = [f"{left[0][1]} (its task run not yet started)"]
        silent = s.state not in ("CRASHED", "FAILED")
        why = (f"its lease unchanged for {time.monotonic() - s.last_alive:.0f} s (its worker or machine is gone)"
               if silent else s.message or s.state.lower())
        retry = bool(rest) and s.attempt < self.attempts
        next_name = f"{self.label}-shard-{s.index}-attempt-{s.attempt + 1}"
        msg = (f"shard run {s.name} crashed while training {', '.join(in_training) or 'no config'}: {why}; "
               f"{len(s.done)} of {len(s.configs)} run(s) finished and kept; "
               + (f"{len(rest)} unfinished run(s) go to {next_name}" if retry else
                  f"{len(rest)} unfinished run(s) given up after {s.attempt} attempt(s)" if rest else "none left"))
        s.message, s.state, s.final = msg, "CRASHED", True
        self.logger.error(msg)
        if s.flow_run_id is not None:
            try:  # the UI shows the crash with the config it was training (a hard kill leaves it Running)
                self.client.set_flow_run_state(s.flow_run_id, Crashed(message=msg), force=True)
            except Exception:  # noqa: BLE001 - the sweep's log and its shards artifact say it anyway
                self.logger.exception("could not mark %s crashed", s.name)
        if silent:  # a silent run that is in fact alive (cut off, not dead) must not train next to its retry
            self.launcher.revoke(s)
        if retry:
            self._start(s.index, s.attempt + 1, rest)

    def _publish(self, force: bool = False) -> None:
        done = len(self.finished)
        rows = [{"shard": s.index, "attempt": s.attempt, "flow_run": s.name, "state": s.state,
                 "done": len(s.done), "runs": len(s.configs), "message": s.message[:500]} for s in self.all]
        text = f"{done} of {self.total} run(s) finished; " + ", ".join(
            f"shard {s.index}: {len(s.done)}/{len(s.configs)}" for s in self.all if not s.final or s.attempt == 1)
        if (force or rows != self._shown) and self.progress_id is not None:
            # updated in place: one row on the server, however long the sweep
            update_progress_artifact(self.progress_id, 100.0 * done / max(1, self.total), description=text)
        self._shown = rows
        # The table is a new version each time: at once when a shard's state changes, a changed count at most
        # every TABLE_EVERY_S (a long sweep of many shards would otherwise store a version per poll)
        states = [(r["flow_run"], r["state"]) for r in rows]
        if (force or self._table is None or states != [(r["flow_run"], r["state"]) for r in self._table]
                or (rows != self._table and time.monotonic() - self._table_at >= TABLE_EVERY_S)):
            self._table, self._table_at = rows, time.monotonic()
            create_table_artifact(key="sweep-shards", table=rows, description=text)


def _shard_count(params: SweepParams, plan: dict[str, Any], client: Any) -> int:
    """Shards to cut: one per GPU slot. Deployment path: gpu_slots, else the concurrency limit of the
    deployment or of its work pool (the GPUs the pool may use at once), else 1."""
    if not params.shard_deployment:
        return plan["slots"]
    if params.gpu_slots:
        return params.gpu_slots
    dep = client.read_deployment_by_name(params.shard_deployment)
    limit = getattr(dep, "global_concurrency_limit", None)
    if limit is not None and getattr(limit, "limit", None):
        return int(limit.limit)
    pool = client.read_work_pool(dep.work_pool_name) if dep.work_pool_name else None
    if pool is not None and pool.concurrency_limit:
        return int(pool.concurrency_limit)
    get_run_logger().warning("no gpu_slots and no concurrency limit on %s or its work pool: one shard (set "
                             "gpu_slots to the GPUs of all machines)", params.shard_deployment)
    return 1


def train_grid(params: SweepParams, plan: dict[str, Any], thresholds: dict[str, Any]) -> list[dict[str, Any]]:
    """Train `plan['todo']` in shards (call inside a flow run) and return one record per config of the plan."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    todo, runs_dir, runs_url = plan["todo"], plan["runs_dir"], plan.get("runs_url")
    todo_cfgs = [RunConfig.from_dict(c) for c in todo]  # plan_runs' configs, validated once in this process
    root = runs_url or runs_dir
    wire = _wire_thresholds(thresholds)
    errors: dict[str, str] = {}
    if todo and params.task_runner == "thread" and not params.shard_deployment:
        # one shard in this process, as a subflow run (no spawn)
        for rec in train_shard_flow(todo, runs_dir, shard=f"{flow_run.name or 'sweep'}-shard-0", thresholds=wire,
                                    torch_threads=plan["torch_threads"], runs_url=runs_url):
            if rec["status"] == "task_failed":
                errors[rec["run_id"]] = rec["error"]
    elif todo:
        with get_client(sync_client=True) as client:
            n = _shard_count(params, plan, client)
            shards = [[c.to_dict() for c in s] for s in partition(todo_cfgs, n)]
            sweep_id = str(flow_run.id or uuid.uuid4())
            label = f"{flow_run.name or 'sweep'}-{sweep_id[:8]}"
            launcher = (DeploymentShards(client, params.shard_deployment, params.shard_job_variables,
                                         params.heartbeat_s, params.stale_after_s, sweep_id, runs_dir)
                        if params.shard_deployment else LocalShards(client, plan["torch_threads"]))
            get_run_logger().info("%d run(s) in %d shard(s) %s", len(todo), len(shards),
                                  f"on deployment {params.shard_deployment}" if params.shard_deployment
                                  else "in subprocesses of this machine")
            sup = Supervisor(launcher, client, runs_dir, wire,
                             None if params.shard_deployment else plan["torch_threads"],
                             params.heartbeat_s if params.shard_deployment else 0.0, params.shard_attempts, label,
                             runs_url)
            sup.run(shards)
            ids = [s.flow_run_id for s in sup.all if s.flow_run_id is not None]
            errors = {rid: tr.state.message or "failed" for rid, tr in _task_runs_of(client, ids, "FAILED").items()}
            for s in sup.all:
                if s.state != "COMPLETED":
                    for rid in s.run_ids:
                        errors.setdefault(rid, s.message or s.state.lower())
    records = {r["run_id"]: r for r in plan["done"]}
    for cfg_dict, cfg in zip(todo, todo_cfgs):
        man = finished_manifest(root, cfg)
        records[cfg.run_id] = (record_from_manifest(cfg, root, man, reused=False) if man is not None else
                               failed_record(cfg_dict, errors.get(cfg.run_id, "not trained (no finished run dir)")))
    return [records[rid] for rid in plan["order"]]  # the grid's order


LOCAL_MODEL_KINDS = {"tiny": "dlm", "tiny_ar": "ar", "tiny_gemma": "gemma"}
"""Families whose default model is pretrained here on first use (dlm_triage.tiny kinds)."""


@flow(name="sweep")
def sweep_flow(params: SweepParams = SweepParams()) -> list[dict[str, Any]]:
    """Train every config of the grid; return one small record per config (failed ones included)."""
    if params.model_id is None and not params.shard_deployment:  # the deployment path: each machine builds its own
        kinds = [LOCAL_MODEL_KINDS[f] for f in params.families if f in LOCAL_MODEL_KINDS]
        if len(kinds) == 1:
            prepare_tiny_model(kinds[0])  # logs its pretraining progress
        elif kinds:
            prepare_local_models(kinds)  # in parallel processes
    plan = plan_runs(params)
    thresholds = (
        {family: registered_threshold(params.resolved_db(), family) for family in params.families}
        if params.early_warning else {}
    )
    records = train_grid(params, plan, thresholds)
    summarise_sweep(records)
    return records


if __name__ == "__main__":
    sweep_flow()
