"""What a report reads from DuckDB (read-only): one calibration, the runs of its snapshot with their group, label
and triage monitor, and their step logs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Sequence

import duckdb
import numpy as np
import polars as pl

from dlm_triage import groups, runsummary, store
from dlm_triage.calinputs import run_ids_sha256
from dlm_triage.calresult import CalibrationResult
from dlm_triage.report.verdicts import _group_names, _heldout_k

RUN_COLUMNS = (
    "run_id", "source", "family", "model_id", "cohort", "method", "rank", "alpha", "mask_ratio",
    "learning_rate", "seed", "steps", "status", "final_loss", "max_grad_norm", "top1_step0",
    "top1_warning_detected", "top1_fire_step", "collapsed", "diverged_at_step", "routed_for_inspection",
    "routing_json", "ingested_at", "objective",
)
CONFIG_COLUMNS = ("family", "cohort", "method", "rank", "alpha", "mask_ratio", "learning_rate", "seed")


class ReportError(RuntimeError):
    """The report cannot be built (no calibration, unknown id); the message says what to do."""


@dataclass(frozen=True)
class _Data:
    calibration: dict[str, Any]
    result: dict[str, Any]
    runs: pl.DataFrame  # one row per run of the calibration's snapshot, plus group/label/monitor columns
    steps: pl.DataFrame | None  # run_id, step, loss, grad_norm, max_grad_norm, top1_freq, mask_ratio (None: none)
    monitor_label: str
    notes: list[str]

    @cached_property
    def cr(self) -> CalibrationResult:
        """The calibration read once into its typed record (what the figures, queue and pages read)."""
        return CalibrationResult.from_json(self.result)


def _connect(db_path: Path) -> duckdb.DuckDBPyConnection:
    """Read-only (a report never writes the database and can run beside an ingestion); waits on a writer's lock."""
    if not Path(db_path).exists():
        raise ReportError(f"database {db_path} does not exist: ingest runs and calibrate first")
    return store.connect(db_path, read_only=True)


def _load_calibration(con: duckdb.DuckDBPyConnection, calibration_id: str | None) -> dict[str, Any]:
    cols = ["calibration_id", "created_at", "group_by", "params_json", "snapshot_json", "result_json", "status"]
    sql = f"SELECT {', '.join(cols)} FROM calibrations"
    has_seq = con.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'calibrations' "
                          "AND column_name = 'seq'").fetchall()[0][0]
    order = "seq DESC" if has_seq else "created_at DESC, calibration_id DESC"
    if calibration_id is None:
        rows = con.execute(sql + f" ORDER BY {order} LIMIT 1").fetchall()  # DuckDB 2: fetch to the end
        row = rows[0] if rows else None
        if row is None:
            raise ReportError("no calibration in the database: run `dlm-triage calibrate` first")
    else:
        rows = con.execute(sql + " WHERE calibration_id = ?", [calibration_id]).fetchall()
        row = rows[0] if rows else None
        if row is None:
            known = [r[0] for r in con.execute(
                "SELECT calibration_id FROM calibrations ORDER BY created_at DESC LIMIT 5").fetchall()]
            raise ReportError(f"calibration_id {calibration_id!r} not found; latest ones: {known}")
    cal = dict(zip(cols, row))
    for key in ("params_json", "snapshot_json", "result_json"):
        cal[key] = json.loads(cal[key]) if isinstance(cal[key], str) and cal[key] else (cal[key] or {})
    return cal


