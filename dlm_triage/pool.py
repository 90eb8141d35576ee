"""A pool of long-lived training processes: many threads hand it runs, `slots` processes train them.

    with TrainingPool(slots=2, torch_threads=1) as pool:
        result = pool.train(cfg, runs_dir, threshold=rec, progress=lambda step, total: ...)  # thread-safe

Why it exists (the sweep flow's training tasks run as threads of the flow process and call `train` here):
Prefect's own process task runner ships every task run into a worker process, which imports Prefect, rebuilds
the flow's context and builds two API clients (each loading the CA bundle) for every task. Profiled on the
default sweep that was ~0.15 s of a 2-core box per run, plus ~2 s of `import prefect` per worker
(benchmarks/README.md). Here only the training crosses the process boundary: the orchestration (states, cache
records, logs) stays in the flow process on its one client, and the workers import torch and this package only.

- Workers start on the first `train` (a sweep answered wholly from the cache starts none), spawn-started
  (fork is unsafe after CUDA or threads), and set `torch_threads` once.
- A caller waiting on a busy pool is queued; more callers than slots keep each worker fed back-to-back.
- `progress(step, total)` is called in the parent (on the pool's forwarding thread) at most every
  `progress_every_s`, and at the last step.
- Errors from `train_run` come back with their own type (ConfigError, OSError, torch's OutOfMemoryError, ...).
  A worker that dies (killed by the OOM killer, a segfault in a kernel) breaks the executor: every run it held
  or had queued raises `WorkerDied`, and the next `train` starts fresh workers. Closing the pool with
  `cancel=True` (the caller is failing or being cancelled) terminates the running trainings: `PoolClosed`.
- A worker whose parent dies (a flow-run process killed hard) exits within a second instead of finishing its run.
Prefect-free: the pool knows runs and processes, nothing about tasks or flows.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from dlm_triage.config import RunConfig

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

_STOP = ("__dlm_triage_pool_stop__", 0, 0)


class PoolClosed(RuntimeError):
    """The pool was closed (its sweep failed or was cancelled) while the run was in it, or before it was given.
    Not transient: a retry would meet the same closed pool."""


class WorkerDied(RuntimeError):
    """A training worker process died (killed or crashed) while the run was in, or queued for, the pool.

    Transient for the retry policy: a retry runs on a fresh worker. If it recurs, look for the OOM killer
    (`dmesg`, `journalctl -k`) and lower `gpu_slots` or the batch size."""


# -- worker side (module level: spawn pickles these by name) ----------------------------------------------------

_worker_queue: Any = None
_worker_progress_every_s = 0.0


def _exit_when_orphaned(parent_pid: int, every_s: float = 1.0) -> None:
    """Worker thread: end this process once its parent is gone (killed flow run, cancelled deployment run), so a
    GPU is not held for the rest of an orphaned run. (ProcessPoolExecutor workers notice a dead parent only when
    they next read their call queue, i.e. after the current run.)"""
    while os.getppid() == parent_pid:
        time.sleep(every_s)
    os._exit(70)


def _init_worker(queue: Any, torch_threads: int | None, progress_every_s: float) -> None:
    global _worker_queue, _worker_progress_every_s
    _worker_queue, _worker_progress_every_s = queue, progress_every_s
    queue.cancel_join_thread()  # exiting never waits on an undelivered progress message
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), name="dlm-triage-orphan-watch",
                     daemon=True).start()
    import torch

    if torch_threads:
        torch.set_num_threads(torch_threads)  # n processes x n threads <= cores: no oversubscription
    import dlm_triage.train  # noqa: F401  (the imports cost seconds: paid at start-up, not inside the first run)


def _train_in_worker(cfg_dict: dict[str, Any], runs_dir: str, threshold: Any, resume: bool,
                     token: int | None) -> Any:
    from dlm_triage.train import train_run

    last = time.monotonic()

    def progress(step: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if step >= total or now - last >= _worker_progress_every_s:
            last = now
            _worker_queue.put((token, step, total))

    return train_run(RunConfig.from_dict(cfg_dict), Path(runs_dir), threshold=threshold,
                     progress=progress if token is not None else None, resume=resume)


# -- parent side -----------------------------------------------------------------------------------------------

class TrainingPool:
    """`slots` spawn-started processes that run `dlm_triage.train.train_run` for any number of calling threads.

    `torch_threads`: torch intra-op threads per worker (None: torch's default). `progress_every_s`: the most
    often a worker reports progress to the parent (the caller's callback may log less often still).
    """

    def __init__(self, slots: int, torch_threads: int | None = None, *, progress_every_s: float = 5.0,
                 start_method: str = "spawn") -> None:
        if slots < 1:
            raise ValueError(f"slots={slots}: a training pool needs at least one process")
        if torch_threads is not None and torch_threads < 1:
            raise ValueError(f"torch_threads={torch_threads}: give a positive thread count, or None for torch's")
        self.slots, self.torch_threads, self.progress_every_s = slots, torch_threads, progress_every_s
        self._ctx = get_context(start_method)
        self._lock = threading.Lock()
        self._gen: _Generation | None = None
        self._listeners: dict[int, Progress] = {}
        self._tokens = itertools.count()
        self._closed = False
        self.executors_started = 0
        """How many times workers were started: 0 while no run was submitted, +1 after each WorkerDied."""

    def __enter__(self) -> TrainingPool:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.close(cancel=exc_type is not None)

    # -- public ---------------------------------------------------------------------------------------------

    def train(self, cfg: RunConfig, runs_dir: Path | str, *, threshold: Any = None, resume: bool = True,
              progress: Progress | None = None) -> Any:
        """`train_run(cfg, runs_dir, threshold=..., resume=...)` in a worker; blocks until it is done and returns
        its RunResult (or raises its error, or `WorkerDied`)."""
        token = None
        if progress is not None:
            token = next(self._tokens)
            self._listeners[token] = progress
        try:
            executor = self._running_executor()
            try:
                future = executor.submit(_train_in_worker, cfg.to_dict(), str(runs_dir), threshold, resume, token)
                return future.result()
            except (BrokenProcessPool, CancelledError) as e:
                if self._closed:  # close(cancel=True) terminated or dropped it: not a crash
                    raise PoolClosed(f"{cfg.run_id}: stopped, the training pool was closed while this run was in "
                                     "it (the sweep failed or was cancelled); its run dir stays incomplete and "
                                     "trains again on resume") from e
                if isinstance(e, CancelledError):
                    raise
                self._discard(executor)
                raise WorkerDied(
                    f"{cfg.run_id}: a training worker process died while this run was in the pool (killed, e.g. "
                    "by the OOM killer, or crashed); a retry starts a fresh worker. If it recurs, check `dmesg` "
                    "for the OOM killer and lower gpu_slots or the batch size."
                ) from e
        finally:
            if token is not None:
                self._listeners.pop(token, None)

    def close(self, cancel: bool = False) -> None:
        """Stop the workers and the forwarder: after their current runs, or (`cancel`: the caller is failing or
        being cancelled) at once, dropping queued runs and terminating running ones, whose run directories stay
        incomplete (no manifest) and train again on resume."""
        with self._lock:
            self._closed = True
            gen, self._gen = self._gen, None
        if gen is not None:
            gen.stop(wait=True, cancel=cancel)

    # -- internals ------------------------------------------------------------------------------------------

    def _running_executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise PoolClosed("this TrainingPool is closed (its sweep ended, failed or was cancelled): "
                                 "train inside its `with` block")
            if self._gen is None:
                self._gen = _Generation(self)
                self.executors_started += 1
            return self._gen.executor

    def _discard(self, executor: ProcessPoolExecutor) -> None:
        """Drop a broken executor (once, whichever caller sees it first); the next `train` starts new workers."""
        with self._lock:
            gen = self._gen if self._gen is not None and self._gen.executor is executor else None
            if gen is not None:
                self._gen = None
        if gen is not None:
            gen.stop(wait=False, cancel=True)


class _Generation:
    """One set of workers with its own progress queue and forwarding thread. A worker killed mid-`put` can leave
    its queue's lock held; a broken pool's successor therefore gets a new queue, not the old one."""

    def __init__(self, pool: TrainingPool) -> None:
        self.pool = pool
        self.queue = pool._ctx.Queue()
        self.forwarder = threading.Thread(target=self._forward, name="dlm-triage-pool-progress", daemon=True)
        self.forwarder.start()
        self.executor = ProcessPoolExecutor(
            max_workers=pool.slots, mp_context=pool._ctx, initializer=_init_worker,
            initargs=(self.queue, pool.torch_threads, pool.progress_every_s),
        )

    def stop(self, *, wait: bool, cancel: bool) -> None:
        if cancel:
            # ProcessPoolExecutor has no public way to stop a running call before Python 3.14
            # (terminate_workers); shutdown alone would wait for the current runs, hours on a GPU.
            for proc in list((getattr(self.executor, "_processes", None) or {}).values()):
                proc.terminate()
        self.executor.shutdown(wait=wait, cancel_futures=cancel)
        self.queue.put(_STOP)  # the forwarder closes the queue when it reads this (closing it here could pull
        self.queue.cancel_join_thread()  # the pipe from under its read); a stuck queue must not hang the caller
        if wait:
            self.forwarder.join(timeout=10)

    def _forward(self) -> None:
        """Parent thread: worker progress messages -> the waiting caller's callback, until `stop`."""
        try:
            self._forward_until_stop()
        finally:
            self.queue.close()

    def _forward_until_stop(self) -> None:
        while True:
            try:
                token, step, total = self.queue.get()
            except (EOFError, OSError):
                return
            if (token, step, total) == _STOP:
                return
            callback = self.pool._listeners.get(token)
            if callback is None:
                continue
            try:
                callback(step, total)
            except Exception:  # noqa: BLE001 - a failing progress display must not stop training or forwarding
                log.debug("progress callback for token %s failed", token, exc_info=True)
