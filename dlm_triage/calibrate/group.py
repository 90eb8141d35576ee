"""One group's calibration (`_group`), as the protocol's stages in order: skipped-run accounting, labels on one
horizon, the top-1 audit, max-grad separation, the held-out threshold and split bootstrap, the step-k sweep and
the live registry rule, the degenerate/evidence decision, and the tail (rank amplification, gradient
concentration, power; `descriptive`), then the group's warnings and flags."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import polars as pl

from dlm_triage import stats
from dlm_triage.calibrate.blocks import _col, _Notes, _replicate_block, _split_block, stepk_predictors
from dlm_triage.calibrate.descriptive import _concentration, _power, _rank_amplification, _top1_audit
from dlm_triage.calibrate.rules import MIN_PER_ARM, MIN_RUNS, PREDICTORS, REGISTRY_K, group_rng, registry_evidence
from dlm_triage.calinputs import Trajectories


@dataclass(frozen=True)
class _Settings:
    """One group's protocol settings: its name (with the seed, the key of its random streams) and the sizes."""

    name: str
    seed: int
    n_resamples: int
    stepk_resamples: int
    cl: float
    test_size: float

    def rng(self, part: str) -> np.random.Generator:
        """This group's generator of one analysis part (`group_rng`)."""
        return group_rng(self.seed, self.name, part)


@dataclass(frozen=True)
class _Labelled:
    """The group's labelled runs on its horizon: their rows (runs table, trajectories), labels and column arrays."""

    df: pl.DataFrame
    rows: np.ndarray | None
    lab0: stats.Labels  # before the unlabelled runs were dropped: its flags say whether the labels mean anything
    lab: stats.Labels
    d: dict[str, np.ndarray]

    @property
    def n(self) -> int:
        return self.df.height


def _skipped_runs(df: pl.DataFrame, notes: _Notes) -> tuple[dict, list[dict]]:
    """The legacy warning's counts over every run of the group, and the runs each label or max-grad analysis skips."""
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
    return top1_all, skipped


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


def _labelled(df: pl.DataFrame, rows: np.ndarray | None, notes: _Notes) -> _Labelled:
    """Stability labels (`stats.stability_labels`), the runs they exclude dropped, the arrays `d` analyses read."""
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
    if df.height < MIN_RUNS:
        notes.add("group", "too_few_runs",
                  f"{df.height} labelled run(s) (< {MIN_RUNS}): thresholds and CIs are unreliable")
    return _Labelled(df, rows, lab0, lab, d)


def _label_counts(lb: _Labelled, n_all: int, horizon_steps: int | None) -> dict:
    """The head of the group's block: how many runs are labelled what, under which rule, on which horizon."""
    lab, n = lb.lab, lb.n
    return {
        "n": n, "n_excluded": int(n_all - n), "n_unstable": int(lab.unstable.sum()), "n_stable": int(lab.stable.sum()),
        "n_mid": int(lab.mid.sum()), "n_diverged": lab.n_diverged,
        "unstable_final_loss_threshold": lab.unstable_threshold, "stable_final_loss_threshold": lab.stable_threshold,
        "label_rule": stats.LABEL_RULE, "label_percentile_method": stats.PERCENTILE_METHOD,
        "horizon_steps": horizon_steps, "n_other_horizon": int(n_all - n - int(lb.lab0.excluded.sum())),
    }


