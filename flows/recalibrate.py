"""Recalibrate flow (scheduled): ingest new runs, recalibrate the groups that gathered enough new runs since
their last calibration, register the new thresholds, and publish what changed (drift, with CIs)."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from dlm_triage.params import RecalibrateParams
from tasks.calibrate import calibrate_groups, calibration_thresholds, groups_due, publish_drift, registered_thresholds
from tasks.ingest import ingest_runs
from tasks.report import write_report


@flow(name="recalibrate")
def recalibrate_flow(params: RecalibrateParams = RecalibrateParams()) -> dict[str, Any]:
    cal = params.calibrate
    db, out = cal.resolved_db(), cal.resolved_out()
    ingested = ingest_runs(db, params.resolved_runs_dir())
    due = groups_due(db, cal.group_by, params.min_new_runs)
    if not due["due"]:
        get_run_logger().info("no group has %d new run(s): thresholds unchanged", params.min_new_runs)
        return {"ingest": ingested, "due": due, "calibration": None, "drift": []}
    previous = registered_thresholds(db, cal.group_by, due["due"])
    calibration = calibrate_groups(db, out, due["due"], cal.calibrate_kwargs())
    current = calibration_thresholds(db, calibration["calibration_id"])
    drift = publish_drift(previous, current, due)
    report = write_report(db, out, calibration["calibration_id"]) if params.write_report else None
    return {"ingest": ingested, "due": due, "calibration": calibration, "drift": drift, "report": report}


if __name__ == "__main__":
    recalibrate_flow()
