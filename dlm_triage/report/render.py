"""`write_report`: report.html (self-contained), report.md and figures/*.png for one calibration.

Both files come from one context (`_context`: the tables, answers, warnings, figures and notes of this
report) rendered through the package's templates, ``templates/report.html`` (with ``report.css`` inlined) and
``templates/report.md``: the page layout lives in the templates, the numbers and their formatting here.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import duckdb
import jinja2
import polars as pl
from markupsafe import Markup

from dlm_triage import store
from dlm_triage.fsutil import output_dir, point_latest, write_bytes_atomic
from dlm_triage.report.answers import CONCENTRATION_HEADERS, GroupAnswer, concentration_rows, group_answers
from dlm_triage.report.figures import _CAPTIONS, FIGURES, draw_figures
from dlm_triage.report.fmt import _ci, _fmt
from dlm_triage.report.load import _connect, _Data, _load_calibration, _load_data
from dlm_triage.report.queue import QUEUE_HEADERS, _inspection_rows, _live_records, _queue_outcomes, _queue_rows, \
    _routed_counts
from dlm_triage.report.text import (THRESHOLD_HEADERS, VERDICT_HEADERS, _md_cell, _threshold_rows, _warnings,
                                    _warning_kind, summary_markdown)
from dlm_triage.report.verdicts import _group_names, definitions, verdicts

@dataclass(frozen=True)
class ReportPaths:
    html: Path
    markdown: Path
    figures: dict[str, Path]
    """figure name -> PNG path; a figure that could not be drawn is absent (see `missing`)."""
    missing: dict[str, str] = dataclasses.field(default_factory=dict)
    """figure name -> why it is missing (degenerate data: one group, no unstable runs, no step logs)."""
    answers: tuple["GroupAnswer", ...] = ()
    """The report's first section: one answer line per group (`group_answers`)."""
    routed: tuple[dict[str, Any], ...] = ()
    """The runs routed to inspection, as the report lists them: {run_id, group, label, outcome, why}."""
    summary: str = ""
    """`summary_markdown` with this report's routed counts and live thresholds (a Prefect markdown artifact)."""


CONNECT_HEADERS = ("run A (t=0)", "run B (t=1)", "path", "loss A", "loss B", "max loss", "barrier", "connection")


def _connectivity(con: duckdb.DuckDBPyConnection, data: _Data) -> pl.DataFrame:
    """Stored LoRA-Curve connections (`store.connect_paths`), each in the group of its run A in this calibration
    ('(not in this calibration)' otherwise); empty when none were stored."""
    conn = store.connections(con)
    if conn.is_empty():
        return conn
    groups = data.runs.select(pl.col("run_id").alias("run_a"), pl.col("group").cast(pl.Utf8))
    return (conn.join(groups, on="run_a", how="left")
            .with_columns(pl.col("group").fill_null("(not in this calibration)"))
            .sort("group", "created_at", "connect_id", "path", descending=[False, True, False, False]))


def _connect_rows(sub: pl.DataFrame) -> list[list[Any]]:
    return [[r["run_a"], r["run_b"], r["path"], r["loss_a"], r["loss_b"], r["max_loss"], r["barrier"],
             r["connect_id"]] for r in sub.iter_rows(named=True)]


@dataclass(frozen=True)
class Table:
    """One table as both templates draw it: header cells, rows of raw values (formatted by the templates'
    `html_cell` / `md_cell` filters: numbers by `fmt._fmt`, a tuple one entry per line), HTML classes."""

    headers: Sequence[str]
    rows: Sequence[Sequence[Any]]
    cls: str = ""
    row_classes: Sequence[str] = ()
    scroll: bool = False


def _html_cell(x: Any) -> Markup:
    if isinstance(x, tuple):  # one line per entry
        return Markup("<br>").join(_html_cell(e) for e in x)
    return Markup(html.escape(_md_cell(x).replace("\\|", "|")))


def _escape_html(value: Any) -> Any:
    """Every `{{ }}` of the HTML template through `html.escape` (quotes as &quot; / &#x27;); markup the
    template itself built (macros, `html_cell`) passes as is."""
    return value if isinstance(value, Markup) else Markup(html.escape(str(value)))


@lru_cache(maxsize=None)
def _templates(kind: str) -> jinja2.Template:
    """The package's `report.<kind>` template (package data: installed with the package)."""
    loader = jinja2.PackageLoader("dlm_triage.report", "templates")
    if kind == "html":
        env = jinja2.Environment(loader=loader, autoescape=True, finalize=_escape_html,
                                 undefined=jinja2.StrictUndefined)
        env.filters["html_cell"] = _html_cell
    else:
        env = jinja2.Environment(loader=loader, autoescape=False, trim_blocks=True, lstrip_blocks=True,
                                 undefined=jinja2.StrictUndefined)
        env.filters["md_cell"] = _md_cell
    return env.get_template(f"report.{kind}")


def _verdict_class(v: str) -> str:
    return {"supported": "v-supported", "not supported on this data": "v-not", "partly supported": "v-partly"}.get(
        v, "v-na")


GROUP_HEADERS = ("group", "n", "stable", "unstable", "unstable if final loss >=", "top-1 fire rate",
                 "collapse rate", "top-1 precision (unstable)", "max-grad median stable", "median unstable", "ratio",
                 "ratio CI", "MW p_Bonf", "Bonferroni m")


