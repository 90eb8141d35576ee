"""The runs routed to inspection as the report lists them: `store.inspection_queue` restricted to the
calibration's runs, each annotated with its outcome, and the live thresholds."""

from __future__ import annotations

from typing import Any

import duckdb
import polars as pl

from dlm_triage import store
from dlm_triage.report.load import CONFIG_COLUMNS, _Data
from dlm_triage.report.verdicts import _group_names, _threshold

def _inspection_rows(con: duckdb.DuckDBPyConnection, data: _Data) -> pl.DataFrame:
    """store.inspection_queue for this calibration (threshold hits + runs routed live), restricted to the
    calibration's runs, with config columns, the store's reason and the run's outcome."""
    q = store.inspection_queue(con, calibration_id=data.calibration["calibration_id"])
    thr = {n: _threshold(g) for n, g in data.cr.groups.items()}
    runs = data.runs.with_columns(
        pl.col("group").replace_strict(thr, default=None, return_dtype=pl.Float64).alias("threshold"))
    queued = runs.join(q.select("run_id", "reason", *[c for c in ("outcome",) if c in q.columns]), on="run_id",
                       how="inner")
    why = []
    for r in queued.iter_rows(named=True):
        outcome = {"unstable": "outcome: unstable (top-decile final loss)",
                   "stable": "outcome: stable (final loss at or below the median): a false alarm",
                   "mid": "outcome: mid-band final loss"}[r["label"]]
        if r.get("diverged"):
            outcome = f"outcome: diverged at step {r.get('diverged_at_step')}"
        why.append(f"{r['reason']}; {outcome}" if r["reason"] else outcome)
    return queued.with_columns(pl.Series("why", why, dtype=pl.String)).sort("monitor", descending=True,
                                                                             nulls_last=True)


def _routed_counts(q: pl.DataFrame) -> dict[str, int]:
    """{group: runs in this calibration's inspection queue}."""
    return {str(g): n for g, n in q.group_by("group").len().iter_rows()} if q.height else {}


def _live_records(con: duckdb.DuckDBPyConnection, data: _Data) -> dict[str, Any]:
    """{group: the threshold the live early warning uses now (store.live_threshold), or None}."""
    return {g: store.live_threshold(con, g, group_by=data.cr.group_by)[0] for g in _group_names(data.cr)}


def _queue_outcomes(q: pl.DataFrame) -> list[str]:
    """'llada: 176 routed - 70 unstable, 86 mid-band, 20 stable (false alarms)' per group."""
    parts = []
    for g in sorted(set(q["group"].to_list())) if q.height else []:
        lab = q.filter(pl.col("group") == g)["label"].to_list()
        n_u, n_m, n_s = lab.count("unstable"), lab.count("mid"), lab.count("stable")
        parts.append(f"{g}: {len(lab)} routed - {n_u} unstable, {n_m} mid-band, {n_s} stable (false alarms)")
    return parts


QUEUE_HEADERS = ("run_id",) + CONFIG_COLUMNS + ("final_loss", "max-grad", "threshold", "why")


def _queue_rows(q: pl.DataFrame) -> list[list[Any]]:
    cols = ["run_id"] + [c for c in CONFIG_COLUMNS] + ["final_loss", "monitor", "threshold", "why"]
    return [[r.get(c) for c in cols] for r in q.with_columns(
        *[pl.lit(None).alias(c) for c in cols if c not in q.columns]).iter_rows(named=True)]
