"""DuckDB storage: schema, idempotent transactional ingestion with quarantine, queries, threshold registry.

One DuckDB file holds every run (``runs``), every logged step (``steps``), every ingestion (``ingests``,
``quarantine``) and every calibration with its per-group thresholds (``calibrations``, ``thresholds``);
the tables and their columns are listed in docs/ARCHITECTURE.md.

Concurrency: DuckDB lets one *process* open a file for writing. `connect` retries with backoff while another
process holds the lock, and `ingest_runs` validates every run directory before it opens the database, so the
lock is held only for the inserts (one transaction per ingestion).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import shutil
import time
import uuid
import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import duckdb
import numpy as np
import polars as pl

from . import runsummary, schema
from .calinputs import snapshot_of
from .calresult import CalibrationResult
from .tables import RUNS, STEPS, int32_or_none
from .tables import short_repr as _short
from .config import ConfigError, RunConfig

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


# -- errors and results ----------------------------------------------------------------------------------

class StoreError(RuntimeError):
    """A database-level problem (schema newer than the code, missing file for read-only use, ...)."""


class StoreLockedError(StoreError, TimeoutError):
    """Another process kept the DuckDB file lock for longer than `timeout_s`."""

    def __init__(self, db_path: Path, holder: str, waited_s: float):
        self.db_path, self.holder, self.waited_s = Path(db_path), holder, waited_s
        super().__init__(
            f"could not open {db_path}: the DuckDB file lock is held by {holder} and was not released within "
            f"{waited_s:.1f} s. Wait for that process to finish (or stop it), or pass a larger timeout_s."
        )


@dataclass(frozen=True)
class IngestReport:
    """What one ingestion did. Counts are ints; `quarantined` lists (path, reason) of every rejected input,
    conflicts included (reason starts with 'conflict:'); `incomplete_paths` the skipped in-progress runs."""

    ingest_id: str
    added: int
    already_present: int
    incomplete: int
    quarantined: tuple[tuple[str, str], ...] = ()
    added_run_ids: tuple[str, ...] = ()
    incomplete_paths: tuple[str, ...] = ()
    updated_run_ids: tuple[str, ...] = ()
    """Imported runs stored before that came back with more steps (a grown re-export): replaced, not added."""
    duplicates: tuple[tuple[str, str], ...] = ()
    """(path, why) of inputs holding a run this ingestion or the database already has: stored once."""
    skipped: tuple[tuple[str, str], ...] = ()
    """(path, why) of directories that are not run directories (no dlm-triage manifest and step log): listed,
    never stored, never moved."""

    @property
    def conflicts(self) -> tuple[tuple[str, str], ...]:
        return tuple(q for q in self.quarantined if q[1].startswith("conflict:"))

    def summary(self) -> str:
        return (
            f"ingest {self.ingest_id}: {self.added} added, {self.already_present} already present, "
            f"{self.incomplete} incomplete (skipped), {len(self.quarantined)} quarantined"
            + (f", {len(self.updated_run_ids)} updated (grown)" if self.updated_run_ids else "")
            + (f", {len(self.duplicates)} duplicate(s) stored once" if self.duplicates else "")
            + (f", {len(self.skipped)} not run directories (skipped)" if self.skipped else "")
        )

    def markdown(self, title: str, source: str, *, limit: int = 50) -> str:
        """The report as Markdown (the Prefect ingest / import artifact): counts, then every quarantined input
        and up to `limit` of each other list (incomplete, updated, duplicates, skipped)."""
        lines = [f"# {title}", "", f"Source: `{source}`", "", self.summary(), "",
                 "| added | already present | incomplete (skipped) | quarantined |", "|---|---|---|---|",
                 f"| {self.added} | {self.already_present} | {self.incomplete} | {len(self.quarantined)} |"]
        if self.quarantined:
            lines += ["", "## Quarantined", "", "| path | reason |", "|---|---|"]
            lines += [f"| `{p}` | {r.replace('|', '/')} |" for p, r in self.quarantined]
        if self.incomplete_paths:
            lines += ["", "## Incomplete (no manifest yet: running, crashed, or to be re-run by the sweep)", ""]
            lines += [f"- `{p}`" for p in self.incomplete_paths[:limit]]
        if self.updated_run_ids:
            lines += ["", "## Updated (a re-imported log with more steps)", ""]
            lines += [f"- `{r}`" for r in self.updated_run_ids[:limit]]
        for heading, items in (("Duplicates (stored once)", self.duplicates),
                               ("Skipped: not run directories (left in place)", self.skipped)):
            if items:
                lines += ["", f"## {heading}", "", "| path | why |", "|---|---|"]
                lines += [f"| `{p}` | {r.replace('|', '/')} |" for p, r in items[:limit]]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ThresholdRecord:
    """A registered max-grad threshold: positive iff max-grad-up-to-k >= threshold."""

    group: str
    group_by: str
    monitor: str
    k: int | None
    threshold: float
    ci_low: float | None
    ci_high: float | None
    n: int | None
    calibration_id: str
    created_at: datetime


@dataclass(frozen=True)
class PreparedRun:
    """One validated run ready for insertion: a `runs` row (keys of RUNS_SCHEMA) and its steps (STEPS_SCHEMA)
    or None (no step log, e.g. imported `cells`). `path` is what quarantine/conflict reports name."""

    path: str
    row: dict[str, Any]
    steps: pl.DataFrame | None = None
    move_on_conflict: bool = field(default=False)
    span: tuple[int, int] | None = None
    """(start, n): the steps are rows start..start+n-1 of the batch frame `_write_batch` gets as steps_source
    (runlog.read_runs_batch), not a frame of their own."""


class MemoryLimitHit(StoreError):
    """DuckDB needed more memory than the limit an import set for itself; nothing was written."""


@dataclass(frozen=True)
class StagedRows:
    """Validated step-less runs (imported cells / json-rows records) staged in a Parquet file of `runs` rows
    (RUNS_SCHEMA columns plus `line`, the record's line in `path` or null) rather than held as PreparedRun
    objects: `_write_batch` dedupes and inserts them inside DuckDB, so a file of any size costs the import a
    bounded amount of memory. `n` is the number of rows."""

    path: str
    parquet: Path
    n: int


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


# -- reading run directories --------------------------------------------------------------------------------

def _read_run(run_dir: Path) -> tuple[dict, pl.DataFrame]:
    """Validated manifest + step log through runlog.read_run; raises `_Invalid(reason)`."""
    from .runlog import RunLogError, read_run

    try:
        rec = read_run(run_dir)
    except RunLogError as e:
        raise _Invalid(getattr(e, "reason", None) or str(e)) from e
    return rec.manifest, rec.steps


class _Invalid(Exception):
    """A run/log that must be quarantined; str = the reason."""


def _expand_run_dirs(runs: Path | str | Iterable[Path | str]) -> tuple[list[Path], set[Path]]:
    """(run directory candidates, the roots given). A path holding manifest.json or steps.parquet is a run
    directory; any other directory is a runs root whose sub-directories are candidates (hidden ones and
    'quarantine' skipped)."""
    items = [runs] if isinstance(runs, (str, Path)) else list(runs)
    out: list[Path] = []
    roots: set[Path] = set()
    for item in items:
        p = Path(item)
        if not p.exists():
            raise FileNotFoundError(f"run path {p} does not exist: give a run directory or a runs root")
        if not p.is_dir():
            raise NotADirectoryError(f"run path {p} is a file: give a run directory or a runs root")
        roots.add(p)
        try:
            if (p / schema.MANIFEST_FILENAME).exists() or (p / schema.STEPLOG_FILENAME).exists():
                out.append(p)
                continue
            children = sorted(c for c in p.iterdir() if not c.name.startswith((".", "_"))
                              and c.name != "quarantine" and _is_dir(c))
        except OSError as e:
            raise OSError(e.errno, f"run path {p} cannot be listed ({e.strerror or e}): fix its permissions"
                          ) from None
        out.extend(children if children else [p])
    return out, roots


def _is_dir(p: Path) -> bool:
    try:
        return p.is_dir()
    except OSError:
        return True  # unreadable: reported as such by the validation


def _protected(d: Path, roots: set[Path]) -> str | None:
    """Why `d` must never be moved (a root given to ingest, the working directory or one of its ancestors), or
    None."""
    try:
        rd, cwd = d.resolve(), Path.cwd().resolve()
    except OSError:
        return "its location cannot be resolved"
    if any(rd == r.resolve() for r in roots):
        return "it is the path given to ingest"
    if cwd == rd or rd in cwd.parents:
        return "it is the working directory or one of its parents"
    return None


def _recognised_run(d: Path) -> str | None:
    """None when `d` is recognisably a dlm-triage run directory (its step log beside a manifest that is damaged
    or carries our `schema_version`); otherwise why it is not one. Only recognised runs are ever quarantined."""
    if not (d / schema.STEPLOG_FILENAME).is_file():
        return f"no {schema.STEPLOG_FILENAME} beside {schema.MANIFEST_FILENAME}"
    try:
        m = json.loads((d / schema.MANIFEST_FILENAME).read_bytes())
    except (ValueError, RecursionError):
        return None  # damaged manifest next to our step log: a run
    if isinstance(m, dict) and "schema_version" in m:
        return None
    return f"{schema.MANIFEST_FILENAME} has no dlm-triage schema_version (another tool's manifest?)"


def _canonical_json(obj: Any) -> str:
    """Key-sorted compact JSON: the stored manifest text and the input of content_sha256."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, allow_nan=True)


def _opt_float(x: Any, name: str = "value") -> float | None:
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise _Invalid(f"manifest {name}={_short(x)} is not a number (use a JSON number, or null)")
    try:
        v = float(x)
    except OverflowError:
        raise _Invalid(f"manifest {name}={_short(x)} is out of range for a float") from None
    if not math.isfinite(v):
        raise _Invalid(f"manifest {name}={_short(x)} is NaN/Infinity: undefined values are written as null")
    return v


def _opt_int(x: Any, name: str = "value") -> int | None:
    try:
        return int32_or_none(x, f"manifest {name}")
    except ValueError as e:
        raise _Invalid(str(e)) from None


def _opt_bool(x: Any, name: str = "value") -> bool | None:
    """A JSON boolean or null; anything else ('no', 'false', 0) is refused rather than guessed."""
    if x is None or isinstance(x, bool):
        return x
    raise _Invalid(f"manifest {name}={_short(x)} is not a JSON boolean: write true or false (or null)")


def prepare_run_dir(run_dir: Path) -> PreparedRun:
    """Validate one run directory (runlog.read_run, then the manifest config via RunConfig) into a `PreparedRun`."""
    manifest, steps = _read_run(run_dir)
    return _prepare_validated(Path(run_dir), manifest, steps)


def _stored_columns(steps: pl.DataFrame) -> pl.DataFrame:
    # read_run checked every column's presence and dtype, nulls, contiguous 0..n-1 steps and finiteness;
    # keep the stored columns only (df[cols]: ~45 us, a select ~130 us with polars 2.1).
    missing_cols = [c for c in STEPS_COLUMNS if c not in steps.columns]
    if missing_cols:
        raise _Invalid(f"step log lacks column(s) {missing_cols}")
    return steps[list(STEPS_COLUMNS)]


def _prepare_validated(run_dir: Path, manifest: dict, steps: pl.DataFrame | None,
                       span: tuple[int, int] | None = None, row: dict | _Invalid | None = None) -> PreparedRun:
    """A PreparedRun from a manifest + step log runlog has validated (the manifest config is checked here).
    `steps` None with a `span`: the rows are in the batch frame (runlog.read_runs_batch). `row`: the result of
    `_manifest_row` when already computed (an _Invalid is raised here, after the step-log check)."""
    if steps is not None:
        steps = _stored_columns(steps)
    if row is None:
        row = _manifest_row(run_dir, manifest)
    elif isinstance(row, _Invalid):
        raise row
    return PreparedRun(path=str(run_dir), row=row, steps=steps, move_on_conflict=False, span=span)


def _manifest_row(run_dir: Path, manifest: dict, source_path: str | None = None) -> dict:
    """The `runs` row of a run from its manifest alone (the config validated through RunConfig); raises
    _Invalid. `source_path`: run_dir resolved, when the caller has it."""
    try:
        cfg = RunConfig.from_dict(manifest["config"])
    except (ConfigError, TypeError, KeyError, AttributeError, ValueError, OverflowError, RecursionError) as e:
        raise _Invalid(f"manifest config is invalid: {_short(e, 2000)}") from None
    m = manifest
    if not isinstance(m.get("run_id"), str) or not m["run_id"].strip():
        raise _Invalid(f"manifest run_id={_short(m.get('run_id'))} is not a non-empty string")
    f, i, b = (lambda k: _opt_float(m[k], k)), (lambda k: _opt_int(m[k], k)), (lambda k: _opt_bool(m[k], k))
    try:
        manifest_json = _canonical_json(m)
        row = {
            "run_id": m["run_id"], "source": "dlm-triage",
            "source_path": str(run_dir.resolve()) if source_path is None else source_path,
            "family": cfg.family, "model_id": cfg.model_id, "cohort": cfg.cohort, "objective": cfg.objective,
            "method": cfg.method,
            "rank": cfg.rank, "alpha": float(cfg.alpha), "mask_ratio": float(cfg.mask_ratio),
            "learning_rate": float(cfg.learning_rate), "seed": cfg.seed, "steps": cfg.steps,
            "batch_size": cfg.batch_size, "config_hash": str(m["config_hash"]),
            "config_json": json.dumps(m["config"], sort_keys=True),
            "status": str(m["status"]), "final_loss": f("final_loss"),
            "max_grad_norm": f("max_grad_norm"), "top1_step0": f("top1_step0"),
            "top1_warning_detected": b("top1_warning_detected"),
            "top1_fire_step": i("top1_fire_step"), "top1_cross_050": i("top1_cross_050"),
            "top1_cross_080": i("top1_cross_080"), "top1_cross_095": i("top1_cross_095"),
            "collapsed": b("collapsed"), "diverged_at_step": i("diverged_at_step"),
            "routed_for_inspection": bool(b("routed_for_inspection")),
            "routing_json": None if m["routing"] is None else json.dumps(m["routing"], sort_keys=True),
            "grad_gini": f("grad_gini"), "grad_top1_share": f("grad_top1_share"),
            "n_steps": i("n_steps_logged"), "device": None if m["device"] is None else str(m["device"]),
            "code_version": None if m["code_version"] is None else str(m["code_version"]),
            "manifest_json": manifest_json, "content_sha256": hashlib.sha256(manifest_json.encode()).hexdigest(),
        }
    except (KeyError, TypeError, ValueError, OverflowError, RecursionError) as e:
        raise _Invalid(f"manifest value missing or of the wrong type: {_short(e, 200)}") from None
    if row["status"] not in schema.RUN_STATUSES:
        raise _Invalid(f"manifest status {_short(row['status'])} is not one of {list(schema.RUN_STATUSES)}")
    try:
        return RUNS.row(row)
    except ValueError as e:
        raise _Invalid(f"manifest value out of range: {e}") from None


# -- ingestion ----------------------------------------------------------------------------------------------

def ingest_runs(
    db_path: str | Path, runs: Path | str | Iterable[Path | str], *, quarantine_dir: Path | None = None,
    timeout_s: float = 60, workers: int | None = None,
) -> IngestReport:
    """Validate run directories and insert the good ones, all in one transaction.

    - no manifest.json, or status 'failed': incomplete (a crashed, running or failed run) -> counted, listed,
      left alone, never stored (the sweep re-runs it);
    - invalid (malformed manifest, sha256/row-count mismatch, truncated Parquet, drifted columns, bad config):
      reported with path and reason and moved to `quarantine_dir/<ingest_id>/` (default <db dir>/quarantine);
    - run_id already stored with the same content_sha256: already_present, nothing written;
    - run_id stored (or earlier in this batch) with different content: a conflict, reported + copied to
      quarantine, the stored rows untouched.
    Validation happens before the database is opened, in this process, in one batch (runlog.read_runs_batch:
    read_run's rules in one vectorised pass over all step logs); quarantine moves happen after the commit.
    `workers` is accepted for compatibility and ignored: the batched validation is faster in one process than
    the former per-directory validation was in several (benchmarks/results/ingest.md).
    """
    db_path = Path(db_path)
    qdir = Path(quarantine_dir) if quarantine_dir is not None else db_path.parent / "quarantine"
    ingest_id = _new_ingest_id()
    started = _now()
    dirs, roots = _expand_run_dirs(runs)
    # Runs stored earlier with the same manifest (hence the same step-log sha256) need no re-validation:
    # re-ingesting a growing runs directory costs a JSON parse per old run, not a Parquet read.
    stored = _stored_shas(db_path, timeout_s) if db_path.exists() else {}
    to_check, pre_present = [], 0
    for d in dirs:
        known = _manifest_sha(d) if stored else None
        if known is not None and stored.get(known[0]) == known[1]:
            pre_present += 1
        else:
            to_check.append(d)
    prepared: list[PreparedRun] = []
    incomplete: list[str] = []
    skipped: list[tuple[str, str]] = []
    rejected: list[tuple[str, str, bool]] = []  # (path, reason, move)
    batch, outcomes = _prepare_dirs(to_check)
    for kind, path, payload in outcomes:
        if kind == "ok":
            prepared.append(payload)
        elif kind == "incomplete":
            incomplete.append(path)
        elif kind == "unreadable":
            rejected.append((path, payload, False))
        else:
            why_not_run = _recognised_run(Path(path))
            if why_not_run is not None:
                skipped.append((path, f"not a dlm-triage run directory ({why_not_run}); left in place. Its "
                                      f"manifest would fail because: {payload}"))
                continue
            keep = _protected(Path(path), roots)
            rejected.append((path, payload + (f"{_LEFT_IN_PLACE}{keep}]" if keep else ""), keep is None))
    report = _write_batch(
        db_path, prepared, rejected=rejected, incomplete=incomplete, ingest_id=ingest_id, started=started,
        kind="runs", paths=[str(d) for d in dirs], quarantine_dir=qdir, timeout_s=timeout_s,
        already_present=pre_present, steps_source=None if batch is None else batch.steps,
    )
    return dataclasses.replace(report, skipped=tuple(skipped)) if skipped else report


def _stored_shas(db_path: Path, timeout_s: float) -> dict[str, str]:
    con = connect(db_path, timeout_s=timeout_s)
    try:
        return dict(con.execute("SELECT run_id, content_sha256 FROM runs").fetchall())
    finally:
        con.close()


def _manifest_sha(d: Path) -> tuple[str, str] | None:
    """(run_id, content sha256) from a run directory's manifest alone; None when it is absent or unreadable
    (full validation then reports why)."""
    try:
        m = json.loads((d / schema.MANIFEST_FILENAME).read_bytes())
        if not isinstance(m, dict) or not isinstance(m.get("run_id"), str):
            return None
        return m["run_id"], hashlib.sha256(_canonical_json(m).encode()).hexdigest()
    except (OSError, ValueError, RecursionError, OverflowError):
        return None


def _classify(d: Path, prepared: PreparedRun) -> tuple[str, str, Any]:
    if prepared.row["status"] == "failed":
        # An attempt that raised: not a result (the sweep re-runs it, under the same run_id). Stored, it would
        # enter calibration with an early-step "final" loss and turn the completed re-run into a conflict.
        return "incomplete", str(d), None
    return "ok", str(d), prepared


def _prepare_dirs(dirs: list[Path]):
    """Validate run directories in one batch (runlog.read_runs_batch: the same rules and reasons as read_run).
    Returns (batch or None, [(kind, path, payload)] in the order of `dirs`); the PreparedRuns' `span`s point
    into batch.steps."""
    from .runlog import RunLogError, read_runs_batch

    def manifest_state(d: Path) -> bool | OSError:
        try:
            return (d / schema.MANIFEST_FILENAME).exists()
        except OSError as e:  # e.g. a directory this user may not enter
            return e

    has_manifest = [manifest_state(d) for d in dirs]
    checked = [d for d, m in zip(dirs, has_manifest) if m is True]
    resolved_parents: dict[Path, Path] = {}

    def source_path(d: Path) -> str:
        # = str(d.resolve()), one resolve per parent: d's last component is no symlink (checked) and no '..'
        if d.name in ("", ".", "..") or d.is_symlink():
            return str(d.resolve())
        parent = resolved_parents.get(d.parent)
        if parent is None:
            parent = resolved_parents[d.parent] = d.parent.resolve()
        return str(parent / d.name)

    def row_of(d: Path, manifest: dict) -> dict | _Invalid:
        # runs in read_runs_batch's reading loop, while earlier step logs are parsed in its worker thread
        try:
            return _manifest_row(d, manifest, source_path(d))
        except _Invalid as e:
            return e
        except (ValueError, TypeError, OverflowError, RecursionError, OSError) as e:  # one run's problem only
            return _Invalid(f"manifest cannot be stored ({type(e).__name__}: {_short(e, 200)})")

    batch = read_runs_batch(checked, per_manifest=row_of) if checked else None
    results = iter(range(len(checked)))
    out: list[tuple[str, str, Any]] = []
    for d, m in zip(dirs, has_manifest):
        if isinstance(m, OSError):
            out.append(("unreadable", str(d), _unreadable_reason(d, m)))
            continue
        if not m:
            out.append(("incomplete", str(d), None))
            continue
        i = next(results)
        res = batch.results[i]
        if isinstance(res, RunLogError):
            if res.unreadable:
                out.append(("unreadable", str(d), _unreadable_reason(d, res)))
            else:
                out.append(("invalid", str(d), getattr(res, "reason", None) or str(res)))
            continue
        try:
            prepared = _prepare_validated(d, res, batch.separate.get(i), batch.spans[i], batch.extras[i])
        except _Invalid as e:
            out.append(("invalid", str(d), str(e)))
            continue
        out.append(_classify(d, prepared))
    return batch, out


def _unreadable_reason(d: Path, e: BaseException) -> str:
    return (f"unreadable: {getattr(e, 'reason', None) or e}; fix the permissions of {d} and ingest again "
            "(left in place, not quarantined)")


def _new_ingest_id() -> str:
    return f"ing-{_now().strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"


def _runs_frame(rows: Sequence[Mapping[str, Any]], ingest_id: str, at: datetime) -> pl.DataFrame:
    df = pl.DataFrame([dict(r) for r in rows], schema=RUNS_SCHEMA, orient="row") if rows else \
        pl.DataFrame(schema=RUNS_SCHEMA)
    return df.with_columns(pl.lit(at).alias("ingested_at"), pl.lit(ingest_id).alias("ingest_id"))


def _steps_frame(prepared: Sequence[PreparedRun], source: pl.DataFrame | None = None) -> pl.DataFrame:
    """All steps of the batch as one frame, run_id attached with one repeat (no per-run with_columns).
    Runs with a `span` take their rows from `source` (one gather, none when they cover it in order)."""
    parts = []
    spanned = [p for p in prepared if p.span is not None and p.steps is None and p.span[1]]
    if spanned:
        if source is None:
            raise ValueError("_steps_frame: PreparedRun.span without a steps source")
        starts = np.array([p.span[0] for p in spanned], dtype=np.int64)
        lens = np.array([p.span[1] for p in spanned], dtype=np.int64)
        offsets = np.cumsum(lens) - lens
        body = source[list(STEPS_COLUMNS)]
        if not (int(lens.sum()) == source.height and np.array_equal(starts, offsets)):
            body = body[np.repeat(starts - offsets, lens) + np.arange(int(lens.sum()), dtype=np.int64)]
        ids = [p.row["run_id"] for p in spanned]
        run_id = pl.Series("run_id", ids, dtype=pl.String).gather(np.repeat(np.arange(len(ids)), lens))
        parts.append(body.insert_column(0, run_id))
    own = [p for p in prepared if p.steps is not None and p.steps.height]
    if own:
        frames = [p.steps for p in own]
        lens2 = [f.height for f in frames]
        body = pl.concat(frames, how="vertical", rechunk=True)
        run_id = pl.Series("run_id", [p.row["run_id"] for p in own], dtype=pl.String).gather(
            np.repeat(np.arange(len(own)), lens2))
        parts.append(body.insert_column(0, run_id))
    if not parts:
        return pl.DataFrame(schema={"run_id": pl.String, **STEPS_SCHEMA})
    return parts[0] if len(parts) == 1 else pl.concat(parts, how="vertical")


def _insert_runs(con: duckdb.DuckDBPyConnection, runs_df: pl.DataFrame) -> None:
    con.register("_dlmt_new_runs", runs_df.to_arrow())
    try:
        con.execute("INSERT INTO runs BY NAME SELECT * FROM _dlmt_new_runs")
    finally:
        con.unregister("_dlmt_new_runs")


def _insert_steps(con: duckdb.DuckDBPyConnection, steps_df: pl.DataFrame) -> None:
    con.register("_dlmt_new_steps", steps_df.to_arrow())
    try:
        con.execute("INSERT INTO steps BY NAME SELECT * FROM _dlmt_new_steps")
    finally:
        con.unregister("_dlmt_new_steps")


def _write_batch(
    db_path: Path, prepared: Sequence[PreparedRun], *, rejected: list[tuple[str, str, bool]],
    incomplete: list[str], ingest_id: str, started: datetime, kind: str, paths: list[str],
    quarantine_dir: Path | None, timeout_s: float, already_present: int = 0,
    steps_source: pl.DataFrame | None = None, staged: Sequence[StagedRows] = (),
    memory_limit_mb: int | None = None,
) -> IngestReport:
    """Shared by ingest_runs and importers: dedupe against the DB, insert in one transaction, then quarantine.

    `rejected` entries with move=True are moved into quarantine (run directories); move=False ones are only
    recorded (a user's import file is never moved). `staged` rows (StagedRows) come after `prepared` in the
    batch's order and are deduped and inserted by DuckDB from their files (`_classify_staged`), under
    `memory_limit_mb` when given: MemoryLimitHit (nothing written) when DuckDB needs more, e.g. for the
    primary-key index of a database of millions of runs; the caller retries without a limit.
    """
    # Dedupe within the batch first: the first occurrence of a run_id wins, except that a grown re-export of
    # an imported run (its steps extend the other's) replaces the shorter one.
    first: dict[str, PreparedRun] = {}
    already = already_present
    rejected = list(rejected)
    duplicates: list[tuple[str, str]] = []
    for p in prepared:
        rid = p.row["run_id"]
        if rid not in first:
            first[rid] = p
            continue
        q = first[rid]
        if q.row["content_sha256"] == p.row["content_sha256"]:
            already += 1
            duplicates.append((p.path, f"duplicate of {_where(q)} (same run {rid}, identical content): stored once"))
        elif _grows(p, q, steps_source):
            first[rid] = p
            duplicates.append((q.path, f"superseded by {_where(p)}, which holds the same run {rid} with more steps"))
        elif _grows(q, p, steps_source):
            duplicates.append((p.path, f"superseded by {_where(q)}, which holds the same run {rid} with more steps"))
        else:
            rejected.append((p.path, f"conflict: run_id {rid} appears twice in this ingest with different "
                                     f"content (first at {_where(q)}); the first was kept", False))
    con = connect(db_path, timeout_s=timeout_s)
    if staged and memory_limit_mb:
        # DuckDB keeps a transaction's appended rows (and its buffer pool) in memory up to 80% of RAM unless
        # told otherwise; under a limit it writes them to the file / its temp directory as it goes.
        con.execute(f"SET memory_limit = '{int(memory_limit_mb)}MB'")
    try:
        candidates = list(first.values())
        if candidates:
            ids = pl.DataFrame({"run_id": [p.row["run_id"] for p in candidates]})
            con.register("_dlmt_ids", ids.to_arrow())
            try:
                stored = dict(con.execute(
                    "SELECT r.run_id, r.content_sha256 FROM runs r JOIN _dlmt_ids i USING (run_id)"
                ).fetchall())
            finally:
                con.unregister("_dlmt_ids")
        else:
            stored = {}
        new: list[PreparedRun] = []
        updated: list[str] = []
        staged_ids: list[str] = []
        if staged:
            try:
                staged_ids, n_already, staged_dups, staged_rejected = _classify_staged(con, staged, candidates)
            except duckdb.OutOfMemoryException as e:
                if not memory_limit_mb:
                    raise
                raise MemoryLimitHit(f"{memory_limit_mb} MB were not enough for DuckDB") from e
            already += n_already
            duplicates += staged_dups
            rejected += staged_rejected
        for p in candidates:
            sha = stored.get(p.row["run_id"])
            if sha is None:
                new.append(p)
            elif sha == p.row["content_sha256"]:
                already += 1
            else:
                old = _stored_steps(con, p) if _growable(p) else None
                if old is not None and _extends(_own_steps(p, steps_source), old):
                    new.append(p)
                    updated.append(p.row["run_id"])
                elif old is not None and _extends(old, _own_steps(p, steps_source)):
                    already += 1
                    duplicates.append((p.path, f"run {p.row['run_id']} is already stored with more steps: kept"))
                else:
                    rejected.append((p.path, f"conflict: run_id {p.row['run_id']} is already stored with "
                                             f"different content (stored sha256 {sha[:12]}, this "
                                             f"{p.row['content_sha256'][:12]}); stored data kept", False))
        at = _now()
        quarantine_rows = []
        plan: list[tuple[str, str, bool, str | None]] = []
        # A rejection recorded before with the same path and reason (a conflict met again) is reported, not
        # copied or recorded again: the quarantine does not grow with every ingestion.
        seen_before = _recorded_rejections(con, [(path, reason) for path, reason, _ in rejected])
        names_used: set[str] = set()
        for path, reason, move in rejected:
            if (path, reason) in seen_before:
                plan.append((path, reason + f" [already quarantined by {seen_before[(path, reason)]}]", False,
                             None))
                continue
            dest = None
            if quarantine_dir is not None and _is_dir(Path(path)) and not reason.startswith("unreadable"):
                dest = str(_unique_dest(quarantine_dir / ingest_id, Path(path).name, names_used))
            plan.append((path, reason, move, dest))
            quarantine_rows.append((path, reason, ingest_id, at, dest))
        runs_df = _runs_frame([p.row for p in new], ingest_id, at)
        steps_df = _steps_frame(new, steps_source)
        con.begin()
        try:
            if updated:  # a grown trajectory replaces its shorter self, in this same transaction
                con.execute("DELETE FROM steps WHERE run_id IN (SELECT unnest(?))", [updated])
                con.execute("DELETE FROM runs WHERE run_id IN (SELECT unnest(?))", [updated])
            if new:
                _insert_runs(con, runs_df)
                _insert_steps(con, steps_df)
            if staged_ids:
                con.execute("INSERT INTO runs BY NAME SELECT s.* EXCLUDE (line, src_i, frn), ? AS ingested_at, "
                            "? AS ingest_id FROM _dlmt_staged s JOIN _dlmt_staged_new USING (src_i, frn)",
                            [at, ingest_id])
            if quarantine_rows:
                con.executemany("INSERT INTO quarantine VALUES (?, ?, ?, ?, ?)", quarantine_rows)
            con.execute(
                "INSERT INTO ingests VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [ingest_id, started, _now(), kind, json.dumps(paths), len(new) + len(staged_ids), already,
                 len(incomplete), len(rejected)],
            )
            con.commit()
        except BaseException as e:
            _rollback(con)
            if isinstance(e, duckdb.OutOfMemoryException) and staged and memory_limit_mb:
                raise MemoryLimitHit(f"{memory_limit_mb} MB were not enough for DuckDB") from e
            if isinstance(e, duckdb.Error):
                raise StoreError(f"ingestion {ingest_id} could not be written to {db_path} ({_first_line(e)}): "
                                 "nothing of it was stored and the database holds what it held before; free "
                                 "disk space (or fix the database's location) and run it again") from e
            raise
    finally:
        if staged:
            _drop_staged(con)
        con.close()
    quarantined: list[tuple[str, str]] = []
    for path, reason, move, dest in plan:
        if dest is not None:
            reason = reason + _quarantine(Path(path), Path(dest), move=move)
        quarantined.append((path, reason))
    return IngestReport(
        ingest_id=ingest_id, added=len(new) - len(updated) + len(staged_ids), already_present=already,
        incomplete=len(incomplete), quarantined=tuple(quarantined),
        added_run_ids=tuple(p.row["run_id"] for p in new if p.row["run_id"] not in set(updated)) + tuple(staged_ids),
        incomplete_paths=tuple(incomplete), updated_run_ids=tuple(updated), duplicates=tuple(duplicates),
    )


