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
