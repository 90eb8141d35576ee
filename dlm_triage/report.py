"""The calibration report: verdicts, runs routed to inspection, five figures; HTML (self-contained) + Markdown.

`write_report(db_path, out_dir)` reads one calibration (the latest when none is named) from the `calibrations`
table and the runs/steps it needs from DuckDB (read-only), and writes, into ``out_dir/<calibration_id>/`` (so
one report never replaces another's; ``out_dir/latest`` points at the latest calibration's folder):

- ``out_dir/report.html``  self-contained: figures embedded as base64 PNG data URIs, inline CSS, no external
  resources (it opens offline, can be mailed, and renders the same in the Prefect UI's linked artifact);
- ``out_dir/report.md``    the same tables, figures as relative links to ``figures/*.png``;
- ``out_dir/figures/``     the PNGs (matplotlib Agg, dpi 110).

Every file is written atomically (tmp file in the same folder + fsync + rename): a reader never sees half a report.

The verdicts are computed from the calibration result (`verdicts(result)`), never written by hand: the same
function feeds the report, `summary_markdown` (Prefect markdown artifact) and `threshold_table` (Prefect table
artifact). The rules (paper "When Top-1 Fails", Sec. 4-5 and App. B.1):

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

This module imports no Prefect (the thin shell in `tasks/`/`flows/` publishes the artifacts).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import duckdb
import numpy as np
import polars as pl

from dlm_triage import groups, runsummary, store
from dlm_triage.calinputs import run_ids_sha256
from dlm_triage.fsutil import finite_or_none, output_dir, point_latest, write_bytes_atomic
from dlm_triage.schema import LEGACY_FIRST_STEP, LEGACY_TOP1_THRESHOLD

FIGURE_DPI = 110
INSPECTION_WINDOW = (25, 100)
"""Step-k band where max-grad precision is stable in the paper (App. B.1); drawn on the step-k figure."""
TRIAGE_K = 25
"""The step the live early warning reads max-grad-so-far at (RunConfig.early_warning_step default)."""
MAX_PANELS = 4
"""Per-group figures draw at most this many groups (the largest by n) and say so when they drop some."""
TOP1_LIFT_TOLERANCE = 1.1
TRANSFER_DROP_MIN = 0.1
THRESHOLD_SPREAD_MIN = 2.0

FIGURES: tuple[tuple[str, str], ...] = (
    ("top1_fire_vs_collapse", "Top-1 warning fire rate vs actual collapse rate per group"),
    ("maxgrad_stable_vs_unstable", "Max-grad distributions per learning rate, stable vs unstable runs (log scale)"),
    ("stepk_precision", "Step-k held-out precision per predictor (bootstrap CI bars)"),
    ("rank_mask_heatmap", "Median max-grad over LoRA rank x mask ratio, one model at one learning rate (log colour)"),
    ("top1_trajectories", "Top-1 frequency trajectories from step 0 (pre-equilibrium saturation)"),
)

RUN_COLUMNS = (
    "run_id", "source", "family", "model_id", "cohort", "method", "rank", "alpha", "mask_ratio",
    "learning_rate", "seed", "steps", "status", "final_loss", "max_grad_norm", "top1_step0",
    "top1_warning_detected", "top1_fire_step", "collapsed", "diverged_at_step", "routed_for_inspection",
    "routing_json", "ingested_at", "objective",
)
CONFIG_COLUMNS = ("family", "cohort", "method", "rank", "alpha", "mask_ratio", "learning_rate", "seed")

PREDICTOR_LABELS = {"max_grad": "max-grad up to k", "loss": "loss at k", "max_top1": "max top-1 up to k"}
"""calibrate.py's step-k predictor keys -> labels (an unknown key is shown as is)."""
PREDICTOR_COLOURS = {"max-grad up to k": "#1f77b4", "loss at k": "#d62728", "max top-1 up to k": "#7f7f7f"}


class ReportError(RuntimeError):
    """The report cannot be built (no calibration, unknown id); the message says what to do."""


@dataclass(frozen=True)
class ReportPaths:
    html: Path
    markdown: Path
    figures: dict[str, Path]
    """figure name -> PNG path; a figure that could not be drawn is absent (see `missing`)."""
    missing: dict[str, str] = dataclasses.field(default_factory=dict)
    """figure name -> why it is missing (degenerate data: one group, no unstable runs, no step logs)."""
    answers: tuple["GroupAnswer", ...] = ()
    """The report's first section: one answer line per group (`group_answers`)."""
    routed: tuple[dict[str, Any], ...] = ()
    """The runs routed to inspection, as the report lists them: {run_id, group, label, outcome, why}."""
    summary: str = ""
    """`summary_markdown` with this report's routed counts and live thresholds (a Prefect markdown artifact)."""


@dataclass(frozen=True)
class Verdict:
    recommendation: str
    verdict: str
    """'supported', 'not supported on this data', 'partly supported' or 'not evaluable'."""
    evidence: tuple[str, ...]
    """One line per group (or per transfer pair) with this data's numbers."""
    detail: str


# ----------------------------------------------------------------------------------------------------------
# small formatting helpers
def _num(d: Mapping[str, Any] | None, *path: str) -> float | None:
    """A number from a nested dict of the calibration JSON; None when absent or null (degenerate groups)."""
    cur: Any = d
    for key in path:
        if not isinstance(cur, Mapping) or key not in cur:
            return None
        cur = cur[key]
    return finite_or_none(cur)


def _fmt(x: float | int | None, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x))
    x = float(x)
    if not math.isfinite(x):
        return "n/a"
    if x != 0 and (abs(x) >= 1e6 or abs(x) < 1e-3):
        return f"{x:.{digits - 1}e}"
    if abs(x) >= 10 ** digits:  # 1129.04 -> '1129', not '1.13e+03'
        return f"{x:.0f}"
    return f"{x:.{digits}g}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _ci(lo: float | None, hi: float | None) -> str:
    return f"[{_fmt(lo)}, {_fmt(hi)}]"


def _group_names(result: Mapping[str, Any]) -> list[str]:
    return list(result.get("groups", {}).keys())


# ----------------------------------------------------------------------------------------------------------
# verdicts: a pure function of the calibration result
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


CONCENTRATION_HEADERS = ("group", "definition", "runs", "Gini mean (sd)", "top-matrix share mean (sd)", "rule")


def concentration_rows(result: Mapping[str, Any]) -> list[list[Any]]:
    """One row per group and logged concentration definition (calibrate.CONCENTRATION_DEFINITIONS), named."""
    rows = []
    for name, g in (result.get("groups") or {}).items():
        for key, c in (g.get("concentration") or {}).items():
            if not isinstance(c, Mapping) or not c.get("logged"):
                continue
            gi, ts = c.get("gini") or {}, c.get("top1_share") or {}
            rows.append([name, key, gi.get("n"), f"{_fmt(_num(gi, 'mean'))} ({_fmt(_num(gi, 'sd'))})",
                         f"{_fmt(_num(ts, 'mean'))} ({_fmt(_num(ts, 'sd'))})", c.get("definition") or ""])
    return rows


