"""train-shard flow: train one shard of a sweep (a list of configs) one config after the other, in this process.

One flow run = one GPU slot. The sweep (`flows.sweep`) starts one per shard: as runs of the `train-shard`
deployment on the GPU work pool (any worker on any machine picks them up), or locally as subprocesses. Each
config is a `train-config` task run inside it, trained in this process (so cancelling the flow run, which ends
its process, stops the training), and successive runs of one base model reuse the loaded base.

- A config whose run directory is already finished (a retried shard, or another worker finished it) is not
  trained again.
- Device: a config with device 'auto' trains on a GPU of this machine that no other shard holds (an flock per GPU,
  released when this process ends, however it ends), or on the CPU without one.
- Liveness: with `heartbeat_s` > 0 the flow rewrites a small lease file, `<runs_dir>/.shards/<flow run id>.json`
  (a beat counter, the config in training, the count done), every `heartbeat_s` and after each config; the sweep
  declares a shard whose lease stops changing (its worker or machine died) crashed and hands its unfinished
  configs to a new shard run. (A file on the storage the shards share anyway, judged by the sweep's own clock:
  no clock skew between machines, and no load on the Prefect server, whose event queries took up to 60 s on a
  busy SQLite server here.)
- Artifacts on the shard run's own page: a progress bar (configs done / its configs, after each config) and, at
  the end, a table with one row per config (status, trained or reused, final loss, error). The sweep's page has
  the sweep-wide ones ('sweep-progress', 'sweep-shards').
- Launched locally (DLM_TRIAGE_PARENT_PID set), the process exits when its parent sweep process is gone.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

LEASE_DIRNAME = ".shards"
PARENT_PID_ENV = "DLM_TRIAGE_PARENT_PID"


@dataclass(frozen=True)
class WireThreshold:
    """A registered threshold as it travels in flow-run parameters (JSON): what the early warning reads."""

    threshold: float
    group: str | None = None
    group_by: str | None = None
    k: int | None = None
    calibration_id: str | None = None


def threshold_from_wire(d: dict[str, Any] | None) -> WireThreshold | None:
    if d is None:
        return None
    return WireThreshold(**{k: d.get(k) for k in ("threshold", "group", "group_by", "k", "calibration_id")})


# -- where this shard trains ------------------------------------------------------------------------------

@contextmanager
def claimed_device(wanted: str) -> Iterator[str]:
    """The device for this shard's 'auto' configs: the first CUDA device of this machine whose lock no other
    process holds (blocking on the first one when all are taken), or `wanted` unchanged without CUDA. The lock
    (fcntl.flock on a file in the temp dir) ends with the process, so a killed shard frees its GPU."""
    if wanted != "auto":
        yield wanted
        return
    try:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        n = 0
    if n == 0:
        yield wanted
        return
    lock_dir = Path(tempfile.gettempdir()) / "dlm-triage-gpu-locks"
    lock_dir.mkdir(exist_ok=True)
    handles = []
    try:
        for i in [*range(n), 0]:  # a free one, else wait for cuda:0
            fh = open(lock_dir / f"cuda-{i}.lock", "w")
            handles.append(fh)
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | (fcntl.LOCK_NB if len(handles) <= n else 0))
            except BlockingIOError:
                continue
            yield f"cuda:{i}"
            return
    finally:
        for fh in handles:
            fh.close()


def _exit_when_orphaned(parent_pid: int, every_s: float = 1.0) -> None:
    """A local shard whose sweep process died (killed hard) stops instead of holding the machine for the rest
    of its shard."""
    while os.getppid() == parent_pid:
        time.sleep(every_s)
    os._exit(70)


def lease_path(runs_dir: str | Path, flow_run_id: Any) -> Path:
    """Where the shard run `flow_run_id` keeps its lease (a dot folder: ingestion skips it)."""
    return Path(runs_dir) / LEASE_DIRNAME / f"{flow_run_id}.json"


def revocation_path(runs_dir: str | Path, flow_run_id: Any) -> Path:
    """Written by the sweep when it declares this shard run crashed: the shard's process then ends itself."""
    return Path(runs_dir) / LEASE_DIRNAME / f"{flow_run_id}.revoked"


class _Heartbeat:
    """Daemon thread rewriting this flow run's lease every `every_s` (0: off)."""

    def __init__(self, every_s: float, shard: str, total: int, runs_dir: str) -> None:
        from prefect.runtime import flow_run

        self.every_s, self.shard, self.total = every_s, shard, total
        self.flow_run_id = flow_run.id
        self.path = lease_path(runs_dir, self.flow_run_id)
        self.revoked = revocation_path(runs_dir, self.flow_run_id)
        self.beats = 0
        self.current: str | None = None
        self.done = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dlm-triage-shard-heartbeat", daemon=True)

    def __enter__(self) -> _Heartbeat:
        if self.every_s > 0 and self.flow_run_id:
            self.beat()
            self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.path.unlink(missing_ok=True)

    def beat(self) -> None:
        if self.every_s <= 0 or not self.flow_run_id:
            return
        from dlm_triage.fsutil import write_json_atomic

        self.beats += 1
        try:
            write_json_atomic({"beat": self.beats, "shard": self.shard, "current": self.current, "done": self.done,
                               "total": self.total, "pid": os.getpid()}, self.path)
        except OSError:  # a lost beat reads as silence to the sweep, never as a failure of the shard
            pass

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            if self.revoked.exists():  # the sweep gave this shard's runs to another attempt: stop training now
                get_run_logger().error("%s: revoked by the sweep (declared crashed after silence); exiting", self.shard)
                os._exit(75)
            self.beat()


