"""Shared Prefect result storage for every worker of the dlm-triage pools (called by setup.sh).

    python deployments/result_storage.py URL POOL [POOL ...]

URL: where the `train-config` task's cached records go, shared by all machines: an fsspec URL (`s3://bucket/x`,
`gs://bucket/x`, needing `s3fs` / `gcsfs` on the workers) saved as the RemoteFileSystem block
'dlm-triage-results', or a path every machine mounts (`/shared/x`, `file:///shared/x`) saved as the
LocalFileSystem block of that name (Prefect's RemoteFileSystem refuses local paths). Then each pool's default
`env` job variable gets PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK=<that block>, so every flow run on those pools, on
any machine and under any worker, persists its results there with nothing exported per machine. Deployment and
flow-run `env` job variables merge over it (Prefect merges `env` key by key). Prints the block's slug.
"""

from __future__ import annotations

import sys
import urllib.parse
from pathlib import Path

BLOCK_NAME = "dlm-triage-results"
SETTING = "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"


def save_block(url: str) -> str:
    """Save the storage block for `url`; return its slug ('<block type>/<name>')."""
    from prefect.filesystems import LocalFileSystem, RemoteFileSystem

    scheme = urllib.parse.urlsplit(url).scheme
    if scheme in ("", "file"):
        path = Path(urllib.parse.urlsplit(url).path if scheme else url).expanduser()
        if not path.is_absolute():
            raise SystemExit(f"RESULT_STORAGE_URL={url!r}: a local path must be absolute (every worker resolves it "
                             "on its own machine), e.g. /shared/dlm-triage/results")
        block = LocalFileSystem(basepath=str(path))
    else:
        block = RemoteFileSystem(basepath=url)  # validates the URL (scheme and location) before anything is saved
    block.save(BLOCK_NAME, overwrite=True)
    return f"{block.get_block_type_slug()}/{BLOCK_NAME}"


def set_pool_env(pool_name: str, slug: str) -> None:
    """Add SETTING=slug to the default `env` of the work pool's base job template (other variables kept)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolUpdate

    with get_client(sync_client=True) as client:
        template = client.read_work_pool(pool_name).base_job_template
        props = template.setdefault("variables", {}).setdefault("properties", {})
        if "env" not in props:
            raise SystemExit(f"work pool {pool_name!r} has no 'env' job variable: set {SETTING}={slug} in its "
                             "workers' environment instead")
        props["env"]["default"] = {**(props["env"].get("default") or {}), SETTING: slug}
        client.update_work_pool(pool_name, WorkPoolUpdate(base_job_template=template))


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    slug = save_block(argv[0])
    for pool in argv[1:]:
        set_pool_env(pool, slug)
    print(slug)


if __name__ == "__main__":
    main(sys.argv[1:])
