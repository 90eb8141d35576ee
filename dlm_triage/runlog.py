"""Atomic writing and validated reading of a run's step log (Parquet) and manifest (JSON).

Write order (schema.py): steps.parquet through a tmp file + fsync + rename, then manifest.json the same way,
LAST. A crash or SIGKILL at any point leaves either no manifest (an incomplete run the sweep re-runs) or a
manifest whose recorded sha256/row count match the Parquet file beside it. A re-run first removes an old
manifest, so a half-rewritten directory never looks complete.

`read_run` trusts nothing: every failure is a `RunLogError` naming the path, the reason and the fix.
`read_runs` / `read_runs_batch` apply the same rules (one definition, below) to many run directories at once and
give the same errors; ingestion uses them.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import polars as pl

from dlm_triage import parquet_footer
from dlm_triage.fsutil import fsync_dir, json_safe, replace_durably
from dlm_triage.schema import (
    MANIFEST_FILENAME,
    MANIFEST_KEYS,
    MANIFEST_SCHEMA_VERSION,
    RUN_STATUSES,
    STEP_COLUMNS,
    STEPLOG_FILENAME,
)

# Columns that may hold NaN/Inf on the LAST row of a diverged run (the bad step is kept).
DIVERGENCE_COLUMNS = ("loss", "grad_norm", "max_grad_norm", "matrix_grad_norms", "top1_freq")
# Columns that may hold NaN on any row (not evaluated at that step, see schema.STEP_COLUMNS).
NAN_ALLOWED_COLUMNS = ("top1_freq",)

_DEFAULT_FIX = "delete the run directory and run it again (a sweep re-runs every run without a valid manifest)"


class RunLogError(Exception):
    """A run directory that is not a valid, complete run. `path`, `reason` and `fix` are attributes."""

    def __init__(self, path: Path | str, reason: str, fix: str = _DEFAULT_FIX, *, unreadable: bool = False):
        self.path = Path(path)
        self.reason = reason
        self.fix = fix
        self.unreadable = unreadable
        """True: the files could not be read (permissions, I/O error), not found to be invalid."""
        super().__init__(f"{self.path}: {reason}; fix: {fix}")


_PERMISSION_FIX = "make the run directory and its files readable by this user, then ingest again"


def _unreadable(path: Path, e: OSError) -> RunLogError:
    return RunLogError(path, f"cannot be read ({e.strerror or e})", fix=_PERMISSION_FIX, unreadable=True)


def write_error(run_dir: Path, what: str | None, exc: BaseException) -> OSError:
    """An OSError (same errno, hence the same subclass: PermissionError, NotADirectoryError, ...) naming the run
    directory and the fix. polars/safetensors report I/O failures as their own errors with "os error N" inside."""
    code = getattr(exc, "errno", None)
    if code is None:
        m = re.search(r"os error (\d+)", str(exc))
        code = int(m.group(1)) if m else errno.EIO
    where = f"the run directory {run_dir}" if what is None else f"{what} in {run_dir}"
    return OSError(code, f"could not write {where}: {exc}. Free disk space or choose a writable output "
                         "directory (the run has no manifest, so it counts as incomplete and a re-run starts it "
                         "again)")


@dataclass(frozen=True)
class RunRecord:
    manifest: dict[str, Any]
    steps: pl.DataFrame


# -- writing --------------------------------------------------------------------------------------------

def steps_schema() -> dict[str, pl.DataType]:
    """The polars schema of the step log, from schema.STEP_COLUMNS."""
    names = {"Int32": pl.Int32, "Int64": pl.Int64, "Float64": pl.Float64, "Boolean": pl.Boolean,
             "List(Float64)": pl.List(pl.Float64)}
    return {col: names[dtype] for col, (dtype, _) in STEP_COLUMNS.items()}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_run_atomic(run_dir: Path, steps: pl.DataFrame, manifest: dict[str, Any], *,
                     before_manifest_rename: Callable[[Path], None] | None = None) -> dict[str, Any]:
    """Write steps.parquet, then manifest.json LAST, each through tmp + fsync + rename. Returns the manifest
    as written (with `steplog`, `steplog_sha256` and `n_steps_logged` filled from the file actually written).

    `steps` is cast to the schema's dtypes; `manifest` must hold every key of schema.MANIFEST_KEYS (NaN/Inf
    become null). `before_manifest_rename(tmp)` is a fault-injection point for crash tests.
    """
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(run_dir, None, e) from e
    missing = [k for k in MANIFEST_KEYS if k not in manifest and k not in ("schema_version", "steplog", "steplog_sha256", "n_steps_logged")]
    if missing:
        raise ValueError(f"write_run_atomic: manifest lacks keys {missing}: fill every key of schema.MANIFEST_KEYS (null where n/a)")
    steps = steps.select(list(STEP_COLUMNS)).cast(steps_schema())

    manifest_path = run_dir / MANIFEST_FILENAME
    manifest_path.unlink(missing_ok=True)  # a re-run must not leave the old manifest beside a new log
    fsync_dir(run_dir)

    steplog = run_dir / STEPLOG_FILENAME
    tmp = run_dir / f".{STEPLOG_FILENAME}.{os.getpid()}.tmp"
    try:
        steps.write_parquet(tmp)
        replace_durably(tmp, steplog)
    except Exception as e:  # disk full, file size limit, read-only: no tmp file left behind
        tmp.unlink(missing_ok=True)
        raise write_error(run_dir, STEPLOG_FILENAME, e) from e

    out = dict(manifest)
    out["schema_version"] = MANIFEST_SCHEMA_VERSION
    out["steplog"] = STEPLOG_FILENAME
    out["steplog_sha256"] = sha256_file(steplog)
    out["n_steps_logged"] = steps.height
    out = json_safe(out)
    tmp = run_dir / f".{MANIFEST_FILENAME}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(out, indent=2, sort_keys=True, allow_nan=False))
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(run_dir, MANIFEST_FILENAME, e) from e
    if before_manifest_rename is not None:  # outside the cleanup: a kill here leaves the tmp file, as a real one would
        before_manifest_rename(tmp)
    try:
        replace_durably(tmp, manifest_path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(run_dir, MANIFEST_FILENAME, e) from e
    return out


# -- reading --------------------------------------------------------------------------------------------

def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The manifest of a run directory, checked for presence, JSON, keys, schema version and status."""
    run_dir = Path(run_dir)
    path = run_dir / MANIFEST_FILENAME
    try:
        if not path.is_file():
            raise RunLogError(path, "no manifest: the run is incomplete (crashed, killed or still running)")
        text = path.read_bytes()
    except OSError as e:
        raise _unreadable(path, e) from None
    try:
        manifest = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, or an integer beyond the digit limit
        raise RunLogError(path, f"manifest is not valid JSON ({str(e)[:200]})") from None
    except RecursionError:
        raise RunLogError(path, "manifest is not valid JSON (nested too deeply)") from None
    if not isinstance(manifest, dict):
        raise RunLogError(path, f"manifest is a JSON {type(manifest).__name__}, not an object")
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise RunLogError(path, f"manifest lacks required keys {missing}")
    if manifest["schema_version"] != MANIFEST_SCHEMA_VERSION:
        raise RunLogError(
            path, f"manifest schema_version {manifest['schema_version']!r} is not {MANIFEST_SCHEMA_VERSION}",
            fix="re-run it with this version of dlm-triage, or read it with the version that wrote it",
        )
    if manifest["status"] not in RUN_STATUSES:
        raise RunLogError(path, f"status {manifest['status']!r} is not one of {list(RUN_STATUSES)}")
    # Types of the keys read_run relies on (a hand-edited or damaged manifest must fail here, not crash later).
    steplog = manifest["steplog"]
    if steplog is not None and (not isinstance(steplog, str) or steplog in ("", ".", "..")
                                or Path(steplog).name != steplog):
        raise RunLogError(path, f"steplog {steplog!r} is not a file name inside the run directory")
    expected_types = {"config": dict, "n_steps_logged": int, "steplog_sha256": str, "matrix_names": (list, type(None))}
    for key, typ in expected_types.items():
        if not isinstance(manifest[key], typ) or isinstance(manifest[key], bool):
            raise RunLogError(path, f"{key} is a JSON {type(manifest[key]).__name__}, not the expected type")
    if not all(isinstance(n, str) for n in manifest["matrix_names"] or []):
        raise RunLogError(path, "matrix_names must be a list of strings")
    return manifest


