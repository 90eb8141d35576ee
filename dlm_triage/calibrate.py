"""The paper's monitor audit and threshold calibration, per group, as a plain library (no Prefect).

`calibrate(inputs, ...)` turns one `CalibrationInputs` (runs table + optional step trajectories) into the
calibration dict of the JSON contract (docs/ARCHITECTURE.md); `run_calibration(db, out_dir)` reads the inputs
from DuckDB, calibrates, saves the result in DuckDB (versioned) and writes ``out_dir/calibration.json``.

Per group (family by default; paper 4.1, 4.5, App. B-D):

- labels (`stats.stability_labels`, `stats.LABEL_RULE`): unstable iff final loss >= the group's 90th
  percentile (numpy 'linear' = Hyndman-Fan type 7), stable iff <= the median (the paper's 336 of 671), mid-band
  otherwise (excluded from stable/unstable contrasts); percentiles over
  non-diverged runs with a finite final loss; diverged runs are unstable by definition; the rest is excluded.
- top-1 audit: fire and collapse rates of the legacy warning, its precision as a collapse detector and as an
  unstable-run detector (undefined when it never fires), top-1 at step 0, steps to cross 0.95, Mann-Whitney of
  the fire step and of the 0.95-saturation step, unstable vs stable.
- max-grad separation: medians (whole-run max grad norm), their ratio with a percentile bootstrap CI, Mann-Whitney
  U one-sided (unstable > stable) and two-sided; Bonferroni over m contrasts, m = `bonferroni_m` when given
  (the paper: m = 6), else the groups tested (>= 3 stable and >= 3 unstable runs), applied to the one-sided p
  (the directional hypothesis), m and where it came from recorded.
- held-out threshold: one fixed seeded 80/20 split (n_test = ceil(0.2 n)), F1-optimal threshold on train
  (candidates = train values, positive iff value >= threshold, lowest threshold among F1 ties), metrics on
  test, against the always-positive baseline (the top-1 warning fires everywhere: precision = prevalence).
- split bootstrap (B = n_resamples): resample configurations, redraw the split, reselect on train.
- step-k sweep (B = stepk_resamples random 80/20 splits, no resampling, paper App. B.1): max-grad-up-to-k,
  loss-at-k, max-top1-up-to-k ('up to k' includes step 0; a run with no value at k is predicted negative).
- rank amplification (within one model at one learning rate and one mask ratio), gradient concentration,
  power analysis; across groups: threshold transfer and fire-step
  Kruskal-Wallis with pairwise Mann-Whitney (Bonferroni over the pairs).

Random streams: every (seed, group, part) has its own generator (`group_rng`), so adding a group or a part
does not move the others, and `benchmarks/reference_calibration.py` draws the very same replicates.
Undefined numbers are JSON null with a warning (`_jsonable`), never NaN.
"""

from __future__ import annotations

import copy
import datetime as _dt
import functools
import hashlib
import json
import math
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import polars as pl

from dlm_triage import groups as groups_mod
from dlm_triage import runsummary, stats
from dlm_triage.calinputs import REQUIRED_COLUMNS, CalibrationInputs, Trajectories, snapshot_of
from dlm_triage.fsutil import finite_or_none, json_safe, write_json_atomic

__all__ = [
    "Trajectories", "CalibrationInputs", "CalibrationOutput", "calibrate", "run_calibration", "group_rng",
    "default_threshold_step", "GROUP_BY_COLUMNS", "REQUIRED_COLUMNS", "PREDICTORS", "write_json_atomic",
]

GROUP_BY_COLUMNS = groups_mod.GROUP_BY_COLUMNS
PREDICTORS = ("max_grad", "loss", "max_top1")
"""Step-k predictors: max grad norm over steps 0..k, loss at step k, max top-1 frequency over steps 0..k."""
MIN_RUNS = 10
"""Below this many labelled runs a group's threshold analyses are computed but flagged 'too_few_runs'."""
MIN_PER_ARM = 3
"""A group enters the max-grad test family (Bonferroni m) with >= this many stable and unstable runs."""
REGISTRY_K = 25
"""The live early warning reads max-grad-so-far at step 25 (paper 4.1 'log max-gradient by step ~25'): each
group's `registry` holds the held-out threshold of max-grad-up-to-25 when its logs reach step 25 (whether or not
25 is among the swept ks), else of the whole-run max grad norm (k = None).

A group is `degenerate` (its threshold is reported, never registered as accepted by store.save_calibration)
when it has fewer than MIN_RUNS labelled runs, meaningless labels (constant or too few final losses), no
unstable or no stable run, a constant max grad, or no threshold. A fixed split without an unstable test run is
only flagged ('heldout.unvalidated'): the threshold is still the best training estimate."""
CELL_COLUMNS = ("model_id", "method", "rank", "mask_ratio", "learning_rate")
"""A configuration cell (seeds are its replicates), for the power analysis."""
_PARTS = {"heldout": 0, "split_bootstrap": 1, "stepk": 2, "maxgrad_ratio": 3, "rank_amplification": 4}


@dataclass(frozen=True)
class CalibrationOutput:
    calibration_id: str
    json_path: Path
    result: dict