def _maxgrad_separation(lb: _Labelled, s: _Settings, notes: _Notes) -> dict:
    """Max-grad separation (paper 4.1): whole-run max grad norm, unstable vs stable: medians, their ratio with a
    bootstrap CI ('maxgrad_ratio' stream), Mann-Whitney U, and whether the group enters the Bonferroni family."""
    g, lab = lb.d["max_grad"], lb.lab
    mw = stats.mann_whitney(g[lab.unstable], g[lab.stable])
    notes.take("maxgrad", mw)
    rr = stats.ratio_ci(g[lab.unstable], g[lab.stable], statistic="median", n_resamples=s.n_resamples,
                        confidence_level=s.cl, rng=s.rng("maxgrad_ratio"))
    notes.take("maxgrad.ratio", rr)
    tested = (mw.n_x >= MIN_PER_ARM and mw.n_y >= MIN_PER_ARM and not mw.flags)
    if not tested:
        notes.add("maxgrad", "not_tested", f"fewer than {MIN_PER_ARM} stable or unstable runs with a max grad: "
                  "not in the Bonferroni family")
    return {"median_stable": mw.median_y, "median_unstable": mw.median_x, "median_ratio": rr.ratio,
            "ratio_ci_low": rr.ci_low, "ratio_ci_high": rr.ci_high, "ratio_B": rr.n_resamples,
            "mw_u": mw.u, "mw_p_one_sided": mw.p_greater, "mw_p_two_sided": mw.p_two_sided,
            "mw_p_bonferroni": math.nan, "bonferroni_m": None, "tested": tested,
            "n_stable": mw.n_y, "n_unstable": mw.n_x}


def _heldout(lb: _Labelled, s: _Settings, notes: _Notes) -> tuple[dict, dict, np.ndarray | None]:
    """The held-out threshold of whole-run max grad on one fixed split ('heldout' stream) and the split bootstrap
    ('split_bootstrap' stream) -> (heldout block, split_bootstrap block, the fixed split's permutation or None)."""
    g, y, n = lb.d["max_grad"], lb.lab.unstable, lb.n
    if n < 2:
        notes.add("heldout", "too_few_runs", f"{n} run(s): no train/test split")
        heldout = {"monitor": "max_grad_norm", "k": None, "threshold": math.nan, "precision": math.nan,
                   "recall": math.nan, "f1": math.nan, "baseline_precision": math.nan, "n_train": 0, "n_test": 0}
        boot = {"B": s.n_resamples, "precision_median": math.nan, "precision_ci_low": math.nan,
                "precision_ci_high": math.nan, "f1_ci_low": math.nan, "f1_ci_high": math.nan}
        return heldout, boot, None
    _, perm = stats.draw_splits(s.rng("heldout"), n, 1, resample=False)
    ev = stats.split_evaluate(g, y, *stats.split_weights(None, perm, stats.n_test_of(n, s.test_size)))
    notes.take("heldout", ev)
    heldout = {"monitor": "max_grad_norm", "k": None, **_split_block(ev)}
    sb = stats.split_bootstrap(g, y, n_resamples=s.n_resamples, test_size=s.test_size, confidence_level=s.cl,
                               rng=s.rng("split_bootstrap"), resample=True)
    notes.take("split_bootstrap", sb)
    boot = _replicate_block(sb.evaluation, s.cl, ("precision", "recall", "f1", "threshold", "baseline_precision"))
    return heldout, boot, perm


def _registry_k(traj: Trajectories | None, horizon_steps: int | None) -> int | None:
    """REGISTRY_K when the group's own logs reach it (the live warning's step), else None (whole-run max grad)."""
    horizon = traj.n_steps - 1 if traj is not None else -1
    if horizon_steps is not None:  # the group's own last step, not the longest run of any group
        horizon = min(horizon, horizon_steps)  # `steps` = last step index (steps 0..steps are logged)
    return REGISTRY_K if horizon >= REGISTRY_K else None


def _registry(k: int | None, split: dict, threshold_ci: dict, boot: dict, n: int, n_unstable: int,
              source: str) -> dict:
    """The registry record of one rule: its threshold with a CI, its metrics on the fixed held-out split, and its
    split-bootstrap precision CI and baseline ceiling (blocks a group could not fill are NaN)."""
    return {"monitor": "max_grad_norm", "k": k, "threshold": split["threshold"],
            "ci_low": threshold_ci.get("threshold_ci_low", math.nan),
            "ci_high": threshold_ci.get("threshold_ci_high", math.nan), "n": n, "n_unstable": n_unstable,
            "precision": split["precision"], "recall": split["recall"], "f1": split["f1"],
            **{c: split.get(c, math.nan) for c in ("tp", "fp", "fn", "tn", "baseline_precision")},
            "precision_ci_low": boot.get("precision_ci_low", math.nan),
            "precision_ci_high": boot.get("precision_ci_high", math.nan),
            "baseline_ceiling": boot.get("baseline_precision_ci_high", math.nan), "split_bootstrap_B": boot["B"],
            "source": source}


