"""A group's analyses that set no threshold: the legacy top-1 warning's audit, rank amplification, gradient
concentration and the power analysis (paper 4.1, 4.2, 4.5, App. C-D)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl

from dlm_triage import stats
from dlm_triage.calibrate.blocks import _col, _Notes, _summary
from dlm_triage.calibrate.rules import CELL_COLUMNS


def _top1_audit(d: dict, lab: stats.Labels, notes: _Notes) -> dict:
    """The legacy top-1 warning on the labelled runs: fire and collapse rates, its precision, top-1 at step 0,
    the 0.95 saturation step, and Mann-Whitney of the fire and saturation steps, unstable vs stable."""
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
    """Runs per configuration cell to detect a 2x max-grad ratio (alpha 0.05, power 0.8), from the within-cell sd
    of ln(max grad) pooled over replicated cells (else the group-wide sd)."""
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
