"""Calibration inputs (`load_calibration_inputs` -> `calinputs.CalibrationInputs`) and the append-only
threshold registry (`save_calibration`, `latest_threshold`, `live_threshold`, `threshold_history`)."""

from __future__ import annotations

import json
import uuid
from typing import Any, Mapping

import duckdb
import numpy as np
import polars as pl

from dlm_triage.calinputs import snapshot_of
from dlm_triage.calresult import CalibrationResult
from dlm_triage.store.connection import _now, _pl, _rollback
from dlm_triage.store.records import StoreError, ThresholdRecord

# -- calibration inputs -------------------------------------------------------------------------------------

def load_calibration_inputs(con: duckdb.DuckDBPyConnection, *, where: str | None = None):
    """Runs (one row per run, `diverged` = status == 'diverged') and their step trajectories for calibrate/.

    `where` is a SQL predicate over `runs` columns (e.g. "family = 'tiny'"). Trajectories are held long
    (calinputs.Trajectories.from_long: one entry per stored step, runs in `runs`' order): memory is bounded by
    the rows stored, whatever the step numbers (W&B `_step` or HF global steps in the millions). None when none
    of the selected runs has a step log.
    """
    from dlm_triage.calinputs import CalibrationInputs, Trajectories

    pred = f"WHERE ({where})" if where else ""
    runs = _pl(con, f"SELECT *, status = 'diverged' AS diverged FROM runs {pred} ORDER BY run_id")
    if runs.height == 0:
        return CalibrationInputs(runs=runs, traj=None)
    steps = _pl(
        con,
        f"SELECT s.run_id, s.step, s.loss, s.grad_norm, s.top1_freq, s.max_grad_norm FROM steps s "
        f"JOIN (SELECT run_id FROM runs {pred}) r USING (run_id) ORDER BY s.run_id, s.step"
    )
    if steps.height == 0:
        return CalibrationInputs(runs=runs, traj=None)
    run_ids = runs["run_id"].to_list()
    counts = dict(steps.group_by("run_id").len().iter_rows())
    offsets = np.concatenate([[0], np.cumsum([counts.get(r, 0) for r in run_ids], dtype=np.int64)])
    traj = Trajectories.from_long(
        run_ids, offsets, steps["step"].to_numpy(),
        *(steps[c].cast(pl.Float64).fill_null(np.nan).to_numpy()
          for c in ("loss", "grad_norm", "top1_freq", "max_grad_norm")))
    return CalibrationInputs(runs=runs, traj=traj)


# -- threshold registry ---------------------------------------------------------------------------------------

def _snapshot(con: duckdb.DuckDBPyConnection) -> dict:
    """The snapshot of every stored run (calinputs.snapshot_of), for a result saved without its own."""
    return snapshot_of(_pl(con, "SELECT run_id, ingested_at FROM runs ORDER BY run_id"))


def save_calibration(con: duckdb.DuckDBPyConnection, result: CalibrationResult | Mapping[str, Any]) -> str:
    """Store a calibration result (a CalibrationResult, or the JSON contract of calibrate/ it is read from)
    and its per-group thresholds.

    Thresholds are the groups' `registry` rules (calresult.Registry); one that may not go live (degenerate, or
    a null/non-finite threshold: `Registry.accepted`) is stored with accepted=False and is never
    `latest_threshold`. The calibration is 'accepted' when at least one group is. Saving the same
    calibration_id twice with the same result is a no-op; with a different result it is an error.
    Returns the calibration_id (the result's or a new one).
    """
    cal = result if isinstance(result, CalibrationResult) else CalibrationResult.from_json(result)
    cal_id = cal.calibration_id or f"cal-{_now().strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    result_json = json.dumps(cal.to_json(), sort_keys=True, default=str)
    prior = con.execute("SELECT result_json FROM calibrations WHERE calibration_id = ?", [cal_id]).fetchall()
    prior = prior[0] if prior else None
    if prior is not None:
        if prior[0] == result_json:
            return cal_id
        raise StoreError(f"calibration {cal_id} is already stored with a different result: give it a new id")
    group_by = cal.group_by
    snapshot = cal.snapshot or _snapshot(con)
    now = _now()
    rows = [[cal_id, g.name, group_by, reg.monitor, reg.k, reg.threshold, reg.ci_low, reg.ci_high, reg.n,
             reg.n_unstable, reg.precision, reg.recall, reg.f1, reg.accepted, now]
            for g in cal.groups.values() if (reg := g.registry) is not None]
    status = "accepted" if cal.accepted else "rejected"
    con.begin()
    try:
        seq = con.execute("SELECT nextval('calibration_seq')").fetchall()[0][0]
        con.execute(
            "INSERT INTO calibrations VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [cal_id, now, group_by, json.dumps(cal.params, sort_keys=True, default=str),
             json.dumps(snapshot, sort_keys=True, default=str), result_json, status, seq],
        )
        if rows:
            con.executemany(
                "INSERT INTO thresholds VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [r + [seq] for r in rows],
            )
        con.commit()
    except BaseException:
        _rollback(con)
        raise
    return cal_id


