"""Ingestion tasks: run directories (and foreign logs) -> DuckDB, with a Prefect artifact saying what happened.

Ingestion is idempotent and transactional (store.py), so retrying after a transient failure (the database
locked by another writer past its timeout, an NFS hiccup) is safe: nothing is ingested twice.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from tasks.train import retry_transient

_RETRY = dict(retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_transient)


def _report_dict(report: Any) -> dict[str, Any]:
    d = dataclasses.asdict(report)
    d["quarantined"] = [list(q) for q in report.quarantined]
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@task(name="ingest-runs", **_RETRY)
def ingest_runs(db: Path, runs_dir: Path, quarantine_dir: Path | None = None) -> dict[str, Any]:
    """Validate and insert every complete run directory under `runs_dir`; returns the IngestReport as a dict."""
    from dlm_triage import store

    logger = get_run_logger()
    logger.info("ingesting run directories under %s into %s", runs_dir, db)
    Path(db).parent.mkdir(parents=True, exist_ok=True)
    report = store.ingest_runs(Path(db), Path(runs_dir), quarantine_dir=quarantine_dir)
    logger.info(report.summary())
    for path, reason in report.quarantined:
        logger.warning("quarantined %s: %s", path, reason)
    for path, why in report.skipped:
        logger.warning("skipped %s: %s", path, why)
    create_markdown_artifact(key="ingest-summary", markdown=report.markdown("Ingestion", str(runs_dir)),
                             description=report.summary())
    return _report_dict(report)


@task(name="import-logs", **_RETRY)
def import_logs(db: Path, fmt: str, paths: Sequence[Path], family: str | None = None) -> dict[str, Any]:
    """Bring-your-own-logs: import files in `fmt` (reference-jsonl, cells, hf-trainer, wandb-csv)."""
    from dlm_triage import importers

    logger = get_run_logger()
    logger.info("importing %d %s file(s) into %s", len(paths), fmt, db)
    Path(db).parent.mkdir(parents=True, exist_ok=True)
    report = importers.import_logs(Path(db), fmt, [Path(p) for p in paths], family=family)
    logger.info(report.summary())
    create_markdown_artifact(key="import-summary",
                             markdown=report.markdown(f"Import ({fmt})", ", ".join(map(str, paths))),
                             description=report.summary())
    return _report_dict(report)