def _classify_staged(con: duckdb.DuckDBPyConnection, staged: Sequence[StagedRows],
                     earlier: Sequence[PreparedRun]) -> tuple[list[str], int, list[tuple[str, str]],
                                                             list[tuple[str, str, bool]]]:
    """Dedupe staged rows inside DuckDB: the first occurrence of a run_id (files in order, rows in file order)
    is new unless the database or an `earlier` run of the batch holds it; repeats with the same content are
    duplicates (stored once), with other content conflicts. Leaves view _dlmt_staged and table
    _dlmt_staged_new (src_i, frn of the new rows) for the insert; returns (new run ids in order, number
    already present, duplicates, rejected)."""
    files = [str(Path(st.parquet).resolve()) for st in staged]
    rel = con.read_parquet(files, filename=True, file_row_number=True)
    rel.create_view("_dlmt_staged_raw", replace=True)
    con.register("_dlmt_staged_src", pl.DataFrame({"filename": files, "src_i": list(range(len(files))),
                                                   "src_path": [st.path for st in staged]}).to_arrow())
    con.register("_dlmt_earlier", pl.DataFrame(
        {"run_id": [p.row["run_id"] for p in earlier], "sha": [p.row["content_sha256"] for p in earlier],
         "at": [_where(p) for p in earlier]}, schema={"run_id": pl.String, "sha": pl.String, "at": pl.String}
    ).to_arrow())
    con.execute("CREATE OR REPLACE TEMP VIEW _dlmt_staged AS SELECT r.* EXCLUDE (filename, file_row_number), "
                "s.src_i, r.file_row_number AS frn FROM _dlmt_staged_raw r JOIN _dlmt_staged_src s USING (filename)")
    # one pass over the staged keys (run_id, sha, position): DuckDB spills to disk where memory runs short
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _dlmt_staged_cls AS
        WITH s AS (
            SELECT run_id, content_sha256 AS sha, src_i, frn, line,
                   row_number() OVER w AS rn, first_value(content_sha256) OVER w AS first_sha,
                   first_value(src_i) OVER w AS first_src, first_value(line) OVER w AS first_line
            FROM _dlmt_staged WINDOW w AS (PARTITION BY run_id ORDER BY src_i, frn))
        SELECT s.*, r.content_sha256 AS stored_sha, e.sha AS earlier_sha, e.at AS earlier_at,
               CASE WHEN s.rn > 1 THEN (CASE WHEN s.sha = s.first_sha THEN 'dup' ELSE 'conflict-batch' END)
                    WHEN e.sha IS NOT NULL THEN (CASE WHEN s.sha = e.sha THEN 'dup-earlier'
                                                      ELSE 'conflict-earlier' END)
                    WHEN r.content_sha256 IS NULL THEN 'new'
                    WHEN r.content_sha256 = s.sha THEN 'already'
                    ELSE 'conflict-stored' END AS kind
        FROM s LEFT JOIN runs r USING (run_id) LEFT JOIN _dlmt_earlier e USING (run_id)""")
    con.execute("CREATE OR REPLACE TEMP TABLE _dlmt_staged_new AS "
                "SELECT src_i, frn FROM _dlmt_staged_cls WHERE kind = 'new'")
    new_ids = [r for (r,) in con.execute(
        "SELECT run_id FROM _dlmt_staged_cls WHERE kind = 'new' ORDER BY src_i, frn").fetchall()]
    (n_already,) = con.execute("SELECT count(*) FROM _dlmt_staged_cls WHERE kind IN ('already', 'dup', "
                               "'dup-earlier')").fetchone()
    paths = [st.path for st in staged]

    def at(src: int, line: int | None) -> str:
        return f"{paths[src]}:{line}" if line is not None else paths[src]

    duplicates: list[tuple[str, str]] = []
    rejected: list[tuple[str, str, bool]] = []
    for rid, sha, src, line, first_src, first_line, stored_sha, earlier_at, kind in con.execute(
            "SELECT run_id, sha, src_i, line, first_src, first_line, stored_sha, earlier_at, kind "
            "FROM _dlmt_staged_cls WHERE kind NOT IN ('new', 'already') ORDER BY src_i, frn").fetchall():
        first = at(first_src, first_line) if kind in ("dup", "conflict-batch") else earlier_at
        if kind in ("dup", "dup-earlier"):
            duplicates.append((paths[src], f"duplicate of {first} (same run {rid}, identical content): stored once"))
        elif kind == "conflict-stored":
            rejected.append((paths[src], f"conflict: run_id {rid} is already stored with different content (stored "
                                         f"sha256 {stored_sha[:12]}, this {sha[:12]}); stored data kept", False))
        else:
            rejected.append((paths[src], f"conflict: run_id {rid} appears twice in this ingest with different "
                                         f"content (first at {first}); the first was kept", False))
    return new_ids, int(n_already), duplicates, rejected


def _drop_staged(con: duckdb.DuckDBPyConnection) -> None:
    for sql in ("DROP TABLE IF EXISTS _dlmt_staged_new", "DROP TABLE IF EXISTS _dlmt_staged_cls",
                "DROP VIEW IF EXISTS _dlmt_staged", "DROP VIEW IF EXISTS _dlmt_staged_raw"):
        try:
            con.execute(sql)
        except duckdb.Error:
            pass
    for name in ("_dlmt_staged_src", "_dlmt_earlier"):
        try:
            con.unregister(name)
        except duckdb.Error:
            pass


def _where(p: PreparedRun) -> str:
    line = json.loads(p.row["manifest_json"]).get("line") if p.row.get("source", "").startswith("import:") else None
    return f"{p.path}:{line}" if line is not None else p.path


def _growable(p: PreparedRun) -> bool:
    """Imported time series may grow (a re-export after more steps); run directories never do."""
    return str(p.row.get("source", "")).startswith("import:") and (p.steps is not None or p.span is not None)


def _own_steps(p: PreparedRun, source: pl.DataFrame | None) -> pl.DataFrame:
    if p.steps is not None:
        return p.steps
    start, n = p.span
    return source.slice(start, n)


def _grows(longer: PreparedRun, shorter: PreparedRun, source: pl.DataFrame | None) -> bool:
    return _growable(longer) and _growable(shorter) and _extends(_own_steps(longer, source),
                                                                  _own_steps(shorter, source))


def _stored_steps(con: duckdb.DuckDBPyConnection, p: PreparedRun) -> pl.DataFrame:
    cols = ", ".join(STEPS_COLUMNS)
    return _pl(con, f"SELECT {cols} FROM steps WHERE run_id = ? ORDER BY step", [p.row["run_id"]])


def _extends(longer: pl.DataFrame, shorter: pl.DataFrame) -> bool:
    """`longer` holds more steps and its first rows are exactly `shorter` (NaN equal to NaN)."""
    n = shorter.height
    if longer.height <= n:
        return False
    head = longer.head(n)
    for col in STEPS_COLUMNS:
        a = head[col].cast(pl.Float64).to_numpy()
        b = shorter[col].cast(pl.Float64).to_numpy()
        if not np.array_equal(a, b, equal_nan=True):
            return False
    return True


_LEFT_IN_PLACE = " [left in place: "
"""Marks the reason of a bad run directory that is never moved (the root given, the working directory or one of
its parents): it is copied into quarantine once, and reported, not copied again, while it stays as it is."""


def _recorded_rejections(con: duckdb.DuckDBPyConnection, items: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """{(path, reason): ingest_id} of the items the quarantine table already holds, for the rejections that stay
    where they are and would be copied again: conflicts (their reason names both content hashes, so the same
    reason means the same two contents) and protected directories (`_LEFT_IN_PLACE`)."""
    items = [(p, r) for p, r in items if r.startswith("conflict:") or _LEFT_IN_PLACE in r]
    if not items:
        return {}
    rows = con.execute(
        "SELECT path, reason, min(ingest_id) FROM quarantine WHERE path IN (SELECT unnest(?)) GROUP BY ALL",
        [[p for p, _ in items]]).fetchall()
    wanted = set(items)
    return {(p, r): i for p, r, i in rows if (p, r) in wanted}


def _unique_dest(folder: Path, name: str, used: set[str]) -> Path:
    """folder/name, or folder/name-2, -3, ... when this ingestion already uses the name (two roots holding
    same-named bad directories must not nest one inside the other)."""
    candidate, n = name, 1
    while candidate in used or (folder / candidate).exists():
        n += 1
        candidate = f"{name}-{n}"
    used.add(candidate)
    return folder / candidate


def _quarantine(src: Path, dest: Path, *, move: bool) -> str:
    """Move (or copy) a rejected run directory; returns a suffix for the reason. Never raises: a concurrent
    ingestion may have moved it already, and a read-only source is copied instead."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if move:
            try:
                shutil.move(str(src), str(dest))
                return f" [moved to {dest}]"
            except OSError:
                pass
        shutil.copytree(src, dest)
        return f" [copied to {dest}]"
    except (OSError, shutil.Error) as e:
        return f" [not quarantined: {e}]"