def latest_threshold(
    con: duckdb.DuckDBPyConnection, group: str, *, group_by: str = "family", monitor: str = "max_grad_norm",
) -> ThresholdRecord | None:
    """The most recently saved *accepted* threshold of `group` (None when there is none).

    `group` is a group key or a raw value (a run's family, cohort, ...): it is keyed by `groups.group_key` first,
    so 'LLaDA' finds the threshold of group 'llada' and '' the one of '<null>'."""
    from dlm_triage import groups

    if group_by in groups.GROUP_BY_COLUMNS:
        group = groups.group_key(group_by, group)
    row = con.execute(
        "SELECT group_name, group_by, monitor, k, threshold, ci_low, ci_high, n, calibration_id, created_at "
        "FROM thresholds WHERE group_name = ? AND group_by = ? AND monitor = ? AND accepted "
        "ORDER BY seq DESC LIMIT 1",
        [group, group_by, monitor],
    ).fetchall()
    row = row[0] if row else None
    return None if row is None else ThresholdRecord(*row)


def _g3(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def live_threshold(con: duckdb.DuckDBPyConnection, group: str, *,
                   group_by: str = "family") -> tuple[ThresholdRecord | None, str]:
    """(the threshold the live early warning uses for `group` or None, one sentence saying which and why).

    The threshold is `latest_threshold`'s; the sentence names its rule, calibration and evidence, and says when a
    newer calibration rejected the group (the previous accepted threshold stays in force) or why none is active.
    """
    from dlm_triage import groups

    key = groups.group_key(group_by, group) if group_by in groups.GROUP_BY_COLUMNS else group
    rec = latest_threshold(con, group, group_by=group_by)
    h = threshold_history(con, key)
    h = h.filter(pl.col("group_by") == group_by) if h.height else h
    newest = h.row(0, named=True) if h.height else None
    if rec is None:
        if newest is None:
            return None, (f"early warning off for {group_by} {key}: no calibration of this group yet "
                          "(dlm-triage calibrate after a sweep registers one)")
        return None, (f"early warning off for {group_by} {key}: calibration {newest['calibration_id']} registered "
                      f"no live threshold ({newest['reason']})")
    used = h.filter(pl.col("calibration_id") == rec.calibration_id).row(0, named=True)
    rule = f"max-grad-up-to-{rec.k}" if rec.k is not None else "whole-run max grad"
    msg = (f"early warning for {group_by} {key}: {rule} >= {rec.threshold:.4g} from calibration "
           f"{rec.calibration_id} (held-out precision {_g3(used['precision'])}, CI "
           f"[{_g3(used['precision_ci_low'])}, {_g3(used['precision_ci_high'])}] vs baseline ceiling "
           f"{_g3(used['baseline_ceiling'])})")
    if newest is not None and newest["calibration_id"] != rec.calibration_id:
        msg += (f"; the newer calibration {newest['calibration_id']} rejected this group ({newest['reason']}): "
                "the previous threshold stays in force")
    return rec, msg


REGISTRY_EVIDENCE_COLUMNS = {"precision_ci_low": pl.Float64, "precision_ci_high": pl.Float64,
                             "baseline_ceiling": pl.Float64, "reason": pl.String}
"""Read from each calibration's registry record (result_json): the registered rule's split-bootstrap precision
CI, the always-positive baseline ceiling it is judged against, and why it was rejected (None when accepted)."""


def threshold_history(con: duckdb.DuckDBPyConnection, group: str | None = None) -> pl.DataFrame:
    """Every stored threshold (accepted or not), newest first, with the calibration's status and the evidence
    of the registered rule (REGISTRY_EVIDENCE_COLUMNS): one rule per row, the numbers `report` shows."""
    pred, params = ("WHERE t.group_name = ?", [group]) if group is not None else ("", [])
    h = _pl(
        con,
        "SELECT t.*, c.status AS calibration_status FROM thresholds t JOIN calibrations c USING (calibration_id) "
        f"{pred} ORDER BY t.seq DESC, t.group_name",
        params,
    )
    results: dict[str, CalibrationResult] = {}
    ids = h.get_column("calibration_id").unique().to_list() if h.height else []
    for cid, text in (con.execute("SELECT calibration_id, result_json FROM calibrations "
                                  "WHERE list_contains(?, calibration_id)", [ids]).fetchall() if ids else []):
        try:
            results[cid] = CalibrationResult.from_json(json.loads(text) if text else {})
        except (json.JSONDecodeError, ValueError):  # an unreadable stored result: its evidence is unknown
            pass
    extra: dict[str, list[Any]] = {c: [] for c in REGISTRY_EVIDENCE_COLUMNS}
    for cid, gname, acc in h.select("calibration_id", "group_name", "accepted").iter_rows():
        g = results[cid].groups.get(gname) if cid in results else None
        reg = g.registry if g is not None else None
        for c in ("precision_ci_low", "precision_ci_high", "baseline_ceiling"):
            extra[c].append(None if reg is None else getattr(reg, c))
        why = reg.reasons if reg is not None else ()
        extra["reason"].append(None if acc else ("; ".join(why) or "no finite threshold"))
    return h.with_columns(*(pl.Series(c, v, dtype=t) for (c, t), v in
                            zip(REGISTRY_EVIDENCE_COLUMNS.items(), extra.values())))
