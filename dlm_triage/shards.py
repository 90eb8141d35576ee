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


# -- the sweep's record of one run ---------------------------------------------------------------------------
# A few hundred bytes of JSON per config (ids, paths, numbers; never tensors): what a training task returns,
# what Prefect persists as its cached result, and what the sweep summary lists.

RECORD_KEYS = (
    "run_id", "status", "run_dir", "final_loss", "max_grad_norm", "routed", "reused", "wall_time_s",
    "config_hash", "code_version", "device", "error",
)


def run_record(res: Any, cfg: RunConfig, *, code_version: str) -> dict[str, Any]:
    """The record of a run `train.train_run` just returned (`res`: its `RunResult`), JSON-safe."""
    from dlm_triage.fsutil import json_safe

    return json_safe({
        "run_id": res.run_id, "status": res.status, "run_dir": str(res.run_dir), "final_loss": res.final_loss,
        "max_grad_norm": res.max_grad_norm, "routed": bool(res.routed_for_inspection), "reused": bool(res.reused),
        "wall_time_s": res.wall_time_s, "config_hash": cfg.config_hash, "code_version": code_version,
        "device": cfg.device, "error": None,
    })


def record_from_manifest(cfg: RunConfig, root: str | Path, man: dict[str, Any], *, reused: bool) -> dict[str, Any]:
    """The record of a finished run read back from its manifest (the sweep reads every record this way: the
    manifests sit on the storage all shards share, whichever machine trained them). `root`: the runs directory
    or the URL runs are published to."""
    from dlm_triage.fsutil import json_safe

    return json_safe({
        "run_id": man["run_id"], "status": man["status"], "run_dir": run_location(root, cfg.run_id),
        "final_loss": man["final_loss"], "max_grad_norm": man["max_grad_norm"],
        "routed": bool(man["routed_for_inspection"]), "reused": reused, "wall_time_s": man["wall_time_s"],
        "config_hash": man["config_hash"], "code_version": man["code_version"], "device": man["device"],
        "error": None,
    })


def failed_record(cfg_dict: dict[str, Any], message: str | None) -> dict[str, Any]:
    """The record of a config whose training task failed (after its retries)."""
    from dlm_triage.config import ConfigError

    try:
        cfg = RunConfig.from_dict(cfg_dict)
        run_id, h = cfg.run_id, cfg.config_hash
    except ConfigError:
        run_id, h = "<invalid config>", None
    rec = dict.fromkeys(RECORD_KEYS)
    rec.update(run_id=run_id, status="task_failed", config_hash=h, device=cfg_dict.get("device"),
               routed=False, reused=False, error=(message or "")[:2000])
    return rec


def split_finished(configs: Sequence[RunConfig], root: Path | str) -> tuple[list[RunConfig], list[dict[str, Any]]]:
    """(configs to train, records of the finished ones) in the grid's order: one manifest read per config."""
    todo: list[RunConfig] = []
    done: list[dict[str, Any]] = []
    for cfg in configs:
        man = finished_manifest(root, cfg)
        if man is None:
            todo.append(cfg)
        else:
            done.append(record_from_manifest(cfg, root, man, reused=True))
    return todo, done


def sweep_rows(records: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The sweep summary's table rows (how each run came about: failed, prefect cache, reused run dir, trained)
    and the counts per `how` plus `routed`."""
    rows = []
    for rec in records:
        hit = rec.get("cached")
        rows.append({
            "run_id": rec["run_id"], "status": rec["status"],
            "how": "failed" if rec["status"] == "task_failed" else
                   "prefect cache" if hit else "reused run dir" if rec.get("reused") else "trained",
            "final_loss": rec.get("final_loss"), "max_grad_norm": rec.get("max_grad_norm"),
            "routed": rec.get("routed"), "device": rec.get("device"), "error": rec.get("error") or "",
        })
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["how"]] = counts.get(r["how"], 0) + 1
    counts["routed"] = sum(bool(r["routed"]) for r in rows)
    return rows, counts
