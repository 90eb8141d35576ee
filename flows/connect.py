"""Connectivity flow: after a sweep, the LoRA-Curve probe between two of its completed runs."""

from __future__ import annotations

from typing import Any

from prefect import flow

from dlm_triage.params import ConnectParams
from tasks.connect import connect_runs


@flow(name="connect")
def connect_flow(params: ConnectParams) -> dict[str, Any]:
    """Loss along the linear paths and the trained anchored Bezier curve; barriers in the 'connectivity' artifact."""
    kwargs = params.connect_kwargs()
    return connect_runs(params.run_a, params.run_b, params.resolved_db(), kwargs)


if __name__ == "__main__":
    import sys

    connect_flow(ConnectParams(run_a=sys.argv[1], run_b=sys.argv[2]))
