"""A calibration result as a frozen record: what the store registers, read once from the JSON contract.

`calibrate.calibrate` returns the JSON contract (docs/ARCHITECTURE.md, "Calibration JSON contract");
`CalibrationResult.from_json` reads, once, into attributes what the stages after calibration act on: per group
the registry rule (its numbers, whether it may go live), the held-out and split-bootstrap numbers, the top-1 and
max-grad contrasts, the step-k sweep and the gradient concentration; across groups the transfer matrix, the
warnings and what was skipped. `to_json()` gives the contract back exactly as it came (the stored `result_json`
is its key-sorted dump, byte for byte what it was). `store.save_calibration` and the report read the
attributes instead of walking the dict; a number that is absent, null or not finite reads as None.

Prefect-free.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from dlm_triage.fsutil import finite_or_none
from dlm_triage.tables import int32_or_none

__all__ = ["DEGENERATE_FLAGS", "Registry", "HeldOut", "SplitBootstrap", "Top1", "MaxGrad", "Precision", "Moments",
           "Concentration", "Transfer", "GroupResult", "CalibrationResult"]

DEGENERATE_FLAGS = frozenset({"degenerate", "constant_final_loss"})
"""Group flags (calibrate/group.py) under which a group's threshold is stored but never registered as accepted."""


@dataclass(frozen=True)
class Registry:
    """A group's rule for the live early warning: positive iff max-grad up to step `k` (whole run when None)
    >= `threshold`, with the held-out evidence it was chosen on."""

    monitor: str
    k: int | None
    threshold: float | None
    """None when the calibration found none (or it is not finite)."""
    ci_low: float | None
    ci_high: float | None
    n: int | None
    n_unstable: int | None
    precision: float | None
    recall: float | None
    f1: float | None
    accepted: bool
    """The threshold may go live: it is finite, and neither the group nor the rule is degenerate (a flag in
    DEGENERATE_FLAGS, `degenerate`, or the rule's own `accepted: false`)."""
    precision_ci_low: float | None = None
    """The rule's split-bootstrap precision CI and the always-positive baseline ceiling it is judged against."""
    precision_ci_high: float | None = None
    baseline_ceiling: float | None = None
    reasons: tuple[str, ...] = ()
    """Why the calibration rejected the rule (its `rejection_reasons`, else the group's `degenerate_reasons`)."""
    rejection_reasons: tuple[str, ...] = ()
    """The rule's own `rejection_reasons` alone (what the report lists beside a rejected rule)."""
    status: str | None = None
    """The calibration's word on the rule: 'accepted' or 'rejected' (None when it does not say)."""
    baseline_precision: float | None = None
    own_ci: bool = False
    """The rule carries its own split-bootstrap precision CI (the key is there, even when null): its numbers are
    the rule's; without it, a reader falls back to the whole-run held-out rule and `split_bootstrap`."""


@dataclass(frozen=True)
class HeldOut:
    """The whole-run rule chosen on the train split and scored on the held-out split (group `heldout`)."""

    k: int | None = None
    """The step max-grad-up-to-k is read at; None: the whole run."""
    threshold: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    baseline_precision: float | None = None


@dataclass(frozen=True)
class SplitBootstrap:
    """Held-out precision over split-bootstrap replicates, and the always-positive baseline over the same ones
    (its ceiling `baseline_precision_ci_high` is what the lower bound must clear)."""

    precision_ci_low: float | None = None
    precision_ci_high: float | None = None
    """The held-out precision's CI over the replicates (the whole-run rule's)."""
    baseline_precision_median: float | None = None
    baseline_precision_ci_high: float | None = None


@dataclass(frozen=True)
class Top1:
    """The legacy top-1 warning in a group (`top1`: labelled runs; `top1_all_runs`: every run, `n` of them)."""

    n: int | None = None
    """Runs counted (top1_all_runs: every run of the group, with a final loss or not)."""
    fire_rate: float | None = None
    collapse_rate: float | None = None
    """Shares of those runs where the warning fired / that actually collapsed."""
    precision_collapse: float | None = None
    precision_unstable: float | None = None


