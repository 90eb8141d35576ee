"""What an ingestion batch holds that the database has not: staged step-less rows classified inside DuckDB,
grown re-imports, recorded rejections, and the quarantine moves made after a commit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

import duckdb
import numpy as np
import polars as pl

from dlm_triage.store.connection import STEPS_COLUMNS, _pl
from dlm_triage.store.records import PreparedRun, StagedRows

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