def _stepk(lb: _Labelled, traj: Trajectories | None, ks: Sequence[int], k_reg: int | None,
           heldout_perm: np.ndarray | None, s: _Settings, notes: _Notes) -> tuple[dict, dict | None]:
    """The step-k sweep (random splits of the 'stepk' stream, shared by every k and predictor) and, when the logs
    reach k_reg, the live rule's registry record -> (stepk block, registry or None)."""
    rows, y, n = lb.rows, lb.lab.unstable, lb.n
    if traj is None or rows is None or n < 2 or not (ks or k_reg is not None):
        return {}, None
    if (rows < 0).any():
        notes.add("stepk", "missing_trajectories", f"{int((rows < 0).sum())} run(s) have no step log: "
                  "predicted negative at every k")
    ks_all = list(ks) + ([k_reg] if k_reg is not None and k_reg not in ks else [])
    preds = stepk_predictors(traj, rows, ks_all)
    nt = stats.n_test_of(n, s.test_size)
    _, perm = stats.draw_splits(s.rng("stepk"), n, s.stepk_resamples, resample=False)
    trw, tew = stats.split_weights(None, perm, nt)
    stepk = {}
    for i, k in enumerate(ks):
        block = {}
        for p in PREDICTORS:
            ev = stats.split_evaluate(preds[p][i], y, trw, tew)
            for fl, msg in zip(ev.flags, ev.warnings):
                notes.add(f"stepk[k={k}].{p}", fl, msg)
            block[p] = _replicate_block(ev, s.cl, ("precision", "recall", "f1", "threshold"))
        stepk[str(k)] = block
    if k_reg is None:
        return stepk, None
    # the live early warning's threshold: max-grad-up-to-25 on the fixed held-out split; its CI over the
    # step-k random splits (computed here when 25 is not among the swept ks)
    g_k = preds["max_grad"][ks_all.index(k_reg)]
    if str(k_reg) in stepk:
        sk = stepk[str(k_reg)]["max_grad"]
    else:
        sk = _replicate_block(stats.split_evaluate(g_k, y, trw, tew), s.cl, ("threshold",))
    ev = stats.split_evaluate(g_k, y, *stats.split_weights(None, heldout_perm, nt))
    notes.take(f"registry[k={k_reg}]", ev)
    # the registered rule's own precision CI and baseline ceiling: the paper's split bootstrap on the
    # predictor the live warning reads (same stream as the whole-run one: paired replicates)
    sbk = stats.split_bootstrap(g_k, y, n_resamples=s.n_resamples, test_size=s.test_size, confidence_level=s.cl,
                                rng=s.rng("split_bootstrap"), resample=True)
    rb = _replicate_block(sbk.evaluation, s.cl, ("precision", "baseline_precision"))
    source = (f"held-out split, max-grad-up-to-{k_reg}; threshold CI over {s.stepk_resamples} random splits; "
              f"precision CI over {rb['B']} split-bootstrap replicates")
    return stepk, _registry(k_reg, _split_block(ev), sk, rb, n, int(y.sum()), source)


def _whole_run_registry(heldout: dict, boot: dict, lb: _Labelled) -> dict:
    """The registry record when no trajectory reaches REGISTRY_K: the held-out whole-run max-grad threshold."""
    source = (f"held-out split, whole-run max grad norm (no trajectory reaching step {REGISTRY_K}); "
              "threshold and precision CIs from the split bootstrap")
    return _registry(None, heldout, boot, boot, lb.n, int(lb.lab.unstable.sum()), source)


