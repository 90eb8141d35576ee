"""A temporary Prefect server that cannot outlive the CLI process that started it.

With no API configured, Prefect starts its own temporary server as a child process and stops it at exit; a
`kill -9` of the CLI skips that, and the server kept running (parent PID 1, holding its port and SQLite file).
`temporary_server()` starts the same server itself (same app, 127.0.0.1, UI off, Prefect's ephemeral-mode
settings), through this module's `__main__`, which asks the kernel for SIGTERM when its parent dies
(Linux `PR_SET_PDEATHSIG`, kept across the exec into uvicorn) and otherwise polls its parent PID. Where an API
is configured (a long-lived server, Prefect Cloud) nothing is started.

`free_port`, `wait_healthy` and `stop` also serve the scripts and benchmarks that start a full
`prefect server start` (UI, own PREFECT_HOME) of their own.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _configured_api_url() -> str | None:
    from prefect.settings import get_current_settings

    return get_current_settings().api.url


def wait_healthy(proc: subprocess.Popen, url: str, timeout_s: float, *, what: str = "the temporary Prefect server",
                 fix: str = "raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS or start one (prefect server "
                            "start)") -> None:
    """Return once the Prefect API at `url` answers /health (polled every 0.2 s); RuntimeError naming `what`
    when `proc`, the server's process, exits first, or (with `fix`) when `timeout_s` passes."""
    import httpx

    deadline = time.monotonic() + timeout_s
    with httpx.Client() as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with code {proc.returncode} before it answered")
            try:
                if client.get(f"{url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"{what} at {url} did not answer within {timeout_s:.0f} s: {fix}")


def stop(proc: subprocess.Popen, timeout_s: float = 10, *, group: bool = False) -> None:
    """SIGTERM, then SIGKILL if it has not exited after `timeout_s`. `group`: signal the process group of a
    process started with start_new_session=True (`prefect server start` and its uvicorn child alike)."""
    if proc.poll() is not None:
        return

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # it exited between the poll and the signal
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)

    send(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def temporary_server() -> Iterator[str | None]:
    """Within the block, Prefect talks to a temporary server bound to this process's life (yields its API
    URL); yields None and starts nothing when an API URL is configured."""
    if _configured_api_url():
        yield None
        return
    from prefect.settings import (PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
                                  get_current_settings, temporary_settings)

    env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True),
           "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "flows.tempserver", str(os.getpid()), str(port)], env=env)
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_healthy(proc, url, float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))
        with temporary_settings({PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                _flush()
    finally:
        stop(proc)


def _flush() -> None:
    """Send the logs and events still queued for the server before it stops (Prefect's own temporary server
    stops at interpreter exit, after its workers drained; ours stops at the end of the block)."""
    with contextlib.suppress(Exception):
        from prefect.logging.handlers import APILogHandler

        APILogHandler().flush()
    with contextlib.suppress(Exception):
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=10)


def _die_with(parent: int) -> None:
    """SIGTERM to this process when `parent` dies: the kernel's parent-death signal where there is one, and
    a watcher thread (1 s poll of the parent PID) for the case where the parent died first or elsewhere."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        sys.exit(0)


def _serve(parent: int, port: int) -> None:
    _die_with(parent)
    import prefect
    import uvicorn

    def watch() -> None:  # non-Linux, or a parent that is not the one that forked us
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()
    sys.path.insert(0, str(Path(prefect.__module_path__).parent))
    uvicorn.run("prefect.server.api.server:create_app", factory=True, host="127.0.0.1", port=port,
                log_level="error", lifespan="on")


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))
