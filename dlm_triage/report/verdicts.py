"""The four recommendations, computed from the calibration result, never written by hand.

`verdicts(result)` feeds the report, `summary_markdown` (Prefect markdown artifact) and `threshold_table`
(Prefect table artifact). The rules (paper "When Top-1 Fails", Sec. 4-5 and App. B.1):

- Drop top-1 warning: supported when, in every group, the legacy warning has no lift: its precision for
  unstable runs is at most 1.1x the base rate of unstable runs and its precision for actual collapse is at most
  the collapse rate (0/fired when nothing collapsed) - i.e. it is no better than flagging every run.
- Use max-grad triage: supported in a group when the split-bootstrap lower CI bound of held-out precision
  exceeds the always-positive baseline's CEILING, the upper CI bound of the baseline's precision over the same
  split-bootstrap replicates (paper 4.1: "95% precision CI [0.500, 0.947], disjoint from the always-positive
  baseline ceiling 0.148"), not its median.
- Keep loss baseline: supported when loss-at-k, at its best k before the label step (the last logged step, where
  loss is the label), reaches max-grad's median precision at k=25 in some group (loss is competitive somewhere
  early, App. B.1: step 11); otherwise max-grad dominates it.
- No global cutoff: supported when a threshold calibrated on one group loses precision on another (transfer
  precision drop >= 0.1) or the per-group thresholds differ by more than 2x.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from dlm_triage.fsutil import finite_or_none
from dlm_triage.report.fmt import _ci, _fmt, _pct

TRIAGE_K = 25
"""The step the live early warning reads max-grad-so-far at (RunConfig.early_warning_step default)."""
MAX_PANELS = 4
"""Per-group figures draw at most this many groups (the largest by n) and say so when they drop some."""
TOP1_LIFT_TOLERANCE = 1.1
TRANSFER_DROP_MIN = 0.1
THRESHOLD_SPREAD_MIN = 2.0


PREDICTOR_LABELS = {"max_grad": "max-grad up to k", "loss": "loss at k", "max_top1": "max top-1 up to k"}
"""calibrate.py's step-k predictor keys -> labels (an unknown key is shown as is)."""


@dataclass(frozen=True)
class Verdict:
    recommendation: str
    verdict: str
    """'supported', 'not supported on this data', 'partly supported' or 'not evaluable'."""
    evidence: tuple[str, ...]
    """One line per group (or per transfer pair) with this data's numbers."""
    detail: str


def _num(d: Mapping[str, Any] | None, *path: str) -> float | None:
    """A number from a nested dict of the calibration JSON; None when absent or null (degenerate groups)."""
    cur: Any = d
    for key in path:
        if not isinstance(cur, Mapping) or key not in cur:
            return None
        cur = cur[key]
    return finite_or_none(cur)


def _group_names(result: Mapping[str, Any]) -> list[str]:
    return list(result.get("groups", {}).keys())


def _heldout_k(g: Mapping[str, Any]) -> int | None:
    """The step the group's threshold reads max-grad-up-to-k at (registry, else held-out); None: whole run."""
    k = _num(g, "registry", "k")
    k = _num(g, "heldout", "k") if k is None else k
    return None if k is None else int(k)


def _threshold(g: Mapping[str, Any]) -> float | None:
    """The threshold runs are routed by: the registered one (what store.inspection_queue uses), else held-out."""
    t = _num(g, "registry", "threshold")
    return _num(g, "heldout", "threshold") if t is None else t


def _baseline_ceiling(g: Mapping[str, Any]) -> float | None:
    """The always-positive baseline's ceiling: the upper CI bound of its precision over the split-bootstrap
    replicates (the same replicates as max-grad's precision CI); None when the calibration lacks it."""
    return _num(g, "split_bootstrap", "baseline_precision_ci_high")


def _baseline(g: Mapping[str, Any]) -> float | None:
    """Always-positive precision: the split-bootstrap baseline when given, else the held-out one, else n_u/n."""
    for path in (("split_bootstrap", "baseline_precision_median"), ("heldout", "baseline_precision")):
        v = _num(g, *path)
        if v is not None:
            return v
    n, nu = _num(g, "n"), _num(g, "n_unstable")
    return nu / n if n and nu is not None else None


