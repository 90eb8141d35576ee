"""The pieces every part of a group's calibration uses: its notes (warnings and flags), the JSON blocks of a
split evaluation, column access, and the step-k predictors read from the trajectories."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import polars as pl

from dlm_triage import runsummary, stats
from dlm_triage.calinputs import Trajectories


def _summary(a: np.ndarray) -> dict:
    a = np.asarray(a, float)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {"n": 0, "mean": math.nan, "sd": math.nan, "median": math.nan}
    return {"n": int(a.size), "mean": float(a.mean()), "sd": float(a.std(ddof=1)) if a.size > 1 else math.nan,
            "median": float(np.median(a))}


def _ci_block(a: np.ndarray, name: str, cl: float) -> dict:
    med, lo, hi, n_ok = stats.percentile_ci(a, confidence_level=cl)
    return {f"{name}_median": float(med), f"{name}_ci_low": float(lo), f"{name}_ci_high": float(hi),
            f"{name}_n_defined": int(n_ok)}


class _Notes:
    """Collects a group's warnings (sentences) and flags (short names), prefixed with the analysis part."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.flags: list[str] = []

    def add(self, part: str, flag: str, msg: str) -> None:
        self.flags.append(f"{part}.{flag}")
        self.warnings.append(f"{part}: {msg}")

    def take(self, part: str, res) -> None:
        for fl, msg in zip(res.flags, res.warnings):
            self.add(part, fl, msg)


def _split_block(ev: stats.SplitEvaluation) -> dict:
    c = ev.test
    return {"threshold": float(ev.threshold[0]), "train_f1": float(ev.train_f1[0]),
            "precision": float(c.precision[0]), "recall": float(c.recall[0]), "f1": float(c.f1[0]),
            "tp": int(c.tp[0]), "fp": int(c.fp[0]), "fn": int(c.fn[0]), "tn": int(c.tn[0]),
            "baseline_precision": float(ev.baseline_precision[0]),
            "baseline_recall": 1.0 if ev.n_positive_test[0] > 0 else math.nan,
            "baseline_f1": (2 * ev.baseline_precision[0] / (1 + ev.baseline_precision[0])
                            if ev.n_positive_test[0] > 0 else math.nan),
            "n_train": ev.n_train, "n_test": ev.n_test,
            "n_positive_train": int(ev.n_positive_train[0]), "n_positive_test": int(ev.n_positive_test[0])}


def _replicate_block(ev: stats.SplitEvaluation, cl: float, metrics: Sequence[str]) -> dict:
    out: dict[str, Any] = {"B": int(ev.threshold.size)}
    arrays = {"precision": ev.test.precision, "recall": ev.test.recall, "f1": ev.test.f1,
              "threshold": ev.threshold, "baseline_precision": ev.baseline_precision}
    for m in metrics:
        out.update(_ci_block(arrays[m], m, cl))
    out.update({"n_no_positive_train": ev.n_no_positive_train, "n_no_positive_test": ev.n_no_positive_test,
                "n_no_predicted_positive": ev.n_no_predicted_positive})
    return out


def _col(df: pl.DataFrame, name: str, dtype=float) -> np.ndarray:
    s = df.get_column(name)
    if dtype is bool:
        return s.cast(pl.Boolean).fill_null(False).to_numpy().astype(bool)
    return s.cast(pl.Float64).to_numpy().astype(float)  # null -> NaN


def stepk_predictors(traj: Trajectories, rows: np.ndarray, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """{predictor: (len(ks), len(rows))} values at each k. Rows < 0 (run without a trajectory) are NaN.

    max-grad-up-to-k is the log's running max at its last entry <= k (`Trajectories.max_grad`); max-top1-up-to-k
    the running max of the sampled top-1 values <= k (one segmented pass gives every k); loss-at-k is the loss
    logged at step k (NaN when step k was not logged).
    Cost: linear in the selected runs' entries plus a binary search per (k, run).
    """
    ks = np.asarray(ks, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    has = rows >= 0
    out = {p: np.full((ks.size, rows.size), np.nan) for p in ("max_grad", "loss", "max_top1")}
    sel = rows[has]
    if not sel.size or not ks.size:
        return out
    starts, lens = traj.offsets[sel], np.diff(traj.offsets)[sel]
    first = np.cumsum(lens) - lens  # where each selected run begins in the gathered entries
    idx = np.repeat(starts - first, lens) + np.arange(int(lens.sum()), dtype=np.int64)
    seg = np.repeat(np.arange(sel.size, dtype=np.int64), lens)
    step = traj.step[idx]
    # max-grad up to each entry is the log's own (Trajectories.max_grad: what the live warning saw, a diverged
    # run's non-finite last norm +inf); top-1's running max skips the steps it was not sampled at
    run_max = {"max_grad": traj.max_grad[idx], "max_top1": runsummary.running_max(traj.top1[idx], seg)}
    loss = traj.loss[idx]
    # key orders entries by (run, step): the last entry <= k of run s is searchsorted(key, (s, k), 'right') - 1
    key = (seg << 32) + (step + 2**31)
    cols = np.flatnonzero(has)
    for i, k in enumerate(ks):
        pos = np.searchsorted(key, (np.arange(sel.size, dtype=np.int64) << 32) + (int(k) + 2**31),
                              side="right") - 1
        ok = pos >= first
        safe = np.where(ok, pos, 0)
        for name in ("max_grad", "max_top1"):
            out[name][i, cols] = np.where(ok, run_max[name][safe], np.nan)
        out["loss"][i, cols] = np.where(ok & (step[safe] == k), loss[safe], np.nan)
    return out