# -- calibration inputs -------------------------------------------------------------------------------------

def load_calibration_inputs(con: duckdb.DuckDBPyConnection, *, where: str | None = None):
    """Runs (one row per run, `diverged` = status == 'diverged') and their step trajectories for calibrate.py.

    `where` is a SQL predicate over `runs` columns (e.g. "family = 'tiny'"). Trajectories are held long
    (calinputs.Trajectories.from_long: one entry per stored step, runs in `runs`' order): memory is bounded by
    the rows stored, whatever the step numbers (W&B `_step` or HF global steps in the millions). None when none
    of the selected runs has a step log.
    """
    from .calinputs import CalibrationInputs, Trajectories

    pred = f"WHERE ({where})" if where else ""
    runs = _pl(con, f"SELECT *, status = 'diverged' AS diverged FROM runs {pred} ORDER BY run_id")
    if runs.height == 0:
        return CalibrationInputs(runs=runs, traj=None)
    steps = _pl(
        con,
        f"SELECT s.run_id, s.step, s.loss, s.grad_norm, s.top1_freq FROM steps s "
        f"JOIN (SELECT run_id FROM runs {pred}) r USING (run_id) ORDER BY s.run_id, s.step"
    )
    if steps.height == 0:
        return CalibrationInputs(runs=runs, traj=None)
    run_ids = runs["run_id"].to_list()
    counts = dict(steps.group_by("run_id").len().iter_rows())
    offsets = np.concatenate([[0], np.cumsum([counts.get(r, 0) for r in run_ids], dtype=np.int64)])
    traj = Trajectories.from_long(
        run_ids, offsets, steps["step"].to_numpy(),
        *(steps[c].cast(pl.Float64).fill_null(np.nan).to_numpy() for c in ("loss", "grad_norm", "top1_freq")))
    return CalibrationInputs(runs=runs, traj=traj)


