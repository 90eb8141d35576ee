"""The `runs` and `steps` tables as one column spec each: the DDL, the polars schemas and the row check come from it.

`store.py` creates the tables from `Table.ddl()`, builds its batch frames with `Table.schema()` and checks every
row (a trainer's manifest or an import) with `Table.row()`; `importers.identity` builds its rows through the same
`RUNS.row`. A column added here reaches all three at once (an existing database needs a migration in store.py).

Prefect-free; polars only.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Mapping

import polars as pl

__all__ = ["Column", "Table", "RUNS", "STEPS", "INT_RANGE", "short_repr", "int32_or_none"]

INT_RANGE = {pl.Int32: (-(2**31), 2**31 - 1), pl.Int64: (-(2**63), 2**63 - 1)}
"""The values an integer column holds (DuckDB INTEGER / BIGINT)."""


def int32_or_none(x: Any, where: str) -> int | None:
    """A step or a count read from JSON: an integer (an integral float too) in 32 bits, or None for null.
    ValueError names `where` ('manifest top1_fire_step') and the value otherwise."""
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, (int, float)) or (
            isinstance(x, float) and not (math.isfinite(x) and x.is_integer())):
        raise ValueError(f"{where}={short_repr(x)} is not an integer (use a JSON integer, or null)")
    v = int(x)
    lo, hi = INT_RANGE[pl.Int32]
    if not lo <= v <= hi:
        raise ValueError(f"{where}={short_repr(x)} is out of range (a step or count fits in 32 bits)")
    return v


@dataclass(frozen=True)
class Column:
    name: str
    sql: str
    """DuckDB type."""
    dtype: pl.DataType
    not_null: bool = False
    attached: bool = False
    """Filled by the writer when a batch is inserted (ingestion time and id, a step's run id), not part of a
    prepared row or step frame."""


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]

    def ddl(self) -> str:
        cols = [f"{c.name} {c.sql}{' NOT NULL' if c.not_null else ''}" for c in self.columns]
        return (f"CREATE TABLE IF NOT EXISTS {self.name} (\n    " + ",\n    ".join(cols)
                + f",\n    PRIMARY KEY ({', '.join(self.primary_key)})\n)")

    def schema(self) -> dict[str, pl.DataType]:
        """Column order and polars dtypes of a prepared row / step frame (the attached columns left out)."""
        return {c.name: c.dtype for c in self.columns if not c.attached}

    def row(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """`values` as a row of this table, in column order, every value checked against its column (None, or:
        String a str; Int32/Int64 an int in range; Float64 a finite number; Boolean a bool). ValueError names the
        column and the value (one bad value is that run's problem, never a failure of the whole batch);
        TypeError when a column is missing or unknown (a programming error: every column is given, None where
        it does not apply)."""
        schema = self.schema()
        missing, unknown = [c for c in schema if c not in values], [k for k in values if k not in schema]
        if missing or unknown:
            raise TypeError(f"a {self.name} row must give exactly its columns: missing {missing}, unknown {unknown}")
        for col, dtype in schema.items():
            _check(col, dtype, values[col])
        return {c: values[c] for c in schema}


def short_repr(v: Any, limit: int = 40) -> str:
    """repr of a value for a message, cut to `limit` characters (a 5,000-digit number is not helpful)."""
    try:
        r = repr(v)
    except ValueError:  # an int beyond Python's str-conversion digit limit
        return f"<an integer of more than {sys.get_int_max_str_digits()} digits>"
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _check(col: str, dtype: pl.DataType, v: Any) -> None:
    if v is None:
        return
    if dtype == pl.String:
        ok = isinstance(v, str)
    elif dtype == pl.Boolean:
        ok = isinstance(v, bool)
    elif dtype in INT_RANGE:
        lo, hi = INT_RANGE[dtype]
        ok = isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
        if isinstance(v, int) and not isinstance(v, bool) and not ok:
            raise ValueError(f"{col}={short_repr(v)} is out of range for a {'32' if dtype == pl.Int32 else '64'}"
                             f"-bit integer column ({lo}..{hi})")
    else:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if not ok:
        raise ValueError(f"{col}={short_repr(v)} is not a valid {dtype} value")


def _cols(spec: str, **flags: dict[str, Any]) -> tuple[Column, ...]:
    """'name SQLTYPE, ...' -> Columns, the polars dtype from the SQL type; `flags` per column name."""
    dtypes = {"VARCHAR": pl.String, "INTEGER": pl.Int32, "BIGINT": pl.Int64, "DOUBLE": pl.Float64,
              "BOOLEAN": pl.Boolean, "TIMESTAMP": pl.Datetime("us")}
    out = []
    for item in spec.split(","):
        name, sql = item.split()
        out.append(Column(name, sql, dtypes[sql], **flags.get(name, {})))
    return tuple(out)


RUNS = Table("runs", _cols(
    "run_id VARCHAR, source VARCHAR, source_path VARCHAR, family VARCHAR, model_id VARCHAR, cohort VARCHAR, "
    "objective VARCHAR, method VARCHAR, rank INTEGER, alpha DOUBLE, mask_ratio DOUBLE, learning_rate DOUBLE, "
    "seed BIGINT, steps INTEGER, batch_size INTEGER, config_hash VARCHAR, config_json VARCHAR, status VARCHAR, "
    "final_loss DOUBLE, max_grad_norm DOUBLE, top1_step0 DOUBLE, top1_warning_detected BOOLEAN, "
    "top1_fire_step INTEGER, top1_cross_050 INTEGER, top1_cross_080 INTEGER, top1_cross_095 INTEGER, "
    "collapsed BOOLEAN, diverged_at_step INTEGER, routed_for_inspection BOOLEAN, routing_json VARCHAR, "
    "grad_gini DOUBLE, grad_top1_share DOUBLE, n_steps INTEGER, device VARCHAR, code_version VARCHAR, "
    "manifest_json VARCHAR, content_sha256 VARCHAR, ingested_at TIMESTAMP, ingest_id VARCHAR",
    run_id={"not_null": True}, source={"not_null": True}, content_sha256={"not_null": True},
    ingested_at={"not_null": True, "attached": True}, ingest_id={"not_null": True, "attached": True},
), primary_key=("run_id",))
"""One row per run (schema.py's manifest summary for a trainer's run, the importer's for a foreign log)."""

STEPS = Table("steps", _cols(
    "run_id VARCHAR, step INTEGER, loss DOUBLE, grad_norm DOUBLE, max_grad_norm DOUBLE, top1_freq DOUBLE, "
    "mask_ratio DOUBLE, lr DOUBLE",
    run_id={"not_null": True, "attached": True}, step={"not_null": True},
), primary_key=("run_id", "step"))
"""One row per stored step: the step-log columns the analyses read (schema.STEP_COLUMNS has them all)."""
