"""Ingestion: `ingest_runs` (validate every run directory before the lock, then one transaction) and
`_write_batch`, the insert path importers share (dedupe against the database, insert, then quarantine)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import duckdb
import numpy as np
import polars as pl

from dlm_triage import schema
from dlm_triage.tables import short_repr as _short
from dlm_triage.store.connection import RUNS_SCHEMA, STEPS_COLUMNS, STEPS_SCHEMA, _first_line, _now, _rollback, connect
from dlm_triage.store.dedupe import (
    _LEFT_IN_PLACE, _classify_staged, _drop_staged, _extends, _growable, _grows, _own_steps, _quarantine,
    _recorded_rejections, _stored_steps, _unique_dest, _where
)
from dlm_triage.store.prepare import (
    _Invalid, _canonical_json, _expand_run_dirs, _is_dir, _manifest_row, _prepare_validated, _protected, _recognised_run
)
from dlm_triage.store.records import IngestReport, MemoryLimitHit, PreparedRun, StagedRows, StoreError

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
    from dlm_triage.runlog import RunLogError, read_runs_batch

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


def _insert_by_name(con: duckdb.DuckDBPyConnection, table: str, df: pl.DataFrame) -> None:
    view = f"_dlmt_new_{table}"
    con.register(view, df.to_arrow())
    try:
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM {view}")
    finally:
        con.unregister(view)


def _insert_runs(con: duckdb.DuckDBPyConnection, runs_df: pl.DataFrame) -> None:
    _insert_by_name(con, "runs", runs_df)


def _insert_steps(con: duckdb.DuckDBPyConnection, steps_df: pl.DataFrame) -> None:  # a seam the tests break
    _insert_by_name(con, "steps", steps_df)


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