class _ShardArtifacts:
    """This shard run's own artifacts, on its flow run page: a progress bar (runs done / its configs), updated
    after each config, and at the end a table with one row per config. Best effort: the run dirs are the record,
    so a server that cannot take an artifact costs a warning, never the shard."""

    def __init__(self, shard: str, total: int) -> None:
        self.shard, self.total, self.done, self.id = shard, total, 0, None
        self._call(self._create)

    def _call(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - an artifact is a view, never a reason to stop training
            get_run_logger().warning("%s: artifact not updated (%s: %s)", self.shard, type(exc).__name__, exc)

    def _text(self) -> str:
        return f"{self.shard}: {self.done} of {self.total} config(s) done (trained, reused or failed)"

    def _create(self) -> None:
        from prefect.artifacts import create_progress_artifact

        self.id = create_progress_artifact(0.0, description=self._text())

    def step(self) -> None:
        from prefect.artifacts import update_progress_artifact

        self.done += 1
        if self.id is not None:
            self._call(update_progress_artifact, self.id, 100.0 * self.done / max(1, self.total), self._text())

    def table(self, records: list[dict[str, Any]]) -> None:
        from prefect.artifacts import create_table_artifact

        rows = [{"run_id": r["run_id"], "status": r["status"], "how": "failed" if r["status"] == "task_failed" else
                 "reused run dir" if r.get("reused") else "trained", "final_loss": r.get("final_loss"),
                 "max_grad_norm": r.get("max_grad_norm"), "device": r.get("device"),
                 "error": (r.get("error") or "")[:500]} for r in records]
        self._call(lambda: create_table_artifact(table=rows, description=self._text()))


# -- the flow ----------------------------------------------------------------------------------------------

def _shard_run_name() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.parameters.get("shard") or "train-shard")


@flow(name="train-shard", flow_run_name=_shard_run_name)
def train_shard_flow(configs: list[dict[str, Any]], runs_dir: str, shard: str = "shard-0",
                     thresholds: dict[str, Any] | None = None, torch_threads: int | None = None,
                     heartbeat_s: float = 0.0, runs_url: str | None = None) -> list[dict[str, Any]]:
    """Train `configs` (RunConfig dicts) into `runs_dir`, one after the other; return one record per config
    (failed ones included: status 'task_failed' with the error). `thresholds`: family -> registered threshold
    (WireThreshold fields) for the live early warning. `runs_url`: publish each finished run there (runstore;
    `runs_dir` is then this machine's staging folder) and skip configs already published."""
    from dlm_triage.config import RunConfig
    from dlm_triage.runstore import publish_run
    from dlm_triage.shards import failed_record, finished_manifest, record_from_manifest
    from tasks.train import config_of, train_config

    parent = os.environ.get(PARENT_PID_ENV)
    if parent and parent.isdigit():
        threading.Thread(target=_exit_when_orphaned, args=(int(parent),), daemon=True,
                         name="dlm-triage-orphan-watch").start()
    from dlm_triage.console import route_child_console_logging

    route_child_console_logging()  # under `dlm-triage run`: state lines to the UI only, never on the bar's line
    logger = get_run_logger()
    thresholds = thresholds or {}
    records: list[dict[str, Any]] = []
    wanted = {c.get("device", "auto") for c in configs}
    # the lease first: claiming a device imports torch (seconds), which must not read as silence
    with _Heartbeat(heartbeat_s, shard, len(configs), runs_dir) as heartbeat, \
            claimed_device("auto" if "auto" in wanted else "pinned") as device:
        logger.info("%s: %d config(s) into %s; 'auto' device -> %s", shard, len(configs), runs_dir, device)
        artifacts = _ShardArtifacts(shard, len(configs))
        for cfg_dict in configs:
            if cfg_dict.get("device", "auto") == "auto" and device not in ("auto", "pinned"):
                cfg_dict = {**cfg_dict, "device": device}
            cfg = config_of(cfg_dict)  # validated once here; train_config's key, name and body reuse it
            man = finished_manifest(runs_url or runs_dir, cfg)
            if man is not None:  # finished by an earlier attempt of this shard, or by another worker
                records.append(record_from_manifest(cfg, runs_url or runs_dir, man, reused=True))
            else:
                heartbeat.current = cfg.run_id
                heartbeat.beat()
                # refresh_cache: this config has no finished run dir, so no cached record may answer for it
                train = train_config.with_options(refresh_cache=True)
                state = train(cfg_dict, runs_dir, threshold_from_wire(thresholds.get(cfg.family)), torch_threads,
                              return_state=True)
                record = state.result() if state.is_completed() else failed_record(cfg_dict, state.message)
                if runs_url and state.is_completed() and finished_manifest(runs_dir, cfg) is not None:
                    record = {**record, "run_dir": publish_run(Path(runs_dir) / cfg.run_id, runs_url)}
                records.append(record)
            heartbeat.done += 1
            heartbeat.current = None
            heartbeat.beat()
            artifacts.step()
        artifacts.table(records)
    return records


if __name__ == "__main__":
    raise SystemExit("train-shard runs shards of a sweep: start a sweep (`dlm-triage run`, `python -m flows.sweep`)")
