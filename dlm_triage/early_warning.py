"""Live early warning: at step k, compare the max gradient norm so far with the family's calibrated threshold.

Rule (the same as calibration's predictor, ARCHITECTURE.md): positive iff max_{t <= k} grad_norm_t >= threshold,
'up to step k' including step 0. It is evaluated once, at the first observed step >= k. With no threshold
registered for the group the warning is off, says so once, and never guesses one.

On a positive decision the run is marked routed_for_inspection (the trainer writes `Decision.to_dict()` into
the manifest's `routing`), a Prefect event `dlm_triage.run.routed_for_inspection` is emitted when Prefect is
importable AND a flow/task run context exists (the core never requires Prefect), and with action 'stop' the
run ends there.

`DLMTriageCallback` applies the same rule to a `transformers.Trainer` run through its logged `grad_norm`.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import asdict, dataclass
from typing import Any

# the submodule itself, not transformers' lazy top-level attribute: the lazy loader turns any exception raised
# while it imports (a cancellation arriving mid-import included) into "Could not import module ..." errors
from transformers.trainer_callback import TrainerCallback

from dlm_triage.runsummary import fold_max_grad

log = logging.getLogger(__name__)

EVENT_NAME = "dlm_triage.run.routed_for_inspection"


@dataclass(frozen=True)
class Decision:
    """A positive early-warning decision: max grad norm up to `step` was `value` >= `threshold`."""

    step: int
    value: float
    threshold: float
    calibration_id: str | None
    action: str
    group: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _unpack_threshold(threshold: Any) -> tuple[float | None, str | None, str | None]:
    """(value, calibration_id, group) from a float, a ThresholdRecord-like object (.threshold, .calibration_id,
    .group / .group_name) or None."""
    if threshold is None:
        return None, None, None
    if isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
        value, cal_id, group = float(threshold), None, None
    elif hasattr(threshold, "threshold"):
        value = float(threshold.threshold)
        cal_id = getattr(threshold, "calibration_id", None)
        group = getattr(threshold, "group", None) or getattr(threshold, "group_name", None)
    else:
        raise TypeError(
            f"threshold={threshold!r} is not usable: give a float, a ThresholdRecord (store.latest_threshold) or None"
        )
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"threshold={value!r} is invalid: a max-grad-norm threshold is a finite number > 0")
    return value, cal_id, group


class EarlyWarning:
    """Fires at most once, at the first observed step >= k, iff the max grad norm observed so far >= threshold.

    >>> ew = EarlyWarning(2.0, k=3)
    >>> [ew.observe(t, g) for t, g in enumerate([0.5, 2.5, 0.1])]
    [None, None, None]
    >>> ew.observe(3, 0.2).value
    2.5
    """

    def __init__(self, threshold: Any, *, k: int = 25, action: str = "flag", group: str = "",
                 announce: bool = True):
        if action not in ("flag", "stop"):
            raise ValueError(f"action={action!r} is not known: use 'flag' or 'stop'")
        if not isinstance(k, int) or k < 0:
            raise ValueError(f"k={k!r} is invalid: use an integer step >= 0")
        self.threshold, self.calibration_id, thr_group = _unpack_threshold(threshold)
        self.group = group or thr_group or ""
        self.k = k
        self.action = action
        self.max_so_far = -math.inf
        self.evaluated = False
        self.decision: Decision | None = None
        if self.threshold is None:
            # a sweep says which threshold it uses (or why none) once for all its runs (store.live_threshold)
            # and builds every run's warning with announce=False: one line per sweep, not one per run
            log.log(logging.WARNING if announce else logging.DEBUG,
                    "no threshold registered for family %s; early warning off", self.group or "?")

    def status(self, last_step: int) -> dict[str, Any]:
        """The manifest's record of the warning: its rule, threshold, and whether it was evaluated and why not."""
        if self.threshold is None:
            note = "no live threshold for this group: early warning off"
        elif self.evaluated:
            note = None
        elif last_step < self.k:
            note = (f"the run ended at step {last_step}, before k={self.k}: the live warning never evaluated it "
                    f"(max grad so far {self.max_so_far:.4g} vs threshold {self.threshold:.4g})")
        else:
            note = "not evaluated"
        return {"k": self.k, "threshold": self.threshold, "calibration_id": self.calibration_id,
                "group": self.group, "evaluated": self.evaluated, "ended_before_k": last_step < self.k,
                "note": note}

    @property
    def enabled(self) -> bool:
        return self.threshold is not None

    def observe(self, step: int, grad_norm: float) -> Decision | None:
        """Feed the (pre-clip) grad norm of `step`; returns the Decision on the one step it fires, else None.

        A non-finite grad norm counts as +inf (a diverging run is above any threshold).
        """
        self.max_so_far = fold_max_grad(self.max_so_far, grad_norm)
        if self.threshold is None or self.evaluated or step < self.k:
            return None
        self.evaluated = True
        if self.max_so_far >= self.threshold:
            self.decision = Decision(
                step=int(step), value=self.max_so_far, threshold=self.threshold,
                calibration_id=self.calibration_id, action=self.action, group=self.group,
            )
            return self.decision
        return None


