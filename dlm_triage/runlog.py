"""Atomic writing and validated reading of a run's step log (Parquet) and manifest (JSON).

Write order (schema.py): steps.parquet through a tmp file + fsync + rename, then manifest.json the same way,
LAST. A crash or SIGKILL at any point leaves either no manifest (an incomplete run the sweep re-runs) or a
manifest whose recorded sha256/row count match the Parquet file beside it. A re-run first removes an old
manifest, so a half-rewritten directory never looks complete.

`read_run` trusts nothing: every failure is a `RunLogError` naming the path, the reason and the fix.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

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

    def __init__(self, path: Path | str, reason: str, fix: str = _DEFAULT_FIX):
        self.path = Path(path)
        self.reason = reason
        self.fix = fix
        super().__init__(f"{self.path}: {reason}; fix: {fix}")


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


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable (POSIX); not possible on some platforms/filesystems: then best effort.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _replace_durably(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as fh:
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _json_safe(obj: Any) -> Any:
    """NaN/Inf -> None (JSON null), recursively; numpy scalars -> Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        try:
            obj = obj.item()
        except (TypeError, ValueError):
            pass
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_run_atomic(run_dir: Path, steps: pl.DataFrame, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write steps.parquet, then manifest.json LAST, each through tmp + fsync + rename. Returns the manifest
    as written (with `steplog`, `steplog_sha256` and `n_steps_logged` filled from the file actually written).

    `steps` is cast to the schema's dtypes; `manifest` must hold every key of schema.MANIFEST_KEYS (NaN/Inf
    become null). `_before_manifest_rename` exists for the crash test only.
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
    _fsync_dir(run_dir)

    steplog = run_dir / STEPLOG_FILENAME
    tmp = run_dir / f".{STEPLOG_FILENAME}.{os.getpid()}.tmp"
    try:
        steps.write_parquet(tmp)
        _replace_durably(tmp, steplog)
    except Exception as e:  # disk full, file size limit, read-only: no tmp file left behind
        tmp.unlink(missing_ok=True)
        raise write_error(run_dir, STEPLOG_FILENAME, e) from e

    out = dict(manifest)
    out["schema_version"] = MANIFEST_SCHEMA_VERSION
    out["steplog"] = STEPLOG_FILENAME
    out["steplog_sha256"] = sha256_file(steplog)
    out["n_steps_logged"] = steps.height
    out = _json_safe(out)
    tmp = run_dir / f".{MANIFEST_FILENAME}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(out, indent=2, sort_keys=True, allow_nan=False))
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(run_dir, MANIFEST_FILENAME, e) from e
    _before_manifest_rename(tmp)  # outside the cleanup: a kill here leaves the tmp file, as a real one would
    try:
        _replace_durably(tmp, manifest_path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(run_dir, MANIFEST_FILENAME, e) from e
    return out


def _before_manifest_rename(tmp: Path) -> None:
    """Test hook: a test replaces it to simulate a kill between the fsync'd tmp manifest and its rename."""


# -- reading --------------------------------------------------------------------------------------------

def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The manifest of a run directory, checked for presence, JSON, keys, schema version and status."""
    run_dir = Path(run_dir)
    path = run_dir / MANIFEST_FILENAME
    if not path.is_file():
        raise RunLogError(path, "no manifest: the run is incomplete (crashed, killed or still running)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunLogError(path, f"manifest is not valid JSON ({e})") from None
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
    steplog = run_dir / (manifest.get("steplog") or STEPLOG_FILENAME)
    if not steplog.is_file():
        raise RunLogError(steplog, "the manifest is present but the step log is missing")
    digest = sha256_file(steplog)
    if digest != manifest["steplog_sha256"]:
        raise RunLogError(steplog, f"sha256 {digest[:12]}... does not match the manifest's "
                                   f"{str(manifest['steplog_sha256'])[:12]}... (truncated or replaced log)")
    try:
        steps = pl.read_parquet(steplog)
    except BaseException as e:  # polars raises several error types for corrupt files, and Rust panics
        if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
            raise  # KeyboardInterrupt, SystemExit
        raise RunLogError(steplog, f"not a readable Parquet file ({type(e).__name__}: {e})") from None
    _validate_steps(steplog, steps, manifest)
    return RunRecord(manifest=manifest, steps=steps)


def _validate_steps(path: Path, steps: pl.DataFrame, manifest: dict[str, Any]) -> None:
    n = steps.height
    if n != manifest["n_steps_logged"]:
        raise RunLogError(path, f"{n} rows but the manifest records n_steps_logged={manifest['n_steps_logged']}")
    if n == 0:
        raise RunLogError(path, "the step log is empty (step 0 is always logged)")
    schema = steps_schema()
    missing = [c for c in schema if c not in steps.columns]
    if missing:
        raise RunLogError(path, f"missing columns {missing}")
    wrong = [f"{c}: {steps.schema[c]} (expected {t})" for c, t in schema.items() if steps.schema[c] != t]
    if wrong:
        raise RunLogError(path, f"wrong column dtypes: {wrong}")
    nulls = [c for c in schema if steps[c].null_count() > 0]
    if nulls:
        raise RunLogError(path, f"null values in columns {nulls}")
    if steps["step"].to_list() != list(range(n)):
        raise RunLogError(path, "steps are not 0..n-1 contiguous and ordered")
    status = manifest["status"]
    config = manifest.get("config") or {}
    if status == "completed" and isinstance(config.get("steps"), int) and n != config["steps"] + 1:
        raise RunLogError(path, f"status 'completed' but {n} rows logged for config.steps={config['steps']} "
                                f"(expected {config['steps'] + 1})")
    n_matrices = len(manifest["matrix_names"] or [])
    lengths = steps["matrix_grad_norms"].list.len()
    if not bool((lengths == n_matrices).all()):
        raise RunLogError(path, f"matrix_grad_norms rows do not all hold {n_matrices} values (manifest.matrix_names)")
    # Finite checks: the last row of a diverged run may hold NaN/Inf in the divergence columns.
    body = steps if status != "diverged" else steps.head(n - 1)
    for col, (dtype, _) in STEP_COLUMNS.items():
        if col in NAN_ALLOWED_COLUMNS or dtype not in ("Float64", "List(Float64)"):
            continue
        values = body[col].explode() if dtype.startswith("List") else body[col]
        bad = values.drop_nulls().is_finite().not_().sum()
        if bad:
            raise RunLogError(path, f"column {col!r} holds {bad} NaN/Inf value(s) (only the last step of a "
                                    "diverged run may)")
    if status == "diverged":
        last = steps.tail(1)
        for col, (dtype, _) in STEP_COLUMNS.items():
            if col in DIVERGENCE_COLUMNS or dtype not in ("Float64", "List(Float64)"):
                continue
            values = last[col].explode() if dtype.startswith("List") else last[col]
            if values.drop_nulls().is_finite().not_().sum():
                raise RunLogError(path, f"column {col!r} holds NaN/Inf on the last step (only "
                                        f"{list(DIVERGENCE_COLUMNS)} may, on a diverged run)")
