"""Shared test fixtures. Add fixtures here; don't rewrite others'."""

from __future__ import annotations

import os

import pytest
import torch

TINY_PRETRAIN_STEPS = 40
"""Few pretraining steps: enough for a model that is not random, cheap enough (~4 s) for every test session."""


def pytest_collection_modifyitems(items):
    """A test on the shared Prefect API (the `prefect_harness` fixture, directly or through another fixture) runs
    against a real server: it is marked `server` here, so `-m "not server"` leaves every such test out."""
    for item in items:
        if "prefect_harness" in getattr(item, "fixturenames", ()) and item.get_closest_marker("server") is None:
            item.add_marker(pytest.mark.server)


def _starts_a_prefect_server(argv: list[str]) -> bool:
    """A command line that starts a Prefect server: Prefect's own temporary one (uvicorn on its app), ours
    (`flows.tempserver`), `prefect server start`, or the CLI's `run`/`sweep` (they train under a temporary server
    when no API is configured; that server is the CLI's child, out of this process's sight)."""
    names = [a.rsplit("/", 1)[-1] for a in argv]
    if "flows.tempserver" in argv or ("uvicorn" in names and any("prefect.server" in a for a in argv)):
        return True
    if "prefect" in names and any(names[i:i + 2] == ["server", "start"] for i in range(len(names))):
        return True
    if "dlm-triage" in names or any(argv[i:i + 2] == ["-m", "cli"] for i in range(len(argv))):
        rest = argv[(names.index("dlm-triage") + 1) if "dlm-triage" in names else argv.index("cli") + 1:]
        verbs = [a for i, a in enumerate(rest) if not a.startswith("-") and (i == 0 or rest[i - 1] != "--out")]
        return bool(verbs) and verbs[0] in ("run", "sweep")
    return False


@pytest.fixture(autouse=True)
def _server_mark_is_honest(request, monkeypatch):
    """`-m "not server"` must leave out every test that starts a Prefect server. The `prefect_harness` ones are
    marked above; one that starts a server through a subprocess (the CLI, `prefect server start`) fails here
    unless marked `server` itself. Every subprocess.Popen (subprocess.run included) of an unmarked test is seen."""
    if request.node.get_closest_marker("server") is not None:
        yield
        return
    import shlex
    import subprocess

    started, original = [], subprocess.Popen.__init__

    def recording(self, args, *a, **kw):
        argv = [str(x) for x in ([args] if isinstance(args, (str, bytes, os.PathLike)) else args)]
        if kw.get("shell") and len(argv) == 1:
            argv = shlex.split(argv[0])
        if _starts_a_prefect_server(argv):
            started.append(" ".join(argv))
        original(self, args, *a, **kw)

    monkeypatch.setattr(subprocess.Popen, "__init__", recording)
    yield
    if started:
        pytest.fail(f"{request.node.nodeid} started a Prefect server ({started[0][:200]}) but is not marked "
                    "server: add @pytest.mark.server", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _release_runs_set_up_by_hand(monkeypatch):
    """A test that calls train._setup directly (to drive single steps) never reaches the release at the end of
    train_run: its lease would stay in use and fill the resident cache for every later test in the session."""
    from dlm_triage import train

    setups, original = [], train._setup

    def recording(*args, **kwargs):
        r = original(*args, **kwargs)
        setups.append(r)
        return r

    monkeypatch.setattr(train, "_setup", recording)
    yield
    for r in setups:
        r.lease.release(r.model)  # idempotent: runs that train_run already released are left as they are


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The tiny family's model (HF format + tokenizer), pretrained briefly, built once per test session."""
    from dlm_triage.tiny import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("tiny-cache"), pretrain_steps=TINY_PRETRAIN_STEPS)


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One temporary Prefect API (SQLite + ephemeral server) for every test that needs Prefect. Not autouse.

    Costs ~12-34 s once per session (measured here, by load), so pure logic is tested without it. The startup
    timeout is raised to 90 s (the first start on a fresh home can exceed the default under load), analytics
    are off (offline), and persisted task results (the training cache) go to a session temp dir instead of
    ~/.prefect/storage, so no test sees another session's cache. Yields that result-storage path.
    """
    import prefect.settings as ps
    from prefect.testing.utilities import prefect_test_harness

    storage = tmp_path_factory.mktemp("prefect-results")
    with ps.temporary_settings(updates={
        ps.PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 90,
        ps.PREFECT_SERVER_ANALYTICS_ENABLED: False,
        ps.PREFECT_LOCAL_STORAGE_PATH: storage,
        ps.PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "ignore",  # tasks called outside a flow (retry tests)
    }):
        with prefect_test_harness(server_startup_timeout=90):
            yield storage
