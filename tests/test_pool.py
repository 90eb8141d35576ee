"""TrainingPool: real spawn-started workers training the tiny family, progress forwarding, errors, a killed worker."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading

import pytest

from dlm_triage.config import RunConfig
from dlm_triage.pool import PoolClosed, TrainingPool, WorkerDied
from dlm_triage.train import train_run
from tasks.train import is_transient


def small(tiny_model_dir, **kw):
    base = dict(model_id=str(tiny_model_dir), steps=6, batch_size=2, seq_len=16, device="cpu", save_adapter=False)
    base.update(kw)
    return RunConfig(**base)


def training_in_background(pool, cfg, runs_dir):
    """Start `pool.train(cfg)` in a thread and wait until its worker reports progress; returns the thread and
    the list that receives its result or exception."""
    started = threading.Event()
    outcome: list[BaseException | object] = []

    def work():
        try:
            outcome.append(pool.train(cfg, runs_dir, progress=lambda s, n: started.set()))
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            outcome.append(e)

    t = threading.Thread(target=work)
    t.start()
    assert started.wait(timeout=300), "the worker never reported progress"
    return t, outcome


def test_pool_arguments_are_checked_and_an_unused_pool_starts_no_process():
    with pytest.raises(ValueError, match="slots=0"):
        TrainingPool(0)
    with pytest.raises(ValueError, match="torch_threads=0"):
        TrainingPool(1, torch_threads=0)
    before = set(multiprocessing.active_children())
    with TrainingPool(2) as pool:
        pass
    assert pool.executors_started == 0 and set(multiprocessing.active_children()) == before
    with pytest.raises(PoolClosed, match="closed"):
        pool.train(RunConfig(), "/nonexistent")


@pytest.mark.slow
def test_threads_share_the_pool_and_get_the_in_process_numbers_and_errors(tiny_model_dir, tmp_path):
    cfgs = [small(tiny_model_dir, seed=s) for s in (1, 2, 3)]
    local = {c.run_id: train_run(c, tmp_path / "local") for c in cfgs}
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(Exception) as in_process:
        train_run(cfgs[0], blocker)

    progress: dict[str, list[tuple[int, int]]] = {c.run_id: [] for c in cfgs}
    results, errors = {}, []

    with TrainingPool(2, torch_threads=1, progress_every_s=0.0) as pool:
        def work(cfg):
            try:
                results[cfg.run_id] = pool.train(cfg, tmp_path / "pool",
                                                 progress=lambda s, n: progress[cfg.run_id].append((s, n)))
            except BaseException as e:  # noqa: BLE001 - reported by the assertion below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(c,)) for c in cfgs]  # 3 callers, 2 workers: one queues
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not errors, errors
        with pytest.raises(type(in_process.value)) as in_pool:  # the worker's error, its own type and message
            pool.train(cfgs[0], blocker)
        assert str(in_pool.value) == str(in_process.value)
    assert pool.executors_started == 1

    for cfg in cfgs:
        res = results[cfg.run_id]
        assert res.status == "completed" and res.run_dir == tmp_path / "pool" / cfg.run_id
        assert res.final_loss == pytest.approx(local[cfg.run_id].final_loss, rel=1e-6)  # same seed, same numbers
        steps = [s for s, _ in progress[cfg.run_id]]
        assert steps == sorted(steps) and steps[-1] == cfg.steps and {n for _, n in progress[cfg.run_id]} == {6}


@pytest.mark.slow
def test_a_killed_worker_raises_worker_died_and_the_next_run_gets_fresh_workers(tiny_model_dir, tmp_path):
    before = set(multiprocessing.active_children())
    long_run = small(tiny_model_dir, steps=5000, seed=11)

    with TrainingPool(1, torch_threads=1, progress_every_s=0.0) as pool:
        t, outcome = training_in_background(pool, long_run, tmp_path)
        workers = set(multiprocessing.active_children()) - before
        assert len(workers) == 1
        os.kill(next(iter(workers)).pid, signal.SIGKILL)  # what the OOM killer does
        t.join(timeout=120)
        (err,) = outcome
        assert isinstance(err, WorkerDied) and long_run.run_id in str(err) and "dmesg" in str(err)
        assert is_transient(err)  # the training task's retry policy retries it

        res = pool.train(small(tiny_model_dir, seed=12), tmp_path)  # a fresh worker takes the next run
        assert res.status == "completed" and pool.executors_started == 2


@pytest.mark.slow
def test_close_on_failure_terminates_running_trainings_and_leaves_them_incomplete(tiny_model_dir, tmp_path):
    """A failing or cancelled sweep must not wait out its runs (hours on a GPU): close(cancel=True) stops them."""
    import time

    from dlm_triage.schema import MANIFEST_FILENAME

    endless = small(tiny_model_dir, steps=100_000, seed=13)  # ~40 min on this CPU: it must be stopped, not finish
    pool = TrainingPool(1, torch_threads=1, progress_every_s=0.0)
    t, outcome = training_in_background(pool, endless, tmp_path)
    t0 = time.monotonic()
    pool.close(cancel=True)
    t.join(timeout=60)
    assert not t.is_alive() and time.monotonic() - t0 < 60
    (err,) = outcome
    assert isinstance(err, PoolClosed) and endless.run_id in str(err) and not is_transient(err)
    run_dir = tmp_path / endless.run_id
    assert run_dir.is_dir() and not (run_dir / MANIFEST_FILENAME).exists()  # incomplete: resume trains it again


ORPHAN_SCRIPT = """
import sys, threading, multiprocessing
from dlm_triage.config import RunConfig
from dlm_triage.pool import TrainingPool
cfg = RunConfig(model_id=sys.argv[1], steps=100_000, batch_size=2, seq_len=16, device="cpu", save_adapter=False)
started = threading.Event()
pool = TrainingPool(1, torch_threads=1, progress_every_s=0.0)
threading.Thread(target=pool.train, args=(cfg, sys.argv[2]), kwargs={"progress": lambda s, n: started.set()},
                 daemon=True).start()
started.wait(300)
print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
threading.Event().wait()
"""


@pytest.mark.slow
def test_workers_exit_when_their_parent_is_killed(tiny_model_dir, tmp_path):
    """A flow-run process killed hard (cancellation, OOM) must not leave its workers training on (holding a GPU)."""
    import subprocess
    import sys
    import time

    import psutil

    parent = subprocess.Popen([sys.executable, "-c", ORPHAN_SCRIPT, str(tiny_model_dir), str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert pids, "the pool started no worker"
        workers = [psutil.Process(p) for p in pids]
        assert all(w.is_running() for w in workers)
    finally:
        parent.kill()
        parent.wait()

    def alive(w):
        try:
            return w.is_running() and w.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + 30
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(w) for w in workers), f"orphaned workers still running: {[w.pid for w in workers]}"