def read_run(run_dir: Path) -> RunRecord:
    """Read and validate a run directory (see module docstring). Raises RunLogError."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    steplog, data = _read_steplog(run_dir, manifest)
    steps = _parse_steplog(steplog, data)
    _validate_steps(steplog, steps, manifest)
    return RunRecord(manifest=manifest, steps=steps)


def _read_steplog(run_dir: Path, manifest: dict[str, Any]) -> tuple[Path, bytes]:
    """The step log's path and bytes, read once: the sha256 is checked on the very bytes that are parsed."""
    steplog = run_dir / (manifest.get("steplog") or STEPLOG_FILENAME)
    try:
        if not steplog.is_file():
            raise RunLogError(steplog, "the manifest is present but the step log is missing")
        data = steplog.read_bytes()
    except OSError as e:
        raise _unreadable(steplog, e) from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest["steplog_sha256"]:
        raise RunLogError(steplog, f"sha256 {digest[:12]}... does not match the manifest's "
                                   f"{str(manifest['steplog_sha256'])[:12]}... (truncated or replaced log)")
    return steplog, data


def _parse_steplog(steplog: Path, data: bytes) -> pl.DataFrame:
    try:
        return pl.read_parquet(io.BytesIO(data))
    except BaseException as e:  # polars raises several error types for corrupt files, and Rust panics
        if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
            raise  # KeyboardInterrupt, SystemExit
        raise RunLogError(steplog, f"not a readable Parquet file ({type(e).__name__}: {e})") from None


