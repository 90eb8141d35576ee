"""tables.py (the runs/steps column spec) and calresult.py (the calibration result read once), against a real
DuckDB file and a real calibration."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from dlm_triage import store, tables
from dlm_triage.calibrate import calibrate
from dlm_triage.calresult import CalibrationResult
from dlm_triage.synthetic import synthetic_inputs


def test_the_database_holds_exactly_the_columns_of_the_spec(tmp_path: Path):
    con = store.connect(tmp_path / "t.duckdb")
    try:
        for table in (tables.RUNS, tables.STEPS):
            got = con.execute(f"DESCRIBE {table.name}").fetchall()
            assert [(r[0], r[1]) for r in got] == [(c.name, c.sql) for c in table.columns]
            assert {r[0] for r in got if r[2] == "NO"} >= {c.name for c in table.columns if c.not_null}
    finally:
        con.close()
    assert store.RUNS_SCHEMA == tables.RUNS.schema() and "ingested_at" not in store.RUNS_SCHEMA
    assert list(store.STEPS_COLUMNS) == [c.name for c in tables.STEPS.columns if c.name != "run_id"]


def test_a_row_gives_every_column_once_and_each_value_fits():
    row = dict.fromkeys(tables.RUNS.schema())
    row.update(run_id="r", source="test", content_sha256="x", rank=4, seed=2**40, final_loss=1.5)
    assert list(tables.RUNS.row(row)) == list(tables.RUNS.schema())
    with pytest.raises(ValueError, match="rank=2147483648 is out of range"):
        tables.RUNS.row({**row, "rank": 2**31})
    with pytest.raises(ValueError, match="final_loss=nan is not a valid"):
        tables.RUNS.row({**row, "final_loss": float("nan")})
    with pytest.raises(TypeError, match=r"missing \['seed'\]"):
        tables.RUNS.row({k: v for k, v in row.items() if k != "seed"})
    with pytest.raises(TypeError, match=r"unknown \['typo'\]"):
        tables.RUNS.row({**row, "typo": 1})


def test_a_real_calibration_reads_into_records_and_back_byte_for_byte():
    result = calibrate(synthetic_inputs({"llada": 80, "dream": 40}, n_steps=30, seed=1), n_resamples=50,
                       stepk_resamples=20, ks=(5, 25), seed=0)
    cal = CalibrationResult.from_json(result)
    assert json.dumps(cal.to_json(), sort_keys=True, default=str) == json.dumps(result, sort_keys=True, default=str)
    assert cal.calibration_id == result["calibration_id"] and cal.group_by == result["group_by"]
    for name, g in result["groups"].items():
        reg = cal.groups[name].registry
        assert reg is not None and reg.threshold == pytest.approx(g["registry"]["threshold"], nan_ok=True)
        assert reg.k == g["registry"]["k"] and reg.monitor == g["registry"]["monitor"]
    cal.to_json()["groups"].clear()  # a copy: the record cannot be changed through it
    assert cal.to_json() == result


def test_a_degenerate_or_thresholdless_rule_never_goes_live():
    cal = CalibrationResult.from_json({"groups": {
        "a": {"registry": {"threshold": 2.0, "k": 25}},
        "b": {"registry": {"threshold": 2.0}, "flags": ["constant_final_loss"]},
        "c": {"registry": {"threshold": None}},
        "d": {"n": 3}}})
    assert {n: (g.registry.accepted if g.registry else None) for n, g in cal.groups.items()} == \
        {"a": True, "b": False, "c": False, "d": None}
    assert cal.accepted and cal.group_by == "family"
    with pytest.raises(ValueError, match="registry k=2.5 is not an integer"):
        CalibrationResult.from_json({"groups": {"a": {"registry": {"threshold": 1.0, "k": 2.5}}}})
    with pytest.raises(ValueError, match="'groups' mapping"):
        CalibrationResult.from_json({"nope": 1})
