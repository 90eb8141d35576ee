"""`write_report`: report.html (self-contained), report.md and figures/*.png for one calibration."""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from dlm_triage import store
from dlm_triage.fsutil import output_dir, point_latest, write_bytes_atomic
from dlm_triage.report.answers import CONCENTRATION_HEADERS, GroupAnswer, concentration_rows, group_answers
from dlm_triage.report.figures import _CAPTIONS, FIGURES, draw_figures
from dlm_triage.report.fmt import _ci, _fmt
from dlm_triage.report.load import _connect, _Data, _load_calibration, _load_data
from dlm_triage.report.queue import QUEUE_HEADERS, _inspection_rows, _live_records, _queue_outcomes, _queue_rows, \
    _routed_counts
from dlm_triage.report.text import (THRESHOLD_HEADERS, VERDICT_HEADERS, _html_answers, _html_table,
                                    _html_warnings, _md_table, _md_warnings, _threshold_rows, summary_markdown)
from dlm_triage.report.verdicts import _group_names, _num, definitions, verdicts

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


CSS = """
html{background:#f6f7f9}
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;background:#f6f7f9;color:#1d2330;
 font-size:14px;line-height:1.45}
main{max-width:1200px;margin:0 auto;padding:24px 28px 60px;background:#fff;min-height:100vh}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:19px;margin:34px 0 10px;padding-bottom:4px;border-bottom:2px solid #e3e6ec}
h3{font-size:15px;margin:22px 0 6px}
.meta{color:#5a6275;font-size:13px}.meta code{background:#f0f2f5;padding:1px 5px;border-radius:3px}
.warnings{background:#fff4e5;border:1px solid #f0a33a;border-left:6px solid #e8890c;padding:10px 16px;margin:16px 0;
 border-radius:4px}.warnings h2{border:0;margin:4px 0;font-size:16px;color:#8a4b00}.warnings li{margin:3px 0}
.warnings h3{margin:10px 0 2px;font-size:14px;color:#8a4b00}.warnings ul{margin:2px 0}
details.warnings>summary{cursor:pointer;color:#8a4b00;font-weight:600}details.wkind{margin:2px 0 2px 12px}
ul.answers{list-style:none;padding:0;margin:8px 0 12px}ul.answers li{padding:7px 12px;margin:4px 0;
 border-radius:4px;font-size:15px}ul.answers li.live{background:#e8f5ea;border-left:6px solid #1b7a2e}
ul.answers li.none{background:#f4f4f6;border-left:6px solid #8a8f9c}
.note{background:#eef4fb;border-left:4px solid #5b8bd0;padding:6px 12px;margin:8px 0;color:#28406a;border-radius:3px}
.missing{background:#f7f7f7;border:1px dashed #b0b6c2;padding:14px 16px;margin:8px 0;color:#4a5060;border-radius:4px}
.tablewrap{overflow-x:auto;margin:8px 0}
.tablewrap.scroll{max-height:560px;overflow-y:auto}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{border:1px solid #dde1e8;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#eef0f4;position:sticky;top:0}
tbody tr:nth-child(even){background:#fafbfc}
td{font-variant-numeric:tabular-nums}
table.verdicts td:nth-child(1){font-weight:600;white-space:nowrap}
table.verdicts td:nth-child(2){white-space:nowrap}
table.verdicts td:nth-child(3){font-size:12px;color:#384050;max-width:520px}
tr.v-supported td:nth-child(2){color:#1b7a2e;font-weight:700}
tr.v-not td:nth-child(2){color:#b3261e;font-weight:700}
tr.v-partly td:nth-child(2){color:#a86400;font-weight:700}
tr.v-na td:nth-child(2){color:#6b7280;font-weight:700}
table.queue{font-size:12px}table.queue th,table.queue td{padding:4px 6px}
table.queue td:first-child{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11px;white-space:nowrap}
table.queue td:last-child{min-width:260px}
figure{margin:14px 0 26px}figure img{max-width:100%;height:auto;border:1px solid #e3e6ec;display:block}
figcaption{color:#4a5060;font-size:13px;margin-top:6px}
details{margin:10px 0}pre{background:#f6f8fa;padding:10px;overflow-x:auto;font-size:12px}
"""


def _verdict_class(v: str) -> str:
    return {"supported": "v-supported", "not supported on this data": "v-not", "partly supported": "v-partly"}.get(
        v, "v-na")


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


