"""One group's calibration (`_group`): labels on one horizon, the top-1 audit, max-grad separation, the held-out
threshold and split bootstrap, the step-k sweep, the registry record and its acceptance, rank amplification,
gradient concentration and power."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import polars as pl

from dlm_triage import stats
from dlm_triage.calibrate.blocks import _col, _Notes, _replicate_block, _split_block, _summary, stepk_predictors
from dlm_triage.calibrate.rules import (CELL_COLUMNS, MIN_PER_ARM, MIN_RUNS, PREDICTORS, REGISTRY_K, group_rng,
                                        registry_evidence)
from dlm_triage.calinputs import Trajectories


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
