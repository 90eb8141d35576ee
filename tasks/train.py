"""Training tasks: plan a sweep, train one config, summarise the sweep.

`train_config` is the one task that costs: it calls `dlm_triage.train.train_run` once and returns a small JSON
record (ids, paths, numbers). Tensors never cross the task boundary, so the persisted result that makes a
re-run skip a finished config is a few hundred bytes, not a model (a cached tensor is pickled whole and read
back whole on every cache hit).

Two layers skip finished work:
1. Prefect's cache: key = config hash + training code version (`training_code_version`) + runs root (+ the
   early-warning threshold, which changes routing), result persisted as JSON in the default result storage
   (PREFECT_LOCAL_STORAGE_PATH or a remote block: see deployments/README.md). A hit does not even start the
   trainer: the task run is 'Cached'.
2. `train_run(resume=True)`: a run directory with a manifest for the same config hash is reused
   (record['reused'] is True). This covers a cache miss, e.g. a new code version or a wiped result storage.
Before either, the sweep's `plan_runs` reads each config's manifest: a finished run never reaches a shard.
Shards train with `refresh_cache=True` (they only get configs without a finished run dir), so a cached record
never points at a run directory that is gone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.states import Completed, State
from prefect.cache_policies import CachePolicy

from dlm_triage.config import ConfigError, RunConfig
from dlm_triage.provenance import code_version, training_code_version
from dlm_triage.shards import run_record, split_finished, sweep_rows
from dlm_triage.params import SweepParams, torch_threads_per_process

PROGRESS_LOG_EVERY_S_ENV = "DLM_TRIAGE_PROGRESS_LOG_EVERY_S"


def progress_log_every_s() -> float:
    """A training task logs 'step i/n' at most this often (plus one line with the result at the end): 15 s, or
    $DLM_TRIAGE_PROGRESS_LOG_EVERY_S (read at each run, so shard processes started with it follow it)."""
    return float(os.environ.get(PROGRESS_LOG_EVERY_S_ENV, "15"))

# -- failure policy --------------------------------------------------------------------------------

# OSErrors that a retry cannot fix: the path or the permission is wrong.
_PERMANENT_OS_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)


def is_transient(exc: BaseException | None) -> bool:
    """True for failures worth retrying: CUDA out of memory (another job held the GPU), I/O hiccups (NFS, object
    storage), timeouts. False for configuration errors (ConfigError, ValueError, TypeError) and anything else:
    those fail the same way again, so retrying only delays the message."""
    if exc is None or isinstance(exc, (ConfigError, ValueError, TypeError, KeyError)):
        return False
    if isinstance(exc, _PERMANENT_OS_ERRORS):
        return False
    if isinstance(exc, (OSError, TimeoutError, ConnectionError)):
        return True
    if isinstance(exc, RuntimeError):  # torch.OutOfMemoryError is a RuntimeError
        msg = str(exc).lower()
        return "out of memory" in msg or "cuda error: an illegal memory access" in msg or "nccl" in msg
    return False


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry_condition_fn: retry only when the failure is transient (see `is_transient`)."""
    try:
        state.result(raise_on_failure=True)
    except BaseException as exc:  # noqa: BLE001 - we classify, we don't swallow: the state stays Failed
        return is_transient(exc)
    return False


# -- the config of a task run ----------------------------------------------------------------------

_CONFIGS: dict[str, RunConfig] = {}  # repr of a config dict -> its validated RunConfig (frozen: safe to share)
_CONFIGS_MAX = 4096  # ~1 KB each; a sweep process sees at most its grid


def config_of(cfg_dict: Mapping[str, Any]) -> RunConfig:
    """`RunConfig.from_dict(cfg_dict)`, validated once per process: a config crosses into a worker as a dict (a
    flow run's parameters are JSON), and its shard, the cache key, the task run's name and the task body all need
    it typed. Keyed by the dict's exact repr (types included); a ConfigError is raised every time, never kept."""
    if not isinstance(cfg_dict, Mapping):
        return RunConfig.from_dict(cfg_dict)  # the ConfigError naming the type
    key = repr(sorted(cfg_dict.items(), key=lambda kv: str(kv[0])))
    cfg = _CONFIGS.get(key)
    if cfg is None:
        cfg = RunConfig.from_dict(cfg_dict)
        if len(_CONFIGS) < _CONFIGS_MAX:
            _CONFIGS[key] = cfg
    return cfg


