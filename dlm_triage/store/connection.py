"""DuckDB connection and schema: the DDL (`runs`/`steps` from tables.py, the rest here), migrations,
opening a file (lock backoff, refusing what is not a DuckDB database), and the small query helpers every
store module uses."""

from __future__ import annotations

import random
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import duckdb
import polars as pl

from dlm_triage import runsummary
from dlm_triage.tables import RUNS, STEPS
from dlm_triage.store.records import StoreError, StoreLockedError

DB_SCHEMA_VERSION = 2

_DDL = [
    """CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at TIMESTAMP NOT NULL)""",
    RUNS.ddl(),
    STEPS.ddl(),
    """CREATE TABLE IF NOT EXISTS ingests (
        ingest_id VARCHAR PRIMARY KEY, started_at TIMESTAMP, finished_at TIMESTAMP, kind VARCHAR,
        paths_json VARCHAR, n_added INTEGER, n_already_present INTEGER, n_incomplete INTEGER,
        n_quarantined INTEGER)""",
    """CREATE TABLE IF NOT EXISTS quarantine (
        path VARCHAR, reason VARCHAR, ingest_id VARCHAR, "at" TIMESTAMP, quarantined_to VARCHAR)""",
    """CREATE SEQUENCE IF NOT EXISTS calibration_seq""",
    """CREATE TABLE IF NOT EXISTS calibrations (
        calibration_id VARCHAR PRIMARY KEY, created_at TIMESTAMP NOT NULL, group_by VARCHAR,
        params_json VARCHAR, snapshot_json VARCHAR, result_json VARCHAR, status VARCHAR, seq BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS thresholds (
        calibration_id VARCHAR NOT NULL, group_name VARCHAR NOT NULL, group_by VARCHAR NOT NULL,
        monitor VARCHAR NOT NULL, k INTEGER, threshold DOUBLE, ci_low DOUBLE, ci_high DOUBLE, n INTEGER,
        n_unstable INTEGER, precision DOUBLE, recall DOUBLE, f1 DOUBLE, accepted BOOLEAN NOT NULL,
        created_at TIMESTAMP NOT NULL, seq BIGINT NOT NULL, PRIMARY KEY (calibration_id, group_name))""",
]

# Upgrades of an existing database, by the version they reach (applied in order, in one transaction).
_MIGRATIONS: dict[int, list[str]] = {
    # 2: the training objective of each run (RunConfig.objective); runs stored before it existed ran 'paper'.
    2: ["ALTER TABLE runs ADD COLUMN IF NOT EXISTS objective VARCHAR",
        "UPDATE runs SET objective = coalesce(json_extract_string(config_json, '$.objective'), 'paper') "
        "WHERE objective IS NULL AND source = 'dlm-triage'"],
}

# Column order and polars dtypes of the rows `_write_batch` inserts (importers build the same rows): tables.py
RUNS_SCHEMA: dict[str, pl.DataType] = RUNS.schema()
STEPS_SCHEMA: dict[str, pl.DataType] = STEPS.schema()
STEPS_COLUMNS = tuple(STEPS_SCHEMA)


# -- connection -------------------------------------------------------------------------------------------

_HOLDER_RE = re.compile(r"Conflicting lock is held in (.*?)(?:\. See also|$)", re.S)


def _is_lock_error(e: BaseException) -> bool:
    return isinstance(e, duckdb.IOException) and "lock" in str(e).lower()


def connect(db_path: str | Path, *, read_only: bool = False, timeout_s: float = 60,
            create: bool = True) -> duckdb.DuckDBPyConnection:
    """Open (and for writers create/upgrade) the database, waiting up to `timeout_s` for another process's lock.

    Only a DuckDB database is opened: an existing file that is not one (a CSV, Parquet or JSON file DuckDB would
    otherwise read as an in-memory database, losing every write), an empty or a truncated file are refused with
    a `StoreError` naming the file and the fix. `create=False` (calibrate, report, queue, thresholds): a missing
    file is an error instead of a new empty database. Backoff starts at 20 ms and grows x1.5 to 1 s, with jitter
    so two waiting processes do not retry in step.
    """
    db_path = Path(db_path)
    if (read_only or not create) and not db_path.exists():
        raise StoreError(f"database {db_path} does not exist: check the --db path, or create it by ingesting "
                         "runs first (dlm-triage ingest / dlm-triage import)")
    check_database_file(db_path)
    if not read_only:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    delay = 0.02
    while True:
        try:
            con = duckdb.connect(str(db_path), read_only=read_only)
            break
        except duckdb.IOException as e:
            if not _is_lock_error(e):
                if db_path.is_file() and db_path.stat().st_size == 0:
                    raise StoreError(f"{db_path} is an empty file (0 bytes), not a DuckDB database: delete it "
                                     "(a new database is created on the next ingest) or pass another --db"
                                     ) from None
                raise StoreError(f"{db_path} could not be opened as a DuckDB database ({_first_line(e)}): the "
                                 "file is damaged or truncated; restore it from a backup or pass another --db"
                                 ) from None
            waited = time.monotonic() - start
            if waited >= timeout_s:
                m = _HOLDER_RE.search(str(e))
                holder = m.group(1).strip() if m else "another process"
                raise StoreLockedError(db_path, holder, waited) from e
            time.sleep(min(delay * (0.5 + random.random()), max(0.0, timeout_s - waited)))
            delay = min(delay * 1.5, 1.0)
    try:
        _check_attached_file(con, db_path)
        _ensure_schema(con, read_only=read_only, db_path=db_path)
        con.execute(runsummary.MAX_GRAD_UP_TO_MACRO)  # a TEMP macro: per connection, read-only ones too
    except BaseException:
        con.close()
        raise
    return con


