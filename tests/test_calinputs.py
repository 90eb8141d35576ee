"""calinputs.py: what calibration reads. Trajectories in their dense and long forms, the checks at construction
(each error names the field), and the snapshot of which runs a calibration saw."""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl
import pytest

from dlm_triage.calinputs import REQUIRED_COLUMNS, CalibrationInputs, Trajectories, run_ids_sha256, snapshot_of
from dlm_triage.synthetic import synthetic_inputs

NAN = float("nan")


def _long(**changes):
    """Two runs in the long form: 'a' logs steps 0, 2, 5; 'b' logs steps 0, 1."""
    kw = dict(run_ids=["a", "b"], offsets=np.array([0, 3, 5]), step=np.array([0, 2, 5, 0, 1]),
              loss=np.array([3.0, 2.0, 1.0, 4.0, 4.5]), grad_norm=np.array([1.0, 5.0, 2.0, 0.5, NAN]),
              top1=np.array([0.1, 0.2, 0.3, 0.9, 0.8]))
    return Trajectories.from_long(**{**kw, **changes})


def test_the_long_form_gives_the_dense_arrays_and_the_running_max_grad():
    t = _long()
    assert t.n_steps == 6
    loss, grad, top1 = t.dense()
    np.testing.assert_array_equal(loss, [[3.0, NAN, 2.0, NAN, NAN, 1.0], [4.0, 4.5, NAN, NAN, NAN, NAN]])
    assert grad.shape == top1.shape == (2, 6) and top1[1, 1] == 0.8
    # max-grad up to each entry, per run (it does not carry over from 'a' into 'b'); NaN was not measured
    np.testing.assert_array_equal(t.max_grad[:3], [1.0, 5.0, 5.0])
    assert t.max_grad[3] == 0.5
    given = _long(max_grad=np.array([1.0, 5.0, 5.0, 0.5, np.inf]))  # as a log stores it: kept, not recomputed
    assert given.max_grad[-1] == np.inf


def test_the_dense_form_round_trips():
    rng = np.random.default_rng(0)
    loss, grad, top1 = (rng.random((3, 4)) for _ in range(3))
    t = Trajectories(["x", "y", "z"], loss, grad, top1)
    assert t.offsets.tolist() == [0, 4, 8, 12] and t.step.tolist() == [0, 1, 2, 3] * 3 and t.n_steps == 4
    for got, want in zip(t.dense(), (loss, grad, top1)):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(t.max_grad.reshape(3, 4), np.maximum.accumulate(grad, axis=1))
    empty = _long(run_ids=[], offsets=np.array([0]), step=np.array([], dtype=np.int64),
                  loss=np.array([]), grad_norm=np.array([]), top1=np.array([]))
    assert empty.n_steps == 0 and empty.dense()[0].shape == (0, 0)


def test_trajectory_errors_name_the_field():
    ok = np.ones((2, 3))
    with pytest.raises(ValueError, match=r"Trajectories.grad_norm must be a 2-D array with one row per run id \(2\)"):
        Trajectories(["a", "b"], ok, np.ones((3, 3)), ok)
    with pytest.raises(ValueError, match=r"same shape.*top1 \(2, 4\)"):
        Trajectories(["a", "b"], ok, ok, np.ones((2, 4)))
    with pytest.raises(ValueError, match="run_ids must be unique"):
        Trajectories(["a", "a"], ok, ok, ok)
    with pytest.raises(ValueError, match="strictly increase within each run"):
        _long(step=np.array([0, 2, 2, 0, 1]))
    with pytest.raises(ValueError, match="offsets must hold"):
        _long(offsets=np.array([0, 3, 4]))  # ends before the last entry
    with pytest.raises(ValueError, match="one value per entry"):
        _long(top1=np.array([0.1, 0.2]))


def test_calibration_inputs_name_what_is_missing():
    inp = synthetic_inputs({"tiny": 4}, n_steps=12)
    assert set(REQUIRED_COLUMNS) <= set(inp.runs.columns) and isinstance(inp.traj, Trajectories)
    CalibrationInputs(inp.runs)  # trajectories are optional
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['final_loss', 'max_grad_norm'\]"):
        CalibrationInputs(inp.runs.drop("final_loss", "max_grad_norm"))
    with pytest.raises(TypeError, match="must be a polars.DataFrame, got dict"):
        CalibrationInputs({"run_id": ["a"]})
    with pytest.raises(TypeError, match="traj must be a Trajectories"):
        CalibrationInputs(inp.runs, inp.traj.dense())


def test_the_snapshot_names_the_runs_whatever_their_order():
    ids = ["r2", "r10", "r1"]
    assert run_ids_sha256(ids) == hashlib.sha256(b"r1\nr10\nr2").hexdigest() == run_ids_sha256(reversed(ids))
    assert run_ids_sha256(ids) != run_ids_sha256(ids[:2])
    runs = pl.DataFrame({"run_id": ids, "ingested_at": ["2026-01-02 00:00:00", "2026-03-04 05:06:07", None]})
    assert snapshot_of(runs) == {"n_runs": 3, "run_ids_sha256": run_ids_sha256(ids),
                                 "max_ingested_at": "2026-03-04 05:06:07"}
    assert snapshot_of(runs.drop("ingested_at")) == {"n_runs": 3, "run_ids_sha256": run_ids_sha256(ids)}
    assert snapshot_of(runs.head(0)) == {"n_runs": 0, "run_ids_sha256": hashlib.sha256(b"").hexdigest()}
