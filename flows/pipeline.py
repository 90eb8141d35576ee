"""Pipeline flow: (tiny model) -> sweep -> ingest -> calibrate -> report. Each stage is also a flow of its own."""

from __future__ import annotations

from typing import Any

from prefect import flow

from dlm_triage.params import PipelineParams
from flows.calibrate import calibrate_flow
from flows.ingest import ingest_flow
from flows.report import report_flow
from flows.sweep import sweep_flow


@flow(name="pipeline")
def pipeline_flow(params: PipelineParams = PipelineParams()) -> dict[str, Any]:
    """Train the grid (the sweep builds the tiny model first when needed), load every run into DuckDB,
    calibrate the thresholds, write the report. Failed training configs are reported and skipped."""
    records = sweep_flow(params.sweep)
    ingested = ingest_flow(params.ingest)
    calibration = calibrate_flow(params.calibrate)
    report = report_flow(params.report.model_copy(update={"calibration_id": calibration["calibration_id"]}))
    return {"runs": records, "ingest": ingested, "calibration": calibration, "report": report}


if __name__ == "__main__":
    pipeline_flow()
