"""Markdown: the table and cell primitives, the summary artifact, the routed-runs table, the pipeline's own
summary, and report.md made readable inline in the Prefect UI."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from dlm_triage.report.answers import group_answers, threshold_table
from dlm_triage.report.fmt import _ci, _fmt
from dlm_triage.calresult import CalibrationResult
from dlm_triage.report.verdicts import _group_names, as_result, verdicts

def _md_cell(x: Any) -> str:
    if isinstance(x, tuple):
        return "; ".join(_md_cell(e) for e in x)
    s = _fmt(x) if isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) else (
        "n/a" if x is None else str(x))
    return s.replace("|", "\\|").replace("\n", " ")


def _md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


VERDICT_HEADERS = ("Recommendation", "Verdict", "Evidence (this data)", "Reading")
THRESHOLD_HEADERS = ("group", "n", "unstable", "threshold", "k", "precision", "recall", "F1",
                     "precision CI", "baseline", "baseline ceiling", "median ratio", "p_Bonf", "m", "triage", "live")


def _threshold_rows(result: CalibrationResult) -> list[list[Any]]:
    return [[r["group"], r["n"], r["n_unstable"], r["threshold"], r["k"] if r["k"] is not None else "run max",
             r["precision"], r["recall"], r["f1"], _ci(r["precision_ci_low"], r["precision_ci_high"]),
             r["baseline_precision"], r["baseline_ceiling"], r["median_ratio"], r["mw_p_bonferroni"],
             r["bonferroni_m"], r["triage"],
             r["live"] if r["live"] != "rejected" else "rejected: " + "; ".join(r["rejection_reasons"])]
            for r in threshold_table(result)]


def _warnings(result: CalibrationResult) -> list[tuple[str, list[str]]]:
    """[(scope, messages)]: the calibration's own warnings ('all groups'), then each group's."""
    out = [("all groups", list(result.warnings))]
    for n, g in result.groups.items():
        msgs = list(g.warnings)
        # a degenerate group (threshold not validated) matters more than per-split counts: show it first
        msgs.sort(key=lambda m: not ("degenerate" in m or m.startswith("group:")))
        out.append((str(n), msgs))
    return [(scope, ws) for scope, ws in out if ws]


def _md_warnings(result: CalibrationResult, *, limit: int | None) -> list[str]:
    ws = _warnings(result)
    if not ws:
        return []
    lines = [f"> **{sum(len(w) for _, w in ws)} calibration warning(s)**", ">"]
    for scope, msgs in ws:
        shown = msgs if limit is None else msgs[:limit]
        lines += [f"> - **{scope}**: {m}" for m in shown]
        if len(msgs) > len(shown):
            lines.append(f"> - **{scope}**: ... and {len(msgs) - len(shown)} more (see the HTML report)")
    return lines + [""]


def _warning_kind(msg: str) -> str:
    """What a warning is about, for grouping: its source before the first '[', '.' or ':' ('stepk[k=5].loss: ..'
    -> 'stepk'), the degenerate-group and registry notes under their own names."""
    head = msg.split(":", 1)[0] if ":" in msg else "other"
    return head.split("[", 1)[0].split(".", 1)[0].strip() or "other"


def summary_markdown(result: CalibrationResult | Mapping[str, Any], *, routed: Mapping[str, int] | None = None,
                     live: Mapping[str, Any] | None = None) -> str:
    """Markdown for a Prefect markdown artifact, answer first: one line per group (`group_answers`), the
    verdict table and the per-group rules, then the warnings (a few per scope; the report has them all)."""
    result = as_result(result)
    lines = [f"# dlm-triage calibration `{result.calibration_id or '?'}`",
             f"Grouped by **{result.group_by}**, {len(_group_names(result))} group(s).", "",
             "## Answer, per group", ""]
    lines += [f"- {'**live**' if a.live else '**none**'} {a.line}" for a in group_answers(
        result, routed=routed, live=live)] or ["No group was calibrated."]
    lines += ["", "## Verdicts", "", _md_table(VERDICT_HEADERS, [
        (v.recommendation, f"**{v.verdict}**", v.evidence, v.detail) for v in verdicts(result)]), "",
        "## Per-group max-grad thresholds", "", _md_table(THRESHOLD_HEADERS, _threshold_rows(result)), ""]
    lines += _md_warnings(result, limit=2)
    return "\n".join(lines)


ROUTED_SHOWN = 50
"""The Prefect summary lists this many routed runs (most severe first); the report and `dlm-triage queue` all."""


def routed_markdown(routed: Sequence[Mapping[str, Any]]) -> str:
    """The runs routed to inspection as a Markdown table (run, group, why), most severe first."""
    if not routed:
        return "No run is routed to inspection."
    rows = [(r["run_id"], r["group"], r["why"]) for r in routed[:ROUTED_SHOWN]]
    more = (f"\n\n... and {len(routed) - ROUTED_SHOWN} more (`dlm-triage queue`, or the report)"
            if len(routed) > ROUTED_SHOWN else "")
    return _md_table(("run", "group", "why"), rows) + more


def pipeline_markdown(summary: str, routed: Sequence[Mapping[str, Any]], runs: Sequence[Mapping[str, Any]],
                      html_path: str | os.PathLike) -> str:
    """The pipeline run's own summary artifact: the runs trained, the answer and verdicts (`summary_markdown`),
    the runs routed to inspection, and where the report is (the whole report, figures included, is also the
    'triage-report-text' artifact, readable in the UI)."""
    statuses: dict[str, int] = {}
    for r in runs:
        statuses[str(r.get("status"))] = statuses.get(str(r.get("status")), 0) + 1
    reused = sum(bool(r.get("reused")) for r in runs)
    head = (f"{len(runs)} run(s): " + ", ".join(f"{n} {st}" for st, n in sorted(statuses.items()))
            + f" ({reused} reused from disk)")
    return "\n".join([summary, "", f"## Runs routed to inspection ({len(routed)})", "", routed_markdown(routed), "",
                      "## Runs and report", "", f"- {head}", f"- report: `{html_path}` (the whole report, figures "
                      "included: artifact `triage-report-text`; `dlm-triage queue` lists the routed runs)", ""])


INLINE_FIGURES_MAX_BYTES = 3_000_000
"""The inline report embeds its figures up to this many PNG bytes in all (the Prefect UI renders data-URI images
in a markdown artifact); beyond it, each figure becomes a line naming its file."""


def inline_markdown(md_text: str, figures: Mapping[str, str | os.PathLike] | None = None) -> str:
    """report.md for a Prefect markdown artifact, readable wherever the report's files are: each figure (a
    relative link the UI cannot open) embedded as a data-URI PNG from `figures` {name: path}, or, when they are
    too large together or missing, a line naming the figure and its file."""
    import re

    blobs: dict[str, bytes] = {}
    for name, path in (figures or {}).items():
        try:
            blobs[f"{name}.png"] = Path(path).read_bytes()
        except OSError:
            continue
    if sum(len(b) for b in blobs.values()) > INLINE_FIGURES_MAX_BYTES:
        blobs = {}

    def one(m: "re.Match[str]") -> str:
        title, file = m.group(1), m.group(2)
        if file in blobs:
            return f"![{title}](data:image/png;base64,{base64.b64encode(blobs[file]).decode('ascii')})"
        return f"*Figure: {title} (`figures/{file}`, embedded in report.html)*"

    return re.sub(r"!\[([^\]]*)\]\(figures/([^)]+)\)", one, md_text)