def threshold_table(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per group for a Prefect table artifact (plain JSON types; None where undefined)."""
    rows = []
    for name, g in result.get("groups", {}).items():
        # one decision rule per row: the registered threshold, its k, and that rule's own held-out metrics and
        # split-bootstrap CI (calibrate.py registry); calibrations without them fall back to the whole-run rule
        reg = g.get("registry") or {}
        own = "precision_ci_low" in reg
        src, ci_src = ("registry", "registry") if own else ("heldout", "split_bootstrap")
        lo = _num(g, ci_src, "precision_ci_low")
        ceiling = _num(g, "registry", "baseline_ceiling") if own else _baseline_ceiling(g)
        base = _num(g, "registry", "baseline_precision") if own else _baseline(g)
        status = reg.get("status")
        rows.append({
            "group": name,
            "n": g.get("n"), "n_unstable": g.get("n_unstable"), "n_stable": g.get("n_stable"),
            "threshold": _threshold(g), "k": _heldout_k(g),
            "precision": _num(g, src, "precision"), "recall": _num(g, src, "recall"), "f1": _num(g, src, "f1"),
            "precision_ci_low": lo, "precision_ci_high": _num(g, ci_src, "precision_ci_high"),
            "baseline_precision": base, "baseline_ceiling": ceiling,
            "live": status if status else None,
            "rejection_reasons": list(reg.get("rejection_reasons") or ()),
            "median_ratio": _num(g, "maxgrad", "median_ratio"),
            "mw_p_bonferroni": _num(g, "maxgrad", "mw_p_bonferroni"),
            "bonferroni_m": (g.get("maxgrad") or {}).get("bonferroni_m"),
            "top1_fire_rate": _num(g, "top1", "fire_rate"), "collapse_rate": _num(g, "top1", "collapse_rate"),
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


def _g3(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.3g}"


def group_answers(result: Mapping[str, Any], *, routed: Mapping[str, int] | None = None,
                  live: Mapping[str, Any] | None = None) -> list[GroupAnswer]:
    """One line per group: its live threshold (rule and value) or why none, the runs routed to inspection, and
    the registered rule's held-out precision [split-bootstrap CI] against the always-positive baseline ceiling.

    `routed`: {group: runs in the inspection queue} (None: not counted). `live`: {group: the record
    `store.live_threshold` returns (or None)}; without it the answer is this calibration's registry alone. The
    numbers are `threshold_table`'s: one rule per row, the same as the per-group table and the registry.
    """
    cal_id = result.get("calibration_id")
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


# ----------------------------------------------------------------------------------------------------------
# tables -> Markdown / HTML
def _md_cell(x: Any) -> str:
    if isinstance(x, tuple):
        return "; ".join(_md_cell(e) for e in x)
    s = _fmt(x) if isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) else (
        "n/a" if x is None else str(x))
    return s.replace("|", "\\|").replace("\n", " ")


def _md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _html_cell(x: Any) -> str:
    if isinstance(x, tuple):  # one line per entry
        return "<br>".join(_html_cell(e) for e in x)
    return html.escape(_md_cell(x).replace("\\|", "|"))


def _html_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, cls: str = "",
                row_classes: Sequence[str] | None = None, scroll: bool = False) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        rc = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = "".join(f"<td>{_html_cell(c)}</td>" for c in row)
        body.append(f"<tr{rc}>{cells}</tr>")
    wrap = "tablewrap scroll" if scroll else "tablewrap"
    return (f'<div class="{wrap}"><table class="{cls}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


VERDICT_HEADERS = ("Recommendation", "Verdict", "Evidence (this data)", "Reading")
THRESHOLD_HEADERS = ("group", "n", "unstable", "threshold", "k", "precision", "recall", "F1",
                     "precision CI", "baseline", "baseline ceiling", "median ratio", "p_Bonf", "m", "triage", "live")


def _threshold_rows(result: Mapping[str, Any]) -> list[list[Any]]:
    return [[r["group"], r["n"], r["n_unstable"], r["threshold"], r["k"] if r["k"] is not None else "run max",
             r["precision"], r["recall"], r["f1"], _ci(r["precision_ci_low"], r["precision_ci_high"]),
             r["baseline_precision"], r["baseline_ceiling"], r["median_ratio"], r["mw_p_bonferroni"],
             r["bonferroni_m"], r["triage"],
             r["live"] if r["live"] != "rejected" else "rejected: " + "; ".join(r["rejection_reasons"])]
            for r in threshold_table(result)]


def _warnings(result: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """[(scope, messages)]: the calibration's own warnings ('all groups'), then each group's."""
    out = [("all groups", [str(w) for w in result.get("warnings") or []])]
    for n, g in result.get("groups", {}).items():
        msgs = [str(w) for w in g.get("warnings") or []]
        # a degenerate group (threshold not validated) matters more than per-split counts: show it first
        msgs.sort(key=lambda m: not ("degenerate" in m or m.startswith("group:")))
        out.append((str(n), msgs))
    return [(scope, ws) for scope, ws in out if ws]


def _md_warnings(result: Mapping[str, Any], *, limit: int | None) -> list[str]:
    ws = _warnings(result)
    if not ws:
        return []
    lines = [f"> **{sum(len(w) for _, w in ws)} calibration warning(s)**", ">"]
    for scope, msgs in ws:
        shown = msgs if limit is None else msgs[:limit]
        lines += [f"> - **{scope}**: {m}" for m in shown]
        if len(msgs) > len(shown):
            lines.append(f"> - **{scope}**: ... and {len(msgs) - len(shown)} more (see the HTML report)")
    return lines + [""]


def _warning_kind(msg: str) -> str:
    """What a warning is about, for grouping: its source before the first '[', '.' or ':' ('stepk[k=5].loss: ..'
    -> 'stepk'), the degenerate-group and registry notes under their own names."""
    head = msg.split(":", 1)[0] if ":" in msg else "other"
    return head.split("[", 1)[0].split(".", 1)[0].strip() or "other"


def _html_warnings(result: Mapping[str, Any]) -> str:
    """Every warning, collapsed under one line that counts them per scope; inside, grouped by scope (all groups,
    then each group) and by kind (one line per step-k split count folds into one 'stepk' line)."""
    ws = _warnings(result)
    if not ws:
        return "<section id='warnings' class='note'>No calibration warnings.</section>"
    total = sum(len(w) for _, w in ws)
    counts = ", ".join(f"{html.escape(scope)} {len(msgs)}" for scope, msgs in ws)
    parts = [f"<details class='warnings' id='warnings'><summary>&#9888; {total} calibration warning(s) "
             f"({counts}): what the numbers above rest on; open to read</summary>"]
    for scope, msgs in ws:
        kinds: dict[str, list[str]] = {}
        for m in msgs:
            kinds.setdefault(_warning_kind(m), []).append(m)
        parts.append(f"<h3>{html.escape(scope)} ({len(msgs)})</h3>")
        for kind, km in kinds.items():
            parts.append(f"<details class='wkind'><summary>{html.escape(kind)} ({len(km)})</summary><ul>"
                         + "".join(f"<li>{html.escape(m)}</li>" for m in km) + "</ul></details>")
    return "".join(parts) + "</details>"


def _html_answers(answers: Sequence[GroupAnswer]) -> str:
    if not answers:
        return ("<section id='answer'><h2>Answer</h2><p class='missing'>No group was calibrated: nothing to "
                "answer (see the warnings).</p>")
    items = "".join(f"<li class='{'live' if a.live else 'none'}'>{html.escape(a.line)}</li>" for a in answers)
    return f"<section id='answer'><h2>Answer, per group</h2><ul class='answers'>{items}</ul>"


def summary_markdown(result: Mapping[str, Any], *, routed: Mapping[str, int] | None = None,
                     live: Mapping[str, Any] | None = None) -> str:
    """Markdown for a Prefect markdown artifact, answer first: one line per group (`group_answers`), the
    verdict table and the per-group rules, then the warnings (a few per scope; the report has them all)."""
    lines = [f"# dlm-triage calibration `{result.get('calibration_id', '?')}`",
             f"Grouped by **{result.get('group_by', '?')}**, {len(_group_names(result))} group(s).", "",
             "## Answer, per group", ""]
    lines += [f"- {'**live**' if a.live else '**none**'} {a.line}" for a in group_answers(
        result, routed=routed, live=live)] or ["No group was calibrated."]
    lines += ["", "## Verdicts", "", _md_table(VERDICT_HEADERS, [
        (v.recommendation, f"**{v.verdict}**", v.evidence, v.detail) for v in verdicts(result)]), "",
        "## Per-group max-grad thresholds", "", _md_table(THRESHOLD_HEADERS, _threshold_rows(result)), ""]
    lines += _md_warnings(result, limit=2)
    return "\n".join(lines)


ROUTED_SHOWN = 50
"""The Prefect summary lists this many routed runs (most severe first); the report and `dlm-triage queue` all."""


def routed_markdown(routed: Sequence[Mapping[str, Any]]) -> str:
    """The runs routed to inspection as a Markdown table (run, group, why), most severe first."""
    if not routed:
        return "No run is routed to inspection."
    rows = [(r["run_id"], r["group"], r["why"]) for r in routed[:ROUTED_SHOWN]]
    more = (f"\n\n... and {len(routed) - ROUTED_SHOWN} more (`dlm-triage queue`, or the report)"
            if len(routed) > ROUTED_SHOWN else "")
    return _md_table(("run", "group", "why"), rows) + more


def pipeline_markdown(summary: str, routed: Sequence[Mapping[str, Any]], runs: Sequence[Mapping[str, Any]],
                      html_path: str | os.PathLike) -> str:
    """The pipeline run's own summary artifact: the runs trained, the answer and verdicts (`summary_markdown`),
    the runs routed to inspection, and where the report is (the whole report, figures included, is also the
    'triage-report-text' artifact, readable in the UI)."""
    statuses: dict[str, int] = {}
    for r in runs:
        statuses[str(r.get("status"))] = statuses.get(str(r.get("status")), 0) + 1
    reused = sum(bool(r.get("reused")) for r in runs)
    head = (f"{len(runs)} run(s): " + ", ".join(f"{n} {st}" for st, n in sorted(statuses.items()))
            + f" ({reused} reused from disk)")
    return "\n".join([summary, "", f"## Runs routed to inspection ({len(routed)})", "", routed_markdown(routed), "",
                      "## Runs and report", "", f"- {head}", f"- report: `{html_path}` (the whole report, figures "
                      "included: artifact `triage-report-text`; `dlm-triage queue` lists the routed runs)", ""])


INLINE_FIGURES_MAX_BYTES = 3_000_000
"""The inline report embeds its figures up to this many PNG bytes in all (the Prefect UI renders data-URI images
in a markdown artifact); beyond it, each figure becomes a line naming its file."""


def inline_markdown(md_text: str, figures: Mapping[str, str | os.PathLike] | None = None) -> str:
    """report.md for a Prefect markdown artifact, readable wherever the report's files are: each figure (a
    relative link the UI cannot open) embedded as a data-URI PNG from `figures` {name: path}, or, when they are
    too large together or missing, a line naming the figure and its file."""
    import re

    blobs: dict[str, bytes] = {}
    for name, path in (figures or {}).items():
        try:
            blobs[f"{name}.png"] = Path(path).read_bytes()
        except OSError:
            continue
    if sum(len(b) for b in blobs.values()) > INLINE_FIGURES_MAX_BYTES:
        blobs = {}

    def one(m: "re.Match[str]") -> str:
        title, file = m.group(1), m.group(2)
        if file in blobs:
            return f"![{title}](data:image/png;base64,{base64.b64encode(blobs[file]).decode('ascii')})"
        return f"*Figure: {title} (`figures/{file}`, embedded in report.html)*"

    return re.sub(r"!\[([^\]]*)\]\(figures/([^)]+)\)", one, md_text)


# ----------------------------------------------------------------------------------------------------------
# data from DuckDB
@dataclass(frozen=True)
class _Data:
    calibration: dict[str, Any]
    result: dict[str, Any]
    runs: pl.DataFrame  # one row per run of the calibration's snapshot, plus group/label/monitor columns
    steps: pl.DataFrame | None  # run_id, step, loss, grad_norm, top1_freq (None: no step logs)
    monitor_label: str
    notes: list[str]


def _connect(db_path: Path) -> duckdb.DuckDBPyConnection:
    """Read-only (a report never writes the database and can run beside an ingestion); waits on a writer's lock."""
    if not Path(db_path).exists():
        raise ReportError(f"database {db_path} does not exist: ingest runs and calibrate first")
    return store.connect(db_path, read_only=True)


