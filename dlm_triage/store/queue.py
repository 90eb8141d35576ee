"""Queries: the inspection queue (runs at/above their group's live threshold, through the `max_grad_up_to`
macro), and the CLI's `list_runs` / `summary`."""

from __future__ import annotations

import json
import math
from typing import Any

import duckdb
import polars as pl

from dlm_triage.store.connection import _pl
from dlm_triage.store.registry import _g3

def _num4(v: float | None) -> str:
    """A number in a reason sentence: 4 significant digits, whole numbers from 10^4 on (36823, not 3.682e+04)."""
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:.0f}" if 1e4 <= abs(v) < 1e9 else f"{v:.4g}"


def _num4_expr(col: str) -> pl.Expr:
    return pl.col(col).map_elements(_num4, return_dtype=pl.String, skip_nulls=False)


def _routing_sentence(routing_json: str | None) -> str:
    """The live early warning's decision (a manifest's routing record) as one sentence with rounded numbers."""
    try:
        r = json.loads(routing_json) if routing_json else {}
    except (TypeError, ValueError):
        r = {}
    if not isinstance(r, dict):
        return "routed live during training"
    value = r.get("value", r.get("max_grad_up_to_k"))
    step = r.get("step", r.get("k"))
    if value is None:
        return "routed live during training"
    where = ", ".join(x for x in (str(r.get("group") or ""), f"calibration {r['calibration_id']}"
                                  if r.get("calibration_id") else "") if x)
    return (f"routed live at step {step}: max-grad so far {_g3(value)} >= threshold "
            f"{_g3(r.get('threshold'))}" + (f" ({where})" if where else "")
            + (", run stopped" if r.get("action") == "stop" else ""))


