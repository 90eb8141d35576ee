"""`calibrate(inputs)`: every group's calibration, then the cross-group parts (Bonferroni over the tested
groups, threshold transfer, fire step across groups), provenance, and the JSON-ready result."""

from __future__ import annotations

import copy
import datetime as _dt
import functools
import hashlib
import json
import math
import warnings
from typing import Mapping, Sequence

import numpy as np
import polars as pl

from dlm_triage import groups as groups_mod
from dlm_triage import stats
from dlm_triage.calibrate.group import _group
from dlm_triage.calibrate.rules import GROUP_BY_COLUMNS, REGISTRY_K
from dlm_triage.calinputs import CalibrationInputs, Trajectories, snapshot_of
from dlm_triage.fsutil import json_safe


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
              "label_quantiles": dict(stats.LABEL_QUANTILES), "label_percentile_method": stats.PERCENTILE_METHOD,
              "label_rule": stats.LABEL_RULE, "registry_k": REGISTRY_K}
    top_warnings: list[str] = []
    runs, traj = inputs.runs, inputs.traj
    ks_used, rows_all = _trajectory_rows(runs, traj, ks, top_warnings)
    if runs.get_column("run_id").n_unique() != runs.height:
        raise ValueError("`inputs.runs.run_id` must be unique")
    # the one group key (groups.py): NULL and '' are one group, families compare case-insensitively
    keys = groups_mod.group_keys(runs, group_by)
    null = groups_mod.NULL_GROUP
    if keys.eq(null).any():
        top_warnings.append(f"{int(keys.eq(null).sum())} run(s) have no {GROUP_BY_COLUMNS[group_by]}: "
                            f"grouped as {null!r}")
    names = sorted(set(keys.to_list()))
    groups: dict[str, dict] = {}
    arrays: dict[str, dict] = {}
    with warnings.catch_warnings():
        # the results carry the warnings; DegenerateDataWarning would only repeat them on stderr
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        kv = keys.to_numpy()
        for name in names:
            sel = kv == name
            groups[name], arrays[name] = _group(
                name, runs.filter(pl.Series(sel)), traj, rows_all[sel] if rows_all is not None else None,
                ks=ks_used, n_resamples=int(n_resamples), stepk_resamples=int(stepk_resamples),
                cl=float(confidence_level), test_size=float(test_size), seed=int(seed))
        _bonferroni(groups, arrays, bonferroni_m, top_warnings)
        transfer = _transfer(groups, arrays)
        kw_block, pairwise = _fire_step_across(arrays, top_warnings)
    return _jsonable(_result(inputs, group_by, params, groups, transfer, kw_block, pairwise, ks_used, top_warnings))


def _trajectory_rows(runs: pl.DataFrame, traj: Trajectories | None, ks: Sequence[int],
                     top_warnings: list[str]) -> tuple[list[int], np.ndarray | None]:
    """The ks the logs reach and each run's row in the trajectories (-1: no step log; None: no trajectories)."""
    if traj is None:
        top_warnings.append("no trajectories (cells import or no step logs): step-k sweep skipped; held-out "
                            "threshold and registry use the whole-run max grad norm")
        return [], None
    horizon = traj.n_steps - 1
    skipped = [k for k in ks if k > horizon]
    if skipped:
        top_warnings.append(f"ks {skipped} exceed the logged horizon (step {horizon}): skipped")
    pos = {r: i for i, r in enumerate(traj.run_ids)}
    return [k for k in ks if k <= horizon], np.array([pos.get(r, -1) for r in runs.get_column("run_id").to_list()],
                                                     np.int64)


def _bonferroni(groups: dict[str, dict], arrays: dict[str, dict], bonferroni_m: int | None,
                top_warnings: list[str]) -> None:
    """Bonferroni (one-sided p, H1: unstable > stable) over m contrasts, the given m else the groups tested,
    written into each group's maxgrad block."""
    tested = [nm for nm in groups if arrays[nm]["tested"]]
    m = int(bonferroni_m) if bonferroni_m is not None else len(tested)
    m_source = (f"given (bonferroni_m={m})" if bonferroni_m is not None
                else f"the groups tested here ({len(tested)})")
    if bonferroni_m is not None and m < len(tested):
        top_warnings.append(f"bonferroni_m={m} is below the {len(tested)} group(s) tested here: the "
                            "correction is weaker than one test per tested group")
    for nm, g in groups.items():
        mg = g["maxgrad"]
        mg["bonferroni_m"] = m
        mg["bonferroni_m_source"] = m_source
        if nm in tested:
            mg["mw_p_bonferroni"] = stats.bonferroni(arrays[nm]["mw_p"], m)


def _transfer(groups: dict[str, dict], arrays: dict[str, dict]) -> dict[str, dict]:
    """{source group: {target group: metrics}} of each group's held-out whole-run max-grad threshold on every group."""
    transfer: dict[str, dict] = {}
    for src in groups:
        thr = groups[src]["heldout"]["threshold"]
        row = {}
        for dst, a in arrays.items():
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
    return transfer


def _fire_step_across(arrays: dict[str, dict], top_warnings: list[str]) -> tuple[dict, list[dict]]:
    """The legacy warning's fire step across groups: Kruskal-Wallis, and Mann-Whitney per pair (Bonferroni)."""
    names = list(arrays)
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
    return kw_block, pairwise


def _result(inputs: CalibrationInputs, group_by: str, params: dict, groups: dict[str, dict], transfer: dict,
            kw_block: dict, pairwise: list[dict], ks_used: list[int], top_warnings: list[str]) -> dict:
    """The calibration dict: its id (snapshot, parameters, creation time), provenance, and every part."""
    runs, traj = inputs.runs, inputs.traj
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    snapshot = snapshot_of(runs)
    cal_id = "cal-" + hashlib.sha256(json.dumps({"snapshot": snapshot, "params": params, "created_at": created},
                                                sort_keys=True).encode()).hexdigest()[:16]
    prov = _provenance()
    prov.update({"parameters": params, "seed": params["seed"], "snapshot": snapshot,
                 "trajectories": None if traj is None else {"n_runs": len(traj.run_ids), "n_steps": traj.n_steps}})
    skipped_all = [{"group": nm, **sk} for nm, g in groups.items() for sk in g.get("skipped", [])]
    if traj is None:
        skipped_all.append({"group": None, "analysis": "step-k sweep (max-grad-up-to-k, loss-at-k, max-top1-up-to-k)",
                            "runs": runs.height, "why": "no step logs"})
    return {"calibration_id": cal_id, "created_at": created, "group_by": group_by,
            "group_column": GROUP_BY_COLUMNS[group_by], "params": params, "snapshot": snapshot, "provenance": prov,
            "groups": groups, "transfer": transfer, "fire_step_kruskal": kw_block, "fire_step_pairwise": pairwise,
            "ks_used": ks_used, "skipped": skipped_all, "collapse_definitions": _collapse_definitions(runs),
            "warnings": top_warnings}


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
