"""What calibration reads: the runs table and the step trajectories (`CalibrationInputs`), and the snapshot
that names which runs a calibration saw.

`store.load_calibration_inputs` builds the inputs, `calibrate.calibrate` consumes them; both import this module,
neither imports the other's. The snapshot (`snapshot_of`, `run_ids_sha256`) is recorded with every calibration
and checked by the report. Prefect-free; numpy and polars only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import polars as pl

from dlm_triage.runsummary import running_max

__all__ = ["REQUIRED_COLUMNS", "Trajectories", "CalibrationInputs", "snapshot_of", "run_ids_sha256"]

REQUIRED_COLUMNS = (
    "run_id", "family", "model_id", "cohort", "method", "rank", "mask_ratio", "learning_rate", "seed", "status",
    "final_loss", "max_grad_norm", "top1_step0", "top1_warning_detected", "top1_fire_step", "top1_cross_095",
    "collapsed", "diverged", "grad_gini", "grad_top1_share",
)
"""The `runs` columns calibration reads (`store.load_calibration_inputs` provides them)."""


@dataclass(frozen=True, init=False)
class Trajectories:
    """Per-step monitors of runs, stored long: one entry per logged step, so memory follows the rows stored,
    not runs x (largest step + 1) (one run logging W&B-sized steps such as 2,500,000 costs three entries).

    Run i's entries are `step[offsets[i]:offsets[i + 1]]` (strictly increasing) with `loss`, `grad_norm` and
    `top1` alongside; NaN is a value that was not measured. `max_grad` is max-grad up to each entry as the run's
    log stores it (`steps.max_grad_norm`, written by `runsummary.max_grad_so_far` / `fold_max_grad`: a diverged
    run's non-finite last norm is +inf there, as the live warning saw it); without one it is
    `runsummary.running_max` of `grad_norm` per run. Construct from dense [n_runs, n_steps] arrays (column j =
    step j; `Trajectories(run_ids, loss, grad_norm, top1)`) or from the long form (`from_long`).
    """

    run_ids: list[str]
    offsets: np.ndarray
    step: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    top1: np.ndarray
    max_grad: np.ndarray

    def __init__(self, run_ids, loss, grad_norm, top1, max_grad=None):
        n = len(run_ids)
        given = (("loss", loss), ("grad_norm", grad_norm), ("top1", top1)) + \
            ((("max_grad", max_grad),) if max_grad is not None else ())
        for name, a in given:
            if not isinstance(a, np.ndarray) or a.ndim != 2 or a.shape[0] != n:
                raise ValueError(f"Trajectories.{name} must be a 2-D array with one row per run id ({n}), "
                                 f"got {getattr(a, 'shape', type(a))}")
        if len({a.shape for _, a in given}) != 1:
            raise ValueError("Trajectories.loss, grad_norm, top1 (and max_grad) must have the same shape, got "
                             + ", ".join(f"{name} {a.shape}" for name, a in given))
        width = loss.shape[1]
        self._set(list(run_ids), np.arange(n + 1, dtype=np.int64) * width, np.tile(np.arange(width), n),
                  loss.reshape(-1), grad_norm.reshape(-1), top1.reshape(-1),
                  None if max_grad is None else max_grad.reshape(-1))

    @classmethod
    def from_long(cls, run_ids: Sequence[str], offsets: np.ndarray, step: np.ndarray, loss: np.ndarray,
                  grad_norm: np.ndarray, top1: np.ndarray, max_grad: np.ndarray | None = None) -> "Trajectories":
        self = cls.__new__(cls)
        self._set(list(run_ids), offsets, step, loss, grad_norm, top1, max_grad)
        return self

    def _set(self, run_ids, offsets, step, loss, grad_norm, top1, max_grad=None) -> None:
        offsets = np.asarray(offsets, dtype=np.int64)
        step = np.asarray(step, dtype=np.int64)
        arrays = [np.asarray(a, dtype=np.float64) for a in (loss, grad_norm, top1)]
        if max_grad is not None:
            arrays.append(np.asarray(max_grad, dtype=np.float64))
        if offsets.shape != (len(run_ids) + 1,) or offsets[0] != 0 or (np.diff(offsets) < 0).any() \
                or offsets[-1] != step.size or any(a.shape != step.shape for a in arrays):
            raise ValueError("Trajectories: offsets must hold len(run_ids) + 1 non-decreasing entry bounds "
                             "from 0 to len(step), and loss, grad_norm, top1 (and max_grad) one value per entry")
        if len(set(run_ids)) != len(run_ids):
            raise ValueError("Trajectories.run_ids must be unique")
        inner = np.ones(step.size, dtype=bool)
        inner[offsets[:-1][offsets[:-1] < step.size]] = False  # each run's first entry starts a new sequence
        if step.size and (np.diff(step)[inner[1:]] <= 0).any():
            raise ValueError("Trajectories: steps must strictly increase within each run")
        if max_grad is None:
            arrays.append(running_max(arrays[1], np.repeat(np.arange(len(run_ids)), np.diff(offsets))))
        for name, v in zip(("run_ids", "offsets", "step", "loss", "grad_norm", "top1", "max_grad"),
                           (run_ids, offsets, step, *arrays)):
            object.__setattr__(self, name, v)

    @property
    def n_steps(self) -> int:
        """Largest logged step + 1 (the horizon), 0 without entries."""
        return int(self.step.max()) + 1 if self.step.size else 0

    def dense(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(loss, grad_norm, top1) as [n_runs, n_steps] arrays, NaN where not logged. Small data only: this is
        the allocation the long form avoids."""
        rows = np.repeat(np.arange(len(self.run_ids)), np.diff(self.offsets))
        out = []
        for a in (self.loss, self.grad_norm, self.top1):
            d = np.full((len(self.run_ids), self.n_steps), np.nan)
            d[rows, self.step] = a
            out.append(d)
        return out[0], out[1], out[2]


@dataclass(frozen=True)
class CalibrationInputs:
    """What `calibrate` needs: one row per run (`REQUIRED_COLUMNS`) and, when any run has step logs, trajectories."""

    runs: pl.DataFrame
    traj: Trajectories | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.runs, pl.DataFrame):
            raise TypeError(f"CalibrationInputs.runs must be a polars.DataFrame, got {type(self.runs).__name__}")
        missing = [c for c in REQUIRED_COLUMNS if c not in self.runs.columns]
        if missing:
            raise ValueError(f"CalibrationInputs.runs lacks column(s) {missing}; "
                             "store.load_calibration_inputs provides them (docs/ARCHITECTURE.md)")
        if self.traj is not None and not isinstance(self.traj, Trajectories):
            raise TypeError("CalibrationInputs.traj must be a Trajectories or None")


def run_ids_sha256(run_ids: Iterable[str]) -> str:
    """sha256 of the sorted run ids, one per line: which runs a calibration saw, independent of their order."""
    return hashlib.sha256("\n".join(sorted(str(r) for r in run_ids)).encode()).hexdigest()


def snapshot_of(runs: pl.DataFrame) -> dict:
    """n runs, sha256 of the sorted run ids (one per line), latest ingestion time when known."""
    ids = runs.get_column("run_id").to_list()
    snap = {"n_runs": len(ids), "run_ids_sha256": run_ids_sha256(ids)}
    if "ingested_at" in runs.columns and runs.height:
        mx = runs.get_column("ingested_at").max()
        snap["max_ingested_at"] = None if mx is None else str(mx)
    return snap