# -- cache key -------------------------------------------------------------------------------------

def _threshold_key(threshold: Any) -> Any:
    if threshold is None or isinstance(threshold, (int, float)):
        return threshold
    if dataclasses.is_dataclass(threshold):
        d = dataclasses.asdict(threshold)  # store.ThresholdRecord: group, k, threshold, calibration_id, ...
        return {k: d[k] for k in ("group", "group_by", "k", "threshold", "calibration_id") if k in d}
    return repr(threshold)


@dataclass
class RunConfigCache(CachePolicy):
    """Cache key of a training task: sha256 of (config hash, training code version, resolved runs root,
    early-warning threshold).

    Not the default INPUTS policy: `device` and other placement fields are excluded from the config hash, so a
    run cached on cuda:0 is a hit for cuda:1; and the code version invalidates records made by other code."""

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str | None:
        try:
            cfg = config_of(inputs["cfg_dict"])
        except ConfigError:
            return None  # no key, no caching: the task body raises the ConfigError (not retried)
        payload = {
            "config_hash": cfg.config_hash,
            "code_version": training_code_version(),
            "runs_dir": str(Path(inputs["runs_dir"]).expanduser().resolve()),
            "threshold": _threshold_key(inputs.get("threshold")),
        }
        blob = json.dumps(payload, sort_keys=True, default=str)
        return f"train-{cfg.run_id}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


# -- tasks -----------------------------------------------------------------------------------------

def _gpu_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@task(name="plan-runs")
def plan_runs(params: SweepParams) -> dict[str, Any]:
    """Expand the grid and split it by whether each config's run directory is already finished.

    Returns {'todo': [cfg dicts to train], 'done': [records of finished runs, read from their manifests],
    'order': [run ids in the grid's order], 'runs_url' (None: finished runs are in runs_dir),
    'slots': shards to train at once on this machine (1 for task_runner 'thread'; for 'process': gpu_slots, else
    the GPUs here, else the CPU cores; None on the deployment path, decided there), 'runs_dir', 'torch_threads'}.
    Devices: a config keeps device 'auto' until its shard claims a GPU on the machine that trains it.
    """
    logger = get_run_logger()
    configs = params.to_spec().expand()
    runs_dir = params.resolved_runs_dir()
    root = params.runs_url or runs_dir  # where finished runs are: the published copies when runs_url is set
    todo_cfgs, done = split_finished(configs, root)
    todo = [cfg.to_dict() for cfg in todo_cfgs]
    if params.shard_deployment:
        slots, threads = params.gpu_slots, params.torch_threads  # the GPU machines decide their threads
    elif params.task_runner == "thread":
        slots, threads = 1, params.torch_threads
    else:  # one training process per slot; torch threads: cores / processes, so processes x threads <= cores
        slots = params.gpu_slots or (_gpu_count() or os.cpu_count() or 1) if todo else 1
        threads = params.torch_threads or torch_threads_per_process(slots)
    logger.info("sweep of %d run(s): %d to train, %d finished under %s", len(configs), len(todo), len(done), root)
    return {"todo": todo, "done": done, "order": [c.run_id for c in configs], "slots": slots,
            "runs_dir": str(runs_dir), "runs_url": params.runs_url, "torch_threads": threads}


@task(name="prepare-tiny-model", retries=1, retry_condition_fn=retry_transient)
def prepare_tiny_model(kind: str = "dlm") -> str:
    """Build (once; later a no-op) a locally pretrained default model (kind 'dlm': the tiny family's, 'ar': the
    tiny_ar control's, 'gemma': tiny_gemma's) before training fans out, so parallel training processes find it instead of waiting on
    its lock."""
    from dlm_triage.tiny import ensure_tiny_model
    from dlm_triage.tiny_diffusion_gemma import ensure_tiny_diffusion_gemma

    logger = get_run_logger()
    every = 100
    what = "tiny model" if kind == "dlm" else f"tiny {kind} model"

    def progress(step: int, total: int) -> None:
        if step % every == 0 or step == total:
            logger.info("pretraining the %s: step %d/%d", what, step, total)

    path = ensure_tiny_diffusion_gemma(progress=progress) if kind == "gemma" else \
        ensure_tiny_model(progress=progress, kind=kind)
    logger.info("%s ready at %s", what, path)
    return str(path)


