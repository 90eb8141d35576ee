"""Calibrate flow: per-group max-grad thresholds (the paper's protocol) from the DuckDB store."""

from __future__ import annotations

from typing import Any

from prefect import flow

from dlm_triage.params import CalibrateParams, ReportParams
from tasks.calibrate import calibrate_db
from tasks.report import write_report


@flow(name="calibrate")
def calibrate_flow(params: CalibrateParams = CalibrateParams()) -> dict[str, Any]:
    """Calibrate every group; the thresholds are registered in DuckDB and published as artifacts."""
    return calibrate_db(params.resolved_db(), params.resolved_out(), params.calibrate_kwargs())


@flow(name="calibrate-report")
def calibrate_report_flow(
    calibrate: CalibrateParams = CalibrateParams(), report: ReportParams = ReportParams()
) -> dict[str, Any]:
    """Calibrate, then report that calibration (the 'calibrate-report' deployment on the CPU pool)."""
    calibration = calibrate_db(calibrate.resolved_db(), calibrate.resolved_out(), calibrate.calibrate_kwargs())
    db = report.resolved_db() if report.db is not None else calibrate.resolved_db()
    out = report.resolved_out() if report.out is not None else calibrate.resolved_out()
    return {"calibration": calibration, "report": write_report(db, out, calibration["calibration_id"])}


if __name__ == "__main__":
    calibrate_flow()