def _verdict_top1(result: Mapping[str, Any]) -> Verdict:
    parts, lifts, evaluable = [], [], 0
    for name, g in result.get("groups", {}).items():
        fire, coll = _num(g, "top1", "fire_rate"), _num(g, "top1", "collapse_rate")
        p_coll, p_uns = _num(g, "top1", "precision_collapse"), _num(g, "top1", "precision_unstable")
        base = _num(g, "n_unstable") / _num(g, "n") if _num(g, "n") else None
        parts.append(f"{name}: fires {_pct(fire)}, collapses {_pct(coll)}, precision(collapse) {_fmt(p_coll)}, "
                     f"precision(unstable) {_fmt(p_uns)} vs base rate {_fmt(base)}")
        if fire is None:
            continue
        evaluable += 1
        if fire == 0:  # never fires: useless as an alarm, no lift by definition
            continue
        lift_unstable = p_uns is not None and base is not None and p_uns > TOP1_LIFT_TOLERANCE * base
        lift_collapse = p_coll is not None and coll is not None and p_coll > coll and p_coll > 0
        if lift_unstable or lift_collapse:
            lifts.append(name)
    evidence = tuple(parts) or ("no groups",)
    if evaluable == 0:
        return Verdict("Drop top-1 warning", "not evaluable", evidence,
                       "No group has a top-1 fire rate (no top-1 monitor logged).")
    if not lifts:
        return Verdict("Drop top-1 warning", "supported", evidence,
                       "The legacy top-1 warning is no better than flagging every run in any group: drop it as "
                       "a PEFT alarm.")
    return Verdict("Drop top-1 warning", "not supported on this data", evidence,
                   f"The warning has precision above the base rate in {', '.join(lifts)}: keep looking at it there.")


def _verdict_maxgrad(result: Mapping[str, Any]) -> Verdict:
    ok, bad, undefined, parts = [], [], [], []
    for name, g in result.get("groups", {}).items():
        # the rule that is registered (threshold at its k) when the calibration carries its own CI: the verdict,
        # the per-group table, the registry and the live warning then judge one rule; else the whole-run one
        own = "precision_ci_low" in (g.get("registry") or {})
        src, ci_src = ("registry", "registry") if own else ("heldout", "split_bootstrap")
        lo, hi = _num(g, ci_src, "precision_ci_low"), _num(g, ci_src, "precision_ci_high")
        base = _num(g, "registry", "baseline_ceiling") if own else _baseline_ceiling(g)
        k = _heldout_k(g) if own else None
        parts.append(
            f"{name} ({f'max-grad-up-to-{k}' if k is not None else 'whole-run max grad'}): held-out precision "
            f"{_fmt(_num(g, src, 'precision'))}, recall "
            f"{_fmt(_num(g, src, 'recall'))}, F1 {_fmt(_num(g, src, 'f1'))}; split-bootstrap "
            f"precision CI {_ci(lo, hi)} vs baseline ceiling {_fmt(base)} (baseline median "
            f"{_fmt(_num(g, 'split_bootstrap', 'baseline_precision_median'))}); median ratio "
            f"{_fmt(_num(g, 'maxgrad', 'median_ratio'))}x, p_Bonf {_fmt(_num(g, 'maxgrad', 'mw_p_bonferroni'))} "
            f"(m={g.get('maxgrad', {}).get('bonferroni_m')})")
        if lo is None or base is None:
            undefined.append(name)
        elif lo > base:
            ok.append(name)
        else:
            bad.append(name)
    evidence = tuple(parts) or ("no groups",)
    if not ok and not bad:
        return Verdict("Use max-grad triage", "not evaluable", evidence,
                       f"No group has a defined split-bootstrap CI ({', '.join(undefined) or 'none'}).")
    if ok and not bad and not undefined:
        return Verdict("Use max-grad triage", "supported", evidence,
                       "In every group the lower CI bound of held-out precision exceeds the always-positive "
                       "baseline's ceiling (its upper CI bound over the same replicates): route runs at/above "
                       "the group threshold to inspection.")
    if not ok:
        return Verdict("Use max-grad triage", "not supported on this data", evidence,
                       f"The lower CI bound does not exceed the baseline ceiling in {', '.join(bad)}"
                       + (f"; undefined in {', '.join(undefined)}" if undefined else "") + ".")
    return Verdict("Use max-grad triage", "partly supported", evidence,
                   f"Supported in {', '.join(ok)}; not supported on this data in {', '.join(bad) or 'none'}"
                   + (f"; undefined in {', '.join(undefined)}" if undefined else "") + ".")


