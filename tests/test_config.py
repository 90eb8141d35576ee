"""config.py: the frozen, validated run config (every problem in one error, round trip through its dict, the
hash and run id), the rank schedule and noise-level checks, and the sweep grid's expansion."""

from __future__ import annotations

import json

import pytest

from dlm_triage.config import ConfigError, RunConfig, SweepSpec, check_noise_level, parse_rank_schedule


def test_every_problem_is_reported_at_once_naming_the_field():
    with pytest.raises(ConfigError) as e:
        RunConfig(rank=0, method="ia3", mask_ratio=1.5)
    msg = str(e.value)
    assert msg.startswith("invalid run config (3 problem(s)):") and len(e.value.problems) == 3
    assert "rank=0" in msg and "method='ia3'" in msg and "mask_ratio=1.5" in msg


def test_the_dict_round_trips_and_unknown_keys_are_named_with_a_hint():
    cfg = RunConfig(rank=4, seed=7, target_modules=["q_proj", "v_proj"])
    assert cfg.target_modules == ("q_proj", "v_proj")  # a list becomes a tuple: the config stays hashable
    d = json.loads(cfg.to_json())
    assert d["target_modules"] == ["q_proj", "v_proj"]
    assert RunConfig.from_dict(d) == cfg and RunConfig.from_dict(d).config_hash == cfg.config_hash
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['rnak'\] \('rnak' -> did you mean 'rank'\?\)") as e:
        RunConfig.from_dict({"rnak": 4, "seed": -1})
    assert len(e.value.problems) == 2  # the other fields are still checked: one message
    with pytest.raises(ConfigError, match="must be a JSON object of RunConfig fields, got a list"):
        RunConfig.from_dict([1, 2])


def test_replace_validates_and_the_run_id_reads_the_axes():
    cfg = RunConfig(rank=8, mask_ratio=0.25, learning_rate=1e-3, seed=3)
    assert cfg.run_id == f"tiny-lora-r8-m0.25-lr0.001-s3-{cfg.config_hash[:12]}"
    assert len(cfg.config_hash) == 64 and cfg.replace(seed=4).config_hash != cfg.config_hash
    assert cfg.replace(device="cpu").config_hash == cfg.config_hash  # where it runs is not what it is
    with pytest.raises(ConfigError, match="rank=-1"):
        cfg.replace(rank=-1)
    with pytest.raises(AttributeError):
        cfg.rank = 4  # frozen


def test_rank_schedule_and_noise_level_checks_name_the_fix():
    assert parse_rank_schedule("0.33:0.25,0.67:0.5,1:1") == ((0.33, 0.25), (0.67, 0.5), (1.0, 1.0))
    assert parse_rank_schedule("1:1") == ((1.0, 1.0),)
    for bad in ("", "0.5:1", "0.6:0.5,0.4:1,1:1", "0.5:0.5,1:0.5", "1:1.5", None):
        with pytest.raises(ValueError, match="increasing noise bounds"):
            parse_rank_schedule(bad)
    with pytest.raises(ValueError, match=r"piece 'x' is not 'bound:fraction'"):
        parse_rank_schedule("0.5:1,x")
    assert check_noise_level(0, "nara") == 0.0 and check_noise_level(1, "nara") == 1.0
    with pytest.raises(ValueError, match=r"noise level nan is invalid: nara's lambda is a mask ratio in \[0, 1\]"):
        check_noise_level(float("nan"), "nara")


def test_a_sweep_spec_expands_its_product_once_and_round_trips():
    spec = SweepSpec(families=("tiny",), methods=("lora", "dora"), ranks=(4, 8), mask_ratios=(0.5,),
                     learning_rates=(1e-3,), seeds=(1, 2, 3), base={"steps": 5})
    cfgs = spec.expand()
    assert len(spec) == len(cfgs) == 12 and len({c.run_id for c in cfgs}) == 12
    assert {c.steps for c in cfgs} == {5} and {(c.method, c.rank) for c in cfgs} == {
        ("lora", 4), ("lora", 8), ("dora", 4), ("dora", 8)}
    assert SweepSpec.from_dict(json.loads(json.dumps(spec.to_dict()))).expand() == cfgs
    with pytest.raises(ConfigError, match=r"(?s)invalid sweep spec.*seeds is empty.*base sets the axis 'rank'"):
        SweepSpec(seeds=(), base={"rank": 4})
    with pytest.raises(ConfigError, match=r"(?s)invalid sweep spec.*rank=0"):
        SweepSpec(ranks=(0, 4))  # every expanded config is validated before any work starts
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['rank'\]"):
        SweepSpec.from_dict({"rank": [4]})


def test_config_fields_validate_and_keep_old_hashes():
    with pytest.raises(ConfigError, match=r"grad_accum_steps=0 is out of range"):
        RunConfig(grad_accum_steps=0)
    with pytest.raises(ConfigError, match=r"gradient_checkpointing='yes' is invalid"):
        RunConfig(gradient_checkpointing="yes")
    base = RunConfig()
    # a run stored before these fields existed keeps its hash: the hash of the config without the two keys
    # (what to_dict gave then) is the hash now, grad_accum_steps=1 and gradient_checkpointing left out
    now = base.config_hash
    orig = RunConfig.to_dict
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RunConfig, "to_dict", lambda self: {k: v for k, v in orig(self).items()
                                                       if k not in ("grad_accum_steps", "gradient_checkpointing")})
        assert base.config_hash == now
    assert base.replace(gradient_checkpointing=True).config_hash == base.config_hash  # memory strategy only
    assert base.replace(grad_accum_steps=16).config_hash != base.config_hash  # another effective batch
    assert RunConfig.from_dict(base.replace(grad_accum_steps=16).to_dict()).grad_accum_steps == 16
