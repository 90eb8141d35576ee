"""The straightforward implementation of the calibration protocol: the yardstick for `dlm_triage.calibrate`.

Written the way one would first write it: a Python loop over replicates, a loop over candidate thresholds
per replicate, sklearn.metrics for every evaluation, scipy.stats per test, np.median per bootstrap replicate.
It draws its randomness with the same calls on the same generators as the fast code (`calibrate.group_rng`,
`stats.draw_splits`, `stats.draw_resamples`), so every replicate is the same and the results must match: the
tests compare them (thresholds and confusion counts exactly, metrics to 1e-12) and the benchmark times both.

Rules, restated in loop form:
- threshold: for each distinct training value c (ascending), predicted = x_train >= c, F1 = 2tp/(2tp+fp+fn);
  keep c if its F1 is strictly greater than the best so far (ascending order: the lowest c wins ties).
- metrics: sklearn precision_recall_fscore_support(average='binary', zero_division=np.nan), confusion_matrix.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import polars as pl
from scipy import stats as sps
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from dlm_triage import stats
from dlm_triage.calibrate import GROUP_BY_COLUMNS, MIN_PER_ARM, REGISTRY_K, CalibrationInputs, group_rng

__all__ = ["ref_select_threshold", "ref_evaluate", "ref_split_replicates", "reference_calibrate"]


def ref_select_threshold(x_train: np.ndarray, y_train: np.ndarray) -> float:
    """Loop over candidates; NaN values are never positive and never candidates; NaN if no positive."""
    if not y_train.any():
        return math.nan
    best, best_f1 = math.nan, -1.0
    for c in np.unique(x_train[~np.isnan(x_train)]):  # ascending
        pred = x_train >= c
        tp = int(np.sum(pred & y_train))
        fp = int(np.sum(pred & ~y_train))
        fn = int(np.sum(~pred & y_train))
        f1 = 2 * tp / (2 * tp + fp + fn)
        if f1 > best_f1:
            best, best_f1 = float(c), f1
    return best


def ref_evaluate(x_test: np.ndarray, y_test: np.ndarray, thr: float) -> dict:
    with np.errstate(invalid="ignore"):
        pred = x_test >= thr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p, r, f, _ = precision_recall_fscore_support(y_test, pred, average="binary", zero_division=np.nan,
                                                     labels=[False, True], pos_label=True)
    tn, fp, fn, tp = confusion_matrix(y_test, pred, labels=[False, True]).ravel()
    if math.isnan(thr):  # no threshold could be selected (no positive in train): no metric
        p = r = f = math.nan
    return {"precision": float(p), "recall": float(r), "f1": float(f), "tp": int(tp), "fp": int(fp),
            "fn": int(fn), "tn": int(tn), "baseline_precision": float(np.mean(y_test)) if y_test.size else math.nan}


def ref_split_replicates(values: np.ndarray, y: np.ndarray, rng: np.random.Generator, n_resamples: int,
                         test_size: float, *, resample: bool) -> list[dict]:
    """One dict per replicate: threshold on train, sklearn metrics on test."""
    n = values.size
    nt = stats.n_test_of(n, test_size)
    idx, perm = stats.draw_splits(rng, n, n_resamples, resample=resample)
    out = []
    for b in range(n_resamples):
        members = perm[b] if idx is None else idx[b][perm[b]]
        te, tr = members[:nt], members[nt:]
        thr = ref_select_threshold(values[tr], y[tr])
        ev = ref_evaluate(values[te], y[te], thr)
        ev["threshold"] = thr
        out.append(ev)
    return out


def _ci(vals: Sequence[float], cl: float) -> tuple[float, float, float]:
    a = np.asarray(vals, float)
    a = a[~np.isnan(a)]
    if a.size == 0:
        return math.nan, math.nan, math.nan
    return tuple(float(v) for v in np.percentile(a, [50, 100 * (1 - cl) / 2, 100 * (1 - (1 - cl) / 2)]))


def _summarise(reps: list[dict], cl: float, metrics: Sequence[str]) -> dict:
    out = {"B": len(reps)}
    for m in metrics:
        med, lo, hi = _ci([r[m] for r in reps], cl)
        out.update({f"{m}_median": med, f"{m}_ci_low": lo, f"{m}_ci_high": hi})
    return out


def _mw(x, y):
    x = x[~np.isnan(x)]
    y = y[~np.isnan(y)]
    g = sps.mannwhitneyu(x, y, alternative="greater")
    t = sps.mannwhitneyu(x, y, alternative="two-sided")
    return float(g.statistic), float(g.pvalue), float(t.pvalue)


def _ratio_ci(x, y, stat, B, cl, rng):
    x = x[~np.isnan(x)]
    y = y[~np.isnan(y)]
    ix, iy = stats.draw_resamples(rng, x.size, y.size, B)
    reps = []
    for b in range(B):
        den = stat(y[iy[b]])
        reps.append(stat(x[ix[b]]) / den if den != 0 else math.nan)
    _, lo, hi = _ci(reps, cl)
    return float(stat(x) / stat(y)), lo, hi


def reference_calibrate(inputs: CalibrationInputs, *, group_by: str = "family", n_resamples: int = 1000,
                        stepk_resamples: int = 200, ks=(5, 10, 11, 25, 50, 100, 200), confidence_level: float = 0.95,
                        test_size: float = 0.2, seed: int = 0, keep_replicates: bool = False) -> dict:
    """The protocol, slowly. Same numbers as `calibrate` (for groups without degenerate data)."""
    cl = confidence_level
    runs = inputs.runs
    traj = inputs.traj
    col = GROUP_BY_COLUMNS[group_by]
    keys = runs.get_column(col).cast(pl.Utf8).fill_null("<null>").to_list()
    names = sorted(set(keys))
    row_of = {r: i for i, r in enumerate(traj.run_ids)} if traj is not None else {}
    horizon = traj.n_steps - 1 if traj is not None else -1
    dense_loss, dense_grad, dense_top1 = traj.dense() if traj is not None else (None, None, None)
    ks_used = [k for k in ks if k <= horizon]
    groups, keep = {}, {}
    for name in names:
        sub = runs.filter(pl.Series([k == name for k in keys]))
        loss = sub.get_column("final_loss").cast(pl.Float64).to_numpy().astype(float)
        div = sub.get_column("diverged").fill_null(False).to_numpy().astype(bool)
        use = ~div & np.isfinite(loss)
        ok = use | div
        sub = sub.filter(pl.Series(ok))
        loss, div, use = loss[ok], div[ok], use[ok]
        p90 = float(np.percentile(loss[use], 90))
        med = float(np.percentile(loss[use], 50))
        unstable = np.array([bool(d) or (u and l >= p90) for l, d, u in zip(loss, div, use)])
        stable = np.array([bool(u and l <= med) and not x for l, u, x in zip(loss, use, unstable)])
        g = sub.get_column("max_grad_norm").cast(pl.Float64).to_numpy().astype(float)
        fired = sub.get_column("top1_warning_detected").fill_null(False).to_numpy().astype(bool)
        coll = sub.get_column("collapsed").fill_null(False).to_numpy().astype(bool)
        fire_step = sub.get_column("top1_fire_step").cast(pl.Float64).to_numpy().astype(float)
        c95 = sub.get_column("top1_cross_095").cast(pl.Float64).to_numpy().astype(float)
        s0 = sub.get_column("top1_step0").cast(pl.Float64).to_numpy().astype(float)
        n = sub.height
        out = {"n": n, "n_unstable": int(unstable.sum()), "n_stable": int(stable.sum()),
               "unstable_final_loss_threshold": p90}
        nf = int(fired.sum())
        out["top1"] = {"fire_rate": nf / n, "collapse_rate": float(coll.mean()),
                       "precision_collapse": float(np.sum(fired & coll)) / nf if nf else math.nan,
                       "precision_unstable": float(np.sum(fired & unstable)) / nf if nf else math.nan,
                       "step0": {"mean": float(np.mean(s0)), "sd": float(np.std(s0, ddof=1)),
                                 "share_above_050": float(np.mean(s0 > 0.5)),
                                 "share_above_080": float(np.mean(s0 > 0.8))},
                       "cross_095_median_step": float(np.nanmedian(c95)),
                       "fire_step_mw": dict(zip(("u", "p_greater", "p_two_sided"),
                                                _mw(fire_step[unstable], fire_step[stable]))),
                       "saturation_step_mw": dict(zip(("u", "p_greater", "p_two_sided"),
                                                      _mw(c95[unstable], c95[stable])))}
        u, p1, p2 = _mw(g[unstable], g[stable])
        r, lo, hi = _ratio_ci(g[unstable], g[stable], np.median, n_resamples, cl, group_rng(seed, name, "maxgrad_ratio"))
        out["maxgrad"] = {"median_stable": float(np.median(g[stable])), "median_unstable": float(np.median(g[unstable])),
                          "median_ratio": r, "ratio_ci_low": lo, "ratio_ci_high": hi, "mw_u": u,
                          "mw_p_one_sided": p1, "mw_p_two_sided": p2}
        tested = unstable.sum() >= MIN_PER_ARM and stable.sum() >= MIN_PER_ARM
        # held-out
        ho = ref_split_replicates(g, unstable, group_rng(seed, name, "heldout"), 1, test_size, resample=False)[0]
        nt = stats.n_test_of(n, test_size)
        out["heldout"] = {**ho, "n_train": n - nt, "n_test": nt}
        reps = ref_split_replicates(g, unstable, group_rng(seed, name, "split_bootstrap"), n_resamples, test_size,
                                    resample=True)
        out["split_bootstrap"] = _summarise(reps, cl, ("precision", "recall", "f1", "threshold", "baseline_precision"))
        if keep_replicates:
            out["split_bootstrap"]["replicates"] = reps
        # step-k: per k, per predictor, a loop over splits
        out["stepk"] = {}
        if traj is not None:
            rows = [row_of.get(r, -1) for r in sub.get_column("run_id").to_list()]
            _, perm = stats.draw_splits(group_rng(seed, name, "stepk"), n, stepk_resamples, resample=False)
            for k in ks_used:
                vals = {"max_grad": np.array([np.nanmax(dense_grad[i, :k + 1]) if i >= 0 and
                                              np.isfinite(dense_grad[i, :k + 1]).any() else math.nan for i in rows]),
                        "loss": np.array([dense_loss[i, k] if i >= 0 else math.nan for i in rows]),
                        "max_top1": np.array([np.nanmax(dense_top1[i, :k + 1]) if i >= 0 and
                                              np.isfinite(dense_top1[i, :k + 1]).any() else math.nan for i in rows])}
                blk = {}
                for p, v in vals.items():
                    reps_k = []
                    for b in range(stepk_resamples):
                        te, tr = perm[b, :nt], perm[b, nt:]
                        thr = ref_select_threshold(v[tr], unstable[tr])
                        ev = ref_evaluate(v[te], unstable[te], thr)
                        ev["threshold"] = thr
                        reps_k.append(ev)
                    blk[p] = _summarise(reps_k, cl, ("precision", "recall", "f1", "threshold"))
                    if keep_replicates:
                        blk[p]["replicates"] = reps_k
                out["stepk"][str(k)] = blk
                if k == REGISTRY_K:
                    _, hperm = stats.draw_splits(group_rng(seed, name, "heldout"), n, 1, resample=False)
                    te, tr = hperm[0, :nt], hperm[0, nt:]
                    thr = ref_select_threshold(vals["max_grad"][tr], unstable[tr])
                    out["registry"] = {"k": k, "threshold": thr, **ref_evaluate(vals["max_grad"][te], unstable[te], thr)}
                    # the registered rule's own split bootstrap: its precision CI and the baseline's ceiling
                    rk = _summarise(ref_split_replicates(vals["max_grad"], unstable,
                                                         group_rng(seed, name, "split_bootstrap"), n_resamples,
                                                         test_size, resample=True),
                                    cl, ("precision", "baseline_precision"))
                    out["registry"].update({"precision_ci_low": rk["precision_ci_low"],
                                            "precision_ci_high": rk["precision_ci_high"],
                                            "baseline_ceiling": rk["baseline_precision_ci_high"]})
        # rank amplification: loop over (model, learning rate, mask ratio) cells, never pooling models or lrs
        rank = sub.get_column("rank").cast(pl.Float64).to_numpy().astype(float)
        mr = sub.get_column("mask_ratio").cast(pl.Float64).to_numpy().astype(float)
        lr = sub.get_column("learning_rate").cast(pl.Float64).to_numpy().astype(float)
        model = np.array([m or "" for m in sub.get_column("model_id").to_list()], dtype=str)
        rng_ra = group_rng(seed, name, "rank_amplification")
        ra = []
        okr = np.isfinite(rank) & np.isfinite(mr) & np.isfinite(lr) & np.isfinite(g)
        for mdl, rate, m in sorted({(model[i], lr[i], mr[i]) for i in np.flatnonzero(okr)}):
            at = okr & (model == mdl) & (lr == rate) & (mr == m)
            rks = sorted(set(rank[at].tolist()))
            if len(rks) < 2:
                continue
            hi_v, lo_v = g[at & (rank == rks[-1])], g[at & (rank == rks[0])]
            if hi_v.size < 2 or lo_v.size < 2:  # one seed per arm (the paper's 1-seed surface): ratio, no CI
                ra.append({"learning_rate": rate, "mask_ratio": m, "ratio": float(np.mean(hi_v) / np.mean(lo_v)),
                           "ci_low": math.nan, "ci_high": math.nan})
                continue
            rr, l2, h2 = _ratio_ci(hi_v, lo_v, np.mean, n_resamples, cl, rng_ra)
            ra.append({"learning_rate": rate, "mask_ratio": m, "ratio": rr, "ci_low": l2, "ci_high": h2})
        out["rank_amplification"] = ra
        groups[name] = out
        keep[name] = (g, unstable, fire_step, p1, tested)
    tested = [nm for nm in names if keep[nm][4]]
    for nm in names:
        groups[nm]["maxgrad"]["bonferroni_m"] = len(tested)
        groups[nm]["maxgrad"]["mw_p_bonferroni"] = min(1.0, keep[nm][3] * len(tested)) if nm in tested else math.nan
    transfer = {}
    for src in names:
        thr = groups[src]["heldout"]["threshold"]
        transfer[src] = {dst: ref_evaluate(keep[dst][0], keep[dst][1], thr) for dst in names}
    fs = [keep[nm][2][~np.isnan(keep[nm][2])] for nm in names]
    fs = [f for f in fs if f.size]
    kw = sps.kruskal(*fs) if len(fs) >= 2 else None
    return {"groups": groups, "transfer": transfer, "group_by": group_by,
            "fire_step_kruskal": {"H": float(kw.statistic) if kw else math.nan, "p": float(kw.pvalue) if kw else math.nan}}