def _connectivity_html(conn: pl.DataFrame) -> str:
    parts = ["<section id='connectivity'><h2>Connectivity between runs (LoRA-Curve)</h2>"
             "<p>Held-out loss along the paths between two runs' adapters (<code>dlm-triage connect</code>): "
             "linear in the product B A, linear in the factors, and the trained anchored Bezier curve. Barrier = "
             "max loss on the path - mean of the endpoint losses.</p>"]
    for group in conn.get_column("group").unique(maintain_order=True).to_list():
        sub = conn.filter(pl.col("group") == group)
        parts.append(f"<h3>{html.escape(str(group))}</h3>" + _html_table(CONNECT_HEADERS, _connect_rows(sub)))
        for fig in sub.get_column("figure").unique(maintain_order=True).to_list():
            if fig and Path(fig).is_file():
                b64 = base64.b64encode(Path(fig).read_bytes()).decode("ascii")
                parts.append(f"<figure><img src=\"data:image/png;base64,{b64}\" alt=\"connectivity profile\">"
                             f"<figcaption>{html.escape(Path(fig).name)}</figcaption></figure>")
    return "".join(parts) + "</section>"


def _connectivity_md(conn: pl.DataFrame) -> list[str]:
    md = ["## Connectivity between runs (LoRA-Curve)", "",
          "Held-out loss along linear (product B A, factors) and trained Bezier paths between two runs' adapters; "
          "barrier = max loss on the path - mean of the endpoint losses.", ""]
    for group in conn.get_column("group").unique(maintain_order=True).to_list():
        sub = conn.filter(pl.col("group") == group)
        md += [f"### {group}", "", _md_table(CONNECT_HEADERS, _connect_rows(sub)), ""]
        md += [f"![connectivity]({fig})" for fig in sub.get_column("figure").unique(maintain_order=True).to_list()
               if fig] + [""]
    return md


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

    result, cal = data.result, data.calibration
    vs = verdicts(result)
    title = f"dlm-triage calibration report - {cal['calibration_id']}"
    meta = (f"calibration <code>{html.escape(str(cal['calibration_id']))}</code> - created "
            f"{html.escape(str(cal['created_at']))} - status <b>{html.escape(str(cal['status']))}</b> - grouped by "
            f"<b>{html.escape(str(result.get('group_by') or cal['group_by']))}</b> - {data.runs.height} runs, "
            f"{len(_group_names(result))} group(s) - triage monitor: {html.escape(data.monitor_label)}")
    kw = result.get("fire_step_kruskal") or {}
    per_group = [[n, g.get("n"), g.get("n_stable"), g.get("n_unstable"), _num(g, "unstable_final_loss_threshold"),
                  _num(g, "top1", "fire_rate"), _num(g, "top1", "collapse_rate"),
                  _num(g, "top1", "precision_unstable"), _num(g, "maxgrad", "median_stable"),
                  _num(g, "maxgrad", "median_unstable"), _num(g, "maxgrad", "median_ratio"),
                  _ci(_num(g, "maxgrad", "ratio_ci_low"), _num(g, "maxgrad", "ratio_ci_high")),
                  _num(g, "maxgrad", "mw_p_bonferroni"), (g.get("maxgrad") or {}).get("bonferroni_m")]
                 for n, g in result.get("groups", {}).items()]
    conc_rows = concentration_rows(result)
    group_headers = ("group", "n", "stable", "unstable", "unstable if final loss >=", "top-1 fire rate",
                     "collapse rate", "top-1 precision (unstable)", "max-grad median stable",
                     "median unstable", "ratio", "ratio CI", "MW p_Bonf", "Bonferroni m")

    # ---- HTML
    h: list[str] = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
                    f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
                    f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body><main>",
                    f"<h1>dlm-triage calibration report</h1><p class='meta'>{meta}</p>"]
    routed = _routed_counts(queue)
    answers = group_answers(result, routed=routed, live=live)
    h.append(_html_answers(answers) + _html_warnings(result) + "</section>")
    h.append("<section id='verdicts'><h2>Verdicts</h2>"
             "<p>Each verdict is computed from this calibration's numbers (rules in "
             "<code>dlm_triage/report/verdicts.py</code>).</p>"
             + _html_table(VERDICT_HEADERS, [(v.recommendation, v.verdict, v.evidence, v.detail) for v in vs],
                           cls="verdicts", row_classes=[_verdict_class(v.verdict) for v in vs]) + "</section>")
    h.append("<section id='definitions'><h2>Definitions used</h2>"
             + _html_table(("definition", "rule"), definitions(result)) + "</section>")
    h.append("<section id='thresholds'><h2>Per-group max-grad thresholds</h2>"
             + _html_table(THRESHOLD_HEADERS, _threshold_rows(result)) + "<h3>Group statistics</h3>"
             + _html_table(group_headers, per_group)
             + ("<h3>Gradient concentration</h3>" + _html_table(CONCENTRATION_HEADERS, conc_rows)
                if conc_rows else "")
             + (f"<p class='meta'>Legacy fire-step across groups: Kruskal-Wallis H = {_fmt(_num(kw, 'H'))}, "
                f"p = {_fmt(_num(kw, 'p'))}.</p>" if kw else "") + "</section>")
    outcome = _queue_outcomes(queue)
    h.append(f"<section id='inspection'><h2>Runs routed to inspection ({queue.height})</h2>"
             "<p>Runs whose max-grad is at or above their group's threshold (and runs the live early warning "
             "flagged), highest max-grad first.</p>"
             + (f"<p class='note'>{'<br>'.join(html.escape(o) for o in outcome)}</p>" if outcome else "")
             + (_html_table(QUEUE_HEADERS, _queue_rows(queue), cls="queue", scroll=True) if queue.height
                else "<p class='missing'>No run is at or above its group's threshold.</p>")
             + "</section>")
    h.append("<section id='figures'><h2>Figures</h2>")
    for i, (name, ftitle) in enumerate(FIGURES, 1):
        h.append(f"<h3 id='fig-{name}'>Figure {i}. {html.escape(ftitle)}</h3>")
        if name in pngs:
            b64 = base64.b64encode(pngs[name]).decode("ascii")
            h.append(f"<figure><img src=\"data:image/png;base64,{b64}\" alt=\"{html.escape(ftitle)}\">"
                     f"<figcaption>{html.escape(_CAPTIONS[name])}</figcaption></figure>")
        else:
            h.append(f"<div class='missing'><b>Figure missing:</b> {html.escape(missing[name])}.</div>")
    h.append("</section>")
    if conn.height:
        h.append(_connectivity_html(conn))
    if notes:
        h.append("<section id='notes'><h2>Notes</h2>" + "".join(
            f"<div class='note'>{html.escape(n)}</div>" for n in notes) + "</section>")
    h.append("<section id='provenance'><h2>Provenance</h2><details><summary>calibration parameters, snapshot "
             "and provenance</summary><pre>" + html.escape(json.dumps(
                 {"params": cal["params_json"], "snapshot": cal["snapshot_json"],
                  "provenance": result.get("provenance")}, indent=2, default=str)) + "</pre></details></section>")
    h.append("</main></body></html>")
    html_path = out / "report.html"
    write_bytes_atomic(html_path, "\n".join(h).encode("utf-8"))

    # ---- Markdown (same tables, relative figure links)
    md = ["# dlm-triage calibration report", "", meta.replace("<code>", "`").replace("</code>", "`")
          .replace("<b>", "**").replace("</b>", "**"), ""]
    md += ["## Answer, per group", "", *([f"- {a.line}" for a in answers] or ["No group was calibrated."]), ""]
    md += _md_warnings(result, limit=None)
    md += ["## Verdicts", "", _md_table(VERDICT_HEADERS, [(v.recommendation, f"**{v.verdict}**", v.evidence,
                                                          v.detail) for v in vs]), "",
           "## Definitions used", "", _md_table(("definition", "rule"), definitions(result)), "",
           "## Per-group max-grad thresholds", "", _md_table(THRESHOLD_HEADERS, _threshold_rows(result)), "",
           "### Group statistics", "", _md_table(group_headers, per_group), "",
           *(["### Gradient concentration", "", _md_table(CONCENTRATION_HEADERS, conc_rows), ""] if conc_rows
             else []),
           f"## Runs routed to inspection ({queue.height})", "", *[f"- {o}" for o in outcome], "",
           _md_table(QUEUE_HEADERS, _queue_rows(queue)) if queue.height else "No run is at or above its "
           "group's threshold.", "", "## Figures", ""]
    for i, (name, ftitle) in enumerate(FIGURES, 1):
        md.append(f"### Figure {i}. {ftitle}")
        md += ["", f"![{ftitle}](figures/{name}.png)", "", _CAPTIONS[name], ""] if name in pngs else [
            "", f"*Figure missing:* {missing[name]}.", ""]
    if conn.height:
        md += _connectivity_md(conn)
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    md_path = out / "report.md"
    write_bytes_atomic(md_path, "\n".join(md).encode("utf-8"))
    if calibration_id is None:
        point_latest(out_dir, out.name)
    routed_rows = tuple({"run_id": r["run_id"], "group": r["group"], "label": r["label"],
                         "outcome": r.get("outcome"), "why": r["why"]} for r in queue.iter_rows(named=True))
    return ReportPaths(html=html_path, markdown=md_path, figures=fig_paths, missing=missing,
                       answers=tuple(answers), routed=routed_rows,
                       summary=summary_markdown(result, routed=routed, live=live))