def group_rng(seed: int, group: str, part: str) -> np.random.Generator:
    """The generator of one analysis part of one group: SeedSequence([seed, crc32(group), part id])."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(group.encode()), _PARTS[part]]))


# ------------------------------------------------------------------------------------------- helpers


def _f(x) -> float | None:
    """A float, or NaN for None (the JSON pass turns NaN back into null + warning)."""
    if x is None:
        return math.nan
    return float(x)


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

    max-grad-up-to-k and max-top1-up-to-k are running maxima over the logged steps <= k ignoring missing values
    (one segmented pass gives every k); loss-at-k is the loss logged at step k (NaN when step k was not logged).
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
    run_max = {}
    for name, values in (("max_grad", traj.grad_norm[idx]), ("max_top1", traj.top1[idx])):
        run_max[name] = runsummary.running_max(values, seg)  # within each run, NaN (not logged) skipped
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


# ------------------------------------------------------------------------------------------- one group


def _top1_audit(d: dict, lab: stats.Labels, notes: _Notes) -> dict:
    fired, coll = d["fired"], d["collapsed"]
    n = fired.size
    n_fire = int(fired.sum())
    out: dict[str, Any] = {
        "n_fired": n_fire, "n_collapsed": int(coll.sum()),
        "fire_rate": n_fire / n if n else math.nan, "collapse_rate": float(coll.sum()) / n if n else math.nan,
        "precision_collapse": float((fired & coll).sum()) / n_fire if n_fire else math.nan,
        "precision_unstable": float((fired & lab.unstable).sum()) / n_fire if n_fire else math.nan,
    }
    if n_fire == 0:
        notes.add("top1", "never_fired", "the legacy warning never fired: its precision is undefined")
    s0 = d["top1_step0"]
    s0 = s0[np.isfinite(s0)]
    out["step0"] = {**_summary(s0),
                    "share_above_050": float((s0 > 0.5).mean()) if s0.size else math.nan,
                    "share_above_080": float((s0 > 0.8).mean()) if s0.size else math.nan}
    c95 = d["cross_095"]
    out["cross_095_median_step"] = float(np.nanmedian(c95)) if np.isfinite(c95).any() else math.nan
    out["n_never_cross_095"] = int(np.isnan(c95).sum())
    for key, arr in (("fire_step", d["fire_step"]), ("saturation_step", c95)):
        mw = stats.mann_whitney(arr[lab.unstable], arr[lab.stable])
        notes.take(f"top1.{key}", mw)
        out[f"{key}_mw"] = {"median_unstable": mw.median_x, "median_stable": mw.median_y, "u": mw.u,
                            "p_two_sided": mw.p_two_sided, "p_greater": mw.p_greater,
                            "n_unstable": mw.n_x, "n_stable": mw.n_y}
    return out


def _rank_amplification(d: dict, n_resamples: int, cl: float, rng: np.random.Generator, notes: _Notes) -> list:
    """r_max / r_min ratio of mean max-grad within one model at one learning rate and one mask ratio (paper 4.2:
    "r=4 at rho=0.95 reaches 2.7 and r=64 reaches 34.8 (12.9x)" on LLaDA2.0-mini at lr 1e-4): models and
    learning rates are never pooled. One entry per (model_id, learning_rate, mask_ratio) cell with >= 2 ranks,
    ordered by model, learning rate, mask ratio; seeds are the replicates of the mean."""
    out = []
    rank, mr, lr, g, model = d["rank"], d["mask_ratio"], d["learning_rate"], d["max_grad"], d["model_id"]
    ok = np.isfinite(rank) & np.isfinite(mr) & np.isfinite(lr) & np.isfinite(g)
    cells = sorted({(model[i], lr[i], mr[i]) for i in np.flatnonzero(ok)})
    for mdl, rate, m in cells:
        at = ok & (model == mdl) & (lr == rate) & (mr == m)
        rks = np.unique(rank[at])
        if rks.size < 2:
            continue
        lo_r, hi_r = rks[0], rks[-1]
        hi = g[at & (rank == hi_r)]
        lo = g[at & (rank == lo_r)]
        r = stats.ratio_ci(hi, lo, statistic="mean", n_resamples=n_resamples, confidence_level=cl, rng=rng)
        notes.take(f"rank_amplification[model={mdl or None}, lr={rate:g}, mask_ratio={m:g}]", r)
        out.append({"model_id": mdl or None, "learning_rate": float(rate), "mask_ratio": float(m),
                    "rank_low": float(lo_r), "rank_high": float(hi_r),
                    "n_low": r.n_y, "n_high": r.n_x, "mean_low": r.stat_y, "mean_high": r.stat_x,
                    "ratio": r.ratio, "ci_low": r.ci_low, "ci_high": r.ci_high, "flags": list(r.flags)})
    if not out:
        notes.add("rank_amplification", "no_rank_contrast",
                  "no (model, learning rate, mask ratio) cell has runs at two ranks")
    return out


CONCENTRATION_DEFINITIONS = {
    "matrix": "paper App. D: per-step Gini and top-matrix share of the per-LoRA-matrix gradient norms, averaged "
              "over the last 10 steps of a run (runs.grad_gini, runs.grad_top1_share), then over seeds (cells)",
    "matrix_mass_last10pct": "dlm-triage: Gini and top-matrix share of the per-matrix gradient mass (sum of "
                             "squared norms) over the last 10% of steps (manifest grad_concentration)",
    "token_ce": "per-token CE-gradient Gini and largest token share (when logged)",
}


def _cells_mean(df: pl.DataFrame, gcol: str, tcol: str) -> list[dict]:
    """Per configuration cell (CELL_COLUMNS; seeds are its replicates): mean and sd over seeds."""
    keys = [c for c in CELL_COLUMNS if c in df.columns]
    sub = df.filter(pl.col(gcol).is_not_null() & pl.col(gcol).is_not_nan())
    if sub.height == 0:
        return []
    agg = sub.group_by(keys, maintain_order=True).agg(
        pl.len().alias("n_seeds"), pl.col(gcol).mean().alias("gini_mean"), pl.col(gcol).std().alias("gini_sd"),
        pl.col(tcol).mean().alias("top_share_mean"), pl.col(tcol).std().alias("top_share_sd")).sort(keys)
    return [{k: (math.nan if v is None and k.endswith("_sd") else v) for k, v in r.items()}
            for r in agg.iter_rows(named=True)]


def _concentration(df: pl.DataFrame, notes: _Notes) -> dict:
    """Gradient concentration under each named definition (CONCENTRATION_DEFINITIONS): a summary over the
    group's runs and, for the paper's, the mean over seeds of each configuration cell (App. D reports one
    cell: r=64, rho=0.95, LLaDA2.0-mini, n=3 seeds: Gini 0.463 +- 0.031, top matrix 63.0% +- 3.6%)."""
    out: dict[str, Any] = {}
    if "manifest_json" in df.columns and "mass_gini" not in df.columns:
        mj = pl.col("manifest_json").cast(pl.String)
        df = df.with_columns(
            mj.str.json_path_match("$.grad_concentration.mass_last10pct.gini").cast(pl.Float64, strict=False)
            .alias("mass_gini"),
            mj.str.json_path_match("$.grad_concentration.mass_last10pct.top_share").cast(pl.Float64, strict=False)
            .alias("mass_top1_share"))
    for key, gcol, tcol in (("matrix", "grad_gini", "grad_top1_share"),
                            ("matrix_mass_last10pct", "mass_gini", "mass_top1_share"),
                            ("token_ce", "ce_grad_gini", "ce_grad_top1_share")):
        if gcol in df.columns and df.get_column(gcol).drop_nulls().drop_nans().len() > 0:
            out[key] = {"logged": True, "definition": CONCENTRATION_DEFINITIONS[key],
                        "gini": _summary(_col(df, gcol)),
                        "top1_share": _summary(_col(df, tcol)) if tcol in df.columns else _summary(np.array([]))}
            if key == "matrix":
                out[key]["cells"] = _cells_mean(df, gcol, tcol)
        else:
            out[key] = {"logged": False, "definition": CONCENTRATION_DEFINITIONS[key]}
            if key == "matrix":
                notes.add("concentration", "not_logged", "no per-matrix gradient concentration logged")
    return out


def _power(df: pl.DataFrame, notes: _Notes) -> dict:
    g = _col(df, "max_grad_norm")
    ok = np.isfinite(g) & (g > 0)
    sub = df.filter(pl.Series(ok)).with_columns(pl.col("max_grad_norm").cast(pl.Float64).log().alias("_lg"))
    cells = sub.group_by([c for c in CELL_COLUMNS if c in sub.columns], maintain_order=True).agg(
        pl.len().alias("n"), pl.col("_lg").var(ddof=1).alias("v"))
    rep = cells.filter(pl.col("n") >= 2)
    dof = int((rep.get_column("n") - 1).sum()) if rep.height else 0
    if dof > 0:
        sd = math.sqrt(float((rep.get_column("v") * (rep.get_column("n") - 1)).sum()) / dof)
        source = f"pooled within-cell sd over {rep.height} replicated cell(s) (cell = {', '.join(CELL_COLUMNS)})"
    else:
        lg = sub.get_column("_lg").to_numpy()
        sd = float(np.std(lg, ddof=1)) if lg.size > 1 else math.nan
        source = "no replicated cell: sd of ln(max grad) across the whole group (conservative)"
        notes.add("power", "no_replicated_cells", "no configuration cell has >= 2 seeds: the group-wide sd is used")
    pw = stats.runs_per_cell(sd, ratio=2.0, alpha=0.05, power=0.8)
    notes.take("power", pw)
    return {"runs_per_cell": pw.n_per_cell, "ratio": 2.0, "alpha": 0.05, "power": 0.8, "log_sd": pw.log_sd,
            "effect_size": pw.effect_size, "achieved_power": pw.achieved_power, "sd_source": source,
            "method": pw.method}


def registry_evidence(reg: Mapping[str, Any]) -> list[str]:
    """Why the registered rule's evidence does not hold ([] when it does): the max-grad triage verdict of the
    paper (4.1: the split-bootstrap lower CI bound of held-out precision exceeds the always-positive baseline's
    ceiling, its upper CI bound over the same replicates), on the very rule that is registered (k, threshold),
    plus the two ways a CI can look fine and say nothing: held-out precision 0, or a CI of [0, 1]."""
    def num(key):
        return finite_or_none(reg.get(key))

    lo, hi, ceil, prec = num("precision_ci_low"), num("precision_ci_high"), num("baseline_ceiling"), num("precision")
    out = []
    rule = f"max-grad-up-to-{reg['k']}" if reg.get("k") is not None else "whole-run max grad"
    if lo is None or ceil is None:
        out.append(f"{rule}: no split-bootstrap precision CI or baseline ceiling (too few unstable runs)")
    elif lo <= ceil:
        out.append(f"{rule}: lower CI bound of held-out precision {lo:.3g} is not above the always-positive "
                   f"baseline ceiling {ceil:.3g}")
    if prec is not None and prec == 0:
        out.append(f"{rule}: held-out precision 0 on the fixed split")
    if lo is not None and hi is not None and lo <= 0 and hi >= 1:
        out.append(f"{rule}: precision CI [0, 1] carries no information")
    return out


def _same_horizon(df: pl.DataFrame, rows: np.ndarray | None,
                  notes: _Notes) -> tuple[pl.DataFrame, np.ndarray | None, int | None]:
    """Keep the runs with the group's configured step count (the most common one; ties -> the longest).

    Final loss labels runs only among runs of one length: a 10-step smoke run ends at a loss a 200-step run
    left long ago, and would be labelled unstable by its length alone. The others are dropped from this
    group's calibration with a warning naming them (calibrate them apart, e.g. with --group-by cohort).
    Runs whose step count is unknown (imported cells) stay. Returns (kept runs, their rows, horizon or None).
    """
    if "steps" not in df.columns or df.height == 0:
        return df, rows, None
    steps = df.get_column("steps").cast(pl.Int64)
    known = steps.drop_nulls()
    if known.len() == 0:
        return df, rows, None
    counts = known.value_counts(sort=False)
    c = counts.columns[1]
    horizon = int(counts.sort([c, "steps"], descending=True).get_column("steps")[0])
    other = (steps.is_not_null() & (steps != horizon)).fill_null(False).to_numpy()
    if other.any():
        ids = df.get_column("run_id").filter(pl.Series(other)).to_list()
        lens = sorted({int(v) for v in steps.filter(pl.Series(other)).to_list()})
        shown = ", ".join(ids[:8]) + (f" and {len(ids) - 8} more" if len(ids) > 8 else "")
        notes.add("labels", "other_horizon",
                  f"{len(ids)} run(s) with {', '.join(map(str, lens))} steps instead of the group's {horizon} are "
                  f"not labelled or calibrated here (final loss compares runs of one length): {shown}")
        df = df.filter(pl.Series(~other))
        rows = rows[~other] if rows is not None else None
    return df, rows, horizon


def _group(name: str, df: pl.DataFrame, traj: Trajectories | None, rows: np.ndarray | None, *, ks: Sequence[int],
           n_resamples: int, stepk_resamples: int, cl: float, test_size: float, seed: int) -> tuple[dict, dict]:
    """One group's block of the JSON and the arrays the cross-group parts need."""
    notes = _Notes()
    n_all = df.height
    # the legacy warning's fire/collapse counts need no label: over every run of the group (paper 4.1 counts
    # 816/816 configurations), including runs imported without a final loss
    fired_all, coll_all = _col(df, "top1_warning_detected", bool), _col(df, "collapsed", bool)
    top1_all = {"n": n_all, "n_fired": int(fired_all.sum()), "n_collapsed": int(coll_all.sum()),
                "fire_rate": float(fired_all.mean()) if n_all else math.nan,
                "collapse_rate": float(coll_all.mean()) if n_all else math.nan}
    skipped: list[dict] = []
    no_loss = int((~np.isfinite(_col(df, "final_loss")) & ~_col(df, "diverged", bool)).sum())
    if no_loss:
        skipped.append({"analysis": "labels and every label-based analysis (top-1 precision, max-grad "
                                    "separation, held-out threshold, split bootstrap, step-k sweep, registry, "
                                    "transfer)", "runs": no_loss,
                        "why": "no final loss (imported without one, not diverged)"})
    no_grad = int((~np.isfinite(_col(df, "max_grad_norm"))).sum())
    if no_grad:
        skipped.append({"analysis": "max-grad separation, held-out threshold, split bootstrap, registry "
                                    "(these runs count as predicted negative)", "runs": no_grad,
                        "why": "no max grad norm"})
    for sk in skipped:
        notes.add("skipped", "no_final_loss" if sk["why"].startswith("no final") else "no_max_grad",
                  f"{sk['runs']} run(s) with {sk['why']}: skipped for them: {sk['analysis']}")
    df, rows, horizon_steps = _same_horizon(df, rows, notes)
    lab0 = stats.stability_labels(_col(df, "final_loss"), _col(df, "diverged", bool))
    notes.take("labels", lab0)
    keep = ~lab0.excluded
    if not keep.all():
        df = df.filter(pl.Series(keep))
        rows = rows[keep] if rows is not None else None
    lab = stats.Labels(lab0.unstable[keep], lab0.stable[keep], lab0.mid[keep], lab0.excluded[keep],
                       lab0.unstable_threshold, lab0.stable_threshold, lab0.n_used, lab0.n_diverged)
    d = {"max_grad": _col(df, "max_grad_norm"), "fired": _col(df, "top1_warning_detected", bool),
         "collapsed": _col(df, "collapsed", bool), "fire_step": _col(df, "top1_fire_step"),
         "cross_095": _col(df, "top1_cross_095"), "top1_step0": _col(df, "top1_step0"),
         "rank": _col(df, "rank"), "mask_ratio": _col(df, "mask_ratio"),
         "learning_rate": _col(df, "learning_rate"),
         "model_id": df.get_column("model_id").cast(pl.String).fill_null("").to_numpy().astype(str)}
    n = df.height
    y = lab.unstable
    if n < MIN_RUNS:
        notes.add("group", "too_few_runs", f"{n} labelled run(s) (< {MIN_RUNS}): thresholds and CIs are unreliable")
    out: dict[str, Any] = {
        "n": n, "n_excluded": int(n_all - n), "n_unstable": int(y.sum()), "n_stable": int(lab.stable.sum()),
        "n_mid": int(lab.mid.sum()), "n_diverged": lab.n_diverged,
        "unstable_final_loss_threshold": lab.unstable_threshold, "stable_final_loss_threshold": lab.stable_threshold,
        "label_rule": stats.LABEL_RULE, "label_percentile_method": stats.PERCENTILE_METHOD,
        "horizon_steps": horizon_steps, "n_other_horizon": int(n_all - df.height - int(lab0.excluded.sum())),
    }
    out["top1"] = _top1_audit(d, lab, notes)
    out["top1_all_runs"] = top1_all
    out["skipped"] = skipped

    # max-grad separation (paper 4.1): whole-run max grad norm, unstable vs stable
    g = d["max_grad"]
    mw = stats.mann_whitney(g[y], g[lab.stable])
    notes.take("maxgrad", mw)
    rr = stats.ratio_ci(g[y], g[lab.stable], statistic="median", n_resamples=n_resamples, confidence_level=cl,
                        rng=group_rng(seed, name, "maxgrad_ratio"))
    notes.take("maxgrad.ratio", rr)
    tested = (mw.n_x >= MIN_PER_ARM and mw.n_y >= MIN_PER_ARM and not mw.flags)
    out["maxgrad"] = {"median_stable": mw.median_y, "median_unstable": mw.median_x, "median_ratio": rr.ratio,
                      "ratio_ci_low": rr.ci_low, "ratio_ci_high": rr.ci_high, "ratio_B": rr.n_resamples,
                      "mw_u": mw.u, "mw_p_one_sided": mw.p_greater, "mw_p_two_sided": mw.p_two_sided,
                      "mw_p_bonferroni": math.nan, "bonferroni_m": None, "tested": tested,
                      "n_stable": mw.n_y, "n_unstable": mw.n_x}
    if not tested:
        notes.add("maxgrad", "not_tested", f"fewer than {MIN_PER_ARM} stable or unstable runs with a max grad: "
                  "not in the Bonferroni family")

    # held-out threshold on one fixed split, whole-run max grad
    heldout_perm = None
    if n >= 2:
        nt = stats.n_test_of(n, test_size)
        _, heldout_perm = stats.draw_splits(group_rng(seed, name, "heldout"), n, 1, resample=False)
        trw, tew = stats.split_weights(None, heldout_perm, nt)
        ev = stats.split_evaluate(g, y, trw, tew)
        notes.take("heldout", ev)
        out["heldout"] = {"monitor": "max_grad_norm", "k": None, **_split_block(ev)}
        sb = stats.split_bootstrap(g, y, n_resamples=n_resamples, test_size=test_size, confidence_level=cl,
                                   rng=group_rng(seed, name, "split_bootstrap"), resample=True)
        notes.take("split_bootstrap", sb)
        out["split_bootstrap"] = _replicate_block(sb.evaluation, cl, ("precision", "recall", "f1", "threshold",
                                                                      "baseline_precision"))
    else:
        notes.add("heldout", "too_few_runs", f"{n} run(s): no train/test split")
        out["heldout"] = {"monitor": "max_grad_norm", "k": None, "threshold": math.nan, "precision": math.nan,
                          "recall": math.nan, "f1": math.nan, "baseline_precision": math.nan, "n_train": 0,
                          "n_test": 0}
        out["split_bootstrap"] = {"B": n_resamples, "precision_median": math.nan, "precision_ci_low": math.nan,
                                  "precision_ci_high": math.nan, "f1_ci_low": math.nan, "f1_ci_high": math.nan}

    # step-k sweep (random splits from the group's 'stepk' stream, shared by every k and predictor)
    out["stepk"] = {}
    registry = None
    horizon = traj.n_steps - 1 if traj is not None else -1
    if horizon_steps is not None:  # the group's own last step, not the longest run of any group
        horizon = min(horizon, horizon_steps)  # `steps` = last step index (steps 0..steps are logged)
    k_reg = REGISTRY_K if horizon >= REGISTRY_K else None
    if traj is not None and rows is not None and n >= 2 and (ks or k_reg is not None):
        if (rows < 0).any():
            notes.add("stepk", "missing_trajectories", f"{int((rows < 0).sum())} run(s) have no step log: "
                      "predicted negative at every k")
        ks_all = list(ks) + ([k_reg] if k_reg is not None and k_reg not in ks else [])
        preds = stepk_predictors(traj, rows, ks_all)
        nt = stats.n_test_of(n, test_size)
        _, perm = stats.draw_splits(group_rng(seed, name, "stepk"), n, stepk_resamples, resample=False)
        trw, tew = stats.split_weights(None, perm, nt)
        for i, k in enumerate(ks):
            block = {}
            for p in PREDICTORS:
                ev = stats.split_evaluate(preds[p][i], y, trw, tew)
                for fl, msg in zip(ev.flags, ev.warnings):
                    notes.add(f"stepk[k={k}].{p}", fl, msg)
                block[p] = _replicate_block(ev, cl, ("precision", "recall", "f1", "threshold"))
            out["stepk"][str(k)] = block
        if k_reg is not None:
            # the live early warning's threshold: max-grad-up-to-25 on the fixed held-out split; its CI over the
            # step-k random splits (computed here when 25 is not among the swept ks)
            i = ks_all.index(k_reg)
            if str(k_reg) in out["stepk"]:
                sk = out["stepk"][str(k_reg)]["max_grad"]
            else:
                sk = _replicate_block(stats.split_evaluate(preds["max_grad"][i], y, trw, tew), cl, ("threshold",))
            trw, tew = stats.split_weights(None, heldout_perm, nt)
            ev = stats.split_evaluate(preds["max_grad"][i], y, trw, tew)
            notes.take(f"registry[k={k_reg}]", ev)
            blk = _split_block(ev)
            # the registered rule's own precision CI and baseline ceiling: the paper's split bootstrap on the
            # predictor the live warning reads (same stream as the whole-run one: paired replicates)
            sbk = stats.split_bootstrap(preds["max_grad"][i], y, n_resamples=n_resamples, test_size=test_size,
                                        confidence_level=cl, rng=group_rng(seed, name, "split_bootstrap"),
                                        resample=True)
            rb = _replicate_block(sbk.evaluation, cl, ("precision", "baseline_precision"))
            registry = {"monitor": "max_grad_norm", "k": k_reg, "threshold": blk["threshold"],
                        "ci_low": sk["threshold_ci_low"], "ci_high": sk["threshold_ci_high"], "n": n,
                        "n_unstable": int(y.sum()), "precision": blk["precision"], "recall": blk["recall"],
                        "f1": blk["f1"], **{c: blk[c] for c in ("tp", "fp", "fn", "tn", "baseline_precision")},
                        "precision_ci_low": rb["precision_ci_low"], "precision_ci_high": rb["precision_ci_high"],
                        "baseline_ceiling": rb["baseline_precision_ci_high"], "split_bootstrap_B": rb["B"],
                        "source": f"held-out split, max-grad-up-to-{k_reg}; threshold CI over "
                                  f"{stepk_resamples} random splits; precision CI over {rb['B']} split-bootstrap "
                                  "replicates"}
    if registry is None:
        ho, sbb = out["heldout"], out["split_bootstrap"]
        registry = {"monitor": "max_grad_norm", "k": None, "threshold": ho["threshold"],
                    "ci_low": sbb.get("threshold_ci_low", math.nan), "ci_high": sbb.get("threshold_ci_high", math.nan),
                    "n": n, "n_unstable": int(y.sum()), "precision": ho["precision"], "recall": ho["recall"],
                    "f1": ho["f1"], **{c: ho.get(c, math.nan) for c in ("tp", "fp", "fn", "tn", "baseline_precision")},
                    "precision_ci_low": sbb.get("precision_ci_low", math.nan),
                    "precision_ci_high": sbb.get("precision_ci_high", math.nan),
                    "baseline_ceiling": sbb.get("baseline_precision_ci_high", math.nan),
                    "split_bootstrap_B": sbb.get("B", n_resamples),
                    "source": f"held-out split, whole-run max grad norm (no trajectory reaching step {REGISTRY_K}); "
                              "threshold and precision CIs from the split bootstrap"}
    # degenerate: the threshold is reported but must not be registered as accepted (store.save_calibration)
    reasons = []
    if n < MIN_RUNS:
        reasons.append(f"{n} labelled run(s) < {MIN_RUNS}")
    if {"constant_final_loss", "too_few_runs"} & set(lab0.flags):
        reasons.append("final loss constant or too few finite losses: labels are not meaningful")
    if int(y.sum()) == 0 or int(lab.stable.sum()) == 0:
        reasons.append("no unstable or no stable run")
    if np.isfinite(g).sum() >= 1 and np.nanmin(g) == np.nanmax(g):
        reasons.append("max grad norm is constant: no threshold can separate runs")
    if not math.isfinite(registry["threshold"]):
        reasons.append("no threshold could be selected")
    if n >= 2 and (out["heldout"].get("n_positive_test", 0) == 0 or registry.get("tp") is None):
        # not degenerate (the threshold is the best training estimate), but say that it is not validated
        notes.add("heldout", "unvalidated", "the fixed split has no unstable run in test: the threshold's "
                  "held-out precision/recall are not measured")
    out["degenerate"] = bool(reasons)
    out["degenerate_reasons"] = reasons
    for r in reasons:
        notes.add("group", "degenerate", f"degenerate: {r}")
    registry["degenerate"] = bool(reasons)
    rejected = reasons + [r for r in registry_evidence(registry) if r not in reasons]
    registry["accepted"] = not rejected
    registry["status"] = "accepted" if not rejected else "rejected"
    registry["rejection_reasons"] = rejected
    for r in rejected[len(reasons):]:
        notes.add("registry", "rejected", f"no live threshold: {r}")
    out["registry"] = registry

    out["rank_amplification"] = _rank_amplification(d, n_resamples, cl, group_rng(seed, name, "rank_amplification"),
                                                    notes)
    out["concentration"] = _concentration(df, notes)
    out["power"] = _power(df, notes)
    out["warnings"] = notes.warnings
    out["flags"] = sorted(set(notes.flags) | ({"degenerate"} if reasons else set()))
    arrays = {"max_grad": g, "unstable": y, "fire_step": d["fire_step"], "mw_p": mw.p_greater, "tested": tested}
    return out, arrays


