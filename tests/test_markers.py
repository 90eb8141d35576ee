"""The markers' promises: conftest's guard knows a command line that starts a Prefect server from one that does
not, for the command lines this suite runs (an unmarked test that starts one then fails at teardown)."""

from __future__ import annotations

import sys

import pytest
from conftest import _starts_a_prefect_server

PY = sys.executable

STARTS = {
    "prefect's temporary server": [PY, "-m", "uvicorn", "--app-dir", "/x", "--factory",
                                   "prefect.server.api.server:create_app", "--host", "127.0.0.1"],
    "flows.tempserver": [PY, "-m", "flows.tempserver", "123", "4200"],
    "prefect server start": [PY, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", "4299"],
    "prefect entry point": ["/venv/bin/prefect", "server", "start"],
    "cli sweep": [PY, "-m", "cli", "--out", "/tmp/o", "sweep", "--ranks", "4"],
    "cli sweep, --out after": [PY, "-m", "cli", "sweep", "--out", "/tmp/o"],
    "cli run, out named run": [PY, "-m", "cli", "--out", "run", "run"],
    "dlm-triage run": ["/venv/bin/dlm-triage", "run", "--steps", "2"],
}
STARTS_NOT = {
    "cli train": [PY, "-m", "cli", "--out", "/tmp/o", "train", "--set", "steps=3"],
    "cli queue, out named sweep": [PY, "-m", "cli", "--out", "sweep", "queue"],
    "cli queue piped": [PY, "-m", "cli", "--out", "/tmp/o", "queue", "|", "head", "-1"],
    "dlm-triage ingest": ["dlm-triage", "ingest", "runs"],
    "prefect deploy": [PY, "-m", "prefect", "--no-prompt", "deploy", "--all"],
    "prefect worker": [PY, "-m", "prefect", "worker", "start", "--pool", "cpu-pool"],
    "python -c": [PY, "-c", "print('sweep')"],
    "benchmark runner": [PY, "benchmarks/run_all.py", "--quick", "--only", "calibration,ingest"],
    "chromium": ["chromium", "--headless", "--screenshot=/tmp/x.png", "file:///tmp/report.html"],
}


@pytest.mark.parametrize("case", sorted(STARTS))
def test_a_command_that_starts_a_server_is_recognised(case):
    assert _starts_a_prefect_server(STARTS[case])


@pytest.mark.parametrize("case", sorted(STARTS_NOT))
def test_a_command_that_starts_none_is_left_alone(case):
    assert not _starts_a_prefect_server(STARTS_NOT[case])