def _context(data: _Data, queue: pl.DataFrame, conn: pl.DataFrame, answers: Sequence[GroupAnswer],
             pngs: dict[str, bytes], missing: dict[str, str], notes: Sequence[str]) -> dict[str, Any]:
    """What report.html and report.md show, one value per thing shown."""
    result, cal = data.cr, data.calibration
    vs = verdicts(result)
    per_group = [[n, g.n, g.n_stable, g.n_unstable, g.unstable_final_loss_threshold, g.top1.fire_rate,
                  g.top1.collapse_rate, g.top1.precision_unstable, g.maxgrad.median_stable,
                  g.maxgrad.median_unstable, g.maxgrad.median_ratio,
                  _ci(g.maxgrad.ratio_ci_low, g.maxgrad.ratio_ci_high), g.maxgrad.mw_p_bonferroni, g.maxgrad.bonferroni_m]
                 for n, g in result.groups.items()]
    conc_rows = concentration_rows(result)
    kw = result.fire_step_kruskal
    warnings = []
    for scope, msgs in _warnings(result):
        kinds: dict[str, list[str]] = {}
        for m in msgs:
            kinds.setdefault(_warning_kind(m), []).append(m)
        warnings.append({"scope": scope, "msgs": msgs, "kinds": kinds})
    connectivity = []
    for group in (conn.get_column("group").unique(maintain_order=True).to_list() if conn.height else []):
        sub = conn.filter(pl.col("group") == group)
        figs = [{"path": fig, "name": Path(fig).name,
                 "b64": base64.b64encode(Path(fig).read_bytes()).decode("ascii") if Path(fig).is_file() else None}
                for fig in sub.get_column("figure").unique(maintain_order=True).to_list() if fig]
        connectivity.append({"group": str(group), "table": Table(CONNECT_HEADERS, _connect_rows(sub)),
                             "figures": figs})
    return {
        "title": f"dlm-triage calibration report - {cal['calibration_id']}",
        "meta": {"calibration_id": cal["calibration_id"], "created_at": cal["created_at"], "status": cal["status"],
                 "group_by": result.group_by, "n_runs": data.runs.height,
                 "n_groups": len(_group_names(result)), "monitor_label": data.monitor_label},
        "answers": list(answers),
        "warnings": warnings, "warnings_total": sum(len(w["msgs"]) for w in warnings),
        "tables": {
            "verdicts": Table(VERDICT_HEADERS, [(v.recommendation, v.verdict, v.evidence, v.detail) for v in vs],
                              cls="verdicts", row_classes=[_verdict_class(v.verdict) for v in vs]),
            "definitions": Table(("definition", "rule"), definitions(result)),
            "thresholds": Table(THRESHOLD_HEADERS, _threshold_rows(result)),
            "groups": Table(GROUP_HEADERS, per_group),
            "concentration": Table(CONCENTRATION_HEADERS, conc_rows) if conc_rows else None,
            "queue": Table(QUEUE_HEADERS, _queue_rows(queue), cls="queue", scroll=True) if queue.height else None,
        },
        "kruskal": {"H": _fmt(kw[0]), "p": _fmt(kw[1])} if kw else None,
        "queue": {"n": queue.height, "outcomes": _queue_outcomes(queue)},
        "figures": [{"i": i, "name": name, "title": title, "caption": _CAPTIONS[name], "missing": missing.get(name),
                     "b64": base64.b64encode(pngs[name]).decode("ascii") if name in pngs else None}
                    for i, (name, title) in enumerate(FIGURES, 1)],
        "connectivity": connectivity,
        "notes": list(notes),
        "provenance": json.dumps({"params": cal["params_json"], "snapshot": cal["snapshot_json"],
                                  "provenance": result.provenance or None}, indent=2, default=str),
    }


def write_report(db_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                 calibration_id: str | None = None) -> ReportPaths:
    """Write ``report.html``, ``report.md`` and ``figures/*.png`` for one calibration into
    ``out_dir/<calibration_id>/`` and, for the latest calibration, point ``out_dir/latest`` at that folder: a
    report never replaces or deletes another calibration's files.

    `calibration_id` None: the latest calibration (by created_at). Reads the database read-only.
    Raises ReportError when the database has no (such) calibration.
    """
    con = _connect(Path(db_path))
    try:
        data = _load_data(con, calibration_id)
        queue = _inspection_rows(con, data)
        conn = _connectivity(con, data)
        # the live thresholds are today's: they answer for the latest calibration, not for an older one
        latest = _load_calibration(con, None)["calibration_id"] == data.calibration["calibration_id"]
        live = _live_records(con, data) if latest else None
    finally:
        con.close()
    out = output_dir(out_dir, str(data.calibration["calibration_id"]))
    fig_dir = out / "figures"

    notes = list(data.notes)
    pngs, missing = draw_figures(data, notes)
    fig_paths = {}
    for name, blob in pngs.items():
        fig_paths[name] = fig_dir / f"{name}.png"
        write_bytes_atomic(fig_paths[name], blob)
    # a figure missing now must not leave a stale PNG from an earlier report next to the new one
    for name in missing:
        (fig_dir / f"{name}.png").unlink(missing_ok=True)

    routed = _routed_counts(queue)
    answers = group_answers(data.cr, routed=routed, live=live)
    ctx = _context(data, queue, conn, answers, pngs, missing, notes)
    html_path, md_path = out / "report.html", out / "report.md"
    write_bytes_atomic(html_path, _templates("html").render(ctx).encode("utf-8"))
    write_bytes_atomic(md_path, (_templates("md").render(ctx).rstrip("\n") + "\n").encode("utf-8"))
    if calibration_id is None:
        point_latest(out_dir, out.name)
    routed_rows = tuple({"run_id": r["run_id"], "group": r["group"], "label": r["label"],
                         "outcome": r.get("outcome"), "why": r["why"]} for r in queue.iter_rows(named=True))
    return ReportPaths(html=html_path, markdown=md_path, figures=fig_paths, missing=missing,
                       answers=tuple(answers), routed=routed_rows,
                       summary=summary_markdown(data.cr, routed=routed, live=live))
