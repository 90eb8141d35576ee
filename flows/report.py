"""Report flow: figures + HTML/Markdown triage report of one calibration (the latest by default)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from dlm_triage.params import ReportParams
from tasks.report import write_report


@flow(name="report")
def report_flow(params: ReportParams = ReportParams()) -> dict[str, Any]:
    """Write the report; the HTML is linked from the 'triage-report' artifact."""
    return write_report(params.resolved_db(), params.resolved_out(), params.calibration_id)


if __name__ == "__main__":
    report_flow()