# ------------------------------------------------------------------------------------------- protocol


def _check_params(group_by, n_resamples, stepk_resamples, ks, confidence_level, test_size,
                  bonferroni_m=None) -> tuple[int, ...]:
    if group_by not in GROUP_BY_COLUMNS:
        raise ValueError(f"`group_by` must be one of {sorted(GROUP_BY_COLUMNS)}, got {group_by!r}")
    for nm, v in (("n_resamples", n_resamples), ("stepk_resamples", stepk_resamples)):
        if int(v) != v or v < 1:
            raise ValueError(f"`{nm}` must be a positive integer, got {v!r}")
    if not 0 < confidence_level < 1:
        raise ValueError(f"`confidence_level` must be in (0, 1), got {confidence_level!r}")
    if not 0 < test_size < 1:
        raise ValueError(f"`test_size` must be in (0, 1), got {test_size!r}")
    if bonferroni_m is not None and (isinstance(bonferroni_m, bool) or int(bonferroni_m) != bonferroni_m
                                     or bonferroni_m < 1):
        raise ValueError(f"`bonferroni_m` must be a positive integer (the number of contrasts corrected for, "
                         f"e.g. 6 as in the paper) or None (the groups tested), got {bonferroni_m!r}")
    ks = tuple(int(k) for k in ks)
    if any(k < 0 for k in ks) or len(set(ks)) != len(ks):
        raise ValueError(f"`ks` must be distinct non-negative steps, got {ks!r}")
    return ks


