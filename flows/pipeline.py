"""Pipeline flow: (tiny model) -> sweep -> ingest -> calibrate -> report. Each stage is also a flow of its own."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from dlm_triage.params import PipelineParams
from flows.calibrate import calibrate_flow
from flows.ingest import ingest_flow
from flows.report import report_flow
from flows.sweep import sweep_flow
from tasks.report import mark_routed


@flow(name="pipeline")
def pipeline_flow(params: PipelineParams = PipelineParams()) -> dict[str, Any]:
    """Train the grid (the sweep builds the tiny model first when needed), load every run into DuckDB,
    calibrate the thresholds, write the report. Failed training configs are reported and skipped.
    This run's own artifact 'pipeline-summary' leads with the answer; routed runs are 'routed-<run_id>' task
    runs in state Routed, and the run is tagged 'routed' when any is."""
    records = sweep_flow(params.sweep_params())
    ingested = ingest_flow(params.ingest_params())
    calibration = calibrate_flow(params.calibrate_params())
    report = report_flow(params.report_params(calibration["calibration_id"]))
    _publish(records, report)
    return {"runs": records, "ingest": ingested, "calibration": calibration, "report": report}


def _publish(records: list[dict[str, Any]], report: dict[str, Any]) -> None:
    from dlm_triage.report import ROUTED_SHOWN, pipeline_markdown

    routed = report.get("routed") or []
    create_markdown_artifact(key="pipeline-summary", markdown=pipeline_markdown(
        report.get("summary") or "", routed, records, report.get("html")),
        description="the answer per group, the verdicts, the routed runs and the report")
    for r in routed[:ROUTED_SHOWN]:  # each is one API write; the summary and `dlm-triage queue` list them all
        mark_routed(r["run_id"], r["why"])
    if routed:
        from prefect.client.orchestration import get_client
        from prefect.runtime import flow_run

        with get_client(sync_client=True) as client:
            run = client.read_flow_run(flow_run.id)
            client.update_flow_run(flow_run.id, tags=sorted(set(run.tags) | {"routed"}))


if __name__ == "__main__":
    pipeline_flow()
