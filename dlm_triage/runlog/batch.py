"""Reading many run directories at once (`read_runs`, `read_runs_batch`, what ingestion uses): the same rules
and the same errors as `read.read_run`, the step logs parsed in chunks and checked in one vectorised pass."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import polars as pl

from dlm_triage import parquet_footer
from dlm_triage.runlog.read import RunRecord, _parse_steplog, _read_steplog, read_manifest
from dlm_triage.runlog.rules import (
    RunLogError, _check_shape, _first_violation, _rule_counts, _validate_steps, steps_schema
)


@dataclass(frozen=True)
class RunBatch:
    """`read_runs_batch`'s result. `results[i]` is run_dirs[i]'s manifest (valid run) or its RunLogError.
    A valid run's rows are `steps[start:start + n]` for `spans[i] == (start, n)`, or `separate[i]` when its
    step log was read on its own (a Parquet schema other than this writer's, e.g. extra columns)."""

    run_dirs: tuple[Path, ...]
    results: tuple[dict[str, Any] | RunLogError, ...]
    steps: pl.DataFrame
    spans: tuple[tuple[int, int] | None, ...]
    separate: dict[int, pl.DataFrame]
    extras: tuple[Any, ...] = ()
    """per_manifest's value for each run whose manifest and sha256 were fine (None otherwise)."""

    def steps_of(self, i: int) -> pl.DataFrame | None:
        if i in self.separate:
            return self.separate[i]
        span = self.spans[i]
        return None if span is None else self.steps.slice(span[0], span[1])

    def records(self) -> list[RunRecord | RunLogError]:
        return [r if isinstance(r, RunLogError) else RunRecord(manifest=r, steps=self.steps_of(i))
                for i, r in enumerate(self.results)]


def read_runs(run_dirs: Iterable[Path | str]) -> list[RunRecord | RunLogError]:
    """read_run over many run directories: the same rules and the same errors (returned, not raised), one
    vectorised pass over all step logs instead of per-file column checks."""
    return read_runs_batch(run_dirs).records()


BULK_CHUNK_FILES = 1024
"""read_runs_batch parses and checks step logs in chunks of this many files, in a worker thread while this
thread reads the next chunk's manifests and bytes (polars releases the GIL)."""
BULK_THREADS = max(1, min(2, os.cpu_count() or 1))
"""Worker threads for those chunks: two chunks can be parsed at once while this thread reads the next."""


def read_runs_batch(run_dirs: Iterable[Path | str], *,
                    per_manifest: Callable[[Path, dict[str, Any]], Any] | None = None) -> RunBatch:
    """Validate many run directories; see RunBatch. Per file: manifest (read_manifest), the step log's bytes
    read once and their sha256, and the row count and schema from the Parquet footer. Step logs written with
    this writer's schema are then parsed together (one polars read per chunk of BULK_CHUNK_FILES buffers) and
    checked by the shared row rules in one pass, with per-file sums; any other step log, and every file of a
    chunk polars cannot read as a whole, goes through read_run's one-file path.

    `per_manifest(run_dir, manifest)`, if given, is called for each run whose manifest and step-log sha256 are
    fine, before its rows are checked (in the reading loop, so manifest-only work overlaps the Parquet parsing);
    its return values are RunBatch.extras. It must not raise."""
    from concurrent.futures import ThreadPoolExecutor

    dirs = tuple(Path(d) for d in run_dirs)
    results: list[dict[str, Any] | RunLogError] = [None] * len(dirs)  # type: ignore[list-item]
    extras: list[Any] = [None] * len(dirs)
    separate: dict[int, pl.DataFrame] = {}
    slow: list[tuple[int, Path, bytes]] = []
    chunks: list[tuple[list[tuple[int, Path, bytes, int]], Any]] = []  # (files, future of _bulk_check)
    ref = _reference_footer()
    with ThreadPoolExecutor(max_workers=BULK_THREADS) as pool:
        fast: list[tuple[int, Path, bytes, int]] = []  # (index, steplog, bytes, rows)
        for i, d in enumerate(dirs):
            try:
                manifest = read_manifest(d)
                steplog, data = _read_steplog(d, manifest)
                n = parquet_footer.footer_rows(data, ref)
                if n is None:
                    slow.append((i, steplog, data))
                else:
                    _check_shape(steplog, n, None, manifest)
                    fast.append((i, steplog, data, n))
                results[i] = manifest
            except RunLogError as e:
                results[i] = e
            else:
                if per_manifest is not None:
                    extras[i] = per_manifest(d, manifest)
            if len(fast) >= BULK_CHUNK_FILES or (fast and i == len(dirs) - 1):
                chunks.append((fast, pool.submit(_bulk_check, [(data, n, results[j]) for j, _, data, n in fast])))
                fast = []
        done = [(files, fut.result()) for files, fut in chunks]

    frames: list[pl.DataFrame] = []
    spans: list[tuple[int, int] | None] = [None] * len(dirs)
    start = 0
    for files, checked in done:
        if checked is None:  # a file polars cannot read in bulk: each file on its own, with its own error
            slow.extend((i, p, data) for i, p, data, _ in files)
            continue
        bulk, counts = checked
        keep = np.ones(len(files), dtype=bool)
        for k, (i, steplog, _, n) in enumerate(files):
            if counts[k].any() or results[i]["status"] == "completed":  # only then can a rule fail
                err = _first_violation(steplog, n, results[i], counts[k])
                if err is not None:
                    results[i] = err
                    keep[k] = False
        if not keep.all():
            bulk = bulk.filter(pl.Series(np.repeat(keep, [n for *_, n in files])))
        frames.append(bulk)
        for k, (i, *_, n) in enumerate(files):
            if keep[k]:
                spans[i] = (start, n)
                start += n
    steps = pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=steps_schema())
    for i, steplog, data in sorted(slow):
        try:
            frame = _parse_steplog(steplog, data)
            _validate_steps(steplog, frame, results[i])
        except RunLogError as e:
            results[i] = e
        else:
            separate[i] = frame
    return RunBatch(run_dirs=dirs, results=tuple(results), steps=steps, spans=tuple(spans), separate=separate,
                    extras=tuple(extras))


def _bulk_check(files: list[tuple[bytes, int, dict[str, Any]]]) -> tuple[pl.DataFrame, np.ndarray] | None:
    """One polars read of step logs with the writer's footer (data, rows, manifest), and their rule counts;
    None when polars cannot read them as a whole or they do not come out as the footers said."""
    try:
        bulk = pl.read_parquet([data for data, _, _ in files])
    except BaseException as e:  # as in _parse_steplog: polars' error types for corrupt files and Rust panics
        if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
            raise
        return None
    if dict(bulk.schema) != steps_schema() or bulk.height != sum(n for _, n, _ in files):
        return None
    bulk = bulk.rechunk()
    return bulk, _rule_counts(bulk, [n for _, n, _ in files], [m for _, _, m in files])


@functools.lru_cache(maxsize=1)
def _reference_footer() -> parquet_footer.Footer | None:
    """The footer this writer gives a step log (parquet_footer.reference_footer of steps_schema()), once."""
    return parquet_footer.reference_footer(steps_schema())
