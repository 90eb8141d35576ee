"""A run's summary from its step log, in one place: final loss, max grad, top-1 warning, crossings, collapse, Gini.

The trainer (`train.build_manifest`), every importer (`importers`) and the test factory (`tests/runfactory.py`)
call `summarise`; nothing else derives these numbers from a step log. Max-grad up to step k, the quantity the
live warning, calibration and the inspection queue read, is `max_grad_so_far` here (its live, one-step form is
`fold_max_grad`; SQL calls the DuckDB macro `MAX_GRAD_UP_TO_MACRO`, which reads the column they wrote).

What a NaN in a step log means depends on where the row is:
- on the last row of a diverged run it is the bad measurement that ended the run (the trainer keeps that step):
  max-grad up to k counts it as +inf (every reader: the live warning, calibration's step-k predictors, the
  report's monitor, the inspection queue), the whole-run `max_grad_norm` summary leaves it out (a run-level
  number other tools read from JSON, where +inf cannot be written; the run's status says it diverged);
- anywhere else it marks a value that was not logged at that step (top-1 between `top1_every` samples, an
  imported log's sparse rows) and is skipped.

Prefect-free; numpy and polars only (the monitors it applies are series.py's).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import polars as pl

from dlm_triage import series
from dlm_triage.schema import TOP1_CROSS_LEVELS

__all__ = ["RunSummary", "summarise", "running_max", "max_grad_up_to_k", "max_grad_so_far", "fold_max_grad", "MAX_GRAD_UP_TO_MACRO", "ROW_FIELDS"]

ROW_FIELDS = ("final_loss", "max_grad_norm", "n_steps", "top1_step0", "top1_warning_detected", "top1_fire_step",
              "top1_cross_050", "top1_cross_080", "top1_cross_095", "collapsed")
"""The summary fields a `runs` row holds for every source (concentration comes only from a trainer's log)."""


@dataclass(frozen=True)
class RunSummary:
    """Run-level monitors of one step log (`summarise`). None = not defined for this log (no top-1 logged,
    no finite loss, no per-matrix norms)."""

    final_loss: float | None
    """loss at the last logged step; None for a diverged run whose last loss is not finite."""
    max_grad_norm: float | None
    """whole-run max of the logged grad norms; a diverged run's non-finite last norm is left out (the run's
    status says it diverged), an infinite norm elsewhere counts."""
    n_steps: int
    top1_step0: float | None
    top1_warning_detected: bool | None
    """the legacy detector (series.legacy_warning); None when the log has no top-1 values."""
    top1_fire_step: int | None
    top1_cross_050: int | None
    top1_cross_080: int | None
    top1_cross_095: int | None
    collapsed: bool | None
    """schema.COLLAPSE_DEFINITION; never for a run the legacy detector stopped (it ended on top-1 alone)."""
    grad_gini: float | None = None
    """the paper's concentration (series.gradient_concentration 'paper_last10_steps')."""
    grad_top1_share: float | None = None
    grad_concentration: dict[str, dict[str, Any]] | None = field(default=None, compare=False)
    """both named definitions of series.CONCENTRATION_DEFINITIONS, each with its definition text."""

    def row(self) -> dict[str, Any]:
        """The `ROW_FIELDS` as a dict (what an import stores and hashes)."""
        return {k: getattr(self, k) for k in ROW_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def running_max(values: Sequence[float] | np.ndarray, segments: np.ndarray | None = None) -> np.ndarray:
    """Running max over the logged values (NaN = not logged: skipped, NaN until the first logged value),
    restarting at each new id in `segments` (one id per run, rows grouped by run and in step order). One
    segmented pass; linear in the rows."""
    v = np.asarray(values, dtype=np.float64)
    if segments is None:
        return np.fmax.accumulate(v) if v.size else v.copy()
    # -inf stands for "nothing yet" inside the cumulative max, turned back into NaN
    df = pl.DataFrame({"seg": np.asarray(segments), "v": np.where(np.isnan(v), -np.inf, v)})
    m = df.select(pl.col("v").cum_max().over("seg")).to_series().to_numpy()
    return np.where(np.isneginf(m), np.nan, m)


def max_grad_up_to_k(steps: pl.DataFrame, k: int) -> pl.DataFrame:
    """The stored max-grad so far (`max_grad_norm`, written by `max_grad_so_far` / `fold_max_grad`) at each
    run's last logged step <= `k`, for a long step frame (`run_id`, `step`, `max_grad_norm`): columns `run_id`,
    `max_grad_up_to_k`; the polars form of `MAX_GRAD_UP_TO_MACRO`. NaN where a run logged no grad norm up to k
    (+inf for a diverged run whose non-finite last step is <= k); a run without a step <= k is absent. One
    group-by over the frame."""
    return (steps.filter(pl.col("step") <= k).group_by("run_id", maintain_order=True)
            .agg(pl.col("max_grad_norm").sort_by("step").last().alias("max_grad_up_to_k")))


def max_grad_so_far(grad_norm: Sequence[float] | np.ndarray, *, diverged: bool = False) -> np.ndarray:
    """Max-grad up to each row: max over the logged rows <= t of the grad norm, 'up to' including step 0.

    A NaN row was not logged and carries the previous max (NaN before the first logged value); an infinite
    norm counts. On a `diverged` run a non-finite last norm counts as +inf: a diverging run is above any
    threshold, as the live warning (`fold_max_grad`) sees it. Linear in the rows.
    """
    g = np.array(grad_norm, dtype=np.float64)
    if diverged and g.size and not np.isfinite(g[-1]):
        g[-1] = np.inf
    return running_max(g)


MAX_GRAD_UP_TO_MACRO = """
CREATE OR REPLACE TEMP MACRO max_grad_up_to(rid, k) AS (
    SELECT CASE WHEN isnan(v) THEN NULL ELSE v END FROM (
        SELECT arg_max(s.max_grad_norm, s.step) AS v FROM steps s WHERE s.run_id = rid AND s.step <= k))
"""
"""`max_grad_so_far` where SQL needs it: `max_grad_up_to(run_id, k)` reads the stored running max
(`steps.max_grad_norm`, written by `max_grad_so_far` / `fold_max_grad`) at the run's last logged step <= k;
NULL when the run logged no grad norm up to k. `store.connect` defines it on every connection."""


def fold_max_grad(so_far: float, grad_norm: float) -> float:
    """One step of `max_grad_so_far` as the trainer and the live warning see it: a non-finite norm ends the run
    (it is the diverged last row), so it counts as +inf. Start from -inf."""
    value = float(grad_norm)
    return max(so_far, value if np.isfinite(value) else np.inf)


def _whole_run_max(grad: np.ndarray, diverged: bool) -> float | None:
    if diverged and grad.size and not np.isfinite(grad[-1]):
        grad = grad[:-1]
    return float(np.nanmax(grad)) if np.isfinite(grad).any() else None


def summarise(steps: pl.DataFrame, *, status: str | None = None) -> RunSummary:
    """The `RunSummary` of one step log (columns `step`, `loss`, `grad_norm`, `top1_freq`, optionally
    `matrix_grad_norms`), steps in order. `status` (schema.RUN_STATUSES) is the run's when known: 'diverged'
    makes the last row the bad step; 'stopped_by_legacy_detector' is never a collapse.

    Top-1 fields are None when the log holds no finite top-1 value (a foreign log without top-1).
    Concentration fields are None without a `matrix_grad_norms` column.
    """
    diverged = status == "diverged"
    step = steps["step"].to_numpy().astype(np.int64)
    loss = steps["loss"].to_numpy().astype(np.float64)
    grad = steps["grad_norm"].to_numpy().astype(np.float64)
    top1 = steps["top1_freq"].to_numpy().astype(np.float64)
    if diverged and loss.size:
        final = float(loss[-1]) if np.isfinite(loss[-1]) else None
    else:
        finite_loss = loss[np.isfinite(loss)]
        final = float(finite_loss[-1]) if finite_loss.size else None
    top1_fields: dict[str, Any] = dict.fromkeys(
        ("top1_step0", "top1_warning_detected", "top1_fire_step", "top1_cross_050", "top1_cross_080",
         "top1_cross_095", "collapsed"))
    if np.isfinite(top1).any():
        fired, fire_step = series.legacy_warning(top1, step)
        top1_fields.update(
            top1_step0=float(top1[0]) if step[0] == 0 and np.isfinite(top1[0]) else None,
            top1_warning_detected=fired, top1_fire_step=fire_step,
            collapsed=status != "stopped_by_legacy_detector" and series.is_collapsed(top1, loss),
            **{f"top1_cross_{round(level * 100):03d}": series.first_crossing(top1, level, step)
               for level in TOP1_CROSS_LEVELS})
    conc: dict[str, Any] = {}
    if "matrix_grad_norms" in steps.columns:
        rows = steps["matrix_grad_norms"].to_list()
        mat = np.array(rows, dtype=np.float64).reshape(len(rows), -1) if rows else np.zeros((0, 0))
        c = series.gradient_concentration(mat)
        conc = {"grad_gini": c["paper_last10_steps"]["gini"], "grad_top1_share": c["paper_last10_steps"]["top_share"],
                "grad_concentration": {name: {**v, "definition": series.CONCENTRATION_DEFINITIONS[name]}
                                       for name, v in c.items()}}
    return RunSummary(final_loss=final, max_grad_norm=_whole_run_max(grad, diverged), n_steps=int(steps.height),
                      **top1_fields, **conc)