# -- threshold registry ---------------------------------------------------------------------------------------

def _snapshot(con: duckdb.DuckDBPyConnection) -> dict:
    """The snapshot of every stored run (calinputs.snapshot_of), for a result saved without its own."""
    return snapshot_of(_pl(con, "SELECT run_id, ingested_at FROM runs ORDER BY run_id"))


def save_calibration(con: duckdb.DuckDBPyConnection, result: CalibrationResult | Mapping[str, Any]) -> str:
    """Store a calibration result (a CalibrationResult, or the JSON contract of calibrate.py it is read from)
    and its per-group thresholds.

    Thresholds are the groups' `registry` rules (calresult.Registry); one that may not go live (degenerate, or
    a null/non-finite threshold: `Registry.accepted`) is stored with accepted=False and is never
    `latest_threshold`. The calibration is 'accepted' when at least one group is. Saving the same
    calibration_id twice with the same result is a no-op; with a different result it is an error.
    Returns the calibration_id (the result's or a new one).
    """
    cal = result if isinstance(result, CalibrationResult) else CalibrationResult.from_json(result)
    cal_id = cal.calibration_id or f"cal-{_now().strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    result_json = json.dumps(cal.to_json(), sort_keys=True, default=str)
    prior = con.execute("SELECT result_json FROM calibrations WHERE calibration_id = ?", [cal_id]).fetchall()
    prior = prior[0] if prior else None
    if prior is not None:
        if prior[0] == result_json:
            return cal_id
        raise StoreError(f"calibration {cal_id} is already stored with a different result: give it a new id")
    group_by = cal.group_by
    snapshot = cal.snapshot or _snapshot(con)
    now = _now()
    rows = [[cal_id, g.name, group_by, reg.monitor, reg.k, reg.threshold, reg.ci_low, reg.ci_high, reg.n,
             reg.n_unstable, reg.precision, reg.recall, reg.f1, reg.accepted, now]
            for g in cal.groups.values() if (reg := g.registry) is not None]
    status = "accepted" if cal.accepted else "rejected"
    con.begin()
    try:
        seq = con.execute("SELECT nextval('calibration_seq')").fetchall()[0][0]
        con.execute(
            "INSERT INTO calibrations VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [cal_id, now, group_by, json.dumps(cal.params, sort_keys=True, default=str),
             json.dumps(snapshot, sort_keys=True, default=str), result_json, status, seq],
        )
        if rows:
            con.executemany(
                "INSERT INTO thresholds VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [r + [seq] for r in rows],
            )
        con.commit()
    except BaseException:
        _rollback(con)
        raise
    return cal_id


