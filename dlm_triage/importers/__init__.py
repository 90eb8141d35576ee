"""Bring your own logs: other tools' training logs -> the same `runs`/`steps` tables.

Formats (`import_logs(db_path, fmt, paths, ...)`):

- ``reference-jsonl``: one JSON object per line and step: step, loss, max_grad_norm, top1_token_freq,
  mask_ratio (null allowed for the last two), optional rank, model_family, collapsed. One file per run.
  `max_grad_norm` may be the step's norm or a running max: it is stored as the step's grad_norm and the
  running max is recomputed. Legacy warning/fire step/crossings/collapse use the rules of `monitors`
  (schema.LEGACY_*); final loss = the last step's loss; the logged mask_ratio is the run's (its value, or the
  mean when it varies).
- ``cells``: CSV, one row per configuration: family,model_name,rank,rho,seed,lr,top1_fired,top1_fire_step,
  collapsed,max_grad_norm,final_loss. `None`/empty = unknown (rank, seed, ...), `True`/`False` booleans. No
  step logs: runs only. `final_loss` and `max_grad_norm` may be absent (CELLS_OPTIONAL): such runs import with
  what they have and calibration lists what it skipped for them. Optional row columns cohort, method, alpha,
  steps, batch_size win over the flags.
- ``json-rows``: the same records as a JSON array, or an object holding one (``rows_key=`` names it when the
  object holds several lists); JSON types as they are.
- For both: ``map='rank=lora_r;final_loss=loss_200'`` takes a column from another one, and
  ``derive='rank=run_path:_r(\\d+)_;cohort=run_path:^runs/([^/]+)/'`` the first capture group of a regex searched in
  another column (a rank or cohort encoded in a run path); the rules are kept in the manifest.
- ``collapsed_means`` (cells, json-rows, reference-jsonl): what an imported `collapsed` value means:
  ``collapse`` (default: the source's actual-collapse flag) or ``detector_stop`` (the legacy detector's early
  stop: status stopped_by_legacy_detector, collapse not recorded). Each run keeps its collapse_definition.
- Family names are stored in one lower-case spelling (groups.group_key): 'LLaDA' and 'llada' are one family.
- ``hf-trainer``: a transformers ``trainer_state.json``; `log_history` entries holding `loss` are training
  steps (step, loss, grad_norm, learning_rate). Run config from the flags, from ``<stem>.config.json`` beside
  the file, or from ``config=<path>`` (flags win over files).
- ``wandb-csv``: a W&B run-history CSV export; columns mapped by `step_col` (default ``_step``), `loss_col`
  (``loss``), `grad_col` (``grad_norm``), optional `top1_col`, `mask_col`, `lr_col`. Rows with neither loss
  nor grad norm (eval-only rows) are skipped. Run config as for hf-trainer.

Run config precedence: for hf-trainer and wandb-csv, flags (family= included) override the config files;
for reference-jsonl and cells, values in the log itself win and flags fill what it leaves unknown.

Every problem names the file and the line (1-based) and says what to do. A bad file never half-loads: it is
parsed and validated completely before anything is written, its problems are reported in
`IngestReport.quarantined` (or raised with `strict=True`), and the good files go in in one transaction.
Identity from content, not from the file: a time-series run's id is its format + config + first logged step
(`_identity`), a cells row's its config + values. Re-importing a file adds nothing; a grown re-export (more
steps) replaces its shorter self in the import's transaction; a cells file with appended rows adds only those;
the same run from two files, or a row repeated inside one, is stored once and listed in
`IngestReport.duplicates`. Integers must fit their columns (Int32 steps, ranks, fire steps).

The modules follow a file's way in: `values` (errors, value converters, reading text and CSV), `runconfig`
(run config from flags and files, `COLLAPSED_MEANS`), `identity` (step frame, content identity, the stored
row), one module per format (`jsonl`, `rows` + `cells` for cells / json-rows, `hf_trainer`, `wandb_csv`), and
this one, the driver (`import_logs`, `stage_rows`, `PARSERS`). Every name callers use is imported here.
"""

from __future__ import annotations

import functools
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import polars as pl

from dlm_triage import store
from dlm_triage.importers.cells import _parse_cells_into, _parse_json_rows_into, parse_cells, parse_json_rows
from dlm_triage.importers.hf_trainer import _entry_lines, parse_hf_trainer
from dlm_triage.importers.identity import IDENTITY_PREFIX_STEPS
from dlm_triage.importers.jsonl import JSONL_REQUIRED, parse_reference_jsonl
from dlm_triage.importers.rows import _ROW_OPTIONS, CELLS_COLUMNS, CELLS_OPTIONAL, CELLS_ROW_CONFIG
from dlm_triage.importers.runconfig import _CONFIG_FLAGS, _WANDB_COLS, COLLAPSED_MEANS, CONFIG_KEYS
from dlm_triage.importers.values import INT32_MAX, MAX_PROBLEMS_SHOWN, LogFormatError
from dlm_triage.importers.wandb_csv import parse_wandb_csv
from dlm_triage.store import IngestReport, PreparedRun

FORMATS = ("reference-jsonl", "cells", "json-rows", "hf-trainer", "wandb-csv")
_OPTIONS: dict[str, frozenset[str]] = {
    "reference-jsonl": _CONFIG_FLAGS - {"config"} | {"collapsed_means"},
    "cells": frozenset({"method", "alpha", "steps", "batch_size", "cohort"}) | _ROW_OPTIONS,
    "json-rows": frozenset({"method", "alpha", "steps", "batch_size", "cohort", "rows_key"}) | _ROW_OPTIONS,
    "hf-trainer": _CONFIG_FLAGS,
    "wandb-csv": _CONFIG_FLAGS | frozenset(_WANDB_COLS),
}