def emit_routed_event(run_id: str, decision: Decision) -> bool:
    """Emit the Prefect event for a routed run; True when emitted.

    Only inside a Prefect flow/task run: a run context can only exist when Prefect is already imported, so a
    plain training process never pays Prefect's ~2 s import here. Any Prefect failure is logged, not raised:
    the event is a notification, the manifest is the record.
    """
    if "prefect" not in sys.modules:
        return False
    try:
        from prefect.context import FlowRunContext, TaskRunContext
        from prefect.events import emit_event
    except ImportError:
        return False
    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return False
    try:
        event = emit_event(
            event=EVENT_NAME,
            resource={"prefect.resource.id": f"dlm_triage.run.{run_id}", "prefect.resource.name": run_id},
            payload=decision.to_dict(),
        )
    except Exception as e:  # noqa: BLE001 - a notification must not kill a training run
        log.warning("could not emit Prefect event %s for run %s: %s", EVENT_NAME, run_id, e)
        return False
    return event is not None


class DLMTriageCallback(TrainerCallback):
    """The early warning on a `transformers.Trainer` run, from the `grad_norm` the Trainer logs.

    Step convention: the Trainer logs at `state.global_step = g` the norm of the gradient that produced update
    g, i.e. measured at the weights after g-1 updates, which is our step g-1 (schema.py). The max so far is over
    LOGGED steps only: use `logging_steps=1` to see every step, as the calibration did.

    Example::

        from transformers import Trainer, TrainingArguments
        from dlm_triage.early_warning import DLMTriageCallback
        from dlm_triage import store

        with store.connect("triage.duckdb", read_only=True) as con:
            thr = store.latest_threshold(con, "llada")          # None -> the callback says so and stays off
        cb = DLMTriageCallback(thr, k=25, action="stop", run_id="my-llada-run")
        trainer = Trainer(model=model, args=TrainingArguments("out", logging_steps=1, max_grad_norm=0.5),
                          train_dataset=ds, callbacks=[cb])
        trainer.train()
        if cb.decision is not None:
            print("routed for inspection:", cb.decision.to_dict())
    """

    def __init__(self, threshold: Any, *, k: int = 25, action: str = "flag", group: str = "", run_id: str = ""):
        self.warning = EarlyWarning(threshold, k=k, action=action, group=group)
        self.run_id = run_id
        self.event_emitted = False

    @property
    def decision(self) -> Decision | None:
        return self.warning.decision

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "grad_norm" not in logs or logs["grad_norm"] is None:
            return control
        step = max(int(state.global_step) - 1, 0)
        decision = self.warning.observe(step, float(logs["grad_norm"]))
        if decision is not None:
            log.warning("run %s routed for inspection: max grad norm %.4g >= threshold %.4g at step %d",
                        self.run_id or "?", decision.value, decision.threshold, decision.step)
            self.event_emitted = emit_routed_event(self.run_id or "trainer", decision)
            if decision.action == "stop":
                control.should_training_stop = True
        return control
