"""Atomic file writes: a temp file in the same folder, fsync, rename over the target.

A reader sees the old file or the new one, never half of one; a failed write leaves no temp file behind.
(Run logs have their own writer in runlog.py, which also orders the two files and fsyncs the directory.)
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """JSON with indent 2; NaN/Inf are refused (allow_nan=False): undefined numbers must already be null."""
    return write_bytes_atomic(path, json.dumps(obj, indent=2, allow_nan=False).encode("utf-8"))


LATEST_NAME = "latest"
"""The pointer (a relative symlink) to the newest output folder inside an output root (reports/latest)."""

_SAFE_ID = __import__("re").compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def output_dir(root: str | os.PathLike, output_id: str) -> Path:
    """`root/<output_id>/`, one folder per calibration: a report or calibration never replaces another's files.
    The id must be a plain folder name (calibration ids are `cal-<time>-<hex>`)."""
    if not _SAFE_ID.match(str(output_id)) or output_id in (".", "..", LATEST_NAME):
        raise ValueError(f"output id {output_id!r} is not a plain folder name (letters, digits, . _ -)")
    return Path(root) / str(output_id)


def point_latest(root: str | os.PathLike, output_id: str) -> Path:
    """Make `root/latest` point at `root/<output_id>` (relative symlink replaced atomically by a rename). Where
    symlinks are not available, `root/latest.txt` holds the id instead. Returns the pointer's path."""
    root = Path(root)
    target = output_dir(root, output_id)
    link = root / LATEST_NAME
    if link.exists() and not link.is_symlink():
        raise FileExistsError(f"{link} exists and is not a symlink: move it away so it can point at the newest "
                              "output")
    tmp = root / f".{LATEST_NAME}.{os.getpid()}.tmp"
    try:
        tmp.unlink(missing_ok=True)
        os.symlink(target.name, tmp, target_is_directory=True)
        os.replace(tmp, link)
        return link
    except (OSError, NotImplementedError):
        tmp.unlink(missing_ok=True)
        return write_bytes_atomic(root / f"{LATEST_NAME}.txt", f"{output_id}\n".encode())