def _load_calibration(con: duckdb.DuckDBPyConnection, calibration_id: str | None) -> dict[str, Any]:
    cols = ["calibration_id", "created_at", "group_by", "params_json", "snapshot_json", "result_json", "status"]
    sql = f"SELECT {', '.join(cols)} FROM calibrations"
    has_seq = con.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'calibrations' "
                          "AND column_name = 'seq'").fetchall()[0][0]
    order = "seq DESC" if has_seq else "created_at DESC, calibration_id DESC"
    if calibration_id is None:
        rows = con.execute(sql + f" ORDER BY {order} LIMIT 1").fetchall()  # DuckDB 2: fetch to the end
        row = rows[0] if rows else None
        if row is None:
            raise ReportError("no calibration in the database: run `dlm-triage calibrate` first")
    else:
        rows = con.execute(sql + " WHERE calibration_id = ?", [calibration_id]).fetchall()
        row = rows[0] if rows else None
        if row is None:
            known = [r[0] for r in con.execute(
                "SELECT calibration_id FROM calibrations ORDER BY created_at DESC LIMIT 5").fetchall()]
            raise ReportError(f"calibration_id {calibration_id!r} not found; latest ones: {known}")
    cal = dict(zip(cols, row))
    for key in ("params_json", "snapshot_json", "result_json"):
        cal[key] = json.loads(cal[key]) if isinstance(cal[key], str) and cal[key] else (cal[key] or {})
    return cal