@dataclass(frozen=True)
class MaxGrad:
    """Whole-run max-grad, stable vs unstable: medians, their ratio with its CI, Mann-Whitney p (Bonferroni)."""

    median_stable: float | None = None
    median_unstable: float | None = None
    median_ratio: float | None = None
    """median unstable / median stable."""
    ratio_ci_low: float | None = None
    ratio_ci_high: float | None = None
    mw_p_bonferroni: float | None = None
    """Mann-Whitney U p-value (unstable > stable), Bonferroni-corrected for `bonferroni_m` tests."""
    bonferroni_m: int | None = None
    bonferroni_m_source: str | None = None
    """Where m came from (`calibrate --bonferroni-m`, or the groups tested)."""


@dataclass(frozen=True)
class Precision:
    """One step-k cell: a predictor's held-out precision, median and CI over the split-bootstrap replicates."""

    median: float | None
    ci_low: float | None
    ci_high: float | None


@dataclass(frozen=True)
class Moments:
    n: int | None
    mean: float | None
    sd: float | None


@dataclass(frozen=True)
class Concentration:
    """A logged gradient-concentration definition (calibrate.CONCENTRATION_DEFINITIONS) over a group's runs."""

    definition: str
    gini: Moments
    top1_share: Moments


@dataclass(frozen=True)
class Transfer:
    """A source group's held-out threshold applied to every run of a target group."""

    precision: float | None
    same_group: bool


@dataclass(frozen=True)
class GroupResult:
    """One group of a calibration: its name and its registry rule (None when the calibration registered none);
    the rest of the group's numbers stay in the JSON contract (`to_json`)."""

    name: str
    registry: Registry | None
    _json: Mapping[str, Any] = field(repr=False, compare=False)
    n: int | None = None
    n_stable: int | None = None
    n_unstable: int | None = None
    unstable_final_loss_threshold: float | None = None
    """The group's label thresholds (P90 and median of final loss, `stats.LABEL_RULE`)."""
    stable_final_loss_threshold: float | None = None
    label_rule: str | None = None
    label_percentile_method: str | None = None
    heldout: HeldOut = HeldOut()
    split_bootstrap: SplitBootstrap = SplitBootstrap()
    top1: Top1 = Top1()
    top1_all_runs: Top1 | None = None
    maxgrad: MaxGrad = MaxGrad()
    stepk: Mapping[int, Mapping[str, Precision]] = field(default_factory=dict)
    """{k: {predictor key (calibrate.py: max_grad, loss, max_top1): Precision}}, in the calibration's order."""
    concentration: Mapping[str, Concentration] = field(default_factory=dict)
    """The logged definitions only."""
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return copy.deepcopy(dict(self._json))


