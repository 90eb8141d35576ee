"""Sweep flow: expand a grid of fine-tunes and train them in parallel, skipping finished ones.

    prepare tiny model (family tiny, default model) -> plan (expand, place on devices) -> registered thresholds
    -> train every config (process pool, `gpu_slots` at once, retries on transient errors) -> summarise

A config whose training fails (after retries) is reported in the records and the 'sweep-runs' artifact; the
others continue, and the flow completes. Run it alone: `python -m flows.sweep` or the 'sweep' deployment.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.futures import wait
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner
from prefect.utilities.annotations import unmapped

from dlm_triage.params import SweepParams
from tasks.train import failed_record, plan_runs, prepare_tiny_model, registered_threshold, summarise_sweep, train_config


def training_runner(kind: str, slots: int) -> TaskRunner:
    """Where training tasks execute: a pool of `slots` processes, or (kind 'thread') the flow process itself.

    Measured on the shared 2-core CPU box (load ~7 from other jobs), 4 tiny runs, harness API:
    12 steps: thread 6-11 s, process 35-54 s; 200 steps: thread 40 s, process 90 s. The pool pays a spawn plus
    torch/transformers/peft/prefect imports per process (~25-30 s here) and a busy 2-core box has no idle core to
    win it back. With idle cores or several GPUs and long runs the pool is the one that scales, hence the default.
    Spawned workers re-import the caller's __main__: scripts that call the flow need `if __name__ == "__main__":`.
    """
    return ProcessPoolTaskRunner(max_workers=slots) if kind == "process" else ThreadPoolTaskRunner(max_workers=slots)


# Called directly (tests, notebooks) it trains one config at a time in-process; sweep_flow gives it the runner.
@flow(name="train-configs", task_runner=ThreadPoolTaskRunner(max_workers=1))
def train_configs_flow(plan: dict[str, Any], thresholds: dict[str, Any],
                       torch_threads: int | None = None) -> list[dict[str, Any]]:
    """Fan out one training task per config; configs without a complete run dir bypass the cache."""
    todo, done, runs_dir = plan["todo"], plan["done"], plan["runs_dir"]
    fresh = train_config.with_options(refresh_cache=True).map(
        todo, runs_dir=unmapped(runs_dir), threshold=[thresholds.get(c["family"]) for c in todo],
        torch_threads=unmapped(torch_threads),
    )
    known = train_config.map(
        done, runs_dir=unmapped(runs_dir), threshold=[thresholds.get(c["family"]) for c in done],
        torch_threads=unmapped(torch_threads),
    )
    futures = list(fresh) + list(known)
    wait(futures)
    # 'cached': the Prefect cache answered (the trainer did not even start); 'reused': the trainer found the
    # complete run dir. A failed config becomes a record with status 'task_failed' and the error.
    return [
        {**(f.result() if f.state.is_completed() else failed_record(cfg, f.state.message)),
         "cached": f.state.name == "Cached"}
        for f, cfg in zip(futures, todo + done)
    ]


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
    records = train_configs_flow.with_options(task_runner=training_runner(params.task_runner, plan["slots"]))(
        plan, thresholds, plan["torch_threads"]
    )
    summarise_sweep(records)
    return records


if __name__ == "__main__":
    sweep_flow()