def _labels(df: pl.DataFrame, thr_by_group: Mapping[str, tuple[float | None, float | None]]) -> pl.Series:
    """stable / unstable / mid by stats.LABEL_RULE, at the calibration's own thresholds (P90, median) per group;
    a group without them (not in the calibration) gets its percentiles from the runs found now."""
    from dlm_triage import stats

    out = np.full(df.height, "mid", dtype=object)
    keys = df["group"].to_numpy()
    loss = df["final_loss"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    div = df["diverged"].to_numpy().astype(bool)
    for g in np.unique(keys):
        m = keys == g
        p90, med = thr_by_group.get(g, (None, None))
        if p90 is None or med is None:
            lab = stats.stability_labels(loss[m], div[m])
            p90, med = lab.unstable_threshold, lab.stable_threshold
        unstable, stable = stats.label_masks(loss[m], div[m], p90, med)
        sub = out[m]
        sub[unstable] = "unstable"
        sub[stable] = "stable"
        out[m] = sub
    return pl.Series("label", out.astype(str))


def _pl(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> pl.DataFrame:
    """A query's result as polars (DuckDB 2.0: through a relation; execute() results have no .pl())."""
    return con.sql(sql, params=list(params)).pl() if params else con.sql(sql).pl()


def _load_data(con: duckdb.DuckDBPyConnection, calibration_id: str | None) -> _Data:
    cal = _load_calibration(con, calibration_id)
    result = cal["result_json"]
    group_by = result.get("group_by") or cal["group_by"] or "family"
    notes: list[str] = []
    have = {r[0] for r in con.execute("SELECT column_name FROM information_schema.columns "
                                      "WHERE table_name = 'runs'").fetchall()}
    if group_by not in groups.GROUP_BY_COLUMNS or groups.group_column(group_by) not in have:
        raise ReportError(f"calibration groups by {group_by!r}, which this database cannot group by (known: "
                          f"{sorted(groups.GROUP_BY_COLUMNS)}): recalibrate with one of them")
    cols = list(dict.fromkeys([c for c in RUN_COLUMNS if c in have] + [groups.group_column(group_by)]))
    sql = f'SELECT {", ".join(cols)} FROM runs'
    params: list[Any] = []
    snap = cal["snapshot_json"]
    if snap.get("max_ingested_at") and "ingested_at" in have:
        # the calibration's snapshot: runs ingested later are not part of it
        sql += " WHERE ingested_at <= CAST(? AS TIMESTAMP)"
        params.append(str(snap["max_ingested_at"]))
    runs = groups.with_group(_pl(con, sql + " ORDER BY run_id", params), group_by)  # the one group key
    runs = runs.filter(pl.col("group").is_in(_group_names(result)))
    ids_sha = run_ids_sha256(runs["run_id"].to_list())
    if snap.get("run_ids_sha256") and snap["run_ids_sha256"] != ids_sha:
        notes.append(f"The calibration saw {snap.get('n_runs')} runs; the database now holds {runs.height} "
                     "runs of its groups (runs were added or removed since): figures and the inspection queue use "
                     "the runs found now, the verdicts and thresholds the calibration's numbers.")
    diverged = (pl.col("status") == "diverged") if "status" in runs.columns else pl.lit(False)
    if "diverged_at_step" in runs.columns:
        diverged = diverged | pl.col("diverged_at_step").is_not_null()
    runs = runs.with_columns(diverged.fill_null(False).alias("diverged"))
    thr = {n: (_num(g, "unstable_final_loss_threshold"), _num(g, "stable_final_loss_threshold"))
           for n, g in result.get("groups", {}).items()}
    runs = runs.with_columns(_labels(runs, thr))

    ids = runs["run_id"].to_list()
    steps = None
    if ids:
        con.register("_report_ids", pl.DataFrame({"run_id": ids}).to_arrow())
        steps = _pl(con, "SELECT s.run_id, s.step, s.loss, s.grad_norm, s.top1_freq, s.mask_ratio FROM steps s "
                         "JOIN _report_ids USING (run_id) ORDER BY s.run_id, s.step")
        con.unregister("_report_ids")
        if steps.height == 0:
            steps = None

    # the triage monitor: max-grad up to the calibration's k when step logs exist, else the run's max
    ks = {_heldout_k(g) for g in result.get("groups", {}).values()} - {None}
    k = ks.pop() if len(ks) == 1 else None
    monitor = runs["max_grad_norm"].cast(pl.Float64) if "max_grad_norm" in runs.columns else None
    monitor_label = "max grad norm (whole run)"
    if k is not None and steps is not None:
        upto = runsummary.max_grad_up_to_k(steps, k).rename({"max_grad_up_to_k": "_mk"})
        runs = runs.join(upto, on="run_id", how="left")
        monitor = runs["_mk"].fill_null(runs["max_grad_norm"].cast(pl.Float64))
        runs = runs.drop("_mk")
        monitor_label = f"max grad norm up to step {k}"
    runs = runs.with_columns((monitor if monitor is not None else pl.lit(None, pl.Float64)).alias("monitor"))
    return _Data(cal, result, runs, steps, monitor_label, notes)


# ----------------------------------------------------------------------------------------------------------
# figures (matplotlib Agg; each returns PNG bytes or raises _Missing(reason))
class _Missing(Exception):
    """A figure cannot be drawn from this data; the message says why (shown in the report)."""


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    # every figure uses layout="constrained": one draw per savefig (bbox_inches="tight" would draw twice)
    fig.savefig(buf, format="png", dpi=FIGURE_DPI, facecolor="white")
    _plt().close(fig)
    return buf.getvalue()


def _largest(data: _Data, names: Sequence[str], notes: list[str], what: str) -> list[str]:
    n = {g: int(data.result["groups"][g].get("n") or 0) for g in names}
    keep = sorted(names, key=lambda g: (-n[g], g))[:MAX_PANELS]
    if len(names) > MAX_PANELS:
        notes.append(f"{what}: the {MAX_PANELS} largest of {len(names)} groups are drawn "
                     f"({', '.join(sorted(set(names) - set(keep)))} left out).")
    return keep


def _fig_top1(data: _Data, notes: list[str]) -> bytes:
    groups = data.result.get("groups", {})

    def rate(g: str, key: str) -> float | None:
        # over every run of the group (no label needed: runs imported without a final loss count too)
        v = _num(groups[g], "top1_all_runs", key)
        return _num(groups[g], "top1", key) if v is None else v

    names = [g for g in groups if rate(g, "fire_rate") is not None]
    if not names:
        raise _Missing("no group has a top-1 fire rate (top-1 frequency was not logged for these runs)")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(names) + 3), 3.8), layout="constrained")
    x = np.arange(len(names))
    fire = [rate(g, "fire_rate") for g in names]
    coll = [rate(g, "collapse_rate") or 0.0 for g in names]
    w = 0.38
    b1 = ax.bar(x - w / 2, fire, w, color="#ff7f0e", label="top-1 warning fired")
    b2 = ax.bar(x + w / 2, coll, w, color="#2ca02c", label="actually collapsed")
    for bars, vals in ((b1, fire), (b2, coll)):
        for b, v in zip(bars, vals):
            ax.annotate(f"{100 * v:.0f}%", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom",
                        fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(x, [f"{g}\n(n={(groups[g].get('top1_all_runs') or {}).get('n', groups[g].get('n'))})"
                      for g in names])
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("share of runs")
    ax.set_title("Top-1 warning fire rate vs actual collapse rate")
    ax.legend(loc="upper right", fontsize=8, frameon=False, ncols=2)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


MAX_LR_FACETS = 6
"""The max-grad figure splits a group by learning rate (what drives max-grad most) up to this many rates."""


def _lr_label(lr: Any) -> str:
    return "lr ?" if lr is None else f"lr {float(lr):g}"


def _maxgrad_columns(runs: pl.DataFrame, names: Sequence[str], notes: list[str]) -> list[tuple[str, Any]]:
    """The max-grad figure's columns: one per (group, learning rate), or (group, 'all') for a group with more
    than MAX_LR_FACETS rates (said in `notes`). The learning rate moves max-grad by orders of magnitude, so
    stable/unstable pooled over rates would mostly show which rate a run had."""
    cols: list[tuple[str, Any]] = []
    for g in names:
        lrs = sorted(set(runs.filter(pl.col("group") == g)["learning_rate"].to_list()), key=lambda x: (x is None, x))
        if len(lrs) > MAX_LR_FACETS:
            notes.append(f"Max-grad figure: {g} has {len(lrs)} learning rates; drawn pooled.")
            lrs = ["all"]
        cols += [(g, lr) for lr in lrs]
    return cols


def _fig_maxgrad(data: _Data, notes: list[str]) -> bytes:
    runs = data.runs.filter(pl.col("monitor").is_not_null() & (pl.col("monitor") > 0))
    if runs.height == 0:
        raise _Missing("no run has a positive max-grad value")
    names = [g for g in _group_names(data.result) if g in set(runs["group"].to_list())]
    if not names:
        raise _Missing("none of the calibration's groups has runs with these values in the database")
    if "learning_rate" not in runs.columns:
        runs = runs.with_columns(pl.lit(None, pl.Float64).alias("learning_rate"))
    cols = _maxgrad_columns(runs, names, notes)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.5, 1.25 * len(cols) + 2.5), 4.6), layout="constrained")
    rng = np.random.default_rng(0)  # jitter only
    colours = {"stable": "#1f77b4", "unstable": "#d62728"}
    empty, ns = [], []
    for i, (g, lr) in enumerate(cols):
        sub = runs.filter(pl.col("group") == g)
        if lr != "all":
            sub = sub.filter(pl.col("learning_rate").is_null() if lr is None else pl.col("learning_rate") == lr)
        ns.append(sub.height)
        for j, lab in enumerate(("stable", "unstable")):
            v = sub.filter(pl.col("label") == lab)["monitor"].to_numpy()
            pos = i + (j - 0.5) * 0.4
            if v.size == 0:
                empty.append(f"{g}{'' if lr == 'all' else ' ' + _lr_label(lr)}: no {lab} runs")
                ax.text(pos, 0.03, f"no {lab}", ha="center", va="bottom", fontsize=7,
                        color="#888", transform=ax.get_xaxis_transform())
                continue
            ax.boxplot([v], positions=[pos], widths=0.3, showfliers=False, patch_artist=True,
                       boxprops={"facecolor": colours[lab], "alpha": 0.25}, medianprops={"color": "black"})
            ax.scatter(pos + rng.uniform(-0.1, 0.1, v.size), v, s=10, alpha=0.7, color=colours[lab],
                       linewidths=0)
    # the group's threshold across all of its columns; a thin line between groups
    for g in names:
        idx = [i for i, (gg, _lr) in enumerate(cols) if gg == g]
        thr = _threshold(data.result["groups"][g])
        if thr is not None and thr > 0:
            ax.hlines(thr, idx[0] - 0.45, idx[-1] + 0.45, colors="black", linestyles="--", linewidth=1.2)
            rejected = (data.result["groups"][g].get("registry") or {}).get("status") == "rejected"
            ax.annotate(f"{g} threshold {_fmt(thr)}" + (" (rejected: not live)" if rejected else ""),
                        (idx[0] - 0.45, thr), fontsize=7, va="bottom", ha="left",
                        xytext=(0, 2), textcoords="offset points",
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
        if idx[0] > 0:
            ax.axvline(idx[0] - 0.5, color="#c8ccd4", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(cols)), [f"{g}\n{'all rates' if lr == 'all' else _lr_label(lr)}\n(n={n})"
                                     for (g, lr), n in zip(cols, ns)], fontsize=8)
    ax.set_xlim(-0.6, len(cols) - 0.4)
    ax.set_ylabel(data.monitor_label + " (log)")
    # a short title (a long one is clipped at the figure's edge); the definitions go in the legend
    ax.set_title("Max-grad per learning rate: stable vs unstable runs", fontsize=10)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    legend = {"stable": "stable (final loss <= group median)", "unstable": "unstable (>= p90, or diverged)"}
    # below the axes: inside, it covers the threshold labels and the tallest boxes
    fig.legend(handles=[Patch(color=colours[k], alpha=0.5, label=legend[k]) for k in colours]
               + [Line2D([], [], color="black", linestyle="--", linewidth=1.2, label="group threshold")],
               fontsize=8, frameon=False, loc="outside lower center", ncols=3)
    ax.spines[["top", "right"]].set_visible(False)
    if empty:
        notes.append("Max-grad figure: " + "; ".join(empty) + " (nothing to contrast there).")
    return _png(fig)


def _k_labels(ks: Sequence[int], min_gap_decades: float = 0.12) -> list[str]:
    """Tick labels on a log axis; ticks closer than `min_gap_decades` share one label ('10,11')."""
    labels = [str(k) for k in ks]
    last = 0
    for i in range(1, len(ks)):
        if math.log10(ks[i]) - math.log10(ks[last]) < min_gap_decades:
            labels[last] += f",{ks[i]}"
            labels[i] = ""
        else:
            last = i
    return labels


