"""A calibration result as a frozen record: what the store registers, read once from the JSON contract.

`calibrate.calibrate` returns the JSON contract (docs/ARCHITECTURE.md, "Calibration JSON contract");
`CalibrationResult.from_json` reads the parts the threshold registry acts on (per group: the registry rule, its
numbers, whether it may go live) into attributes, once, and `to_json()` gives the contract back exactly as it
came (the stored `result_json` is its key-sorted dump, byte for byte what it was). `store.save_calibration`
reads the attributes instead of walking the dict.

Prefect-free.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping

from dlm_triage.fsutil import finite_or_none
from dlm_triage.tables import int32_or_none

__all__ = ["DEGENERATE_FLAGS", "Registry", "GroupResult", "CalibrationResult"]

DEGENERATE_FLAGS = frozenset({"degenerate", "constant_final_loss"})
"""Group flags (calibrate.py) under which a group's threshold is stored but never registered as accepted."""


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


@dataclass(frozen=True)
class GroupResult:
    """One group of a calibration: its name and its registry rule (None when the calibration registered none);
    the rest of the group's numbers stay in the JSON contract (`to_json`)."""

    name: str
    registry: Registry | None
    _json: Mapping[str, Any] = field(repr=False, compare=False)

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
        groups = {str(name): GroupResult(str(name), _registry(str(name), g), g)
                  for name, g in result["groups"].items()}
        return cls(calibration_id=None if not result.get("calibration_id") else str(result["calibration_id"]),
                   group_by=str(result.get("group_by") or "family"),
                   params=result.get("params") or prov.get("parameters") or prov.get("params") or {},
                   snapshot=result.get("snapshot") or prov.get("snapshot") or None,
                   groups=groups, _json=result)


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
        reasons=tuple(str(r) for r in (reg.get("rejection_reasons") or group.get("degenerate_reasons") or ())))
