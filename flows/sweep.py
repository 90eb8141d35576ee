"""Sweep flow: expand a grid of fine-tunes and train them in parallel, skipping finished ones.

    prepare tiny model (family tiny, default model) -> plan (expand, place on devices) -> registered thresholds
    -> train every config (`gpu_slots` worker processes at once, retries on transient errors) -> summarise

Training task runs are threads of this flow process (they share its API client); each hands its config to the
sweep's `TrainingPool`, whose long-lived worker processes do the training (see `training_slots`).

A config whose training fails (after retries) is reported in the records and the 'sweep-runs' artifact; the
others continue, and the flow completes. Run it alone: `python -m flows.sweep` or the 'sweep' deployment.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import wait
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect.utilities.annotations import unmapped

from dlm_triage.params import SweepParams
from dlm_triage.pool import TrainingPool
from tasks.train import (
    GPU_TAG, failed_record, plan_runs, prepare_tiny_model, registered_threshold, summarise_sweep, tag_limit_exists,
    train_config, training_pool,
)


@contextmanager
def training_slots(kind: str, slots: int, torch_threads: int | None) -> Iterator[TaskRunner]:
    """The task runner for a sweep's training tasks, with (kind 'process') a `TrainingPool` of `slots` workers
    current for the tasks it runs; kind 'thread': one task at a time, trained in its own thread.

    Why not Prefect's ProcessPoolTaskRunner: it runs the whole task engine in the worker, so each task run
    rebuilds the flow context and two API clients there, and every worker imports Prefect; profiled at ~0.15 s
    of CPU per run plus ~2 s per worker on the 2-core box, where that CPU is taken from training
    (benchmarks/README.md). Here the task engine runs in a thread of the flow process, on the flow's client,
    and only `train_run` crosses into a worker. One task thread per worker, so a task shows Running in the UI
    only while it trains and the `gpu` tag limit counts exactly the runs training. (Twice as many threads, to
    queue the next run while the last one's states are written, was no faster in a one-off check on this box.)
    Measured on the shared 2-core box (earlier layout, load ~7 from other jobs), 4 tiny runs: 12 steps
    thread 6-11 s, process 35-54 s; 200 steps thread 40 s, process 90 s: the pool's workers start once per
    sweep (spawn, torch/transformers/peft imports, ~25 s under that load). With idle cores or several GPUs and
    long runs the pool is the one that scales, hence the default.
    Spawned workers re-import the caller's __main__: scripts that call the flow need `if __name__ == "__main__":`.
    """
    if kind != "process":
        with ThreadPoolTaskRunner(max_workers=slots) as runner, training_pool(None):
            yield runner
        return
    import tasks.train  # the interval is read at call time (a test shortens it)

    pool = TrainingPool(slots, torch_threads, progress_every_s=tasks.train.PROGRESS_LOG_EVERY_S)
    # The pool closes before the runner: on a failure or cancellation (an exception here) it terminates the
    # running trainings at once, which frees the task threads the runner then waits for.
    with ThreadPoolTaskRunner(max_workers=slots) as runner, pool, training_pool(pool):
        yield runner


def train_configs(plan: dict[str, Any], thresholds: dict[str, Any], torch_threads: int | None = None,
                  runner: TaskRunner | None = None) -> list[dict[str, Any]]:
    """Fan out one training task per config, on `runner` (or the current flow's own runner); configs without a
    complete run dir bypass the cache. Call it inside a flow run.

    Why not a subflow: a nested flow run costs its own API round trips (flow run, parent task run, states) and a
    heartbeat-thread join, on the ephemeral SQLite server each a chance of 'database is locked' and a 2 s client
    retry; profiled at 3-5 s per sweep (benchmarks/README.md, orchestration details). The training task runs sit
    directly under the sweep's flow run instead.
    """
    todo, done, runs_dir = plan["todo"], plan["done"], plan["runs_dir"]
    limited = tag_limit_exists(GPU_TAG)
    get_run_logger().info("tag concurrency limit %r: %s", GPU_TAG, "found, training task runs carry the tag"
                          if limited else "none, training task runs are untagged (no slot requests)")
    task = train_config.with_options(tags=[GPU_TAG]) if limited else train_config

    def fan_out(t: Any, configs: list[dict[str, Any]]) -> list[Any]:
        if not configs:
            return []
        parameters = {"cfg_dict": configs, "runs_dir": unmapped(runs_dir),
                      "threshold": [thresholds.get(c["family"]) for c in configs],
                      "torch_threads": unmapped(torch_threads)}
        return list(runner.map(t, parameters) if runner is not None else t.map(**parameters))

    futures = fan_out(task.with_options(refresh_cache=True), todo) + fan_out(task, done)
    wait(futures)
    # 'cached': the Prefect cache answered (the trainer did not even start); 'reused': the trainer found the
    # complete run dir. A failed config becomes a record with status 'task_failed' and the error.
    return [
        {**(f.result() if f.state.is_completed() else failed_record(cfg, f.state.message)),
         "cached": f.state.name == "Cached"}
        for f, cfg in zip(futures, todo + done)
    ]


# Called directly (tests, notebooks) it trains one config at a time in-process; sweep_flow runs the same fan-out
# on its own training pool, without this flow.
@flow(name="train-configs", task_runner=ThreadPoolTaskRunner(max_workers=1))
def train_configs_flow(plan: dict[str, Any], thresholds: dict[str, Any],
                       torch_threads: int | None = None) -> list[dict[str, Any]]:
    """`train_configs` as a flow of its own, one config at a time."""
    return train_configs(plan, thresholds, torch_threads)


@flow(name="sweep")
def sweep_flow(params: SweepParams = SweepParams()) -> list[dict[str, Any]]:
    """Train every config of the grid; return one small record per config (failed ones included)."""
    if "tiny" in params.families and params.model_id is None:
        prepare_tiny_model()
    plan = plan_runs(params)
    thresholds = (
        {family: registered_threshold(params.resolved_db(), family) for family in params.families}
        if params.early_warning else {}
    )
    with training_slots(params.task_runner, plan["slots"], plan["torch_threads"]) as runner:
        records = train_configs(plan, thresholds, plan["torch_threads"], runner=runner)  # workers stop after
    summarise_sweep(records)
    return records


if __name__ == "__main__":
    sweep_flow()