# -- the step-log rules ---------------------------------------------------------------------------------
# Defined once, used by read_run (one file) and read_runs (many files in one vectorised pass):
#   1. `_check_shape`: row count against the manifest, non-empty, columns present with the schema's dtypes;
#   2. `_ROW_RULES`: per-row violation counts (polars expressions over the step columns plus the per-row
#      context columns of `_context`), summed per file;
#   3. `_first_violation`: turns one file's summed counts into read_run's error (the first failing rule, in
#      the order below), or None.

_FLOAT_KINDS = ("Float64", "List(Float64)")
_CTX_POS, _CTX_LAST, _CTX_DIV, _CTX_NMAT = "_rl_pos", "_rl_last", "_rl_div", "_rl_nmat"


def _check_shape(path: Path, n: int, schema: dict[str, pl.DataType] | None, manifest: dict[str, Any]) -> None:
    """Row count and columns. `schema` None: already known to be exactly steps_schema() (batched path)."""
    if n != manifest["n_steps_logged"]:
        raise RunLogError(path, f"{n} rows but the manifest records n_steps_logged={manifest['n_steps_logged']}")
    if n == 0:
        raise RunLogError(path, "the step log is empty (step 0 is always logged)")
    if schema is None:
        return
    expected = steps_schema()
    missing = [c for c in expected if c not in schema]
    if missing:
        raise RunLogError(path, f"missing columns {missing}")
    wrong = [f"{c}: {schema[c]} (expected {t})" for c, t in expected.items() if schema[c] != t]
    if wrong:
        raise RunLogError(path, f"wrong column dtypes: {wrong}")


def _nonfinite(col: str, dtype: str) -> pl.Expr:
    """Per row: how many non-null values of `col` are NaN/Inf (list columns: elements; nulls count 0)."""
    if dtype.startswith("List"):
        return pl.col(col).list.eval(pl.element().is_finite().not_()).list.sum().fill_null(0)
    return pl.col(col).is_finite().not_().fill_null(False).cast(pl.UInt32)


def _row_rules() -> list[tuple[str, pl.Expr]]:
    """(name, per-row count expression), in the order read_run reports them."""
    rules: list[tuple[str, pl.Expr]] = []
    for col in STEP_COLUMNS:
        rules.append((f"null:{col}", pl.col(col).is_null().cast(pl.UInt32)))
    rules.append(("order", (pl.col("step").cast(pl.Int64) != pl.col(_CTX_POS)).fill_null(True).cast(pl.UInt32)))
    rules.append(("matrix_len", (pl.col("matrix_grad_norms").list.len() != pl.col(_CTX_NMAT))
                  .fill_null(False).cast(pl.UInt32)))
    body = ~(pl.col(_CTX_LAST) & pl.col(_CTX_DIV))  # the last row of a diverged run is checked separately
    for col, (dtype, _) in STEP_COLUMNS.items():
        if col in NAN_ALLOWED_COLUMNS or dtype not in _FLOAT_KINDS:
            continue
        rules.append((f"finite:{col}", pl.when(body).then(_nonfinite(col, dtype)).otherwise(0).cast(pl.UInt32)))
    last = pl.col(_CTX_LAST) & pl.col(_CTX_DIV)
    for col, (dtype, _) in STEP_COLUMNS.items():
        if col in DIVERGENCE_COLUMNS or dtype not in _FLOAT_KINDS:
            continue
        rules.append((f"last_finite:{col}", pl.when(last).then(_nonfinite(col, dtype)).otherwise(0)
                      .cast(pl.UInt32)))
    return rules