def _stepk_series(g: Mapping[str, Any]) -> dict[str, dict[int, dict[str, float | None]]]:
    """stepk -> {predictor label: {k: {median, lo, hi}}}."""
    out: dict[str, dict[int, dict[str, float | None]]] = {}
    for k_str, preds in (g.get("stepk") or {}).items():
        try:
            k = int(k_str)
        except ValueError:
            continue
        if not isinstance(preds, Mapping):
            continue
        for pred, vals in preds.items():
            if not isinstance(vals, Mapping):
                continue
            label = PREDICTOR_LABELS.get(pred, pred)
            out.setdefault(label, {})[k] = {
                "median": _num(vals, "precision_median"), "lo": _num(vals, "precision_ci_low"),
                "hi": _num(vals, "precision_ci_high")}
    return out


def _label_step(result: Mapping[str, Any], ks: Iterable[int]) -> int:
    """The last logged step: loss there IS the label (final loss), so loss-at-k is only a predictor before it."""
    n = _num(result.get("provenance"), "trajectories", "n_steps")
    return int(n) - 1 if n is not None else max(ks)


def _verdict_loss(result: Mapping[str, Any]) -> Verdict:
    parts, keep, drop = [], [], []
    for name, g in result.get("groups", {}).items():
        series = _stepk_series(g)
        mg, loss = series.get("max-grad up to k", {}), series.get("loss at k", {})
        if not mg or not loss:
            parts.append(f"{name}: no step-k sweep")
            continue
        label_k = _label_step(result, loss)
        cands = {k: v["median"] for k, v in loss.items() if k < label_k and v["median"] is not None}
        k_mg = TRIAGE_K if TRIAGE_K in mg else min(mg, key=lambda k: abs(k - TRIAGE_K))
        mg_med, mg_lo, mg_hi = mg[k_mg]["median"], mg[k_mg]["lo"], mg[k_mg]["hi"]
        if not cands or mg_med is None:
            parts.append(f"{name}: step-k precision undefined")
            continue
        best_k = max(cands, key=lambda k: (cands[k], -k))
        parts.append(f"{name}: loss-at-k best precision {_fmt(cands[best_k])} at k={best_k} (label step "
                     f"{label_k} excluded) vs max-grad {_fmt(mg_med)} {_ci(mg_lo, mg_hi)} at k={k_mg}")
        if cands[best_k] >= mg_med:
            keep.append(f"{name} (k={best_k})")
        else:
            drop.append(name)
    evidence = tuple(parts) or ("no groups",)
    if not keep and not drop:
        return Verdict("Keep loss baseline", "not evaluable", evidence,
                       "No step-k sweep (runs without step logs, e.g. imported cells): log loss at early steps "
                       "to compare.")
    if keep:
        return Verdict("Keep loss baseline", "supported", evidence,
                       f"Loss-at-k matches or beats max-grad at k={TRIAGE_K} somewhere early in {', '.join(keep)}: "
                       "keep it as a baseline beside max-grad"
                       + (f"; max-grad is ahead at every k in {', '.join(drop)}" if drop else "") + ".")
    return Verdict("Keep loss baseline", "not supported on this data", evidence,
                   f"Loss-at-k stays below max-grad at k={TRIAGE_K} at every early k in {', '.join(drop)}: "
                   "max-grad dominates it here.")


def _transfer_pairs(result: Mapping[str, Any]) -> list[tuple[str, str, float | None, float | None]]:
    """(source, target, precision of source's threshold on target, target's own-threshold precision).

    result['transfer'] = {source: {target: {threshold, precision, recall, f1, n, same_group, ...}}} (calibrate.py):
    the source group's held-out threshold applied to every run of the target group; the diagonal is the
    target's own threshold on the same runs, so the two precisions are comparable.
    """
    tr = result.get("transfer") or {}
    out = []
    for src, row in tr.items():
        if not isinstance(row, Mapping):
            continue
        for tgt, rec in row.items():
            if src == tgt or not isinstance(rec, Mapping) or rec.get("same_group"):
                continue
            own = _num(tr.get(tgt), tgt, "precision")
            out.append((str(src), str(tgt), _num(rec, "precision"), own))
    return out