def _provenance() -> dict:
    return copy.deepcopy(_provenance_cached())


@functools.lru_cache(maxsize=1)
def _provenance_cached() -> dict:
    # package metadata lookups cost ~30 ms, a tenth of a calibration: once per process is enough
    try:
        from dlm_triage import provenance
        prov = provenance.collect()
    except Exception as e:  # provenance must never block a calibration: record why it is missing
        prov = {"error": f"provenance.collect failed: {e!r}"}
    from importlib import metadata
    pk = dict(prov.get("packages") or {})
    for p in ("numpy", "scipy", "polars", "duckdb"):
        if pk.get(p) is None:
            try:
                pk[p] = metadata.version(p)
            except metadata.PackageNotFoundError:
                pk[p] = None
    prov["packages"] = pk
    return prov


def calibrate(inputs: CalibrationInputs, *, group_by: str = "family", n_resamples: int = 1000,
              stepk_resamples: int = 200, ks: Sequence[int] = (5, 10, 11, 25, 50, 100, 200),
              confidence_level: float = 0.95, test_size: float = 0.2, seed: int = 0,
              bonferroni_m: int | None = None) -> dict:
    """Run the paper's protocol on every group of `inputs.runs` -> the calibration dict (JSON contract).

    `bonferroni_m`: the number of max-grad contrasts the Bonferroni correction divides alpha by (the paper:
    "Bonferroni correction across six analyzable families (m = 6)"); None: the groups tested here (>=
    MIN_PER_ARM stable and unstable runs). Recorded as params.bonferroni_m (None = default) and per group as
    maxgrad.bonferroni_m with maxgrad.bonferroni_m_source.

    The dict is JSON-ready: no NaN/Inf (undefined -> None with a warning naming the field), plain Python types.
    """
    if not isinstance(inputs, CalibrationInputs):
        raise TypeError(f"`inputs` must be a CalibrationInputs, got {type(inputs).__name__}")
    ks = _check_params(group_by, n_resamples, stepk_resamples, ks, confidence_level, test_size, bonferroni_m)
    params = {"group_by": group_by, "n_resamples": int(n_resamples), "stepk_resamples": int(stepk_resamples),
              "ks": list(ks), "confidence_level": float(confidence_level), "test_size": float(test_size),
              "seed": int(seed), "bonferroni_m": None if bonferroni_m is None else int(bonferroni_m),
              "label_quantiles": dict(stats.LABEL_QUANTILES),
              "label_percentile_method": stats.PERCENTILE_METHOD, "label_rule": stats.LABEL_RULE, "registry_k": REGISTRY_K}
    top_warnings: list[str] = []
    runs = inputs.runs
    traj = inputs.traj
    gcol = GROUP_BY_COLUMNS[group_by]
    ks_used = list(ks)
    rows_all = None
    if traj is None:
        top_warnings.append("no trajectories (cells import or no step logs): step-k sweep skipped; held-out "
                            "threshold and registry use the whole-run max grad norm")
        ks_used = []
    else:
        horizon = traj.n_steps - 1
        skipped = [k for k in ks if k > horizon]
        if skipped:
            top_warnings.append(f"ks {skipped} exceed the logged horizon (step {horizon}): skipped")
        ks_used = [k for k in ks if k <= horizon]
        pos = {r: i for i, r in enumerate(traj.run_ids)}
        rows_all = np.array([pos.get(r, -1) for r in runs.get_column("run_id").to_list()], np.int64)
    if runs.get_column("run_id").n_unique() != runs.height:
        raise ValueError("`inputs.runs.run_id` must be unique")

    # the one group key (groups.py): NULL and '' are one group, families compare case-insensitively
    keys = groups_mod.group_keys(runs, group_by)
    null = groups_mod.NULL_GROUP
    if keys.eq(null).any():
        top_warnings.append(f"{int(keys.eq(null).sum())} run(s) have no {gcol}: grouped as {null!r}")
    names = sorted(set(keys.to_list()))
    groups: dict[str, dict] = {}
    arrays: dict[str, dict] = {}
    with warnings.catch_warnings():
        # the results carry the warnings; DegenerateDataWarning would only repeat them on stderr
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        kv = keys.to_numpy()
        for name in names:
            sel = kv == name
            sub = runs.filter(pl.Series(sel))
            rows = rows_all[sel] if rows_all is not None else None
            groups[name], arrays[name] = _group(
                name, sub, traj, rows, ks=ks_used, n_resamples=int(n_resamples),
                stepk_resamples=int(stepk_resamples), cl=float(confidence_level), test_size=float(test_size),
                seed=int(seed))

        # Bonferroni (one-sided p, H1: unstable > stable) over m contrasts: the given m, else the groups tested
        tested = [nm for nm in names if arrays[nm]["tested"]]
        m = int(bonferroni_m) if bonferroni_m is not None else len(tested)
        m_source = (f"given (bonferroni_m={m})" if bonferroni_m is not None
                    else f"the groups tested here ({len(tested)})")
        if bonferroni_m is not None and m < len(tested):
            top_warnings.append(f"bonferroni_m={m} is below the {len(tested)} group(s) tested here: the "
                                "correction is weaker than one test per tested group")
        for nm in names:
            mg = groups[nm]["maxgrad"]
            mg["bonferroni_m"] = m
            mg["bonferroni_m_source"] = m_source
            if nm in tested:
                mg["mw_p_bonferroni"] = stats.bonferroni(arrays[nm]["mw_p"], m)

        # cross-group transfer of the held-out whole-run max-grad threshold
        transfer: dict[str, dict] = {}
        for src in names:
            thr = groups[src]["heldout"]["threshold"]
            row = {}
            for dst in names:
                a = arrays[dst]
                if not math.isfinite(thr):
                    row[dst] = {"threshold": math.nan, "precision": math.nan, "recall": math.nan, "f1": math.nan}
                    continue
                c = stats.confusion_at(a["max_grad"], a["unstable"], thr)
                row[dst] = {"threshold": thr, "precision": float(c.precision[0]), "recall": float(c.recall[0]),
                            "f1": float(c.f1[0]), "n": int(a["max_grad"].size), "n_unstable": int(a["unstable"].sum()),
                            "n_predicted_positive": int(c.tp[0] + c.fp[0]), "same_group": src == dst,
                            "tp": int(c.tp[0]), "fp": int(c.fp[0]), "fn": int(c.fn[0]), "tn": int(c.tn[0]),
                            "baseline_precision": float(a["unstable"].mean()) if a["unstable"].size else math.nan}
            transfer[src] = row

        # fire step across groups
        kw = stats.kruskal(*[arrays[nm]["fire_step"] for nm in names])
        kw_block = {"H": kw.H, "p": kw.p, "n_groups": kw.n_groups, "flags": list(kw.flags)}
        top_warnings.extend(f"fire_step_kruskal: {w}" for w in kw.warnings)
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
        pairwise = []
        for a, b in pairs:
            r = stats.mann_whitney(arrays[a]["fire_step"], arrays[b]["fire_step"])
            pairwise.append({"group_a": a, "group_b": b, "u": r.u, "p_two_sided": r.p_two_sided,
                             "p_bonferroni": stats.bonferroni(r.p_two_sided, len(pairs)) if not r.flags else math.nan,
                             "bonferroni_m": len(pairs), "median_a": r.median_x, "median_b": r.median_y,
                             "flags": list(r.flags)})

    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    snapshot = snapshot_of(runs)
    cal_id = "cal-" + hashlib.sha256(json.dumps({"snapshot": snapshot, "params": params, "created_at": created},
                                                sort_keys=True).encode()).hexdigest()[:16]
    prov = _provenance()
    prov.update({"parameters": params, "seed": int(seed), "snapshot": snapshot,
                 "trajectories": None if traj is None else {"n_runs": len(traj.run_ids), "n_steps": traj.n_steps}})
    skipped_all = [{"group": nm, **sk} for nm in names for sk in groups[nm].get("skipped", [])]
    if traj is None:
        skipped_all.append({"group": None, "analysis": "step-k sweep (max-grad-up-to-k, loss-at-k, max-top1-up-to-k)",
                            "runs": runs.height, "why": "no step logs"})
    result = {"calibration_id": cal_id, "created_at": created, "group_by": group_by, "group_column": gcol,
              "params": params, "snapshot": snapshot, "provenance": prov, "groups": groups,
              "transfer": transfer, "fire_step_kruskal": kw_block, "fire_step_pairwise": pairwise,
              "ks_used": ks_used, "skipped": skipped_all, "collapse_definitions": _collapse_definitions(runs),
              "warnings": top_warnings}
    return _jsonable(result)


