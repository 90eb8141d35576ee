"""Threshold drift after a recalibration: old vs new threshold per group, and whether their CIs overlap.

Read from the registry (`store.latest_threshold`, `store.threshold_history`) as plain dicts, the form the
recalibration flow passes between its tasks. Prefect-free; `tasks/calibrate.py` publishes the table.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence


def fmt(x: Any) -> str:
    """A threshold cell: 4 significant digits, 'n/a' for none."""
    return "n/a" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)


def threshold_dict(rec: Any) -> dict[str, Any] | None:
    """A `store.ThresholdRecord` as a JSON-able dict (created_at as text), None for None."""
    if rec is None:
        return None
    d = dataclasses.asdict(rec)
    d["created_at"] = str(d.get("created_at"))
    return d


def registered_threshold_dicts(con, group_by: str, groups: Sequence[str]) -> dict[str, dict[str, Any] | None]:
    """{group: its latest accepted threshold (store.ThresholdRecord as a dict) or None}."""
    from dlm_triage import store

    return {g: threshold_dict(store.latest_threshold(con, g, group_by=group_by)) for g in groups}


def calibration_threshold_dicts(con, calibration_id: str) -> dict[str, dict[str, Any]]:
    """{group: threshold row of this calibration (accepted or not)}, from the registry."""
    from dlm_triage import store

    out = {}
    for row in store.threshold_history(con).to_dicts():
        if row["calibration_id"] == calibration_id:
            row = {k: (str(v) if k == "created_at" else v) for k, v in row.items()}
            out[row["group_name"]] = row
    return out


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


def drift_markdown(rows: Sequence[Mapping[str, Any]], counts: Mapping[str, Mapping[str, Any]],
                   current: Mapping[str, Any]) -> str:
    """The 'what-changed' Markdown: per recalibrated group its new runs, old and new threshold [CI], the change
    and the drift verdict; then the groups kept. `counts`: `groups.runs_since_calibration`'s per group."""
    lines = ["# What changed", "",
             f"Recalibrated {len(rows)} group(s) with >= the minimum of new runs; "
             f"{len(counts) - len(rows)} group(s) kept their thresholds.", "",
             "| group | new runs | old threshold [CI] | new threshold [CI] | change | drift |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['group']} | {counts.get(r['group'], {}).get('new', 'n/a')} | "
            f"{fmt(r['old_threshold'])} [{fmt(r['old_ci_low'])}, {fmt(r['old_ci_high'])}] | "
            f"{fmt(r['new_threshold'])} [{fmt(r['new_ci_low'])}, {fmt(r['new_ci_high'])}] | {fmt(r['change'])} | "
            f"**{r['drift']}** |")
    kept = [g for g in counts if g not in current]
    if kept:
        lines += ["", "Kept: " + ", ".join(f"{g} ({counts[g]['new']} new)" for g in kept)]
    return "\n".join(lines) + "\n"