def _verdict_global(result: Mapping[str, Any]) -> Verdict:
    names = _group_names(result)
    thr = {n: _threshold(result["groups"][n]) for n in names}
    thr = {n: v for n, v in thr.items() if v is not None and v > 0}
    if len(names) < 2:
        return Verdict("No global cutoff", "not evaluable", (f"one group ({', '.join(names) or 'none'})",),
                       "Cross-group transfer needs at least two groups: calibrate per family regardless.")
    pairs = _transfer_pairs(result)
    drops = [(s, t, own - p) for s, t, p, own in pairs if p is not None and own is not None]
    parts = [f"{s}->{t}: precision {_fmt(p)} vs own {_fmt(own)}" for s, t, p, own in pairs]
    spread = max(thr.values()) / min(thr.values()) if len(thr) >= 2 else None
    parts.append("thresholds " + ", ".join(f"{n} {_fmt(v)}" for n, v in thr.items())
                 + (f" (spread {_fmt(spread)}x)" if spread is not None else ""))
    evidence = tuple(parts)
    worst = max(drops, key=lambda d: d[2]) if drops else None
    if worst is not None and worst[2] >= TRANSFER_DROP_MIN:
        return Verdict("No global cutoff", "supported", evidence,
                       f"A threshold does not transfer: {worst[0]}->{worst[1]} loses {_fmt(worst[2])} precision. "
                       "Calibrate per group.")
    if spread is not None and spread > THRESHOLD_SPREAD_MIN:
        return Verdict("No global cutoff", "supported", evidence,
                       f"Per-group thresholds differ {_fmt(spread)}x: one cutoff cannot serve every group.")
    if worst is None and spread is None:
        return Verdict("No global cutoff", "not evaluable", evidence,
                       "No transfer results and fewer than two defined thresholds.")
    return Verdict("No global cutoff", "not supported on this data", evidence,
                   "Thresholds transfer across groups here (precision drop < "
                   f"{TRANSFER_DROP_MIN}, spread <= {THRESHOLD_SPREAD_MIN}x); per-group calibration still costs "
                   "nothing.")


def verdicts(result: Mapping[str, Any]) -> list[Verdict]:
    """The four recommendations with this calibration's numbers (rules in the module docstring)."""
    return [_verdict_top1(result), _verdict_maxgrad(result), _verdict_loss(result), _verdict_global(result)]


def definitions(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(name, rule) of every definition this calibration's numbers rest on, as recorded in its JSON (older
    calibrations without a field say so rather than assume today's rule)."""
    from dlm_triage import schema

    params = result.get("params") or {}
    any_group = next(iter((result.get("groups") or {}).values()), {})
    mg = any_group.get("maxgrad") or {}
    label = params.get("label_rule") or any_group.get("label_rule") or "not recorded in this calibration"
    method = params.get("label_percentile_method") or any_group.get("label_percentile_method")
    m = mg.get("bonferroni_m")
    out = [
        ("stable / unstable labels", label),
        ("label percentile interpolation", f"numpy method '{method}'" + (
            " (Hyndman-Fan type 7: h = q (n - 1), linear between neighbours)" if method == "linear" else "")
         if method else "not recorded in this calibration"),
        ("Bonferroni m", f"m = {m} ({mg.get('bonferroni_m_source') or 'source not recorded'})" if m is not None
         else "no group tested"),
        ("legacy top-1 detector", f"first samples at step {schema.LEGACY_FIRST_STEP}, then every step until it "
                                  f"fires: fire step = first step >= {schema.LEGACY_FIRST_STEP} with top-1 > "
                                  f"{schema.LEGACY_TOP1_THRESHOLD}; never above it from then on = not fired"),
        ("collapse", "; ".join(f"{d} ({n} run(s))" for d, n in (result.get("collapse_definitions") or {}).items())
         or f"{schema.COLLAPSE_DEFINITION} (the trainer's; this calibration did not record the runs' own)"),
        ("analyses skipped", "; ".join(
            f"{sk.get('group') or 'all groups'}: {sk.get('analysis')} for {sk.get('runs')} run(s) ({sk.get('why')})"
            for sk in result.get("skipped") or []) or "none"),
        ("max-grad triage verdict", "supported iff the split-bootstrap lower CI bound of held-out precision "
                                    "exceeds the always-positive baseline's ceiling (upper CI bound over the "
                                    "same replicates)"),
    ]
    return out