def inspection_queue(con: duckdb.DuckDBPyConnection, *, calibration_id: str | None = None) -> pl.DataFrame:
    """Runs to inspect: routed live (routed_for_inspection) OR max-grad-up-to-k >= their group's threshold, or
    ended before k (the live warning never evaluated them: listed last, with what they reached so far).

    Thresholds: the latest accepted one per (group_by, group, monitor='max_grad_norm'), or the accepted ones
    of `calibration_id`. max-grad-up-to-k = max grad_norm over logged steps 0..k; runs without a step log
    (imported cells) fall back to their whole-run max_grad_norm, and the reason says so.
    One row per run with config, monitor summary, the matched threshold(s), a `reason`, an `outcome` and its
    `severity` (0 routed live, 1 above threshold, 2 ended before k but above so far, 3 ended before k), sorted
    by severity, then by max-grad / threshold descending.
    """
    if calibration_id is not None:
        th = _pl(
        con,
            "SELECT * FROM thresholds WHERE calibration_id = ? AND accepted AND monitor = 'max_grad_norm'",
            [calibration_id],
        )
    else:
        th = _pl(
        con,
            "SELECT * FROM thresholds WHERE accepted AND monitor = 'max_grad_norm' "
            "QUALIFY row_number() OVER (PARTITION BY group_by, group_name ORDER BY seq DESC) = 1"
        )
    from dlm_triage import groups

    hits = []
    con.register("_dlmt_th", th.to_arrow())
    try:
        for gb in th["group_by"].unique().to_list():
            if gb not in groups.GROUP_BY_COLUMNS:
                continue
            # each run's group key under `gb` (groups.py: the one definition calibrate used to name the group)
            keys = groups.runs_with_groups(con, gb).select("run_id", pl.col("group").alias("group_name"))
            con.register("_dlmt_keys", keys.to_arrow())
            try:
                hits.append(_pl(con, """
                    WITH t AS (SELECT * FROM _dlmt_th WHERE group_by = ?),
                    m AS (
                        SELECT r.run_id, t.group_by, t.group_name, t.k, t.threshold, t.calibration_id,
                               max_grad_up_to(r.run_id, t.k) AS up_to_k,
                               r.max_grad_norm AS whole_run,
                               (SELECT max(s.step) FROM steps s WHERE s.run_id = r.run_id) AS last_step
                        FROM runs r JOIN _dlmt_keys g USING (run_id) JOIN t ON g.group_name = t.group_name)
                    SELECT run_id, group_by, group_name, k, threshold, calibration_id,
                           coalesce(up_to_k, whole_run) AS max_grad_up_to_k, up_to_k IS NULL AS from_whole_run,
                           last_step, coalesce(last_step < k, false) AS ended_before_k,
                           coalesce(up_to_k, whole_run) >= threshold AS above
                    FROM m WHERE coalesce(up_to_k, whole_run) >= threshold OR last_step < k""", [gb]))
            finally:
                con.unregister("_dlmt_keys")
    finally:
        con.unregister("_dlmt_th")
    hit_schema = {"run_id": pl.String, "group_by": pl.String, "group_name": pl.String, "k": pl.Int32,
                  "threshold": pl.Float64, "calibration_id": pl.String, "max_grad_up_to_k": pl.Float64,
                  "from_whole_run": pl.Boolean, "last_step": pl.Int32, "ended_before_k": pl.Boolean,
                  "above": pl.Boolean}
    hit = pl.concat([h.cast(hit_schema) for h in hits]) if hits else pl.DataFrame(schema=hit_schema)
    # a run that ends before k is never evaluated by the live warning: say so, with what it reached so far
    short = pl.format("ended at step {} before k={}: the live warning never evaluated it; max grad so far {} {} "
                      "threshold {} ({}={}, calibration {})",
                      pl.col("last_step"), pl.col("k"), _num4_expr("max_grad_up_to_k"),
                      pl.when(pl.col("above")).then(pl.lit(">=")).otherwise(pl.lit("<")),
                      _num4_expr("threshold"), pl.col("group_by"), pl.col("group_name"),
                      pl.col("calibration_id"))
    hit = hit.with_columns(
        pl.when(pl.col("ended_before_k")).then(short).otherwise(
            pl.format("{} = {} >= threshold {} ({}={}, calibration {}){}",
                      # a whole-run threshold (k null: no step logs at calibration) is named as such, not dropped
                      pl.when(pl.col("k").is_null()).then(pl.lit("whole-run max grad"))
                      .otherwise(pl.format("max-grad-up-to-{}", pl.col("k"))),
                      _num4_expr("max_grad_up_to_k"), _num4_expr("threshold"),
                      pl.col("group_by"), pl.col("group_name"), pl.col("calibration_id"),
                      pl.when(pl.col("from_whole_run") & pl.col("k").is_not_null())
                      .then(pl.lit(" [no step log: whole-run max]")).otherwise(pl.lit("")))).alias("_reason")
    )
    agg = hit.group_by("run_id").agg(
        pl.col("_reason").sort().str.join("; ").alias("_th_reason"),
        pl.col("threshold").first(), pl.col("k").first(), pl.col("calibration_id").first(),
        pl.col("max_grad_up_to_k").first(), pl.col("above").any().alias("_above"),
        pl.col("ended_before_k").all().alias("ended_before_k"),
    )
    runs = _pl(
        con,
        "SELECT run_id, source, family, cohort, model_id, method, rank, alpha, mask_ratio, learning_rate, seed, "
        "steps, status, final_loss, max_grad_norm, top1_warning_detected, top1_fire_step, collapsed, "
        "diverged_at_step, routed_for_inspection, routing_json, grad_gini, grad_top1_share, config_json "
        "FROM runs ORDER BY run_id"
    )
    q = runs.join(agg, on="run_id", how="left").filter(
        pl.col("routed_for_inspection").fill_null(False) | pl.col("_th_reason").is_not_null()
    )
    live = pl.when(pl.col("routed_for_inspection").fill_null(False)).then(
        pl.col("routing_json").map_elements(_routing_sentence, return_dtype=pl.String, skip_nulls=False)
    )
    routed = pl.col("routed_for_inspection").fill_null(False)
    above, short_run = pl.col("_above").fill_null(False), pl.col("ended_before_k").fill_null(False)
    q = q.with_columns(
        pl.concat_str([live, pl.col("_th_reason")], separator="; ", ignore_nulls=True).alias("reason"),
        pl.when(routed).then(pl.lit("routed live")).when(above & ~short_run).then(pl.lit("above threshold"))
        .when(above).then(pl.lit("ended before k, above threshold so far"))
        .otherwise(pl.lit("ended before k, not evaluated")).alias("outcome"),
        pl.when(routed).then(0).when(above & ~short_run).then(1).when(above).then(2).otherwise(3)
        .cast(pl.Int8).alias("severity"),
        (pl.col("max_grad_up_to_k") / pl.col("threshold")).alias("_ratio"),
    ).with_columns(short_run.alias("ended_before_k"))
    # most severe first; within a level, furthest above its threshold first
    return q.sort(["severity", "_ratio", "run_id"], descending=[False, True, False],
                  nulls_last=True).drop("_th_reason", "_above", "_ratio")


# -- small query helpers for the CLI ------------------------------------------------------------------------

def list_runs(con: duckdb.DuckDBPyConnection, *, where: str | None = None, limit: int | None = None) -> pl.DataFrame:
    """The `runs` table without the bulky JSON columns, ordered by run_id."""
    pred = f"WHERE ({where})" if where else ""
    lim = f"LIMIT {int(limit)}" if limit is not None else ""
    return _pl(
        con,
        f"SELECT * EXCLUDE (manifest_json, config_json, routing_json) FROM runs {pred} ORDER BY run_id {lim}"
    )


def summary(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Counts for `dlm-triage status`: runs by source/status/family, steps, ingests, quarantine, calibrations."""
    def by(col: str) -> dict[str, int]:
        return {str(k): int(v) for k, v in
                con.execute(f"SELECT {col}, count(*) FROM runs GROUP BY ALL ORDER BY 1").fetchall()}

    one = lambda sql: con.execute(sql).fetchall()[0][0]  # noqa: E731
    return {
        "runs": one("SELECT count(*) FROM runs"),
        "steps": one("SELECT count(*) FROM steps"),
        "by_source": by("source"), "by_status": by("status"), "by_family": by("family"),
        "routed_for_inspection": one("SELECT count(*) FROM runs WHERE routed_for_inspection"),
        "ingests": one("SELECT count(*) FROM ingests"),
        "quarantined": one("SELECT count(*) FROM quarantine"),
        "calibrations": one("SELECT count(*) FROM calibrations"),
        "accepted_thresholds": one("SELECT count(*) FROM thresholds WHERE accepted"),
    }