@task(name="prepare-local-models", retries=1, retry_condition_fn=retry_transient)
def prepare_local_models(kinds: list[str]) -> dict[str, str]:
    """Build the missing default local models of `kinds` at once, one process per core (dlm_triage.tiny.
    ensure_local_models), before training fans out."""
    from dlm_triage.tiny import ensure_local_models, is_built

    logger = get_run_logger()
    missing = [k for k in kinds if not is_built(k)]
    if missing:
        logger.info("pretraining the local %s model(s) (about a minute, once)", ", ".join(missing))
    paths = ensure_local_models(kinds)
    for kind, path in paths.items():
        logger.info("local %s model ready at %s", kind, path)
    return paths


@task(name="registered-threshold", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_transient)
def registered_threshold(db: Path, family: str) -> Any:
    """The family's latest accepted max-grad threshold (for the live early warning), or None."""
    db = Path(db)
    if not db.exists():
        get_run_logger().info("early warning off for family %s: no database at %s yet (the first sweep's "
                              "calibration registers a threshold)", family, db)
        return None
    from dlm_triage import store

    con = store.connect(db, read_only=True)
    try:
        rec, why = store.live_threshold(con, family, group_by="family")
    finally:
        con.close()
    # once per family and sweep: which threshold every run of the sweep uses, or why none is active
    get_run_logger().info(why)
    return rec


def _train_run_name() -> str:
    from prefect.runtime import task_run

    try:
        return "train-" + config_of(task_run.parameters.get("cfg_dict") or {}).run_id
    except (ConfigError, TypeError):
        return "train-invalid-config"


@task(
    name="train-config",
    # No tags: every tagged task run asks the API for a concurrency slot before it starts. GPUs are capped per
    # shard flow run instead (work-pool / deployment concurrency limits, deployments/README.md).
    cache_policy=RunConfigCache(),
    persist_result=True,
    result_serializer="json",
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=retry_transient,
    task_run_name=_train_run_name,
)
def train_config(cfg_dict: dict[str, Any], runs_dir: str, threshold: Any = None,
                 torch_threads: int | None = None) -> dict[str, Any] | State:
    """Train one config (or reuse its complete run dir) in this process and return a small record (never
    tensors). A `train-shard` flow run calls it for each config of its shard, so the training is this task run:
    cancelling the flow run (which ends its process) stops it. `torch_threads` is set for this process."""
    logger = get_run_logger()
    cfg = config_of(cfg_dict)
    last = time.monotonic()
    every_s = progress_log_every_s()

    def progress(step: int, total: int) -> None:
        # By time, not by step: a long run says where it is every `every_s`, a short one (the
        # 7 s tiny runs) only logs its result below. Each log line is an API write; on a machine that also
        # hosts the server, those writes take CPU from training (benchmarks/README.md).
        nonlocal last
        now = time.monotonic()
        if now - last >= every_s and step < total:
            last = now
            logger.info("%s: step %d/%d", cfg.run_id, step, total)

    from dlm_triage.train import train_run

    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)  # n processes x n threads <= cores: no oversubscription
    res = train_run(cfg, Path(runs_dir), threshold=threshold, progress=progress, resume=True)
    record = run_record(res, cfg, code_version=code_version())
    logger.info("%s: %s%s, final loss %s, max grad %s%s", res.run_id, res.status,
                " (reused run dir)" if res.reused else "",
                *("n/a" if v is None else f"{v:.4g}" for v in (res.final_loss, res.max_grad_norm)),
                ", ROUTED for inspection" if res.routed_for_inspection else "")
    if res.routed_for_inspection:  # the task run reads 'Routed' in the UI, not like any other completed run
        return Completed(data=record, name="Routed",
                         message=f"{res.run_id} routed to inspection by the live early warning")
    return record


@task(name="summarise-sweep")
def summarise_sweep(records: list[dict[str, Any]]) -> dict[str, int]:
    """Log and publish (table artifact 'sweep-runs') what the sweep did; failed configs are listed with why."""
    logger = get_run_logger()
    rows, counts = sweep_rows(records)
    create_table_artifact(
        key="sweep-runs", table=rows,
        description=f"Sweep of {len(rows)} run(s): " + ", ".join(f"{v} {k}" for k, v in counts.items()),
    )
    for r in rows:
        if r["how"] == "failed":
            logger.error("config %s failed: %s", r["run_id"], r["error"].splitlines()[-1] if r["error"] else "")
    logger.info("sweep done: %s", counts)
    return counts
