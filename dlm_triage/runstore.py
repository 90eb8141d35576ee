"""Finished run directories on shared or object storage: any fsspec URL (s3://, gs://, memory://, file://).

A run trains into a local run directory (`train_run` writes through fsync + rename, which object stores lack);
`publish_run` then copies it to `<url>/<run_id>/`: every file but the manifest first, the manifest last. The
manifest is the commit marker there too: a reader that finds it finds the whole run, and a copy cut off halfway
has none. Prefect-free; `s3://` needs `s3fs`, `gs://` needs `gcsfs`.

    url = publish_run(Path("runs/tiny-lora-r4-..."), "s3://bucket/dlm-triage/runs")
    man = read_manifest_at("s3://bucket/dlm-triage/runs", "tiny-lora-r4-...")   # None while unfinished

DuckDB and polars read the published step logs natively (DuckDB's httpfs for s3/gcs, or any fsspec filesystem
registered with `con.register_filesystem`; polars through fsspec).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dlm_triage.schema import MANIFEST_FILENAME


def is_url(location: str | Path | None) -> bool:
    """A URL with a scheme (`s3://...`, `memory://...`, `file://...`), not a plain path."""
    return isinstance(location, str) and "://" in location


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, root path inside it) for `url`; a clear error when its protocol is not installed."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        raise ValueError(f"runs_url={url!r}: fsspec cannot open it ({e}); install the filesystem's package "
                         "(s3fs for s3://, gcsfs for gs://) or give a shared path") from e
    return fs, root.rstrip("/")


def publish_run(run_dir: Path, url: str) -> str:
    """Copy the finished local run directory `run_dir` to `<url>/<run_dir.name>/`, the manifest last; return the
    published run's URL. A published copy is replaced whole: its manifest goes first, so it never looks
    finished while its files change."""
    run_dir = Path(run_dir)
    manifest = run_dir / MANIFEST_FILENAME
    if not manifest.is_file():
        raise FileNotFoundError(f"{run_dir}: no manifest, the run is not finished; only finished runs are published")
    fs, root = filesystem(url)
    target = f"{root}/{run_dir.name}"
    if fs.exists(f"{target}/{MANIFEST_FILENAME}"):
        fs.rm(f"{target}/{MANIFEST_FILENAME}")
    files = sorted(p for p in run_dir.rglob("*") if p.is_file() and p != manifest and not p.name.endswith(".tmp"))
    for p in files:
        dest = f"{target}/{p.relative_to(run_dir).as_posix()}"
        fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(p), dest)
    fs.makedirs(target, exist_ok=True)
    fs.put_file(str(manifest), f"{target}/{MANIFEST_FILENAME}")  # commit marker, last
    return f"{url.rstrip('/')}/{run_dir.name}"


def read_manifest_at(url: str, run_id: str) -> dict[str, Any] | None:
    """The published manifest of `run_id` under `url`, or None (not published, or unreadable)."""
    fs, root = filesystem(url)
    try:
        with fs.open(f"{root}/{run_id}/{MANIFEST_FILENAME}", "rb") as fh:
            man = json.loads(fh.read())
    except (FileNotFoundError, OSError, ValueError):
        return None
    return man if isinstance(man, dict) else None
