"""LoRA-Curve connectivity results (`dlm_triage.connect`): `connect_paths` and `connect_profiles`."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import duckdb
import polars as pl

from dlm_triage.store.connection import _pl
from dlm_triage.store.records import StoreError

# -- connectivity (LoRA-Curve, dlm_triage.connect) ---------------------------------------------------------

CONNECT_DDL = [
    """CREATE TABLE IF NOT EXISTS connect_paths (
        connect_id VARCHAR NOT NULL, path VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL,
        run_a VARCHAR NOT NULL, run_b VARCHAR NOT NULL, family VARCHAR, model_id VARCHAR, method VARCHAR,
        rank INTEGER, mask_ratio DOUBLE, segments INTEGER, curve_steps INTEGER, n_eval_batches INTEGER,
        loss_a DOUBLE, loss_b DOUBLE, max_loss DOUBLE, barrier DOUBLE, figure VARCHAR, result_json VARCHAR,
        PRIMARY KEY (connect_id, path))""",
    """CREATE TABLE IF NOT EXISTS connect_profiles (
        connect_id VARCHAR NOT NULL, path VARCHAR NOT NULL, t DOUBLE NOT NULL, loss DOUBLE,
        PRIMARY KEY (connect_id, path, t))""",
]
"""One row per (connection, path) with its barrier height; one row per (connection, path, t) with the loss.
Created on the first save (databases older than these tables gain them then)."""


def has_connections(con: duckdb.DuckDBPyConnection) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'connect_paths'")
                .fetchall()[0][0])


def save_connection(con: duckdb.DuckDBPyConnection, result: Any) -> str:
    """Store a `connect.ConnectResult` (one transaction); a connect_id already stored is refused, not replaced."""
    con.begin()
    try:
        for ddl in CONNECT_DDL:
            con.execute(ddl)
        if con.execute("SELECT count(*) FROM connect_paths WHERE connect_id = ?", [result.connect_id]).fetchall()[0][0]:
            raise StoreError(f"connection {result.connect_id} is already stored: run connect again for a new one")
        at = datetime.fromisoformat(result.created_at).astimezone(timezone.utc).replace(tzinfo=None)
        blob = result.to_json()
        for path, losses in result.profiles.items():
            con.execute(
                "INSERT INTO connect_paths VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [result.connect_id, path, at, result.run_a, result.run_b, result.family, result.model_id,
                 result.method, result.rank, result.mask_ratio, result.segments, result.curve_steps,
                 result.n_eval_batches, losses[0], losses[-1], max(losses), result.barriers[path], result.figure,
                 blob])
            con.executemany("INSERT INTO connect_profiles VALUES (?, ?, ?, ?)",
                            [[result.connect_id, path, t, loss] for t, loss in zip(result.ts, losses)])
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return result.connect_id


def connections(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Every stored connection path (without the JSON), newest first; empty when none was ever stored."""
    if not has_connections(con):
        return pl.DataFrame()
    return _pl(con, "SELECT * EXCLUDE (result_json) FROM connect_paths ORDER BY created_at DESC, connect_id, path")


def connect_profiles(con: duckdb.DuckDBPyConnection, connect_id: str | None = None) -> pl.DataFrame:
    """(connect_id, path, t, loss) rows, of one connection or all, ordered by path and t."""
    if not has_connections(con):
        return pl.DataFrame()
    pred, params = ("WHERE connect_id = ?", [connect_id]) if connect_id else ("", None)
    return _pl(con, f"SELECT * FROM connect_profiles {pred} ORDER BY connect_id, path, t", params)