def latest_threshold(
    con: duckdb.DuckDBPyConnection, group: str, *, group_by: str = "family", monitor: str = "max_grad_norm",
) -> ThresholdRecord | None:
    """The most recently saved *accepted* threshold of `group` (None when there is none).

    `group` is a group key or a raw value (a run's family, cohort, ...): it is keyed by `groups.group_key` first,
    so 'LLaDA' finds the threshold of group 'llada' and '' the one of '<null>'."""
    from . import groups

    if group_by in groups.GROUP_BY_COLUMNS:
        group = groups.group_key(group_by, group)
    row = con.execute(
        "SELECT group_name, group_by, monitor, k, threshold, ci_low, ci_high, n, calibration_id, created_at "
        "FROM thresholds WHERE group_name = ? AND group_by = ? AND monitor = ? AND accepted "
        "ORDER BY seq DESC LIMIT 1",
        [group, group_by, monitor],
    ).fetchall()
    row = row[0] if row else None
    return None if row is None else ThresholdRecord(*row)


def _g3(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def live_threshold(con: duckdb.DuckDBPyConnection, group: str, *,
                   group_by: str = "family") -> tuple[ThresholdRecord | None, str]:
    """(the threshold the live early warning uses for `group` or None, one sentence saying which and why).

    The threshold is `latest_threshold`'s; the sentence names its rule, calibration and evidence, and says when a
    newer calibration rejected the group (the previous accepted threshold stays in force) or why none is active.
    """
    from . import groups

    key = groups.group_key(group_by, group) if group_by in groups.GROUP_BY_COLUMNS else group
    rec = latest_threshold(con, group, group_by=group_by)
    h = threshold_history(con, key)
    h = h.filter(pl.col("group_by") == group_by) if h.height else h
    newest = h.row(0, named=True) if h.height else None
    if rec is None:
        if newest is None:
            return None, (f"early warning off for {group_by} {key}: no calibration of this group yet "
                          "(dlm-triage calibrate after a sweep registers one)")
        return None, (f"early warning off for {group_by} {key}: calibration {newest['calibration_id']} registered "
                      f"no live threshold ({newest['reason']})")
    used = h.filter(pl.col("calibration_id") == rec.calibration_id).row(0, named=True)
    rule = f"max-grad-up-to-{rec.k}" if rec.k is not None else "whole-run max grad"
    msg = (f"early warning for {group_by} {key}: {rule} >= {rec.threshold:.4g} from calibration "
           f"{rec.calibration_id} (held-out precision {_g3(used['precision'])}, CI "
           f"[{_g3(used['precision_ci_low'])}, {_g3(used['precision_ci_high'])}] vs baseline ceiling "
           f"{_g3(used['baseline_ceiling'])})")
    if newest is not None and newest["calibration_id"] != rec.calibration_id:
        msg += (f"; the newer calibration {newest['calibration_id']} rejected this group ({newest['reason']}): "
                "the previous threshold stays in force")
    return rec, msg


REGISTRY_EVIDENCE_COLUMNS = {"precision_ci_low": pl.Float64, "precision_ci_high": pl.Float64,
                             "baseline_ceiling": pl.Float64, "reason": pl.String}
"""Read from each calibration's registry record (result_json): the registered rule's split-bootstrap precision
CI, the always-positive baseline ceiling it is judged against, and why it was rejected (None when accepted)."""


def threshold_history(con: duckdb.DuckDBPyConnection, group: str | None = None) -> pl.DataFrame:
    """Every stored threshold (accepted or not), newest first, with the calibration's status and the evidence
    of the registered rule (REGISTRY_EVIDENCE_COLUMNS): one rule per row, the numbers `report` shows."""
    pred, params = ("WHERE t.group_name = ?", [group]) if group is not None else ("", [])
    h = _pl(
        con,
        "SELECT t.*, c.status AS calibration_status FROM thresholds t JOIN calibrations c USING (calibration_id) "
        f"{pred} ORDER BY t.seq DESC, t.group_name",
        params,
    )
    results: dict[str, CalibrationResult] = {}
    ids = h.get_column("calibration_id").unique().to_list() if h.height else []
    for cid, text in (con.execute("SELECT calibration_id, result_json FROM calibrations "
                                  "WHERE list_contains(?, calibration_id)", [ids]).fetchall() if ids else []):
        try:
            results[cid] = CalibrationResult.from_json(json.loads(text) if text else {})
        except (json.JSONDecodeError, ValueError):  # an unreadable stored result: its evidence is unknown
            pass
    extra: dict[str, list[Any]] = {c: [] for c in REGISTRY_EVIDENCE_COLUMNS}
    for cid, gname, acc in h.select("calibration_id", "group_name", "accepted").iter_rows():
        g = results[cid].groups.get(gname) if cid in results else None
        reg = g.registry if g is not None else None
        for c in ("precision_ci_low", "precision_ci_high", "baseline_ceiling"):
            extra[c].append(None if reg is None else getattr(reg, c))
        why = reg.reasons if reg is not None else ()
        extra["reason"].append(None if acc else ("; ".join(why) or "no finite threshold"))
    return h.with_columns(*(pl.Series(c, v, dtype=t) for (c, t), v in
                            zip(REGISTRY_EVIDENCE_COLUMNS.items(), extra.values())))


def _num4(v: float | None) -> str:
    """A number in a reason sentence: 4 significant digits, whole numbers from 10^4 on (36823, not 3.682e+04)."""
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:.0f}" if 1e4 <= abs(v) < 1e9 else f"{v:.4g}"