def _labels(df: pl.DataFrame, thr_by_group: Mapping[str, tuple[float | None, float | None]]) -> pl.Series:
    """stable / unstable / mid by stats.LABEL_RULE, at the calibration's own thresholds (P90, median) per group;
    a group without them (not in the calibration) gets its percentiles from the runs found now."""
    from dlm_triage import stats

    out = np.full(df.height, "mid", dtype=object)
    keys = df["group"].to_numpy()
    loss = df["final_loss"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    div = df["diverged"].to_numpy().astype(bool)
    for g in np.unique(keys):
        m = keys == g
        p90, med = thr_by_group.get(g, (None, None))
        if p90 is None or med is None:
            lab = stats.stability_labels(loss[m], div[m])
            p90, med = lab.unstable_threshold, lab.stable_threshold
        unstable, stable = stats.label_masks(loss[m], div[m], p90, med)
        sub = out[m]
        sub[unstable] = "unstable"
        sub[stable] = "stable"
        out[m] = sub
    return pl.Series("label", out.astype(str))


def _pl(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> pl.DataFrame:
    """A query's result as polars (DuckDB 2.0: through a relation; execute() results have no .pl())."""
    return con.sql(sql, params=list(params)).pl() if params else con.sql(sql).pl()


def _load_data(con: duckdb.DuckDBPyConnection, calibration_id: str | None) -> _Data:
    cal = _load_calibration(con, calibration_id)
    result = cal["result_json"]
    cr = CalibrationResult.from_json(result)
    group_by = cr.group_by
    notes: list[str] = []
    have = {r[0] for r in con.execute("SELECT column_name FROM information_schema.columns "
                                      "WHERE table_name = 'runs'").fetchall()}
    if group_by not in groups.GROUP_BY_COLUMNS or groups.group_column(group_by) not in have:
        raise ReportError(f"calibration groups by {group_by!r}, which this database cannot group by (known: "
                          f"{sorted(groups.GROUP_BY_COLUMNS)}): recalibrate with one of them")
    cols = list(dict.fromkeys([c for c in RUN_COLUMNS if c in have] + [groups.group_column(group_by)]))
    sql = f'SELECT {", ".join(cols)} FROM runs'
    params: list[Any] = []
    snap = cal["snapshot_json"]
    if snap.get("max_ingested_at") and "ingested_at" in have:
        # the calibration's snapshot: runs ingested later are not part of it
        sql += " WHERE ingested_at <= CAST(? AS TIMESTAMP)"
        params.append(str(snap["max_ingested_at"]))
    runs = groups.with_group(_pl(con, sql + " ORDER BY run_id", params), group_by)  # the one group key
    runs = runs.filter(pl.col("group").is_in(_group_names(cr)))
    ids_sha = run_ids_sha256(runs["run_id"].to_list())
    if snap.get("run_ids_sha256") and snap["run_ids_sha256"] != ids_sha:
        notes.append(f"The calibration saw {snap.get('n_runs')} runs; the database now holds {runs.height} "
                     "runs of its groups (runs were added or removed since): figures and the inspection queue use "
                     "the runs found now, the verdicts and thresholds the calibration's numbers.")
    diverged = (pl.col("status") == "diverged") if "status" in runs.columns else pl.lit(False)
    if "diverged_at_step" in runs.columns:
        diverged = diverged | pl.col("diverged_at_step").is_not_null()
    runs = runs.with_columns(diverged.fill_null(False).alias("diverged"))
    thr = {n: (g.unstable_final_loss_threshold, g.stable_final_loss_threshold) for n, g in cr.groups.items()}
    runs = runs.with_columns(_labels(runs, thr))

    ids = runs["run_id"].to_list()
    steps = None
    if ids:
        con.register("_report_ids", pl.DataFrame({"run_id": ids}).to_arrow())
        steps = _pl(con, "SELECT s.run_id, s.step, s.loss, s.grad_norm, s.max_grad_norm, s.top1_freq, s.mask_ratio "
                         "FROM steps s "
                         "JOIN _report_ids USING (run_id) ORDER BY s.run_id, s.step")
        con.unregister("_report_ids")
        if steps.height == 0:
            steps = None

    # the triage monitor: max-grad up to the calibration's k when step logs exist, else the run's max
    ks = {_heldout_k(g) for g in cr.groups.values()} - {None}
    k = ks.pop() if len(ks) == 1 else None
    monitor = runs["max_grad_norm"].cast(pl.Float64) if "max_grad_norm" in runs.columns else None
    monitor_label = "max grad norm (whole run)"
    if k is not None and steps is not None:
        upto = runsummary.max_grad_up_to_k(steps, k).rename({"max_grad_up_to_k": "_mk"})
        runs = runs.join(upto, on="run_id", how="left")
        monitor = runs["_mk"].fill_null(runs["max_grad_norm"].cast(pl.Float64))
        runs = runs.drop("_mk")
        monitor_label = f"max grad norm up to step {k}"
    runs = runs.with_columns((monitor if monitor is not None else pl.lit(None, pl.Float64)).alias("monitor"))
    return _Data(cal, result, runs, steps, monitor_label, notes)
