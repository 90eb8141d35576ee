"""Writing a run: steps.parquet, then manifest.json LAST, each through a tmp file + fsync + rename (see the
package docstring for what a crash leaves)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable

import polars as pl

from dlm_triage.fsutil import fsync_dir, json_safe, replace_durably
from dlm_triage.runlog.rules import steps_schema
from dlm_triage.schema import MANIFEST_FILENAME, MANIFEST_KEYS, MANIFEST_SCHEMA_VERSION, STEP_COLUMNS, STEPLOG_FILENAME


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