def _decide(lb: _Labelled, heldout: dict, registry: dict, notes: _Notes) -> tuple[list[str], dict]:
    """Why the group is degenerate (its threshold is reported, never registered as accepted by
    store.save_calibration), and the registry record with its acceptance under `registry_evidence`."""
    n, lab, g = lb.n, lb.lab, lb.d["max_grad"]
    reasons = []
    if n < MIN_RUNS:
        reasons.append(f"{n} labelled run(s) < {MIN_RUNS}")
    if {"constant_final_loss", "too_few_runs"} & set(lb.lab0.flags):
        reasons.append("final loss constant or too few finite losses: labels are not meaningful")
    if int(lab.unstable.sum()) == 0 or int(lab.stable.sum()) == 0:
        reasons.append("no unstable or no stable run")
    if np.isfinite(g).sum() >= 1 and np.nanmin(g) == np.nanmax(g):
        reasons.append("max grad norm is constant: no threshold can separate runs")
    if not math.isfinite(registry["threshold"]):
        reasons.append("no threshold could be selected")
    if n >= 2 and heldout.get("n_positive_test", 0) == 0:
        # not degenerate (the threshold is the best training estimate), but say that it is not validated
        notes.add("heldout", "unvalidated", "the fixed split has no unstable run in test: the threshold's "
                  "held-out precision/recall are not measured")
    for r in reasons:
        notes.add("group", "degenerate", f"degenerate: {r}")
    rejected = reasons + [r for r in registry_evidence(registry) if r not in reasons]
    for r in rejected[len(reasons):]:
        notes.add("registry", "rejected", f"no live threshold: {r}")
    return reasons, {**registry, "degenerate": bool(reasons), "accepted": not rejected,
                     "status": "accepted" if not rejected else "rejected", "rejection_reasons": rejected}


def _tail(lb: _Labelled, reasons: list[str], s: _Settings, notes: _Notes) -> dict:
    """The tail of the block: rank amplification, gradient concentration, power, then every warning and flag."""
    out: dict[str, Any] = {}
    out["rank_amplification"] = _rank_amplification(lb.d, s.n_resamples, s.cl, s.rng("rank_amplification"), notes)
    out["concentration"] = _concentration(lb.df, notes)
    out["power"] = _power(lb.df, notes)
    out["warnings"] = notes.warnings
    out["flags"] = sorted(set(notes.flags) | ({"degenerate"} if reasons else set()))
    return out


def _group(name: str, df: pl.DataFrame, traj: Trajectories | None, rows: np.ndarray | None, *, ks: Sequence[int],
           n_resamples: int, stepk_resamples: int, cl: float, test_size: float, seed: int) -> tuple[dict, dict]:
    """One group's block of the JSON and the arrays the cross-group parts need: the protocol's stages in order
    (each stage's warnings follow the previous stage's in the block's `warnings`)."""
    s = _Settings(name, seed, n_resamples, stepk_resamples, cl, test_size)
    notes = _Notes()
    n_all = df.height
    top1_all, skipped = _skipped_runs(df, notes)
    df, rows, horizon_steps = _same_horizon(df, rows, notes)
    lb = _labelled(df, rows, notes)
    out: dict[str, Any] = _label_counts(lb, n_all, horizon_steps)
    out["top1"] = _top1_audit(lb.d, lb.lab, notes)
    out["top1_all_runs"] = top1_all
    out["skipped"] = skipped
    out["maxgrad"] = _maxgrad_separation(lb, s, notes)
    out["heldout"], out["split_bootstrap"], heldout_perm = _heldout(lb, s, notes)
    out["stepk"], registry = _stepk(lb, traj, ks, _registry_k(traj, horizon_steps), heldout_perm, s, notes)
    if registry is None:
        registry = _whole_run_registry(out["heldout"], out["split_bootstrap"], lb)
    reasons, registry = _decide(lb, out["heldout"], registry, notes)
    out["degenerate"] = bool(reasons)
    out["degenerate_reasons"] = reasons
    out["registry"] = registry
    out.update(_tail(lb, reasons, s, notes))
    mg = out["maxgrad"]
    arrays = {"max_grad": lb.d["max_grad"], "unstable": lb.lab.unstable, "fire_step": lb.d["fire_step"],
              "mw_p": mg["mw_p_one_sided"], "tested": mg["tested"]}
    return out, arrays
