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

from dlm_triage.calresult import CalibrationResult, GroupResult
from dlm_triage.report.fmt import _ci, _fmt, _pct

TRIAGE_K = 25
"""The step the live early warning reads max-grad-so-far at (RunConfig.early_warning_step default)."""
TOP1_LIFT_TOLERANCE = 1.1
TRANSFER_DROP_MIN = 0.1
THRESHOLD_SPREAD_MIN = 2.0


PREDICTOR_LABELS = {"max_grad": "max-grad up to k", "loss": "loss at k", "max_top1": "max top-1 up to k"}
"""The step-k predictor keys (calibrate.PREDICTORS) -> labels (an unknown key is shown as is)."""


@dataclass(frozen=True)
class Verdict:
    recommendation: str
    verdict: str
    """'supported', 'not supported on this data', 'partly supported' or 'not evaluable'."""
    evidence: tuple[str, ...]
    """One line per group (or per transfer pair) with this data's numbers."""
    detail: str


def as_result(result: CalibrationResult | Mapping[str, Any]) -> CalibrationResult:
    """The typed calibration result (`calresult.CalibrationResult`) of a JSON-contract dict, read once; a
    CalibrationResult passes as is."""
    return result if isinstance(result, CalibrationResult) else CalibrationResult.from_json(result)


def _group_names(result: CalibrationResult) -> list[str]:
    return list(result.groups)


def _heldout_k(g: GroupResult) -> int | None:
    """The step the group's threshold reads max-grad-up-to-k at (registry, else held-out); None: whole run."""
    k = g.registry.k if g.registry is not None else None
    return g.heldout.k if k is None else k


def _threshold(g: GroupResult) -> float | None:
    """The threshold runs are routed by: the registered one (what store.inspection_queue uses), else held-out."""
    t = g.registry.threshold if g.registry is not None else None
    return g.heldout.threshold if t is None else t


def _baseline_ceiling(g: GroupResult) -> float | None:
    """The always-positive baseline's ceiling: the upper CI bound of its precision over the split-bootstrap
    replicates (the same replicates as max-grad's precision CI); None when the calibration lacks it."""
    return g.split_bootstrap.baseline_precision_ci_high


def _baseline(g: GroupResult) -> float | None:
    """Always-positive precision: the split-bootstrap baseline when given, else the held-out one, else n_u/n."""
    for v in (g.split_bootstrap.baseline_precision_median, g.heldout.baseline_precision):
        if v is not None:
            return v
    return g.n_unstable / g.n if g.n and g.n_unstable is not None else None


def _own_rule(g: GroupResult) -> bool:
    """The registered rule carries its own split-bootstrap CI: the verdict, the per-group table, the registry and
    the live warning then judge one rule (threshold at its k); else the whole-run held-out one."""
    return g.registry is not None and g.registry.own_ci


def _verdict_top1(result: CalibrationResult) -> Verdict:
    parts, lifts, evaluable = [], [], 0
    for name, g in result.groups.items():
        t = g.top1
        fire, coll, p_coll, p_uns = t.fire_rate, t.collapse_rate, t.precision_collapse, t.precision_unstable
        base = g.n_unstable / g.n if g.n and g.n_unstable is not None else None
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


def _rule_numbers(g: GroupResult) -> tuple[Any, float | None, float | None, float | None]:
    """(precision/recall/f1 source, CI low, CI high, baseline ceiling) of the rule a group is judged by."""
    if _own_rule(g):
        reg = g.registry
        return reg, reg.precision_ci_low, reg.precision_ci_high, reg.baseline_ceiling
    sb = g.split_bootstrap
    return g.heldout, sb.precision_ci_low, sb.precision_ci_high, _baseline_ceiling(g)


def _verdict_maxgrad(result: CalibrationResult) -> Verdict:
    ok, bad, undefined, parts = [], [], [], []
    for name, g in result.groups.items():
        src, lo, hi, base = _rule_numbers(g)
        k = _heldout_k(g) if _own_rule(g) else None
        mg = g.maxgrad
        parts.append(
            f"{name} ({f'max-grad-up-to-{k}' if k is not None else 'whole-run max grad'}): held-out precision "
            f"{_fmt(src.precision)}, recall {_fmt(src.recall)}, F1 {_fmt(src.f1)}; split-bootstrap "
            f"precision CI {_ci(lo, hi)} vs baseline ceiling {_fmt(base)} (baseline median "
            f"{_fmt(g.split_bootstrap.baseline_precision_median)}); median ratio "
            f"{_fmt(mg.median_ratio)}x, p_Bonf {_fmt(mg.mw_p_bonferroni)} (m={mg.bonferroni_m})")
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