IMPORT_MEMORY_FLOOR_MB = 128
IMPORT_MEMORY_PER_INPUT_MB = 4
"""DuckDB's memory limit while it inserts staged rows: max(floor, per-input-MB x the files' size). A stored
cells row is ~15x its CSV line (config and manifest JSON), and DuckDB would otherwise hold a transaction's
rows in memory up to 80% of RAM; beyond the limit it writes them out. Where the limit is too small for the
database itself (the primary-key index of millions of runs) the write is retried without one."""

STAGE_BATCH_ROWS = 2048
"""Runs of a cells / json-rows file written to the staging file at a time: the import's memory for such a file
is one batch of Python rows, whatever the file's size (a run row with its manifest is ~5 KB in Python)."""
_STAGED_PARSERS = {"cells": _parse_cells_into, "json-rows": _parse_json_rows_into}


def stage_rows(fmt: str, path: Path, stage_dir: Path, *, family: str | None = None,
               **options: Any) -> store.StagedRows:
    """Validate a cells / json-rows file (as parse_cells / parse_json_rows do) and write its runs, batch by
    batch, to a Parquet file in `stage_dir` that `store._write_batch` inserts with DuckDB. Raises
    LogFormatError (the partial staging file removed) like the parser; OSError when the staging file cannot be
    written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    out = Path(stage_dir) / f"{len(list(Path(stage_dir).iterdir())):06d}.parquet"
    schema = pl.DataFrame(schema={**store.RUNS_SCHEMA, "line": pl.Int64}).to_arrow().schema
    batch: list[dict[str, Any]] = []
    n = 0
    writer = pq.ParquetWriter(out, schema)

    def flush() -> None:
        nonlocal batch, n
        if batch:
            frame = pl.DataFrame(batch, schema={**store.RUNS_SCHEMA, "line": pl.Int64}, orient="row")
            writer.write_table(frame.to_arrow().cast(schema))
            n += len(batch)
            batch = []

    def sink(run: PreparedRun, lineno: int | None) -> None:
        batch.append({**run.row, "line": lineno})
        if len(batch) >= STAGE_BATCH_ROWS:
            flush()

    try:
        _STAGED_PARSERS[fmt](path, family, options, sink)
        flush()
        writer.close()
    except BaseException:
        writer.close()
        out.unlink(missing_ok=True)
        raise
    return store.StagedRows(path=str(path), parquet=out, n=n)


PARSERS: dict[str, Callable[..., list[PreparedRun]]] = {
    "reference-jsonl": parse_reference_jsonl, "cells": parse_cells, "json-rows": parse_json_rows, "hf-trainer": parse_hf_trainer,
    "wandb-csv": parse_wandb_csv,
}


def import_logs(
    db_path: str | Path, fmt: str, paths: Sequence[Path | str] | Path | str, *, family: str | None = None,
    strict: bool = False, timeout_s: float = 60, **options: Any,
) -> IngestReport:
    """Parse and validate every file, then insert all good runs in one transaction (see module docstring).

    Bad files are listed in `report.quarantined` as (path, 'path:line: reason' lines) and recorded in the
    `quarantine` table (the files themselves are left where they are); `strict=True` raises the first
    LogFormatError instead, before anything is written. Unknown formats or options raise ValueError.
    """
    if fmt not in PARSERS:
        raise ValueError(f"unknown import format {fmt!r}: use one of {list(FORMATS)}")
    unknown = sorted(set(options) - _OPTIONS[fmt])
    if unknown:
        raise ValueError(f"option(s) {unknown} do not apply to {fmt!r}: use {sorted(_OPTIONS[fmt])}")
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not items:
        raise ValueError("no files given: pass one or more log files")
    started = store._now()
    prepared: list[PreparedRun] = []
    staged: list[store.StagedRows] = []
    rejected: list[tuple[str, str, bool]] = []
    db_path = Path(db_path)
    store.check_database_file(db_path)  # before any staging: a --db that is no database is refused first
    # Per-configuration tables are staged on disk beside the database (same file system, which needs the room
    # anyway; a tmpfs /tmp would be memory again), never held as Python rows.
    stage_dir = db_path.parent / f".{db_path.name}.import-{uuid.uuid4().hex[:8]}" if fmt in _STAGED_PARSERS else None
    try:
        for p in map(Path, items):
            try:
                if not p.is_file():
                    raise LogFormatError(p, [(None, "not a file: give the path of a log file")])
                if stage_dir is not None:
                    stage_dir.mkdir(parents=True, exist_ok=True)
                    staged.append(stage_rows(fmt, p, stage_dir, family=family, **options))
                else:
                    prepared.extend(PARSERS[fmt](p, family=family, **options))
            except LogFormatError as e:
                if strict:
                    raise
                rejected.append((str(p), str(e), False))
        write = functools.partial(
            store._write_batch, db_path, prepared, rejected=rejected, incomplete=[],
            ingest_id=store._new_ingest_id(), started=started, kind=f"import:{fmt}", paths=[str(p) for p in items],
            quarantine_dir=None, timeout_s=timeout_s, staged=staged)
        if not staged:
            return write()
        mb = sum(Path(st.path).stat().st_size for st in staged) / 2**20
        try:
            return write(memory_limit_mb=max(IMPORT_MEMORY_FLOOR_MB, int(IMPORT_MEMORY_PER_INPUT_MB * mb)))
        except store.MemoryLimitHit:
            return write()  # a large database's index needs more: DuckDB's own default limit
    finally:
        if stage_dir is not None:
            shutil.rmtree(stage_dir, ignore_errors=True)