_ROW_RULES = _row_rules()


def _context(n_rows: Sequence[int] | np.ndarray, manifests: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per-row context of files laid end to end: position in its file, last row?, diverged run?, matrix count."""
    lens = np.asarray(n_rows, dtype=np.int64)
    starts = np.cumsum(lens) - lens
    pos = np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(starts, lens)
    div = np.array([m["status"] == "diverged" for m in manifests], dtype=bool)
    nmat = np.array([len(m["matrix_names"] or []) for m in manifests], dtype=np.int64)
    return {_CTX_POS: pos, _CTX_LAST: pos == np.repeat(lens - 1, lens), _CTX_DIV: np.repeat(div, lens),
            _CTX_NMAT: np.repeat(nmat, lens)}


def _rule_counts(frame: pl.DataFrame, n_rows: Sequence[int] | np.ndarray,
                 manifests: Sequence[dict[str, Any]]) -> np.ndarray:
    """[n_files, n_rules] violation counts of files whose rows lie end to end in `frame` (same column order
    as _ROW_RULES)."""
    ctx = _context(n_rows, manifests)
    rows = frame.select(list(STEP_COLUMNS)).with_columns([pl.Series(k, v) for k, v in ctx.items()])
    if len(n_rows) == 1:  # read_run: plain sums (the running-sum form below has a fixed cost of ~15 ms a call)
        return rows.select([e.cast(pl.Int64).sum().alias(name) for name, e in _ROW_RULES]).to_numpy()
    ends = pl.Series(np.cumsum(np.asarray(n_rows, dtype=np.int64)) - 1)  # every file has >= 1 row (_check_shape)
    # per-file sums = differences of the running sums at each file's last row (no group-by, no [rows, rules]
    # matrix leaves polars)
    at_ends = rows.select([e.cast(pl.Int64).cum_sum().gather(ends).alias(name) for name, e in _ROW_RULES])
    return np.diff(at_ends.to_numpy(), axis=0, prepend=0)


def _first_violation(path: Path, n: int, manifest: dict[str, Any], counts: Sequence[int]) -> RunLogError | None:
    """read_run's error for one file from its summed rule counts (order = read_run's order), or None."""
    c = dict(zip((name for name, _ in _ROW_RULES), (int(x) for x in counts)))
    nulls = [col for col in STEP_COLUMNS if c[f"null:{col}"] > 0]
    if nulls:
        return RunLogError(path, f"null values in columns {nulls}")
    if c["order"]:
        return RunLogError(path, "steps are not 0..n-1 contiguous and ordered")
    status = manifest["status"]
    config = manifest.get("config") or {}
    if status == "completed" and isinstance(config.get("steps"), int) and n != config["steps"] + 1:
        return RunLogError(path, f"status 'completed' but {n} rows logged for config.steps={config['steps']} "
                                 f"(expected {config['steps'] + 1})")
    if c["matrix_len"]:
        n_matrices = len(manifest["matrix_names"] or [])
        return RunLogError(path, f"matrix_grad_norms rows do not all hold {n_matrices} values (manifest.matrix_names)")
    for col in STEP_COLUMNS:
        bad = c.get(f"finite:{col}", 0)
        if bad:
            return RunLogError(path, f"column {col!r} holds {bad} NaN/Inf value(s) (only the last step of a "
                                     "diverged run may)")
    for col in STEP_COLUMNS:
        if c.get(f"last_finite:{col}", 0):
            return RunLogError(path, f"column {col!r} holds NaN/Inf on the last step (only "
                                     f"{list(DIVERGENCE_COLUMNS)} may, on a diverged run)")
    return None


def _validate_steps(path: Path, steps: pl.DataFrame, manifest: dict[str, Any]) -> None:
    """All step-log rules on one file (read_run)."""
    _check_shape(path, steps.height, dict(steps.schema), manifest)
    err = _first_violation(path, steps.height, manifest, _rule_counts(steps, [steps.height], [manifest])[0])
    if err is not None:
        raise err


# -- batched reading --------------------------------------------------------------------------------------

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