def _stepk_series(g: GroupResult) -> dict[str, dict[int, dict[str, float | None]]]:
    """stepk -> {predictor label: {k: {median, lo, hi}}}."""
    out: dict[str, dict[int, dict[str, float | None]]] = {}
    for k, preds in g.stepk.items():
        for pred, p in preds.items():
            out.setdefault(PREDICTOR_LABELS.get(pred, pred), {})[k] = {
                "median": p.median, "lo": p.ci_low, "hi": p.ci_high}
    return out


def _label_step(result: CalibrationResult, ks: Iterable[int]) -> int:
    """The last logged step: loss there IS the label (final loss), so loss-at-k is only a predictor before it."""
    return result.n_steps - 1 if result.n_steps is not None else max(ks)


def _verdict_loss(result: CalibrationResult) -> Verdict:
    parts, keep, drop = [], [], []
    for name, g in result.groups.items():
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


def _transfer_pairs(result: CalibrationResult) -> list[tuple[str, str, float | None, float | None]]:
    """(source, target, precision of source's threshold on target, target's own-threshold precision).

    `result.transfer` (calibrate.protocol): the source group's held-out threshold applied to every run of the target
    group; the diagonal is the target's own threshold on the same runs, so the two precisions are comparable.
    """
    tr = result.transfer
    out = []
    for src, row in tr.items():
        for tgt, rec in row.items():
            if src == tgt or rec.same_group:
                continue
            own = tr[tgt][tgt].precision if tgt in tr and tgt in tr[tgt] else None
            out.append((src, tgt, rec.precision, own))
    return out


def _verdict_global(result: CalibrationResult) -> Verdict:
    names = _group_names(result)
    thr = {n: _threshold(result.groups[n]) for n in names}
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


def verdicts(result: CalibrationResult | Mapping[str, Any]) -> list[Verdict]:
    """The four recommendations with this calibration's numbers (rules in the module docstring)."""
    result = as_result(result)
    return [_verdict_top1(result), _verdict_maxgrad(result), _verdict_loss(result), _verdict_global(result)]


def definitions(result: CalibrationResult | Mapping[str, Any]) -> list[tuple[str, str]]:
    """(name, rule) of every definition this calibration's numbers rest on, as recorded in its JSON (older
    calibrations without a field say so rather than assume today's rule)."""
    from dlm_triage import schema

    result = as_result(result)
    params = result.params
    first = next(iter(result.groups.values()), None)
    label = params.get("label_rule") or (first.label_rule if first else None) or "not recorded in this calibration"
    method = params.get("label_percentile_method") or (first.label_percentile_method if first else None)
    m = first.maxgrad.bonferroni_m if first else None
    return [
        ("stable / unstable labels", label),
        ("label percentile interpolation", f"numpy method '{method}'" + (
            " (Hyndman-Fan type 7: h = q (n - 1), linear between neighbours)" if method == "linear" else "")
         if method else "not recorded in this calibration"),
        ("Bonferroni m", f"m = {m} ({first.maxgrad.bonferroni_m_source or 'source not recorded'})" if m is not None
         else "no group tested"),
        ("legacy top-1 detector", f"first samples at step {schema.LEGACY_FIRST_STEP}, then every step until it "
                                  f"fires: fire step = first step >= {schema.LEGACY_FIRST_STEP} with top-1 > "
                                  f"{schema.LEGACY_TOP1_THRESHOLD}; never above it from then on = not fired"),
        ("collapse", "; ".join(f"{d} ({n} run(s))" for d, n in result.collapse_definitions.items())
         or f"{schema.COLLAPSE_DEFINITION} (the trainer's; this calibration did not record the runs' own)"),
        ("analyses skipped", "; ".join(
            f"{sk.get('group') or 'all groups'}: {sk.get('analysis')} for {sk.get('runs')} run(s) ({sk.get('why')})"
            for sk in result.skipped) or "none"),
        ("max-grad triage verdict", "supported iff the split-bootstrap lower CI bound of held-out precision "
                                    "exceeds the always-positive baseline's ceiling (upper CI bound over the "
                                    "same replicates)"),
    ]