def _fig_stepk(data: _Data, notes: list[str]) -> bytes:
    groups = data.result.get("groups", {})
    names = [g for g in groups if _stepk_series(groups[g])]
    if not names:
        raise _Missing("no step-k sweep in the calibration (runs have no step logs, e.g. an imported 'cells' "
                       "CSV, or too few unstable runs)")
    names = _largest(data, names, notes, "Step-k figure")
    plt = _plt()
    ncol = min(2, len(names))
    nrow = math.ceil(len(names) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(6.0 * ncol, 3.8 * nrow + 0.5), squeeze=False,
                             layout="constrained")
    for ax, g in zip(axes.flat, names):
        series = _stepk_series(groups[g])
        allk = sorted({k for s in series.values() for k in s})
        ax.axvspan(*INSPECTION_WINDOW, color="#fff3cc", alpha=0.7, zorder=0, linewidth=0,
                   label=f"inspection window k={INSPECTION_WINDOW[0]}..{INSPECTION_WINDOW[1]}")
        # the CI of each predictor as a bar at its k, the predictors side by side (a small shift on the log
        # axis): overlapping filled ribbons of three predictors, often [0, 1] wide, hide each other
        for i, (label, s) in enumerate(series.items()):
            ks = sorted(s)
            shift = 1.045 ** (i - (len(series) - 1) / 2)
            med = np.array([np.nan if s[k]["median"] is None else s[k]["median"] for k in ks])
            lo = np.array([np.nan if s[k]["lo"] is None else s[k]["lo"] for k in ks])
            hi = np.array([np.nan if s[k]["hi"] is None else s[k]["hi"] for k in ks])
            c = PREDICTOR_COLOURS.get(label)
            xs = np.asarray(ks, dtype=float) * shift
            line, = ax.plot(xs, med, marker="o", ms=4, label=label, color=c, zorder=3)
            ok = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(med)
            ax.errorbar(xs[ok], med[ok], yerr=[np.clip(med[ok] - lo[ok], 0, None), np.clip(hi[ok] - med[ok], 0, None)],
                        fmt="none", ecolor=line.get_color(), elinewidth=1.6, capsize=3, alpha=0.75, zorder=2)
        base = _baseline(groups[g])
        if base is not None:
            ax.axhline(base, color="black", linestyle=":", linewidth=1.3,
                       label=f"always-positive baseline {_fmt(base)}")
        ceiling = _baseline_ceiling(groups[g])
        if ceiling is not None and base is not None and ceiling > base:
            ax.axhline(ceiling, color="#555", linestyle="--", linewidth=0.9,
                       label=f"its ceiling (upper CI bound) {_fmt(ceiling)}")
        ax.set_xscale("log")
        ax.set_xticks(allk, _k_labels(allk))
        ax.minorticks_off()
        ax.set_xlim(min(allk) * 0.85, max(max(allk), INSPECTION_WINDOW[1]) * 1.15)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("step k")
        ax.set_ylabel("held-out precision")
        ax.set_title(f"{g} (n={groups[g].get('n')})")
        ax.spines[["top", "right"]].set_visible(False)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    h, lab = axes.flat[0].get_legend_handles_labels()
    # three columns: five entries in one row are wider than a one-group figure and get clipped
    fig.legend(h, lab, loc="outside lower center", ncols=min(3, len(lab)), fontsize=8, frameon=False)
    fig.suptitle("Step-k precision: median over split-bootstrap replicates, bars = CI", fontsize=11)
    return _png(fig)


T_BIN = 0.1
"""Width of the noise-level bins of the rank x mask figure for objectives that draw t per batch."""


def _binned_realised_t(data: _Data) -> pl.DataFrame:
    """data.runs with `mask_ratio` replaced, for runs whose objective draws t itself (llada_sft, mdlm, ...), by
    the t logged at the step of the run's max grad norm, binned to T_BIN (bin centres): their configured rho is
    a placeholder, the noise level that produced the max-grad is what the figure should place."""
    from dlm_triage.config import draws_own_t

    runs = data.runs
    if "objective" not in runs.columns or data.steps is None or "mask_ratio" not in data.steps.columns:
        return runs
    sampled = [r for r, o in zip(runs["run_id"].to_list(), runs["objective"].to_list()) if o and draws_own_t(o)]
    if not sampled:
        return runs
    at_max = (data.steps.filter(pl.col("run_id").is_in(sampled) & pl.col("grad_norm").is_finite())
              .sort("grad_norm", descending=True).group_by("run_id").first()
              .select("run_id", (((pl.col("mask_ratio") / T_BIN).floor().clip(0, 1 / T_BIN - 1) + 0.5) * T_BIN)
                      .round(3).alias("_t_bin")))
    return (runs.join(at_max, on="run_id", how="left")
            .with_columns(pl.coalesce("_t_bin", "mask_ratio").alias("mask_ratio")).drop("_t_bin"))


def _fig_heatmap(data: _Data, notes: list[str]) -> bytes:
    if "rank" not in data.runs.columns:
        raise _Missing("runs have no rank column")
    runs = _binned_realised_t(data).filter(pl.col("rank").is_not_null() & pl.col("mask_ratio").is_not_null()
                            & pl.col("monitor").is_not_null() & (pl.col("monitor") > 0))
    if runs.height == 0:
        raise _Missing("no run has a rank, a mask ratio and a positive max-grad value")
    known = set(_group_names(data.result))
    runs = runs.filter(pl.col("group").is_in(known))
    if runs.height == 0:
        raise _Missing("none of the calibration's groups has runs with these values in the database")
    # one panel per (group, model, learning rate): a rank x mask surface is never pooled over models or learning
    # rates (paper 4.2: LLaDA2.0-mini at lr 1e-4); the panels with the most runs are drawn
    for c in ("model_id", "learning_rate"):
        if c not in runs.columns:
            runs = runs.with_columns(pl.lit(None).alias(c))
    runs = runs.with_columns(pl.format("{} | {} | lr {}", pl.col("group"),
                                       pl.col("model_id").cast(pl.String).fill_null("(no model id)"),
                                       pl.col("learning_rate").cast(pl.String).fill_null("?")).alias("_panel"))
    sizes = runs.group_by("_panel").agg(pl.len().alias("n")).sort(["n", "_panel"], descending=[True, False])
    names = sizes["_panel"].to_list()[:MAX_PANELS]
    if sizes.height > MAX_PANELS:
        notes.append(f"Heatmap: the {MAX_PANELS} largest of {sizes.height} (group, model, learning rate) slices "
                     f"are drawn ({', '.join(sizes['_panel'].to_list()[MAX_PANELS:])} left out).")
    cells = (runs.filter(pl.col("_panel").is_in(names)).rename({"_panel": "panel"})
             .group_by("panel", "rank", "mask_ratio").agg(pl.col("monitor").median().alias("med"),
                                                         pl.len().alias("n")))
    vmin, vmax = float(cells["med"].min()), float(cells["med"].max())
    if vmax <= vmin:
        vmax = vmin * 1.01
    plt = _plt()
    from matplotlib.colors import LogNorm

    max_cols = max(cells.filter(pl.col("panel") == g)["mask_ratio"].n_unique() for g in names)
    panel_w = min(10.0, max(4.6, 0.62 * max_cols + 1.6))
    ncol = 1 if panel_w > 6.5 else min(2, len(names))
    nrow = math.ceil(len(names) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(panel_w * ncol + 1.2, 3.9 * nrow), squeeze=False,
                             layout="constrained")
    norm = LogNorm(vmin=vmin, vmax=vmax)
    im = None
    for ax, g in zip(axes.flat, names):
        c = cells.filter(pl.col("panel") == g)
        ranks = sorted(c["rank"].unique().to_list())
        rhos = sorted(c["mask_ratio"].unique().to_list())
        grid = np.full((len(ranks), len(rhos)), np.nan)
        nn = np.zeros_like(grid, dtype=int)
        for r, m, med, n in c.select("rank", "mask_ratio", "med", "n").iter_rows():
            grid[ranks.index(r), rhos.index(m)] = med
            nn[ranks.index(r), rhos.index(m)] = n
        im = ax.imshow(np.ma.masked_invalid(grid), norm=norm, cmap="viridis", aspect="auto", origin="lower")
        ax.set_facecolor("#d9d9d9")  # cells without runs
        # cell labels only while they fit: value + n up to 8 columns, the value alone up to 14
        if len(rhos) <= 14 and len(ranks) <= 12:
            for (i, j), v in np.ndenumerate(grid):
                if np.isfinite(v):
                    txt = f"{_fmt(v)}\nn={nn[i, j]}" if len(rhos) <= 8 else _fmt(v)
                    ax.text(j, i, txt, ha="center", va="center", fontsize=7 if len(rhos) <= 8 else 6.5,
                            color="white" if norm(v) < 0.55 else "black")
        ax.set_xticks(range(len(rhos)), [f"{m:g}" for m in rhos], rotation=45 if len(rhos) > 8 else 0)
        ax.set_yticks(range(len(ranks)), [str(int(r)) for r in ranks])
        ax.set_xlabel("mask ratio rho")
        ax.set_ylabel("LoRA rank r")
        ax.set_title(g, fontsize=9)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    from matplotlib.ticker import FuncFormatter

    cb = fig.colorbar(im, ax=axes.ravel().tolist(), label=f"median {data.monitor_label} (log)", shrink=0.9,
                      aspect=30)
    # readable ticks on a log colour scale: 1-2-5 steps inside the data range, plain numbers
    nice = [m * 10.0 ** e for e in range(math.floor(math.log10(vmin)), math.ceil(math.log10(vmax)) + 1)
            for m in (1, 2, 5)]
    ticks = [t for t in nice if vmin <= t <= vmax] or [vmin, vmax]
    cb.set_ticks(ticks)
    cb.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _fmt(v)))
    cb.ax.minorticks_off()
    fig.suptitle("Rank x mask-ratio surface of max-grad", fontsize=11)
    return _png(fig)