@dataclass(frozen=True)
class CalibrationResult:
    calibration_id: str | None
    group_by: str
    params: Mapping[str, Any]
    """The calibration's parameters (top-level `params`, else `provenance.parameters`); {} when neither."""
    snapshot: Mapping[str, Any] | None
    """Which runs it saw (calinputs.snapshot_of); None when the result does not say."""
    groups: Mapping[str, GroupResult]
    _json: Mapping[str, Any] = field(repr=False, compare=False)
    provenance: Mapping[str, Any] = field(default_factory=dict)
    n_steps: int | None = None
    """Steps per trajectory the step-k sweep saw (`provenance.trajectories.n_steps`)."""
    transfer: Mapping[str, Mapping[str, Transfer]] = field(default_factory=dict)
    """{source group: {target group: Transfer}}; the diagonal is the target's own threshold."""
    warnings: tuple[str, ...] = ()
    skipped: tuple[Mapping[str, Any], ...] = ()
    """What was left out of which analysis: {group, analysis, runs, why}."""
    collapse_definitions: Mapping[str, Any] = field(default_factory=dict)
    """{collapse definition: runs it applies to}."""
    fire_step_kruskal: tuple[float | None, float | None] | None = None
    """(H, p) of the legacy fire step across groups; None when not computed."""

    @property
    def accepted(self) -> bool:
        """At least one group's threshold may go live."""
        return any(g.registry is not None and g.registry.accepted for g in self.groups.values())

    def to_json(self) -> dict[str, Any]:
        """The JSON contract exactly as it was read."""
        return copy.deepcopy(dict(self._json))

    @classmethod
    def from_json(cls, result: Mapping[str, Any]) -> "CalibrationResult":
        """Read a calibration dict (calibrate.calibrate's, or one written by hand in the same contract).
        ValueError names what is malformed."""
        if not isinstance(result, Mapping) or not isinstance(result.get("groups"), Mapping):
            raise ValueError("result must be a calibration dict with a 'groups' mapping (see calibrate.calibrate)")
        result = copy.deepcopy(dict(result))
        prov = result.get("provenance") if isinstance(result.get("provenance"), Mapping) else {}
        groups = {str(name): _group(str(name), g) for name, g in result["groups"].items()}
        traj = prov.get("trajectories") if isinstance(prov.get("trajectories"), Mapping) else {}
        kw = result.get("fire_step_kruskal")
        return cls(calibration_id=None if not result.get("calibration_id") else str(result["calibration_id"]),
                   group_by=str(result.get("group_by") or "family"),
                   params=result.get("params") or prov.get("parameters") or prov.get("params") or {},
                   snapshot=result.get("snapshot") or prov.get("snapshot") or None,
                   groups=groups, _json=result, provenance=prov,
                   n_steps=_int(traj.get("n_steps")),
                   transfer=_transfer(result.get("transfer")),
                   warnings=tuple(str(w) for w in result.get("warnings") or ()),
                   skipped=tuple(sk for sk in result.get("skipped") or () if isinstance(sk, Mapping)),
                   collapse_definitions=dict(result.get("collapse_definitions") or {}),
                   fire_step_kruskal=(finite_or_none(kw.get("H")), finite_or_none(kw.get("p")))
                   if isinstance(kw, Mapping) and kw else None)


def _m(d: Any, key: str) -> Mapping[str, Any]:
    v = d.get(key) if isinstance(d, Mapping) else None
    return v if isinstance(v, Mapping) else {}


def _int(x: Any) -> int | None:
    """A count or step the report shows (JSON may carry it as an integral float); None when it is not an integral
    number: these are read, never acted on, so an odd value is shown as missing rather than refused."""
    v = finite_or_none(x)
    return int(v) if v is not None and v.is_integer() else None


def _fields(cls: type, d: Mapping[str, Any], **extra: Any) -> Any:
    """`cls` with every float field read from `d` by its own name (finite_or_none), `extra` given."""
    names = [f.name for f in dataclasses.fields(cls) if f.name not in extra]
    return cls(**{n: finite_or_none(d.get(n)) for n in names}, **extra)


def _top1(d: Mapping[str, Any]) -> Top1:
    return _fields(Top1, d, n=_int(d.get("n")))


def _stepk(d: Mapping[str, Any]) -> dict[int, dict[str, Precision]]:
    out: dict[int, dict[str, Precision]] = {}
    for k_str, preds in d.items():
        try:
            k = int(k_str)
        except ValueError:
            continue
        if isinstance(preds, Mapping):
            out[k] = {str(p): Precision(finite_or_none(v.get("precision_median")),
                                        finite_or_none(v.get("precision_ci_low")),
                                        finite_or_none(v.get("precision_ci_high")))
                      for p, v in preds.items() if isinstance(v, Mapping)}
    return out


def _moments(d: Mapping[str, Any]) -> Moments:
    return Moments(d.get("n"), finite_or_none(d.get("mean")), finite_or_none(d.get("sd")))