def _collapse_definitions(runs: pl.DataFrame) -> dict[str, int]:
    """{collapse definition: n runs} as each run recorded it (trainer manifests and imports; see
    schema.COLLAPSE_DEFINITION and importers.COLLAPSED_MEANS); runs that recorded none are counted as such."""
    none = "not recorded (a run without a manifest definition, e.g. synthetic or an older import)"
    if "manifest_json" not in runs.columns or runs.height == 0:
        return {none: runs.height} if runs.height else {}
    d = runs.get_column("manifest_json").cast(pl.String).str.json_path_match("$.collapse_definition").fill_null(none)
    vc = d.value_counts(sort=True)
    return {str(k): int(v) for k, v in vc.iter_rows()}


def _jsonable(result: dict) -> dict:
    """Plain JSON types; NaN/Inf -> None with a warning naming the path (group warnings go to the group)."""

    def walk(x, sink: list[str]):
        def note(where: str, v: float) -> None:
            sink.append(f"{where}: {'undefined' if math.isnan(v) else 'infinite'} -> null")

        return json_safe(x, on_nonfinite=note, default=str)

    out = dict(result)
    groups = {}
    for name, g in result["groups"].items():
        sink: list[str] = []
        body = {k: v for k, v in g.items() if k != "warnings"}
        gg = walk(body, sink)
        gg["warnings"] = list(g["warnings"]) + [f"null value: {s}" for s in sink]
        groups[name] = gg
    top_sink: list[str] = []
    rest = walk({k: v for k, v in result.items() if k not in ("groups", "warnings")}, top_sink)
    out = {**rest, "groups": groups, "warnings": list(result["warnings"]) + [f"null value: {s}" for s in top_sink]}
    return out


