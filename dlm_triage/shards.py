"""Split a sweep's configs into shards, one per GPU slot, keeping runs of one base model together.

A shard is the unit one worker process trains, one config after the other, in one process: configs that share a
base model (family, model id, dtype) sit in as few shards as balance allows, so a worker loads each base once
(the trainer keeps the last base resident between runs of one process).

    shards = partition(configs, 8)   # list of lists of RunConfig, at most 8, none empty

Rule: the shard size goal is ceil(N / n_shards). A base-model group no larger than that goes whole into the least
loaded shard (largest groups first); a larger group is cut into consecutive pieces of that size first. Ties go to
the lowest shard index, so the same configs give the same shards. Prefect-free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dlm_triage.config import RunConfig
from dlm_triage.schema import REUSABLE_STATUSES


def base_model_key(cfg: RunConfig) -> tuple[str, str, str]:
    """What a worker loads once for every run that shares it: family, model id (None: the family default) and
    dtype. (The adapter, rank, learning rate, mask ratio and seed change per run and cost nothing to reload.)"""
    return (cfg.family, str(cfg.model_id), str(cfg.dtype))


def partition(configs: Sequence[RunConfig], n_shards: int) -> list[list[RunConfig]]:
    """At most `n_shards` non-empty shards covering `configs` exactly once (see the module docstring)."""
    if n_shards < 1:
        raise ValueError(f"n_shards={n_shards}: a sweep needs at least one shard (one GPU slot)")
    if not configs:
        return []
    ids = [c.run_id for c in configs]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"configs repeat run ids {dupes[:5]}: each config must appear once in a sweep")
    n_shards = min(n_shards, len(configs))
    goal = math.ceil(len(configs) / n_shards)
    groups: dict[tuple[str, str, str], list[RunConfig]] = {}
    for cfg in configs:  # insertion order: the grid's order within a group
        groups.setdefault(base_model_key(cfg), []).append(cfg)
    pieces = [g[i:i + goal] for g in groups.values() for i in range(0, len(g), goal)]
    pieces.sort(key=len, reverse=True)  # stable: equal sizes keep the grid's order
    shards: list[list[RunConfig]] = [[] for _ in range(n_shards)]
    for piece in pieces:
        target = min(range(n_shards), key=lambda i: (len(shards[i]), i))
        shards[target].extend(piece)
    return [s for s in shards if s]


def run_location(root: Path | str, run_id: str) -> str:
    """Where run `run_id` lives under a runs root: a local path, or `<url>/<run_id>` (runstore)."""
    from dlm_triage.runstore import is_url

    return f"{str(root).rstrip('/')}/{run_id}" if is_url(root) else str(Path(root) / run_id)


def finished_manifest(root: Path | str, cfg: RunConfig) -> dict[str, Any] | None:
    """The manifest of `cfg`'s run under `root` (a runs directory, or an fsspec URL runs are published to) if that
    run is finished (manifest present and valid, same config hash, status completed / diverged /
    stopped_early), else None. Reads the manifest only (one small JSON file): the sweep asks this for every
    config before it plans and while shards report."""
    from dlm_triage.runlog import RunLogError, read_manifest
    from dlm_triage.runstore import is_url, read_manifest_at

    if is_url(root):
        man = read_manifest_at(str(root), cfg.run_id)
        if man is None or not {"config_hash", "status"} <= set(man):
            return None
    else:
        try:
            man = read_manifest(Path(root) / cfg.run_id)
        except (RunLogError, OSError):
            return None
    return man if man["config_hash"] == cfg.config_hash and man["status"] in REUSABLE_STATUSES else None
