"""Shared test fixtures. Add fixtures here; don't rewrite others'."""

from __future__ import annotations

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
