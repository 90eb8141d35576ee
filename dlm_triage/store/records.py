"""The store's errors and typed records: `IngestReport`, `ThresholdRecord`, `PreparedRun`, `StagedRows`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

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