_DUCKDB_MAGIC = b"DUCK"
_DUCKDB_MAGIC_OFFSET = 8  # bytes 0..7 hold the header checksum


def _first_line(e: BaseException, limit: int = 200) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_database_file(db_path: Path) -> None:
    """Raise StoreError unless `db_path` is absent, empty (decided by connect) or starts like a DuckDB database."""
    if not db_path.exists():
        return
    if db_path.is_dir():
        raise StoreError(f"{db_path} is a directory, not a DuckDB database file: pass the path of a .duckdb file")
    try:
        with open(db_path, "rb") as fh:
            head = fh.read(64)
    except OSError as e:
        raise StoreError(f"{db_path} cannot be read ({e.strerror or e}): fix its permissions or pass another --db"
                         ) from None
    if not head:
        return  # another process may be creating it right now: connect() waits for its lock, then decides
    if head[_DUCKDB_MAGIC_OFFSET:_DUCKDB_MAGIC_OFFSET + len(_DUCKDB_MAGIC)] != _DUCKDB_MAGIC:
        kind = ("a Parquet file" if head.startswith(b"PAR1") else "a SQLite database"
                if head.startswith(b"SQLite format") else "a JSON file" if head.lstrip()[:1] in (b"{", b"[")
                else "a text file (CSV/TSV?)" if _looks_like_text(head) else "not a DuckDB database")
        raise StoreError(f"{db_path} exists and is {kind}, not a DuckDB database: refusing to open it (DuckDB "
                         "would read it as a table of an in-memory database and nothing written would be kept). "
                         "Pass the path of a .duckdb file, or a new path to create one")


def _looks_like_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _check_attached_file(con: duckdb.DuckDBPyConnection, db_path: Path) -> None:
    """The database DuckDB attached must be the file asked for (never an in-memory stand-in)."""
    rows = con.execute("SELECT file FROM pragma_database_list WHERE name = current_database()").fetchall()
    attached = rows[0][0] if rows else None
    if attached is None or Path(attached).resolve() != db_path.resolve():
        raise StoreError(f"{db_path} was not opened as a database file (DuckDB attached {attached or 'memory'}):"
                         " pass the path of a .duckdb file")


def _ensure_schema(con: duckdb.DuckDBPyConnection, *, read_only: bool, db_path: Path) -> None:
    has_version = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'"
    ).fetchall()[0][0]
    if has_version:
        found = con.execute("SELECT max(version) FROM schema_version").fetchall()[0][0]
        if found is not None and found > DB_SCHEMA_VERSION:
            raise StoreError(
                f"{db_path} has schema version {found}, newer than this dlm-triage understands "
                f"({DB_SCHEMA_VERSION}): upgrade dlm-triage"
            )
        if found == DB_SCHEMA_VERSION:
            return
    if read_only:
        raise StoreError(f"{db_path} is not a dlm-triage database (no schema_version): open it read-write once")
    con.begin()
    try:
        for ddl in _DDL:
            con.execute(ddl)
        if has_version and found is not None:
            for version in range(found + 1, DB_SCHEMA_VERSION + 1):
                for sql in _MIGRATIONS.get(version, []):
                    con.execute(sql)
        con.execute("INSERT INTO schema_version VALUES (?, ?)", [DB_SCHEMA_VERSION, _now()])
        con.commit()
    except BaseException:
        _rollback(con)
        raise


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    """Roll back after a failure without replacing it: when the failure was the COMMIT itself (a full disk),
    DuckDB has already ended the transaction and ROLLBACK would raise 'no transaction is active' instead of the
    real error, which the caller re-raises."""
    try:
        con.rollback()
    except duckdb.Error:
        pass


def _pl(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None = None) -> pl.DataFrame:
    """A query's result as a polars frame (DuckDB 2.0: through a relation; execute() results have no .pl())."""
    return con.sql(sql, params=params).pl() if params else con.sql(sql).pl()


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)