def _fig_top1_traj(data: _Data, notes: list[str]) -> bytes:
    if data.steps is None:
        raise _Missing("no step logs for these runs (e.g. imported 'cells' rows): no trajectories to draw")
    st = data.steps.filter(pl.col("top1_freq").is_not_null() & pl.col("top1_freq").is_not_nan())
    if st.height == 0:
        raise _Missing("the step logs have no top-1 frequency values (top-1 monitor off)")
    lab = data.runs.select("run_id", "group", "label", "final_loss")
    st = st.join(lab, on="run_id", how="inner")
    names = [g for g in _group_names(data.result) if g in set(st["group"].to_list())]
    if not names:
        raise _Missing("none of the calibration's groups has runs with these values in the database")
    names = _largest(data, names, notes, "Top-1 trajectories")
    plt = _plt()
    ncol = min(2, len(names))
    nrow = math.ceil(len(names) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(6.0 * ncol, 3.6 * nrow + 0.6), squeeze=False,
                             layout="constrained")
    for ax, g in zip(axes.flat, names):
        sub = st.filter(pl.col("group") == g)
        agg = (sub.group_by("step").agg(pl.col("top1_freq").median().alias("med"),
                                        pl.col("top1_freq").quantile(0.25, "linear").alias("q25"),
                                        pl.col("top1_freq").quantile(0.75, "linear").alias("q75"),
                                        pl.len().alias("n")).sort("step"))
        ax.fill_between(agg["step"], agg["q25"], agg["q75"], color="#9467bd", alpha=0.25, linewidth=0,
                        label="IQR over runs")
        ax.plot(agg["step"], agg["med"], color="#9467bd", linewidth=2, label="median")
        # a few individual runs: the three highest and three lowest final losses
        per = sub.select("run_id", "label", "final_loss").unique("run_id").drop_nulls("final_loss")
        pick = per.sort("final_loss", descending=True).head(3).vstack(per.sort("final_loss").head(3)).unique(
            "run_id", maintain_order=True)
        for rid, lb in pick.select("run_id", "label").iter_rows():
            t = sub.filter(pl.col("run_id") == rid).sort("step")
            ax.plot(t["step"], t["top1_freq"], linewidth=0.8, alpha=0.8,
                    color="#d62728" if lb == "unstable" else "#1f77b4" if lb == "stable" else "#7f7f7f")
        ax.axhline(LEGACY_TOP1_THRESHOLD, color="black", linestyle="--", linewidth=1,
                   label=f"legacy threshold {LEGACY_TOP1_THRESHOLD}")
        ax.axvline(LEGACY_FIRST_STEP, color="#ff7f0e", linestyle=":", linewidth=1.3,
                   label=f"legacy detector's first sample (step {LEGACY_FIRST_STEP})")
        s0 = agg.filter(pl.col("step") == agg["step"].min())
        ax.set_title(f"{g}: step-0 median top-1 {_fmt(float(s0['med'][0]))} (n={sub['run_id'].n_unique()})",
                     fontsize=10)
        ax.set_ylim(0, 1.02)
        # symlog: steps 0..10 linear (where saturation happens, paper App. B), then log out to the last step
        last = int(agg["step"].max())
        ax.set_xscale("symlog", linthresh=10, linscale=1.0)
        ax.set_xlim(0, last)
        ticks = [t for t in (0, 2, 4, 6, 8, 10, 25, 50, 100, 200, 500, 1000) if t <= last]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("step (linear to 10, log after)")
        ax.set_ylabel("top-1 frequency")
        ax.spines[["top", "right"]].set_visible(False)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    from matplotlib.lines import Line2D

    h, labels = axes.flat[0].get_legend_handles_labels()
    h += [Line2D([], [], color="#d62728", lw=0.8), Line2D([], [], color="#1f77b4", lw=0.8)]
    labels += ["run, highest final loss", "run, lowest final loss"]
    fig.legend(h, labels, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    return _png(fig)


_FIGURE_FUNCS = {
    "top1_fire_vs_collapse": _fig_top1, "maxgrad_stable_vs_unstable": _fig_maxgrad,
    "stepk_precision": _fig_stepk, "rank_mask_heatmap": _fig_heatmap, "top1_trajectories": _fig_top1_traj,
}


# ----------------------------------------------------------------------------------------------------------
# inspection queue
def _inspection_rows(con: duckdb.DuckDBPyConnection, data: _Data) -> pl.DataFrame:
    """store.inspection_queue for this calibration (threshold hits + runs routed live), restricted to the
    calibration's runs, with config columns, the store's reason and the run's outcome."""
    q = store.inspection_queue(con, calibration_id=data.calibration["calibration_id"])
    thr = {n: _threshold(g) for n, g in data.result.get("groups", {}).items()}
    runs = data.runs.with_columns(
        pl.col("group").replace_strict(thr, default=None, return_dtype=pl.Float64).alias("threshold"))
    queued = runs.join(q.select("run_id", "reason", *[c for c in ("outcome",) if c in q.columns]), on="run_id",
                       how="inner")
    why = []
    for r in queued.iter_rows(named=True):
        outcome = {"unstable": "outcome: unstable (top-decile final loss)",
                   "stable": "outcome: stable (final loss at or below the median): a false alarm",
                   "mid": "outcome: mid-band final loss"}[r["label"]]
        if r.get("diverged"):
            outcome = f"outcome: diverged at step {r.get('diverged_at_step')}"
        why.append(f"{r['reason']}; {outcome}" if r["reason"] else outcome)
    return queued.with_columns(pl.Series("why", why, dtype=pl.String)).sort("monitor", descending=True,
                                                                             nulls_last=True)


def _routed_counts(q: pl.DataFrame) -> dict[str, int]:
    """{group: runs in this calibration's inspection queue}."""
    return {str(g): n for g, n in q.group_by("group").len().iter_rows()} if q.height else {}


def _live_records(con: duckdb.DuckDBPyConnection, data: _Data) -> dict[str, Any]:
    """{group: the threshold the live early warning uses now (store.live_threshold), or None}."""
    group_by = data.result.get("group_by") or data.calibration["group_by"] or "family"
    return {g: store.live_threshold(con, g, group_by=group_by)[0] for g in _group_names(data.result)}


def _queue_outcomes(q: pl.DataFrame) -> list[str]:
    """'llada: 176 routed - 70 unstable, 86 mid-band, 20 stable (false alarms)' per group."""
    parts = []
    for g in sorted(set(q["group"].to_list())) if q.height else []:
        lab = q.filter(pl.col("group") == g)["label"].to_list()
        n_u, n_m, n_s = lab.count("unstable"), lab.count("mid"), lab.count("stable")
        parts.append(f"{g}: {len(lab)} routed - {n_u} unstable, {n_m} mid-band, {n_s} stable (false alarms)")
    return parts


QUEUE_HEADERS = ("run_id",) + CONFIG_COLUMNS + ("final_loss", "max-grad", "threshold", "why")


def _queue_rows(q: pl.DataFrame) -> list[list[Any]]:
    cols = ["run_id"] + [c for c in CONFIG_COLUMNS] + ["final_loss", "monitor", "threshold", "why"]
    return [[r.get(c) for c in cols] for r in q.with_columns(
        *[pl.lit(None).alias(c) for c in cols if c not in q.columns]).iter_rows(named=True)]


# ----------------------------------------------------------------------------------------------------------
# writing
CSS = """
html{background:#f6f7f9}
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;background:#f6f7f9;color:#1d2330;
 font-size:14px;line-height:1.45}
main{max-width:1200px;margin:0 auto;padding:24px 28px 60px;background:#fff;min-height:100vh}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:19px;margin:34px 0 10px;padding-bottom:4px;border-bottom:2px solid #e3e6ec}
h3{font-size:15px;margin:22px 0 6px}
.meta{color:#5a6275;font-size:13px}.meta code{background:#f0f2f5;padding:1px 5px;border-radius:3px}
.warnings{background:#fff4e5;border:1px solid #f0a33a;border-left:6px solid #e8890c;padding:10px 16px;margin:16px 0;
 border-radius:4px}.warnings h2{border:0;margin:4px 0;font-size:16px;color:#8a4b00}.warnings li{margin:3px 0}
.warnings h3{margin:10px 0 2px;font-size:14px;color:#8a4b00}.warnings ul{margin:2px 0}
details.warnings>summary{cursor:pointer;color:#8a4b00;font-weight:600}details.wkind{margin:2px 0 2px 12px}
ul.answers{list-style:none;padding:0;margin:8px 0 12px}ul.answers li{padding:7px 12px;margin:4px 0;
 border-radius:4px;font-size:15px}ul.answers li.live{background:#e8f5ea;border-left:6px solid #1b7a2e}
ul.answers li.none{background:#f4f4f6;border-left:6px solid #8a8f9c}
.note{background:#eef4fb;border-left:4px solid #5b8bd0;padding:6px 12px;margin:8px 0;color:#28406a;border-radius:3px}
.missing{background:#f7f7f7;border:1px dashed #b0b6c2;padding:14px 16px;margin:8px 0;color:#4a5060;border-radius:4px}
.tablewrap{overflow-x:auto;margin:8px 0}
.tablewrap.scroll{max-height:560px;overflow-y:auto}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{border:1px solid #dde1e8;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#eef0f4;position:sticky;top:0}
tbody tr:nth-child(even){background:#fafbfc}
td{font-variant-numeric:tabular-nums}
table.verdicts td:nth-child(1){font-weight:600;white-space:nowrap}
table.verdicts td:nth-child(2){white-space:nowrap}
table.verdicts td:nth-child(3){font-size:12px;color:#384050;max-width:520px}
tr.v-supported td:nth-child(2){color:#1b7a2e;font-weight:700}
tr.v-not td:nth-child(2){color:#b3261e;font-weight:700}
tr.v-partly td:nth-child(2){color:#a86400;font-weight:700}
tr.v-na td:nth-child(2){color:#6b7280;font-weight:700}
table.queue{font-size:12px}table.queue th,table.queue td{padding:4px 6px}
table.queue td:first-child{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11px;white-space:nowrap}
table.queue td:last-child{min-width:260px}
figure{margin:14px 0 26px}figure img{max-width:100%;height:auto;border:1px solid #e3e6ec;display:block}
figcaption{color:#4a5060;font-size:13px;margin-top:6px}
details{margin:10px 0}pre{background:#f6f8fa;padding:10px;overflow-x:auto;font-size:12px}
"""


def _verdict_class(v: str) -> str:
    return {"supported": "v-supported", "not supported on this data": "v-not", "partly supported": "v-partly"}.get(
        v, "v-na")


CONNECT_HEADERS = ("run A (t=0)", "run B (t=1)", "path", "loss A", "loss B", "max loss", "barrier", "connection")


def _connectivity(con: duckdb.DuckDBPyConnection, data: _Data) -> pl.DataFrame:
    """Stored LoRA-Curve connections (`store.connect_paths`), each in the group of its run A in this calibration
    ('(not in this calibration)' otherwise); empty when none were stored."""
    conn = store.connections(con)
    if conn.is_empty():
        return conn
    groups = data.runs.select(pl.col("run_id").alias("run_a"), pl.col("group").cast(pl.Utf8))
    return (conn.join(groups, on="run_a", how="left")
            .with_columns(pl.col("group").fill_null("(not in this calibration)"))
            .sort("group", "created_at", "connect_id", "path", descending=[False, True, False, False]))


def _connect_rows(sub: pl.DataFrame) -> list[list[Any]]:
    return [[r["run_a"], r["run_b"], r["path"], r["loss_a"], r["loss_b"], r["max_loss"], r["barrier"],
             r["connect_id"]] for r in sub.iter_rows(named=True)]


def _connectivity_html(conn: pl.DataFrame) -> str:
    parts = ["<section id='connectivity'><h2>Connectivity between runs (LoRA-Curve)</h2>"
             "<p>Held-out loss along the paths between two runs' adapters (<code>dlm-triage connect</code>): "
             "linear in the product B A, linear in the factors, and the trained anchored Bezier curve. Barrier = "
             "max loss on the path - mean of the endpoint losses.</p>"]
    for group in conn.get_column("group").unique(maintain_order=True).to_list():
        sub = conn.filter(pl.col("group") == group)
        parts.append(f"<h3>{html.escape(str(group))}</h3>" + _html_table(CONNECT_HEADERS, _connect_rows(sub)))
        for fig in sub.get_column("figure").unique(maintain_order=True).to_list():
            if fig and Path(fig).is_file():
                b64 = base64.b64encode(Path(fig).read_bytes()).decode("ascii")
                parts.append(f"<figure><img src=\"data:image/png;base64,{b64}\" alt=\"connectivity profile\">"
                             f"<figcaption>{html.escape(Path(fig).name)}</figcaption></figure>")
    return "".join(parts) + "</section>"


def _connectivity_md(conn: pl.DataFrame) -> list[str]:
    md = ["## Connectivity between runs (LoRA-Curve)", "",
          "Held-out loss along linear (product B A, factors) and trained Bezier paths between two runs' adapters; "
          "barrier = max loss on the path - mean of the endpoint losses.", ""]
    for group in conn.get_column("group").unique(maintain_order=True).to_list():
        sub = conn.filter(pl.col("group") == group)
        md += [f"### {group}", "", _md_table(CONNECT_HEADERS, _connect_rows(sub)), ""]
        md += [f"![connectivity]({fig})" for fig in sub.get_column("figure").unique(maintain_order=True).to_list()
               if fig] + [""]
    return md


def write_report(db_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                 calibration_id: str | None = None) -> ReportPaths:
    """Write ``report.html``, ``report.md`` and ``figures/*.png`` for one calibration into
    ``out_dir/<calibration_id>/`` and, for the latest calibration, point ``out_dir/latest`` at that folder: a
    report never replaces or deletes another calibration's files.

    `calibration_id` None: the latest calibration (by created_at). Reads the database read-only.
    Raises ReportError when the database has no (such) calibration.
    """
    con = _connect(Path(db_path))
    try:
        data = _load_data(con, calibration_id)
        queue = _inspection_rows(con, data)
        conn = _connectivity(con, data)
        # the live thresholds are today's: they answer for the latest calibration, not for an older one
        latest = _load_calibration(con, None)["calibration_id"] == data.calibration["calibration_id"]
        live = _live_records(con, data) if latest else None
    finally:
        con.close()
    out = output_dir(out_dir, str(data.calibration["calibration_id"]))
    fig_dir = out / "figures"

    notes = list(data.notes)
    pngs: dict[str, bytes] = {}
    missing: dict[str, str] = {}
    for name, _title in FIGURES:
        try:
            pngs[name] = _FIGURE_FUNCS[name](data, notes)
        except _Missing as e:
            missing[name] = str(e)
    fig_paths = {}
    for name, blob in pngs.items():
        fig_paths[name] = fig_dir / f"{name}.png"
        write_bytes_atomic(fig_paths[name], blob)
    # a figure missing now must not leave a stale PNG from an earlier report next to the new one
    for name in missing:
        (fig_dir / f"{name}.png").unlink(missing_ok=True)

    result, cal = data.result, data.calibration
    vs = verdicts(result)
    title = f"dlm-triage calibration report - {cal['calibration_id']}"
    meta = (f"calibration <code>{html.escape(str(cal['calibration_id']))}</code> - created "
            f"{html.escape(str(cal['created_at']))} - status <b>{html.escape(str(cal['status']))}</b> - grouped by "
            f"<b>{html.escape(str(result.get('group_by') or cal['group_by']))}</b> - {data.runs.height} runs, "
            f"{len(_group_names(result))} group(s) - triage monitor: {html.escape(data.monitor_label)}")
    kw = result.get("fire_step_kruskal") or {}
    per_group = [[n, g.get("n"), g.get("n_stable"), g.get("n_unstable"), _num(g, "unstable_final_loss_threshold"),
                  _num(g, "top1", "fire_rate"), _num(g, "top1", "collapse_rate"),
                  _num(g, "top1", "precision_unstable"), _num(g, "maxgrad", "median_stable"),
                  _num(g, "maxgrad", "median_unstable"), _num(g, "maxgrad", "median_ratio"),
                  _ci(_num(g, "maxgrad", "ratio_ci_low"), _num(g, "maxgrad", "ratio_ci_high")),
                  _num(g, "maxgrad", "mw_p_bonferroni"), (g.get("maxgrad") or {}).get("bonferroni_m")]
                 for n, g in result.get("groups", {}).items()]
    conc_rows = concentration_rows(result)
    group_headers = ("group", "n", "stable", "unstable", "unstable if final loss >=", "top-1 fire rate",
                     "collapse rate", "top-1 precision (unstable)", "max-grad median stable",
                     "median unstable", "ratio", "ratio CI", "MW p_Bonf", "Bonferroni m")

    # ---- HTML
    h: list[str] = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
                    f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
                    f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body><main>",
                    f"<h1>dlm-triage calibration report</h1><p class='meta'>{meta}</p>"]
    routed = _routed_counts(queue)
    answers = group_answers(result, routed=routed, live=live)
    h.append(_html_answers(answers) + _html_warnings(result) + "</section>")
    h.append("<section id='verdicts'><h2>Verdicts</h2>"
             "<p>Each verdict is computed from this calibration's numbers (rules in <code>dlm_triage/report.py"
             "</code>).</p>"
             + _html_table(VERDICT_HEADERS, [(v.recommendation, v.verdict, v.evidence, v.detail) for v in vs],
                           cls="verdicts", row_classes=[_verdict_class(v.verdict) for v in vs]) + "</section>")
    h.append("<section id='definitions'><h2>Definitions used</h2>"
             + _html_table(("definition", "rule"), definitions(result)) + "</section>")
    h.append("<section id='thresholds'><h2>Per-group max-grad thresholds</h2>"
             + _html_table(THRESHOLD_HEADERS, _threshold_rows(result)) + "<h3>Group statistics</h3>"
             + _html_table(group_headers, per_group)
             + ("<h3>Gradient concentration</h3>" + _html_table(CONCENTRATION_HEADERS, conc_rows)
                if conc_rows else "")
             + (f"<p class='meta'>Legacy fire-step across groups: Kruskal-Wallis H = {_fmt(_num(kw, 'H'))}, "
                f"p = {_fmt(_num(kw, 'p'))}.</p>" if kw else "") + "</section>")
    outcome = _queue_outcomes(queue)
    h.append(f"<section id='inspection'><h2>Runs routed to inspection ({queue.height})</h2>"
             "<p>Runs whose max-grad is at or above their group's threshold (and runs the live early warning "
             "flagged), highest max-grad first.</p>"
             + (f"<p class='note'>{'<br>'.join(html.escape(o) for o in outcome)}</p>" if outcome else "")
             + (_html_table(QUEUE_HEADERS, _queue_rows(queue), cls="queue", scroll=True) if queue.height
                else "<p class='missing'>No run is at or above its group's threshold.</p>")
             + "</section>")
    h.append("<section id='figures'><h2>Figures</h2>")
    for i, (name, ftitle) in enumerate(FIGURES, 1):
        h.append(f"<h3 id='fig-{name}'>Figure {i}. {html.escape(ftitle)}</h3>")
        if name in pngs:
            b64 = base64.b64encode(pngs[name]).decode("ascii")
            h.append(f"<figure><img src=\"data:image/png;base64,{b64}\" alt=\"{html.escape(ftitle)}\">"
                     f"<figcaption>{html.escape(_CAPTIONS[name])}</figcaption></figure>")
        else:
            h.append(f"<div class='missing'><b>Figure missing:</b> {html.escape(missing[name])}.</div>")
    h.append("</section>")
    if conn.height:
        h.append(_connectivity_html(conn))
    if notes:
        h.append("<section id='notes'><h2>Notes</h2>" + "".join(
            f"<div class='note'>{html.escape(n)}</div>" for n in notes) + "</section>")
    h.append("<section id='provenance'><h2>Provenance</h2><details><summary>calibration parameters, snapshot "
             "and provenance</summary><pre>" + html.escape(json.dumps(
                 {"params": cal["params_json"], "snapshot": cal["snapshot_json"],
                  "provenance": result.get("provenance")}, indent=2, default=str)) + "</pre></details></section>")
    h.append("</main></body></html>")
    html_path = out / "report.html"
    write_bytes_atomic(html_path, "\n".join(h).encode("utf-8"))

    # ---- Markdown (same tables, relative figure links)
    md = ["# dlm-triage calibration report", "", meta.replace("<code>", "`").replace("</code>", "`")
          .replace("<b>", "**").replace("</b>", "**"), ""]
    md += ["## Answer, per group", "", *([f"- {a.line}" for a in answers] or ["No group was calibrated."]), ""]
    md += _md_warnings(result, limit=None)
    md += ["## Verdicts", "", _md_table(VERDICT_HEADERS, [(v.recommendation, f"**{v.verdict}**", v.evidence,
                                                          v.detail) for v in vs]), "",
           "## Definitions used", "", _md_table(("definition", "rule"), definitions(result)), "",
           "## Per-group max-grad thresholds", "", _md_table(THRESHOLD_HEADERS, _threshold_rows(result)), "",
           "### Group statistics", "", _md_table(group_headers, per_group), "",
           *(["### Gradient concentration", "", _md_table(CONCENTRATION_HEADERS, conc_rows), ""] if conc_rows
             else []),
           f"## Runs routed to inspection ({queue.height})", "", *[f"- {o}" for o in outcome], "",
           _md_table(QUEUE_HEADERS, _queue_rows(queue)) if queue.height else "No run is at or above its "
           "group's threshold.", "", "## Figures", ""]
    for i, (name, ftitle) in enumerate(FIGURES, 1):
        md.append(f"### Figure {i}. {ftitle}")
        md += ["", f"![{ftitle}](figures/{name}.png)", "", _CAPTIONS[name], ""] if name in pngs else [
            "", f"*Figure missing:* {missing[name]}.", ""]
    if conn.height:
        md += _connectivity_md(conn)
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    md_path = out / "report.md"
    write_bytes_atomic(md_path, "\n".join(md).encode("utf-8"))
    if calibration_id is None:
        point_latest(out_dir, out.name)
    routed_rows = tuple({"run_id": r["run_id"], "group": r["group"], "label": r["label"],
                         "outcome": r.get("outcome"), "why": r["why"]} for r in queue.iter_rows(named=True))
    return ReportPaths(html=html_path, markdown=md_path, figures=fig_paths, missing=missing,
                       answers=tuple(answers), routed=routed_rows,
                       summary=summary_markdown(result, routed=routed, live=live))


