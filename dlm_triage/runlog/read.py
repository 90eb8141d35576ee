"""Reading one run directory: the manifest (keys, types, schema version, status), the step log's bytes read
once and checked against the manifest's sha256, then the step-log rules (`rules`). Every failure is a
`RunLogError`."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from dlm_triage.runlog.rules import RunLogError, _unreadable, _validate_steps
from dlm_triage.schema import MANIFEST_FILENAME, MANIFEST_KEYS, MANIFEST_SCHEMA_VERSION, RUN_STATUSES, STEPLOG_FILENAME


@dataclass(frozen=True)
class RunRecord:
    manifest: dict[str, Any]
    steps: pl.DataFrame


def _read_file(path: Path, missing: str) -> bytes:
    """The bytes of a run file; RunLogError with the reason `missing` when it is not there, or naming the OS
    error when it cannot be read."""
    try:
        if not path.is_file():
            raise RunLogError(path, missing)
        return path.read_bytes()
    except OSError as e:
        raise _unreadable(path, e) from None


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The manifest of a run directory, checked for presence, JSON, keys, schema version and status."""
    run_dir = Path(run_dir)
    path = run_dir / MANIFEST_FILENAME
    text = _read_file(path, "no manifest: the run is incomplete (crashed, killed or still running)")
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
    data = _read_file(steplog, "the manifest is present but the step log is missing")
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