def _num4_expr(col: str) -> pl.Expr:
    return pl.col(col).map_elements(_num4, return_dtype=pl.String, skip_nulls=False)


def _routing_sentence(routing_json: str | None) -> str:
    """The live early warning's decision (a manifest's routing record) as one sentence with rounded numbers."""
    try:
        r = json.loads(routing_json) if routing_json else {}
    except (TypeError, ValueError):
        r = {}
    if not isinstance(r, dict):
        return "routed live during training"
    value = r.get("value", r.get("max_grad_up_to_k"))
    step = r.get("step", r.get("k"))
    if value is None:
        return "routed live during training"
    where = ", ".join(x for x in (str(r.get("group") or ""), f"calibration {r['calibration_id']}"
                                  if r.get("calibration_id") else "") if x)
    return (f"routed live at step {step}: max-grad so far {_g3(value)} >= threshold "
            f"{_g3(r.get('threshold'))}" + (f" ({where})" if where else "")
            + (", run stopped" if r.get("action") == "stop" else ""))


def inspection_queue(con: duckdb.DuckDBPyConnection, *, calibration_id: str | None = None) -> pl.DataFrame:
    """Runs to inspect: routed live (routed_for_inspection) OR max-grad-up-to-k >= their group's threshold, or
    ended before k (the live warning never evaluated them: listed last, with what they reached so far).

    Thresholds: the latest accepted one per (group_by, group, monitor='max_grad_norm'), or the accepted ones
    of `calibration_id`. max-grad-up-to-k = max grad_norm over logged steps 0..k; runs without a step log
    (imported cells) fall back to their whole-run max_grad_norm, and the reason says so.
    One row per run with config, monitor summary, the matched threshold(s), a `reason`, an `outcome` and its
    `severity` (0 routed live, 1 above threshold, 2 ended before k but above so far, 3 ended before k), sorted
    by severity, then by max-grad / threshold descending.
    """
    if calibration_id is not None:
        th = _pl(
        con,
            "SELECT * FROM thresholds WHERE calibration_id = ? AND accepted AND monitor = 'max_grad_norm'",
            [calibration_id],
        )
    else:
        th = _pl(
        con,
            "SELECT * FROM thresholds WHERE accepted AND monitor = 'max_grad_norm' "
            "QUALIFY row_number() OVER (PARTITION BY group_by, group_name ORDER BY seq DESC) = 1"
        )
    from . import groups

    hits = []
    con.register("_dlmt_th", th.to_arrow())
    try:
        for gb in th["group_by"].unique().to_list():
            if gb not in groups.GROUP_BY_COLUMNS:
                continue
            # each run's group key under `gb` (groups.py: the one definition calibrate used to name the group)
            keys = groups.runs_with_groups(con, gb).select("run_id", pl.col("group").alias("group_name"))
            con.register("_dlmt_keys", keys.to_arrow())
            try:
                hits.append(_pl(con, """
                    WITH t AS (SELECT * FROM _dlmt_th WHERE group_by = ?),
                    m AS (
                        SELECT r.run_id, t.group_by, t.group_name, t.k, t.threshold, t.calibration_id,
                               max_grad_up_to(r.run_id, t.k) AS up_to_k,
                               r.max_grad_norm AS whole_run,
                               (SELECT max(s.step) FROM steps s WHERE s.run_id = r.run_id) AS last_step
                        FROM runs r JOIN _dlmt_keys g USING (run_id) JOIN t ON g.group_name = t.group_name)
                    SELECT run_id, group_by, group_name, k, threshold, calibration_id,
                           coalesce(up_to_k, whole_run) AS max_grad_up_to_k, up_to_k IS NULL AS from_whole_run,
                           last_step, coalesce(last_step < k, false) AS ended_before_k,
                           coalesce(up_to_k, whole_run) >= threshold AS above
                    FROM m WHERE coalesce(up_to_k, whole_run) >= threshold OR last_step < k""", [gb]))
            finally:
                con.unregister("_dlmt_keys")
    finally:
        con.unregister("_dlmt_th")
    hit_schema = {"run_id": pl.String, "group_by": pl.String, "group_name": pl.String, "k": pl.Int32,
                  "threshold": pl.Float64, "calibration_id": pl.String, "max_grad_up_to_k": pl.Float64,
                  "from_whole_run": pl.Boolean, "last_step": pl.Int32, "ended_before_k": pl.Boolean,
                  "above": pl.Boolean}
    hit = pl.concat([h.cast(hit_schema) for h in hits]) if hits else pl.DataFrame(schema=hit_schema)
    # a run that ends before k is never evaluated by the live warning: say so, with what it reached so far
    short = pl.format("ended at step {} before k={}: the live warning never evaluated it; max grad so far {} {} "
                      "threshold {} ({}={}, calibration {})",
                      pl.col("last_step"), pl.col("k"), _num4_expr("max_grad_up_to_k"),
                      pl.when(pl.col("above")).then(pl.lit(">=")).otherwise(pl.lit("<")),
                      _num4_expr("threshold"), pl.col("group_by"), pl.col("group_name"),
                      pl.col("calibration_id"))
    hit = hit.with_columns(
        pl.when(pl.col("ended_before_k")).then(short).otherwise(
            pl.format("{} = {} >= threshold {} ({}={}, calibration {}){}",
                      # a whole-run threshold (k null: no step logs at calibration) is named as such, not dropped
                      pl.when(pl.col("k").is_null()).then(pl.lit("whole-run max grad"))
                      .otherwise(pl.format("max-grad-up-to-{}", pl.col("k"))),
                      _num4_expr("max_grad_up_to_k"), _num4_expr("threshold"),
                      pl.col("group_by"), pl.col("group_name"), pl.col("calibration_id"),
                      pl.when(pl.col("from_whole_run") & pl.col("k").is_not_null())
                      .then(pl.lit(" [no step log: whole-run max]")).otherwise(pl.lit("")))).alias("_reason")
    )
    agg = hit.group_by("run_id").agg(
        pl.col("_reason").sort().str.join("; ").alias("_th_reason"),
        pl.col("threshold").first(), pl.col("k").first(), pl.col("calibration_id").first(),
        pl.col("max_grad_up_to_k").first(), pl.col("above").any().alias("_above"),
        pl.col("ended_before_k").all().alias("ended_before_k"),
    )
    runs = _pl(
        con,
        "SELECT run_id, source, family, cohort, model_id, method, rank, alpha, mask_ratio, learning_rate, seed, "
        "steps, status, final_loss, max_grad_norm, top1_warning_detected, top1_fire_step, collapsed, "
        "diverged_at_step, routed_for_inspection, routing_json, grad_gini, grad_top1_share, config_json "
        "FROM runs ORDER BY run_id"
    )
    q = runs.join(agg, on="run_id", how="left").filter(
        pl.col("routed_for_inspection").fill_null(False) | pl.col("_th_reason").is_not_null()
    )
    live = pl.when(pl.col("routed_for_inspection").fill_null(False)).then(
        pl.col("routing_json").map_elements(_routing_sentence, return_dtype=pl.String, skip_nulls=False)
    )
    routed = pl.col("routed_for_inspection").fill_null(False)
    above, short_run = pl.col("_above").fill_null(False), pl.col("ended_before_k").fill_null(False)
    q = q.with_columns(
        pl.concat_str([live, pl.col("_th_reason")], separator="; ", ignore_nulls=True).alias("reason"),
        pl.when(routed).then(pl.lit("routed live")).when(above & ~short_run).then(pl.lit("above threshold"))
        .when(above).then(pl.lit("ended before k, above threshold so far"))
        .otherwise(pl.lit("ended before k, not evaluated")).alias("outcome"),
        pl.when(routed).then(0).when(above & ~short_run).then(1).when(above).then(2).otherwise(3)
        .cast(pl.Int8).alias("severity"),
        (pl.col("max_grad_up_to_k") / pl.col("threshold")).alias("_ratio"),
    ).with_columns(short_run.alias("ended_before_k"))
    # most severe first; within a level, furthest above its threshold first
    return q.sort(["severity", "_ratio", "run_id"], descending=[False, True, False],
                  nulls_last=True).drop("_th_reason", "_above", "_ratio")


