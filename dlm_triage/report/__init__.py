"""The calibration report: verdicts, runs routed to inspection, five figures; HTML (self-contained) + Markdown.

`write_report(db_path, out_dir)` reads one calibration (the latest when none is named) from the `calibrations`
table and the runs/steps it needs from DuckDB (read-only), and writes, into ``out_dir/<calibration_id>/`` (so
one report never replaces another's; ``out_dir/latest`` points at the latest calibration's folder):

- ``report.html``  self-contained: figures embedded as base64 PNG data URIs, inline CSS, no external
  resources (it opens offline, can be mailed, and renders the same in the Prefect UI's linked artifact);
- ``report.md``    the same tables, figures as relative links to ``figures/*.png``;
- ``figures/``     the PNGs (matplotlib Agg, dpi 110).

Every file is written atomically (tmp file in the same folder + fsync + rename): a reader never sees half a report.

The modules follow the report's making: `verdicts` (the four recommendations, a pure function of the
calibration result; the rules are in its docstring), `answers` (per-group rows and answer lines), `load` (what is
read from DuckDB), `queue` (the runs routed to inspection), `figkit` / `fig_groups` / `fig_surfaces` /
`figures` (matplotlib), `text` (Markdown and the Prefect summaries), `render` (`write_report`).

This package imports no Prefect (the thin shell in `tasks/`/`flows/` publishes the artifacts).
"""

from __future__ import annotations

from dlm_triage.report.answers import (CONCENTRATION_HEADERS, GroupAnswer, concentration_rows, group_answers,
                                       threshold_table)
from dlm_triage.report.fig_groups import MAX_LR_FACETS, _maxgrad_columns
from dlm_triage.report.fig_surfaces import T_BIN, _binned_realised_t
from dlm_triage.report.figkit import FIGURE_DPI, INSPECTION_WINDOW, MAX_PANELS
from dlm_triage.report.figures import FIGURES, draw_figures
from dlm_triage.report.load import CONFIG_COLUMNS, RUN_COLUMNS, ReportError, _Data
from dlm_triage.report.queue import QUEUE_HEADERS
from dlm_triage.report.render import ReportPaths, write_report
from dlm_triage.report.text import (INLINE_FIGURES_MAX_BYTES, ROUTED_SHOWN, THRESHOLD_HEADERS, VERDICT_HEADERS,
                                    inline_markdown, pipeline_markdown, routed_markdown, summary_markdown)
from dlm_triage.report.verdicts import (PREDICTOR_LABELS, THRESHOLD_SPREAD_MIN, TOP1_LIFT_TOLERANCE,
                                        TRANSFER_DROP_MIN, TRIAGE_K, Verdict, definitions, verdicts)

__all__ = [
    "CONCENTRATION_HEADERS", "CONFIG_COLUMNS", "FIGURES", "FIGURE_DPI", "GroupAnswer", "INLINE_FIGURES_MAX_BYTES",
    "INSPECTION_WINDOW", "MAX_LR_FACETS", "MAX_PANELS", "PREDICTOR_LABELS", "QUEUE_HEADERS", "ROUTED_SHOWN",
    "RUN_COLUMNS", "ReportError", "ReportPaths", "THRESHOLD_HEADERS", "THRESHOLD_SPREAD_MIN", "TOP1_LIFT_TOLERANCE",
    "TRANSFER_DROP_MIN", "TRIAGE_K", "T_BIN", "VERDICT_HEADERS", "Verdict", "concentration_rows", "definitions",
    "draw_figures", "group_answers", "inline_markdown", "pipeline_markdown", "routed_markdown", "summary_markdown",
    "threshold_table", "verdicts", "write_report",
    # internals the tests exercise directly
    "_Data", "_binned_realised_t", "_maxgrad_columns",
]
