"""The verbs over the store: `ingest` and `import` (run directories and foreign logs into DuckDB),
`calibrate`, `report`, and the two read-only views `queue` and `thresholds` (tables fitted to the terminal).
`cli.main` builds the parser and dispatches here."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    from dlm_triage.calresult import CalibrationResult


QUEUE_COLUMNS = ("outcome", "run_id", "max_grad_up_to_k", "threshold", "k", "family", "learning_rate", "rank",
                 "mask_ratio", "seed", "status", "final_loss", "method")
"""Most important first: a narrow terminal drops columns from the end."""
THRESHOLD_COLUMNS = ("group_name", "live", "k", "threshold", "precision", "precision_ci", "baseline_ceiling",
                     "calibration_id", "created_at", "n", "n_unstable", "recall", "f1", "group_by")
"""Most important first: a narrow terminal drops columns from the end."""


def _print_ingest(report: Any) -> None:
    print(f"ingest {report.ingest_id}: {report.added} added, {report.already_present} already present, "
          f"{report.incomplete} incomplete, {len(report.quarantined)} quarantined")
    for path in report.incomplete_paths:
        print(f"  incomplete (no manifest, or a failed attempt: a sweep re-runs it) {path}")
    for path, reason in report.quarantined:
        print(f"  quarantined {path}: {reason}")
    for rid in getattr(report, "updated_run_ids", ()):
        print(f"  updated {rid}: the re-imported log holds more steps")
    for path, why in getattr(report, "duplicates", ()):
        print(f"  duplicate {path}: {why}")
    for path, why in getattr(report, "skipped", ()):
        print(f"  skipped {path}: {why}")


def cmd_ingest(args: argparse.Namespace) -> int:
    from dlm_triage import store

    report = store.ingest_runs(args.db, args.runs_dir or args.out / "runs",
                               quarantine_dir=args.quarantine)
    _print_ingest(report)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from dlm_triage.importers import import_logs

    options: dict[str, Any] = {}
    for kv in args.option or []:
        key, _, value = kv.partition("=")
        options[key.replace("-", "_")] = value
    report = import_logs(args.db, args.format, args.paths, family=args.family, **options)
    _print_ingest(report)
    return 1 if report.quarantined else 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from dlm_triage.calibrate import run_calibration
    from dlm_triage.params import CalibrateParams

    p = CalibrateParams(db=args.db, out=args.out_dir or args.out / "reports", group_by=args.group_by,
                        n_resamples=args.resamples, stepk_resamples=args.stepk_resamples, seed=args.seed,
                        bonferroni_m=args.bonferroni_m)
    res = run_calibration(p.resolved_db(), p.resolved_out(), **p.calibrate_kwargs())
    cal = res.result
    print(f"calibration {res.calibration_id} (by {cal.group_by}): {res.json_path}")
    _print_answers(cal, p.resolved_db())
    counts = [(scope, len(ws)) for scope, ws in [("all groups", cal.warnings)]
              + [(n, g.warnings) for n, g in cal.groups.items()] if ws]
    if counts:  # counted here, read in the report (collapsed under its answer) or calibration.json
        print(f"{sum(n for _s, n in counts)} calibration warning(s) (" + ", ".join(f"{s} {n}" for s, n in counts)
              + "): `dlm-triage report` lists them under its answer")
    return 0


def _print_answers(result: CalibrationResult, db: Path) -> None:
    """One line per group: its live threshold or why none, and the registered rule's evidence."""
    from dlm_triage import store
    from dlm_triage.report import group_answers

    with store.connect(db, read_only=True) as con:
        live = {g: store.live_threshold(con, g, group_by=result.group_by)[0] for g in result.groups}
    for a in group_answers(result, live=live):
        print(f"  {a.line}")


