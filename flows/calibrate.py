"""Calibrate flow: per-group max-grad thresholds (the paper's protocol) from the DuckDB store."""

from __future__ import annotations

from typing import Any

from prefect import flow

from dlm_triage.params import CalibrateParams
from tasks.calibrate import calibrate_db


@flow(name="calibrate")
def calibrate_flow(params: CalibrateParams = CalibrateParams()) -> dict[str, Any]:
    """Calibrate every group; the thresholds are registered in DuckDB and published as artifacts."""
    return calibrate_db(params.resolved_db(), params.resolved_out(), params.calibrate_kwargs())


if __name__ == "__main__":
    calibrate_flow()