_CAPTIONS = {
    "top1_fire_vs_collapse": "Share of runs where the legacy top-1 warning fired (top-1 frequency > "
                             f"{LEGACY_TOP1_THRESHOLD} at some step >= {LEGACY_FIRST_STEP}: it first samples at "
                             f"step {LEGACY_FIRST_STEP}, then every step until it fires) next to the share that "
                             "actually collapsed. A warning that fires far more often than collapse happens has "
                             "no precision.",
    "maxgrad_stable_vs_unstable": "Max-grad per run, one column per group and learning rate (the rate moves "
                                  "max-grad by orders of magnitude), stable (final loss at or below the group "
                                  "median) vs unstable (final loss at/above the group's 90th percentile, or "
                                  "diverged); mid-band runs are left out. Dashed: the group's threshold.",
    "stepk_precision": "Held-out precision of each predictor read at step k (median over split-bootstrap "
                       "replicates; bar = CI, predictors side by side at each k). Dotted: the always-positive "
                       "baseline (flag every run); dashed: its ceiling, the bar max-grad's lower CI bound must "
                       "clear. Shaded: "
                       f"the inspection window k={INSPECTION_WINDOW[0]}..{INSPECTION_WINDOW[1]}. The last k's "
                       "loss is the label itself.",
    "rank_mask_heatmap": "Median max-grad per (LoRA rank, mask ratio) cell within one model at one learning "
                         "rate (one panel per group | model | learning rate; never pooled), log colour scale; "
                         "n = runs per cell; grey = no runs in that cell. Runs whose objective draws t per batch "
                         "(llada_sft, mdlm, ...) sit at the t of their max-grad step, binned to 0.1.",
    "top1_trajectories": "Top-1 frequency from step 0: median and IQR over runs, plus the three runs with the "
                         "highest (red) and lowest (blue) final loss. Dashed: the legacy 0.5 threshold; dotted: "
                         "the legacy detector's first sample (step 11). Curves already above 0.5 at step 0 show "
                         "pre-equilibrium "
                         "saturation: the warning fires before training can matter.",
}