def _transfer(tr: Any) -> dict[str, dict[str, Transfer]]:
    return {str(src): {str(tgt): Transfer(finite_or_none(rec.get("precision")), bool(rec.get("same_group")))
                       for tgt, rec in row.items() if isinstance(rec, Mapping)}
            for src, row in (tr or {}).items() if isinstance(row, Mapping)} if isinstance(tr, Mapping) else {}


def _group(name: str, g: Any) -> GroupResult:
    gm = g if isinstance(g, Mapping) else {}
    mg = _m(gm, "maxgrad")
    src = mg.get("bonferroni_m_source")
    return GroupResult(
        name, _registry(name, g), g,
        n=_int(gm.get("n")), n_stable=_int(gm.get("n_stable")),
        n_unstable=_int(gm.get("n_unstable")),
        unstable_final_loss_threshold=finite_or_none(gm.get("unstable_final_loss_threshold")),
        stable_final_loss_threshold=finite_or_none(gm.get("stable_final_loss_threshold")),
        label_rule=gm.get("label_rule") or None, label_percentile_method=gm.get("label_percentile_method") or None,
        heldout=_fields(HeldOut, _m(gm, "heldout"), k=_int(_m(gm, "heldout").get("k"))),
        split_bootstrap=_fields(SplitBootstrap, _m(gm, "split_bootstrap")),
        top1=_top1(_m(gm, "top1")),
        top1_all_runs=_top1(_m(gm, "top1_all_runs")) if _m(gm, "top1_all_runs") else None,
        maxgrad=_fields(MaxGrad, mg, bonferroni_m=_int(mg.get("bonferroni_m")),
                        bonferroni_m_source=None if src is None else str(src)),
        stepk=_stepk(_m(gm, "stepk")),
        concentration={str(key): Concentration(str(c.get("definition") or ""), _moments(_m(c, "gini")),
                                               _moments(_m(c, "top1_share")))
                       for key, c in _m(gm, "concentration").items() if isinstance(c, Mapping) and c.get("logged")},
        warnings=tuple(str(w) for w in gm.get("warnings") or ()))


def _registry(name: str, group: Any) -> Registry | None:
    if not isinstance(group, Mapping) or not isinstance(group.get("registry"), Mapping):
        return None
    reg = group["registry"]
    flags = set(group.get("flags") or ()) | set(reg.get("flags") or ())
    degenerate = bool(group.get("degenerate") or reg.get("degenerate") or reg.get("accepted") is False
                      or flags & DEGENERATE_FLAGS)
    thr = finite_or_none(reg.get("threshold"))
    where = f"calibration group {name!r} registry"
    return Registry(
        monitor=str(reg.get("monitor") or "max_grad_norm"), k=int32_or_none(reg.get("k"), f"{where} k"),
        threshold=thr, ci_low=finite_or_none(reg.get("ci_low")), ci_high=finite_or_none(reg.get("ci_high")),
        n=int32_or_none(reg.get("n", group.get("n")), f"{where} n"),
        n_unstable=int32_or_none(reg.get("n_unstable", group.get("n_unstable")), f"{where} n_unstable"),
        precision=finite_or_none(reg.get("precision")), recall=finite_or_none(reg.get("recall")),
        f1=finite_or_none(reg.get("f1")), accepted=thr is not None and not degenerate,
        precision_ci_low=finite_or_none(reg.get("precision_ci_low")),
        precision_ci_high=finite_or_none(reg.get("precision_ci_high")),
        baseline_ceiling=finite_or_none(reg.get("baseline_ceiling")),
        reasons=tuple(str(r) for r in (reg.get("rejection_reasons") or group.get("degenerate_reasons") or ())),
        rejection_reasons=tuple(str(r) for r in reg.get("rejection_reasons") or ()),
        status=None if not reg.get("status") else str(reg["status"]),
        baseline_precision=finite_or_none(reg.get("baseline_precision")), own_ci="precision_ci_low" in reg)
