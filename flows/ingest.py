"""Ingest flow: run directories (and optionally foreign logs) -> DuckDB. Idempotent: re-running adds nothing."""

from __future__ import annotations

from typing import Any

from prefect import flow

from dlm_triage.params import IngestParams
from tasks.ingest import import_logs, ingest_runs


@flow(name="ingest")
def ingest_flow(params: IngestParams = IngestParams()) -> dict[str, Any]:
    """Ingest every complete run under runs_dir; then import foreign logs when import_format is set."""
    db = params.resolved_db()
    result = {"runs": ingest_runs(db, params.resolved_runs_dir(), params.quarantine_dir)}
    if params.import_format is not None:
        result["import"] = import_logs(db, params.import_format, params.import_paths, params.import_family)
    return result


if __name__ == "__main__":
    ingest_flow()
