"""Per-group rows of a calibration: the threshold table (a Prefect table artifact), the gradient-concentration
rows, and the one-line answer per group the report, `dlm-triage run` and the Prefect summary lead with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from dlm_triage.calresult import CalibrationResult
from dlm_triage.report.fmt import _fmt, _g3
from dlm_triage.report.verdicts import _baseline, _heldout_k, _own_rule, _rule_numbers, _threshold, as_result

CONCENTRATION_HEADERS = ("group", "definition", "runs", "Gini mean (sd)", "top-matrix share mean (sd)", "rule")


def concentration_rows(result: CalibrationResult | Mapping[str, Any]) -> list[list[Any]]:
    """One row per group and logged concentration definition (calibrate.CONCENTRATION_DEFINITIONS), named."""
    return [[name, key, c.gini.n, f"{_fmt(c.gini.mean)} ({_fmt(c.gini.sd)})",
             f"{_fmt(c.top1_share.mean)} ({_fmt(c.top1_share.sd)})", c.definition]
            for name, g in as_result(result).groups.items() for key, c in g.concentration.items()]


def threshold_table(result: CalibrationResult | Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per group for a Prefect table artifact (plain JSON types; None where undefined)."""
    rows = []
    for name, g in as_result(result).groups.items():
        # one decision rule per row: the registered threshold, its k, and that rule's own held-out metrics and
        # split-bootstrap CI (calibrate/group.py registry); calibrations without them fall back to the whole-run rule
        src, lo, hi, ceiling = _rule_numbers(g)
        base = g.registry.baseline_precision if _own_rule(g) else _baseline(g)
        reg = g.registry
        rows.append({
            "group": name,
            "n": g.n, "n_unstable": g.n_unstable, "n_stable": g.n_stable,
            "threshold": _threshold(g), "k": _heldout_k(g),
            "precision": src.precision, "recall": src.recall, "f1": src.f1,
            "precision_ci_low": lo, "precision_ci_high": hi,
            "baseline_precision": base, "baseline_ceiling": ceiling,
            "live": reg.status if reg is not None else None,
            "rejection_reasons": list(reg.rejection_reasons) if reg is not None else [],
            "median_ratio": g.maxgrad.median_ratio, "mw_p_bonferroni": g.maxgrad.mw_p_bonferroni,
            "bonferroni_m": g.maxgrad.bonferroni_m,
            "top1_fire_rate": g.top1.fire_rate, "collapse_rate": g.top1.collapse_rate,
            "triage": ("not evaluable" if lo is None or ceiling is None
                       else "supported" if lo > ceiling else "not supported on this data"),
        })
    return rows


@dataclass(frozen=True)
class GroupAnswer:
    """The one-line answer for one group: what the report, the end of `dlm-triage run` and the Prefect summary
    artifact lead with."""

    group: str
    live: bool
    """A threshold routes this group's runs now (this calibration's, or an earlier one that stays in force)."""
    line: str


def group_answers(result: CalibrationResult | Mapping[str, Any], *, routed: Mapping[str, int] | None = None,
                  live: Mapping[str, Any] | None = None) -> list[GroupAnswer]:
    """One line per group: its live threshold (rule and value) or why none, the runs routed to inspection, and
    the registered rule's held-out precision [split-bootstrap CI] against the always-positive baseline ceiling.

    `routed`: {group: runs in the inspection queue} (None: not counted). `live`: {group: the record
    `store.live_threshold` returns (or None)}; without it the answer is this calibration's registry alone. The
    numbers are `threshold_table`'s: one rule per row, the same as the per-group table and the registry.
    """
    result = as_result(result)
    cal_id = result.calibration_id
    out = []
    for row in threshold_table(result):
        name = row["group"]
        rule = f"max-grad-up-to-{row['k']}" if row["k"] is not None else "whole-run max grad"
        # the first reason, without the rule's name (the line states the rule); the others are counted (the
        # per-group table and `dlm-triage thresholds` list them all)
        why = [r.removeprefix(f"{rule}: ") for r in row["rejection_reasons"]] or [row["triage"]]
        reasons = f"{rule}: {why[0]}" + (f" (+{len(why) - 1} more reason(s))" if len(why) > 1 else "")
        rec = (live or {}).get(name) if live is not None else None
        if live is None:
            is_live = row["live"] == "accepted" and row["threshold"] is not None
            head = (f"live threshold {rule} >= {row['threshold']:.4g}" if is_live
                    else f"no live threshold: {reasons}")
        elif rec is not None and getattr(rec, "calibration_id", None) == cal_id and row["live"] == "accepted":
            is_live, head = True, f"live threshold {rule} >= {rec.threshold:.4g}"
        elif rec is not None:
            is_live = True
            head = (f"this calibration registered none ({reasons}); the earlier threshold {rec.threshold:.4g} of "
                    f"{rec.calibration_id} stays live")
        else:
            is_live, head = False, f"no live threshold: {reasons}"
        n_routed = "" if routed is None else f"; {routed.get(name, 0)} run(s) routed to inspection"
        evidence = (f"precision {_g3(row['precision'])} [{_g3(row['precision_ci_low'])}, "
                    f"{_g3(row['precision_ci_high'])}] vs baseline ceiling {_g3(row['baseline_ceiling'])}")
        out.append(GroupAnswer(name, is_live, f"{name} (n={row['n']}, {row['n_unstable']} unstable): {head}"
                                              f"{n_routed}; {evidence}"))
    return out
