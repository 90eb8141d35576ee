"""Atomic file writes (a temp file in the same folder, fsync, rename over the target) and JSON-safe values.

A reader sees the old file or the new one, never half of one; a failed write leaves no temp file behind.
`runlog.write` writes a run's two files through `replace_durably` in its own order (step log, then manifest).
`json_safe` is the one NaN/Inf -> null conversion every JSON writer uses.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping


def json_safe(obj: Any, *, on_nonfinite: Callable[[str, float], None] | None = None,
              default: Callable[[Any], Any] | None = None, _path: str = "") -> Any:
    """`obj` in plain JSON types, recursively: NaN/Inf -> None (JSON null), numpy/torch scalars and arrays ->
    Python numbers and lists, tuples -> lists, mapping keys -> str. `on_nonfinite(path, value)` hears of each
    number replaced ('groups.llada.maxgrad.median_ratio', 'rows[3]'); `default` converts any other object (left
    as it is without one)."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v, on_nonfinite=on_nonfinite, default=default,
                                  _path=f"{_path}.{k}" if _path else str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v, on_nonfinite=on_nonfinite, default=default, _path=f"{_path}[{i}]")
                for i, v in enumerate(obj)]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy / torch scalars and arrays
        lst = obj.tolist()
        if isinstance(lst, list):
            return json_safe(lst, on_nonfinite=on_nonfinite, default=default, _path=_path)
        obj = lst
    if isinstance(obj, float) and not math.isfinite(obj):
        if on_nonfinite is not None:
            on_nonfinite(_path, obj)
        return None
    if obj is None or isinstance(obj, (str, bool, int, float)) or default is None:
        return obj
    return default(obj)


def finite_or_none(x: Any) -> float | None:
    """A number read back from JSON (a calibration result, a registry row): a finite float, else None (absent,
    null, a bool, text that is not a number, NaN/Inf)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside `path` durable (POSIX); best effort where the platform cannot fsync a directory."""
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


def replace_durably(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """fsync the written `tmp`, rename it over `final`, fsync the folder: after this returns the new file
    survives a power cut, and a reader never sees half of it."""
    with open(tmp, "rb+") as fh:
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    fsync_dir(Path(final).parent)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        replace_durably(tmp, path)
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
