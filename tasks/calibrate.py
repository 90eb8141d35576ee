"""Calibration tasks: thresholds per group from DuckDB, published as Prefect artifacts; recalibration helpers.

A calibration is saved in DuckDB with a new id each time (the threshold registry is append-only), so a retry
after a transient failure (database locked past its timeout) at worst adds one more calibration record.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from dlm_triage.drift import (
    calibration_threshold_dicts, drift_markdown, fmt, registered_threshold_dicts, threshold_drift,
)
from tasks.train import retry_transient

if TYPE_CHECKING:
    from dlm_triage.calibrate import CalibrationOutput
    from dlm_triage.calresult import CalibrationResult

_RETRY = dict(retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_transient)

def _publish(result: CalibrationResult, title: str) -> list[dict[str, Any]]:
    """Markdown summary + threshold table artifacts of one calibration result; returns the table rows."""
    from dlm_triage import report

    cal_id = result.calibration_id
    create_markdown_artifact(key="calibration-summary", markdown=report.summary_markdown(result),
                             description=f"{title} {cal_id}")
    rows = report.threshold_table(result)
    create_table_artifact(key="calibration-thresholds", table=rows,
                          description=f"max-grad thresholds per {result.group_by} ({cal_id})")
    return rows


def _output(out: CalibrationOutput, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The task's return value: plain JSON (a Prefect result may cross a process boundary), the calibration's
    JSON contract under 'result' (`CalibrationResult.from_json` reads it back where it is used)."""
    return {"calibration_id": out.calibration_id, "json_path": str(out.json_path),
            "group_by": out.result.group_by, "warnings": list(out.result.warnings),
            "thresholds": rows, "result": out.result.to_json()}


@task(name="calibrate", **_RETRY)
def calibrate_db(db: Path, out: Path, options: dict[str, Any]) -> dict[str, Any]:
    """Calibrate every group in the database (`calibrate.run_calibration`); artifacts: summary + thresholds."""
    from dlm_triage.calibrate import run_calibration

    logger = get_run_logger()
    logger.info("calibrating %s (group_by=%s, B=%s)", db, options.get("group_by"), options.get("n_resamples"))
    res = run_calibration(Path(db), Path(out), **options)
    for w in res.result.warnings:
        logger.warning("calibration: %s", w)
    rows = _publish(res.result, "Calibration")
    logger.info("calibration %s saved, %d group(s), JSON at %s", res.calibration_id, len(rows), res.json_path)
    return _output(res, rows)


@task(name="groups-due", **_RETRY)
def groups_due(db: Path, group_by: str, min_new_runs: int) -> dict[str, Any]:
    """Per group: runs ingested since the group's last calibration (any status); due iff >= min_new_runs.

    A group never calibrated counts all its runs. Groups are named by `groups.group_key` (the key calibrate
    registered its threshold under). Returns {'due': [names], 'groups': {name: {new, total,
    last_calibrated_at}}}.
    """
    from dlm_triage import groups as grouping
    from dlm_triage import store

    con = store.connect(Path(db), read_only=True)
    try:
        groups = grouping.runs_since_calibration(con, group_by)
    finally:
        con.close()
    due = grouping.due_groups(groups, min_new_runs)
    logger = get_run_logger()
    for name, info in groups.items():
        logger.info("%s=%s: %d new run(s) of %d since %s -> %s", group_by, name, info["new"], info["total"],
                    info["last_calibrated_at"] or "never", "recalibrate" if name in due else "keep")
    return {"due": due, "groups": groups}


@task(name="registered-thresholds", **_RETRY)
def registered_thresholds(db: Path, group_by: str, groups: Sequence[str]) -> dict[str, dict[str, Any] | None]:
    """{group: its latest accepted threshold (store.ThresholdRecord as a dict) or None}."""
    from dlm_triage import store

    con = store.connect(Path(db), read_only=True)
    try:
        return registered_threshold_dicts(con, group_by, groups)
    finally:
        con.close()


@task(name="calibration-thresholds", **_RETRY)
def calibration_thresholds(db: Path, calibration_id: str) -> dict[str, dict[str, Any]]:
    """{group: threshold row of this calibration (accepted or not)}, from the registry."""
    from dlm_triage import store

    con = store.connect(Path(db), read_only=True)
    try:
        return calibration_threshold_dicts(con, calibration_id)
    finally:
        con.close()


@task(name="calibrate-groups", **_RETRY)
def calibrate_groups(db: Path, out: Path, groups: Sequence[str], options: dict[str, Any]) -> dict[str, Any]:
    """Calibrate only `groups` and register their thresholds.

    One new calibration over their runs (`calibrate.run_calibration(groups=)`): calibration.json, then the
    registry.
    """
    from dlm_triage.calibrate import run_calibration

    logger = get_run_logger()
    logger.info("recalibrating %d group(s): %s", len(groups), ", ".join(groups))
    res = run_calibration(Path(db), Path(out), groups=groups, **options)
    for w in res.result.warnings:
        logger.warning("calibration: %s", w)
    rows = _publish(res.result, "Recalibration")
    return _output(res, rows)


@task(name="publish-drift")
def publish_drift(previous: Mapping[str, Any], current: Mapping[str, Any], due: dict[str, Any]) -> list[dict]:
    """Artifact 'what-changed': per group, new runs, old vs new threshold and CI, drift verdict."""
    rows = threshold_drift(previous, current)
    markdown = drift_markdown(rows, due["groups"], current)
    create_markdown_artifact(key="what-changed", markdown=markdown,
                             description="threshold drift after recalibration")
    logger = get_run_logger()
    for r in rows:
        logger.info("%s: %s -> %s (%s)", r["group"], fmt(r["old_threshold"]), fmt(r["new_threshold"]), r["drift"])
    return rows
