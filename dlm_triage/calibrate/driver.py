"""`run_calibration(db, out_dir)`: load the inputs from DuckDB, calibrate, write the JSON, save it (versioned), and
hand on the typed result (`calresult.CalibrationResult`) the later stages read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import polars as pl

from dlm_triage.calibrate.protocol import calibrate
from dlm_triage.calresult import CalibrationResult
from dlm_triage.fsutil import write_json_atomic


@dataclass(frozen=True)
class CalibrationOutput:
    calibration_id: str
    json_path: Path
    """`<out_dir>/<calibration_id>/calibration.json`: the JSON contract, `result.to_json()`."""
    result: CalibrationResult
    """The calibration read once into its typed record (what the CLI, the tasks and the report read)."""


def run_calibration(db_path, out_dir, *, group_by: str = "family", groups: Sequence[str] | None = None,
                    **params) -> CalibrationOutput:
    """Load the inputs from DuckDB, calibrate, write `out_dir/<calibration_id>/calibration.json`, then save the
    calibration (versioned) in DuckDB and point `out_dir/latest` at it. `groups`: only the runs of these group
    keys (`groups.group_run_ids`; the recalibration of the groups that are due), else every run.

    The file is written before the thresholds are registered: a full disk fails the call before anything goes
    live. The database must exist (a mistyped path is an error, not a new empty database).
    """
    from dlm_triage import store
    from dlm_triage.fsutil import output_dir, point_latest

    con = store.connect(db_path, create=False)
    try:
        if groups is None:
            inputs = store.load_calibration_inputs(con)
        else:
            from dlm_triage.groups import group_run_ids

            ids = group_run_ids(con, group_by, groups)
            con.register("_dlmt_recal_ids", pl.DataFrame({"run_id": ids}, schema={"run_id": pl.String}).to_arrow())
            try:
                inputs = store.load_calibration_inputs(con, where="run_id IN (SELECT run_id FROM _dlmt_recal_ids)")
            finally:
                con.unregister("_dlmt_recal_ids")
        result = calibrate(inputs, group_by=group_by, **params)
        cal_id = result["calibration_id"]
        path = write_json_atomic(result, output_dir(out_dir, cal_id) / "calibration.json")
        cr = CalibrationResult.from_json(result)
        store.save_calibration(con, cr)
    finally:
        con.close()
    point_latest(out_dir, cal_id)
    return CalibrationOutput(cal_id, path, cr)
