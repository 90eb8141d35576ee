"""Calibration tasks: thresholds per group from DuckDB, published as Prefect artifacts; recalibration helpers.

A calibration is saved in DuckDB with a new id each time (the threshold registry is append-only), so a retry
after a transient failure (database locked past its timeout) at worst adds one more calibration record.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.train import retry_transient

_RETRY = dict(retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_transient)

def _publish(result: Mapping[str, Any], title: str) -> list[dict[str, Any]]:
    """Markdown summary + threshold table artifacts of one calibration result; returns the table rows."""
    from dlm_triage import report

    cal_id = result.get("calibration_id")
    create_markdown_artifact(key="calibration-summary", markdown=report.summary_markdown(result),
                             description=f"{title} {cal_id}")
    rows = report.threshold_table(result)
    create_table_artifact(key="calibration-thresholds", table=rows,
                          description=f"max-grad thresholds per {result.get('group_by')} ({cal_id})")
    return rows


def _output(out: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"calibration_id": out.calibration_id, "json_path": str(out.json_path),
            "group_by": out.result.get("group_by"), "warnings": list(out.result.get("warnings") or []),
            "thresholds": rows}


@task(name="calibrate", **_RETRY)
def calibrate_db(db: Path, out: Path, options: dict[str, Any]) -> dict[str, Any]:
    """Calibrate every group in the database (`calibrate.run_calibration`); artifacts: summary + thresholds."""
    from dlm_triage.calibrate import run_calibration

    logger = get_run_logger()
    logger.info("calibrating %s (group_by=%s, B=%s)", db, options.get("group_by"), options.get("n_resamples"))
    res = run_calibration(Path(db), Path(out), **options)
    for w in res.result.get("warnings") or []:
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


def _threshold_dict(rec: Any) -> dict[str, Any] | None:
    if rec is None:
        return None
    d = dataclasses.asdict(rec)
    d["created_at"] = str(d.get("created_at"))
    return d


@task(name="registered-thresholds", **_RETRY)
def registered_thresholds(db: Path, group_by: str, groups: Sequence[str]) -> dict[str, dict[str, Any] | None]:
    """{group: its latest accepted threshold (store.ThresholdRecord as a dict) or None}."""
    from dlm_triage import store

    con = store.connect(Path(db), read_only=True)
    try:
        return {g: _threshold_dict(store.latest_threshold(con, g, group_by=group_by)) for g in groups}
    finally:
        con.close()


@task(name="calibration-thresholds", **_RETRY)
def calibration_thresholds(db: Path, calibration_id: str) -> dict[str, dict[str, Any]]:
    """{group: threshold row of this calibration (accepted or not)}, from the registry."""
    from dlm_triage import store

    con = store.connect(Path(db), read_only=True)
    try:
        hist = store.threshold_history(con)
    finally:
        con.close()
    out = {}
    for row in hist.to_dicts():
        if row["calibration_id"] == calibration_id:
            row = {k: (str(v) if k == "created_at" else v) for k, v in row.items()}
            out[row["group_name"]] = row
    return out


@task(name="calibrate-groups", **_RETRY)
def calibrate_groups(db: Path, out: Path, groups: Sequence[str], options: dict[str, Any]) -> dict[str, Any]:
    """Calibrate only `groups` (one new calibration over their runs) and register their thresholds.

    `run_calibration` has no run filter, so this composes its steps with one: load inputs WHERE group IN
    groups -> calibrate -> save_calibration -> calibration.json.
    """
    import polars as pl

    from dlm_triage import groups as grouping
    from dlm_triage import store
    from dlm_triage.calibrate import CalibrationOutput, calibrate, write_json_atomic
    from dlm_triage.fsutil import output_dir, point_latest

    logger = get_run_logger()
    logger.info("recalibrating %d group(s): %s", len(groups), ", ".join(groups))
    con = store.connect(Path(db), create=False)
    try:
        ids = grouping.group_run_ids(con, options["group_by"], groups)  # the runs of these group keys
        con.register("_dlmt_recal_ids", pl.DataFrame({"run_id": ids}, schema={"run_id": pl.String}).to_arrow())
        try:
            inputs = store.load_calibration_inputs(con, where="run_id IN (SELECT run_id FROM _dlmt_recal_ids)")
        finally:
            con.unregister("_dlmt_recal_ids")
        result = calibrate(inputs, **options)
        cal_id = result["calibration_id"]
        # the file first, the live thresholds last (as run_calibration)
        path = write_json_atomic(result, output_dir(out, cal_id) / "calibration.json")
        store.save_calibration(con, result)
    finally:
        con.close()
    point_latest(out, cal_id)
    for w in result.get("warnings") or []:
        logger.warning("calibration: %s", w)
    rows = _publish(result, "Recalibration")
    return _output(CalibrationOutput(cal_id, path, result), rows)


def threshold_drift(previous: Mapping[str, Mapping[str, Any] | None],
                    current: Mapping[str, Mapping[str, Any] | None]) -> list[dict[str, Any]]:
    """One row per group: old and new threshold with their CIs, the change, and whether the CIs overlap.

    'drift' is 'new' (no previous threshold), 'none registered' (no new threshold), 'rejected (...)' (the new
    calibration did not accept it: degenerate group, the previous stays in force), 'within CI overlap' (the
    two CIs overlap: no evidence of drift), 'CIs disjoint' (drift), or 'CI unavailable'.
    """
    rows = []
    for g in sorted(set(previous) | set(current)):
        old, new = previous.get(g), current.get(g)
        row: dict[str, Any] = {
            "group": g,
            "old_threshold": old and old.get("threshold"), "old_ci_low": old and old.get("ci_low"),
            "old_ci_high": old and old.get("ci_high"), "old_n": old and old.get("n"),
            "new_threshold": new and new.get("threshold"), "new_ci_low": new and new.get("ci_low"),
            "new_ci_high": new and new.get("ci_high"), "new_n": new and new.get("n"),
            "change": None, "ci_overlap": None,
        }
        if new is None:
            row["drift"] = "none registered"
        elif new.get("accepted") is False or new.get("threshold") is None:
            row["drift"] = "rejected (previous kept)" if old is not None else "rejected (none registered)"
        elif old is None:
            row["drift"] = "new"
        else:
            row["change"] = new["threshold"] - old["threshold"]
            ci = [old.get("ci_low"), old.get("ci_high"), new.get("ci_low"), new.get("ci_high")]
            if any(x is None for x in ci):
                row["drift"] = "CI unavailable"
            else:
                overlap = not (ci[2] > ci[1] or ci[3] < ci[0])
                row["ci_overlap"] = overlap
                row["drift"] = "within CI overlap" if overlap else "CIs disjoint"
        rows.append(row)
    return rows


@task(name="publish-drift")
def publish_drift(previous: Mapping[str, Any], current: Mapping[str, Any], due: dict[str, Any]) -> list[dict]:
    """Artifact 'what-changed': per group, new runs, old vs new threshold and CI, drift verdict."""
    rows = threshold_drift(previous, current)
    counts = due["groups"]

    def f(x: Any) -> str:
        return "n/a" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)

    lines = ["# What changed", "",
             f"Recalibrated {len(rows)} group(s) with >= the minimum of new runs; "
             f"{len(counts) - len(rows)} group(s) kept their thresholds.", "",
             "| group | new runs | old threshold [CI] | new threshold [CI] | change | drift |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['group']} | {counts.get(r['group'], {}).get('new', 'n/a')} | "
            f"{f(r['old_threshold'])} [{f(r['old_ci_low'])}, {f(r['old_ci_high'])}] | "
            f"{f(r['new_threshold'])} [{f(r['new_ci_low'])}, {f(r['new_ci_high'])}] | {f(r['change'])} | "
            f"**{r['drift']}** |")
    kept = [g for g in counts if g not in current]
    if kept:
        lines += ["", "Kept: " + ", ".join(f"{g} ({counts[g]['new']} new)" for g in kept)]
    create_markdown_artifact(key="what-changed", markdown="\n".join(lines) + "\n",
                             description="threshold drift after recalibration")
    logger = get_run_logger()
    for r in rows:
        logger.info("%s: %s -> %s (%s)", r["group"], f(r["old_threshold"]), f(r["new_threshold"]), r["drift"])
    return rows
