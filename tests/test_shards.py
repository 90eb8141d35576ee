"""Shard partitioning and the finished-run check (pure: no Prefect, no training)."""

from __future__ import annotations

import json
import math

import pytest

from dlm_triage.config import RunConfig
from dlm_triage.params import SweepParams
from dlm_triage.shards import base_model_key, finished_manifest, partition


def _grid(models: list[str | None], seeds: int) -> list[RunConfig]:
    return [RunConfig(model_id=m, seed=s, steps=3) for m in models for s in range(seeds)]


def _check_cover(configs, shards, n):
    ids = [c.run_id for s in shards for c in s]
    assert sorted(ids) == sorted(c.run_id for c in configs)  # every config exactly once
    assert 0 < len(shards) <= n and all(shards)


@pytest.mark.parametrize("n_models, seeds, n", [(1, 7, 3), (3, 4, 2), (4, 2, 8), (2, 5, 5), (5, 1, 2), (1, 72, 2)])
def test_partition_covers_every_config_once_and_balances(n_models, seeds, n):
    configs = _grid([f"/m/{i}" for i in range(n_models)], seeds)
    shards = partition(configs, n)
    _check_cover(configs, shards, n)
    goal = math.ceil(len(configs) / min(n, len(configs)))
    # no shard above twice the fair share (pieces are at most `goal`, placed on the least loaded shard)
    assert max(len(s) for s in shards) <= 2 * goal


def test_a_base_model_that_fits_a_shard_is_loaded_by_one_shard_only():
    configs = _grid(["/m/a", "/m/b", "/m/c", "/m/d"], 3)  # 4 models x 3 runs, 4 shards: one model per shard
    shards = partition(configs, 4)
    assert [len({base_model_key(c) for c in s}) for s in shards] == [1, 1, 1, 1]
    # 2 shards: each holds two whole models, none split
    homes = {}
    for i, s in enumerate(partition(configs, 2)):
        for c in s:
            homes.setdefault(base_model_key(c), set()).add(i)
    assert all(len(v) == 1 for v in homes.values())


def test_a_large_group_is_cut_into_contiguous_pieces():
    configs = _grid([None], 10)
    shards = partition(configs, 3)
    assert [len(s) for s in shards] == [4, 4, 2]
    assert [c.seed for s in shards for c in s] == list(range(10))  # the grid's order, cut in pieces


def test_partition_is_deterministic_and_caps_shards_at_configs():
    configs = SweepParams(ranks=[4, 8], mask_ratios=[0.2, 0.5], seeds=[1, 2], steps=3).to_spec().expand()
    a = [[c.run_id for c in s] for s in partition(configs, 3)]
    b = [[c.run_id for c in s] for s in partition(list(configs), 3)]
    assert a == b
    assert len(partition(configs[:2], 8)) == 2
    assert partition([], 4) == []


def test_partition_rejects_bad_input_naming_it():
    with pytest.raises(ValueError, match="n_shards=0"):
        partition(_grid([None], 2), 0)
    c = RunConfig(steps=3)
    with pytest.raises(ValueError, match=c.run_id):
        partition([c, c], 2)


def test_finished_manifest_needs_a_manifest_of_the_same_config_with_a_reusable_status(tmp_path):
    from runfactory import make_run  # real run-log writer, no training

    cfg = RunConfig(steps=5, seed=3)
    assert finished_manifest(tmp_path, cfg) is None  # no run dir
    run_dir = make_run(tmp_path, cfg)
    assert finished_manifest(tmp_path, cfg)["config_hash"] == cfg.config_hash
    assert finished_manifest(tmp_path, cfg.replace(device="cuda:1")) is not None  # placement is not identity
    man_path = run_dir / "manifest.json"
    man = json.loads(man_path.read_text())
    man_path.write_text(json.dumps({**man, "status": "failed"}))
    assert finished_manifest(tmp_path, cfg) is None  # a failed run is trained again
    man_path.write_text(json.dumps({**man, "config_hash": "0" * 16}))
    assert finished_manifest(tmp_path, cfg) is None  # another config under this name
    man_path.unlink()
    assert finished_manifest(tmp_path, cfg) is None  # a run dir without its commit marker is unfinished