# -- small query helpers for the CLI ------------------------------------------------------------------------

def list_runs(con: duckdb.DuckDBPyConnection, *, where: str | None = None, limit: int | None = None) -> pl.DataFrame:
    """The `runs` table without the bulky JSON columns, ordered by run_id."""
    pred = f"WHERE ({where})" if where else ""
    lim = f"LIMIT {int(limit)}" if limit is not None else ""
    return _pl(
        con,
        f"SELECT * EXCLUDE (manifest_json, config_json, routing_json) FROM runs {pred} ORDER BY run_id {lim}"
    )


def summary(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Counts for `dlm-triage status`: runs by source/status/family, steps, ingests, quarantine, calibrations."""
    def by(col: str) -> dict[str, int]:
        return {str(k): int(v) for k, v in
                con.execute(f"SELECT {col}, count(*) FROM runs GROUP BY ALL ORDER BY 1").fetchall()}

    one = lambda sql: con.execute(sql).fetchall()[0][0]  # noqa: E731
    return {
        "runs": one("SELECT count(*) FROM runs"),
        "steps": one("SELECT count(*) FROM steps"),
        "by_source": by("source"), "by_status": by("status"), "by_family": by("family"),
        "routed_for_inspection": one("SELECT count(*) FROM runs WHERE routed_for_inspection"),
        "ingests": one("SELECT count(*) FROM ingests"),
        "quarantined": one("SELECT count(*) FROM quarantine"),
        "calibrations": one("SELECT count(*) FROM calibrations"),
        "accepted_thresholds": one("SELECT count(*) FROM thresholds WHERE accepted"),
    }


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