def cmd_report(args: argparse.Namespace) -> int:
    from dlm_triage.report import write_report

    paths_ = write_report(args.db, args.out_dir or args.out / "reports", calibration_id=args.calibration)
    for a in paths_.answers:  # the report's first section, here too
        print(a.line)
    print(f"report: {paths_.html}\nmarkdown: {paths_.markdown}")
    for name, why in paths_.missing.items():
        print(f"  figure {name} missing: {why}")
    return 0


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _fit_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], width: int) -> list[str]:
    """A plain table of `columns` (most important first) fitted to `width` characters: the least important
    columns are left out until it fits, then the widest remaining cell is shortened with an ellipsis."""
    cols = list(columns)
    cells = {c: [_cell(r.get(c)) for r in rows] for c in cols}
    w = {c: max(len(c), *(len(x) for x in cells[c])) for c in cols}

    def total() -> int:
        return sum(w[c] for c in cols) + 2 * (len(cols) - 1)

    while len(cols) > 2 and total() > width:
        cols.pop()
    if total() > width:  # two columns still too wide: shorten the wider one
        c = max(cols, key=lambda x: w[x])
        w[c] = max(8, w[c] - (total() - width))
    clip = lambda x, n: x if len(x) <= n else x[: n - 1] + "…"  # noqa: E731
    lines = ["  ".join(clip(c, w[c]).ljust(w[c]) for c in cols).rstrip()]
    for i in range(len(rows)):
        lines.append("  ".join(clip(cells[c][i], w[c]).ljust(w[c]) for c in cols).rstrip())
    left_out = [c for c in columns if c not in cols]
    if left_out:
        lines.append(f"(not shown at this width: {', '.join(left_out)}; --json has every column)")
    return lines


def cmd_queue(args: argparse.Namespace) -> int:
    import shutil
    import textwrap

    from dlm_triage import store

    with store.connect(args.db, read_only=True) as con:
        q = store.inspection_queue(con, calibration_id=args.calibration)
    if args.json:
        print(q.write_json())
        return 0
    if q.is_empty():
        print("no run is routed to inspection (no live threshold yet, or every run is below its group's "
              "threshold): `dlm-triage thresholds` says which thresholds are live and why")
        return 0
    # most severe first (store.inspection_queue's order); the terminal gets what decides a look, fitted to it
    width = shutil.get_terminal_size((120, 24)).columns
    rows = q.to_dicts()
    for line in _fit_table(rows, QUEUE_COLUMNS, width):
        print(line)
    counts = q.group_by("outcome").len().sort("outcome").iter_rows()
    print(f"{q.height} run(s) in the queue: " + ", ".join(f"{n} {o}" for o, n in counts) + "; why:")
    for r in rows:
        print(textwrap.fill(f"{r['run_id']}: {r['reason']}", width=max(40, width - 2), initial_indent="  ",
                            subsequent_indent="      "))
    return 0


def cmd_thresholds(args: argparse.Namespace) -> int:
    from dlm_triage import store

    with store.connect(args.db, read_only=True) as con:
        h = store.threshold_history(con, args.group)
    if args.json:
        print(h.write_json())
        return 0
    if h.is_empty():
        print("no threshold registered yet: run `dlm-triage calibrate`")
        return 0
    # one rule per row: the registered threshold at k, its own held-out metrics and precision CI, judged against
    # the always-positive baseline ceiling (the numbers the report's per-group table shows)
    import shutil

    rows = [{**r, "live": "accepted" if r["accepted"] else "rejected",
             "precision_ci": f"[{_cell(r['precision_ci_low'])}, {_cell(r['precision_ci_high'])}]",
             "created_at": str(r["created_at"])[:19]} for r in h.to_dicts()]
    for line in _fit_table(rows, THRESHOLD_COLUMNS, shutil.get_terminal_size((120, 24)).columns):
        print(line)
    rejected = h.filter(~h["accepted"])
    if rejected.height:
        print("rejected (never live):")
        for cid, g, why in rejected.select("calibration_id", "group_name", "reason").iter_rows():
            print(f"  {cid} {g}: {why}")
    return 0