def default_threshold_step(result: Mapping) -> dict[str, dict]:
    """{group: registry record} to register: max-grad-up-to-25 when trajectories exist, else whole-run max grad."""
    return {name: dict(g["registry"]) for name, g in result["groups"].items()}


def run_calibration(db_path, out_dir, *, group_by: str = "family", groups: Sequence[str] | None = None,
                    **params) -> CalibrationOutput:
    """Load the inputs from DuckDB, calibrate, write `out_dir/<calibration_id>/calibration.json`, then save the
    calibration (versioned) in DuckDB and point `out_dir/latest` at it. `groups`: only the runs of these group
    keys (`groups.group_run_ids`; the recalibration of the groups that are due), else every run.

    The file is written before the thresholds are registered: a full disk fails the call before anything goes
    live. The database must exist (a mistyped path is an error, not a new empty database).
    """
    from dlm_triage import store
    from dlm_triage.fsutil import output_dir, point_latest

    con = store.connect(db_path, create=False)
    try:
        if groups is None:
            inputs = store.load_calibration_inputs(con)
        else:
            from dlm_triage.groups import group_run_ids

            ids = group_run_ids(con, group_by, groups)
            con.register("_dlmt_recal_ids", pl.DataFrame({"run_id": ids}, schema={"run_id": pl.String}).to_arrow())
            try:
                inputs = store.load_calibration_inputs(con, where="run_id IN (SELECT run_id FROM _dlmt_recal_ids)")
            finally:
                con.unregister("_dlmt_recal_ids")
        result = calibrate(inputs, group_by=group_by, **params)
        path = write_json_atomic(result, output_dir(out_dir, result["calibration_id"]) / "calibration.json")
        store.save_calibration(con, result)
    finally:
        con.close()
    point_latest(out_dir, result["calibration_id"])
    return CalibrationOutput(result["calibration_id"], path, result)
