"""lora_diffusion: identity at init, the rank schedule, gradients only on the active slice, the parameter
count, save/load, every family, and a tiny sweep calibrated per method."""

from __future__ import annotations

import math

import pytest
import torch

from adapter_loop import base_logits, seeded_tiny, train_adapter

from dlm_triage import lora_diffusion as ld
from dlm_triage.config import ConfigError, RunConfig, parse_rank_schedule
from dlm_triage.data import make_batches
from dlm_triage.objective import mask_tokens, masked_diffusion_loss
from dlm_triage.peft_methods import adapter_matrices, apply_adapter, load_adapter, noise_level, save_adapter
from dlm_triage.tiny import load_tiny

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@pytest.fixture()
def setup(tiny_model_dir):
    return seeded_tiny(tiny_model_dir, method="lora_diffusion", rank=8, batch_size=2, seq_len=16,
                       lora_diffusion_schedule="0.3:0.25,0.6:0.5,1:1")


def test_identity_at_init_and_A_kaiming_B_zero(setup):
    cfg, model, tok = setup
    ids, base = base_logits(model, cfg, tok)
    ld.apply_lora_diffusion(model, cfg, TARGETS)
    for lam in (0.0, 0.5, 1.0):
        with torch.no_grad(), noise_level(model, lam):
            assert torch.equal(model(input_ids=ids).logits, base)
    mods = ld.wrapped_modules(model)
    assert len(mods) == 4 * len(TARGETS)
    for _, m in mods:
        assert torch.count_nonzero(m.lora_diffusion_B) == 0
        bound = 1 / math.sqrt(m.lora_diffusion_A.shape[1])  # kaiming_uniform(a=sqrt 5): U(-1/sqrt(fan_in), ..)
        assert m.lora_diffusion_A.abs().max() <= bound and m.lora_diffusion_A.abs().max() > 0.5 * bound
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_diffusion" not in n)


def test_forward_needs_a_noise_level(setup):
    cfg, model, tok = setup
    ld.apply_lora_diffusion(model, cfg, ("q_proj",))
    with pytest.raises(RuntimeError, match="set_noise_level"):
        model(input_ids=make_batches(cfg, tok).batch(0))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        ld.set_noise_level(model, 1.5)


@pytest.mark.parametrize("lam,k", [(0.0, 2), (0.15, 2), (0.3, 2), (0.31, 4), (0.6, 4), (0.61, 8), (1.0, 8)])
def test_active_rank_follows_the_schedule(setup, lam, k):
    cfg, model, _ = setup
    ld.apply_lora_diffusion(model, cfg, TARGETS)
    with noise_level(model, lam):
        assert ld.active_rank(model) == k  # ceil(f * 8) for f = 0.25, 0.5, 1 by phase


def test_schedule_parsing_and_errors():
    assert parse_rank_schedule("0.5:0.5,1:1") == ((0.5, 0.5), (1.0, 1.0))
    assert ld.RankSchedule("0.5:0.3,1:1", 5).active_rank(0.2) == 2  # ceil(1.5)
    assert ld.RankSchedule("0.5:0.01,1:1", 5).active_rank(0.2) == 1  # at least 1
    for bad in ("0.5:0.5", "0.6:1,0.4:0.5,1:1", "1:0.5", "0.5:1,1:0", "a:b", ""):
        with pytest.raises(ConfigError, match="lora_diffusion_schedule"):
            RunConfig(method="lora_diffusion", lora_diffusion_schedule=bad)


def test_schedule_is_hashed_for_lora_diffusion_only():
    a, b = RunConfig(method="lora"), RunConfig(method="lora", lora_diffusion_schedule="0.5:0.5,1:1")
    assert a.config_hash == b.config_hash
    c = RunConfig(method="lora_diffusion")
    assert c.config_hash != c.replace(lora_diffusion_schedule="0.5:0.5,1:1").config_hash


def test_gradient_reaches_only_the_active_slice(setup):
    cfg, model, tok = setup
    ld.apply_lora_diffusion(model, cfg, TARGETS)
    with torch.no_grad():  # a non-zero B, so that A gets a gradient too
        for _, m in ld.wrapped_modules(model):
            m.lora_diffusion_B.normal_(0, 0.01)
    x0 = make_batches(cfg, tok).batch(1)
    for lam, k in ((0.2, 2), (0.5, 4), (0.9, 8)):
        noisy, mask = mask_tokens(x0, lam, tok.mask_token_id, torch.Generator().manual_seed(0))
        model.zero_grad(set_to_none=True)
        with noise_level(model, lam):
            masked_diffusion_loss(model(input_ids=noisy).logits, x0, mask).backward()
        for _, m in ld.wrapped_modules(model):
            gA, gB = m.lora_diffusion_A.grad, m.lora_diffusion_B.grad
            assert gA[:k].abs().sum() > 0 and gB[:, :k].abs().sum() > 0
            assert torch.count_nonzero(gA[k:]) == 0 and torch.count_nonzero(gB[:, k:]) == 0


def test_parameter_count_matches_the_formula(setup):
    cfg, model, _ = setup
    ld.apply_lora_diffusion(model, cfg, TARGETS)
    c = model.config
    d, n_layers = c.hidden_size, c.num_hidden_layers
    d_kv = c.num_key_value_heads * (d // c.num_attention_heads)
    formula = n_layers * 2 * cfg.rank * (d + d_kv + d_kv + d)  # q, k, v, o outputs
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n_trainable == formula == ld.expected_parameter_count(model) == model._lora_diffusion_meta["n_trainable"]
    names = [n for n, _ in adapter_matrices(model)]
    assert len(names) == 2 * 4 * len(TARGETS) and names[0].endswith("q_proj.lora_diffusion_A")


def _train(model, tok, cfg, rhos, steps=4):
    train_adapter(model, tok, cfg, rhos=rhos, steps=steps, lr=1e-2)


def test_save_load_round_trip(setup, tiny_model_dir, tmp_path):
    cfg, model, tok = setup
    apply_adapter(model, cfg, TARGETS)
    _train(model, tok, cfg, rhos=(0.2, 0.9))
    model.eval()
    ids = make_batches(cfg, tok).batch(7)
    save_adapter(model, tmp_path / "a", cfg)
    assert {p.name for p in (tmp_path / "a").iterdir()} >= {ld.CONFIG_FILENAME, ld.WEIGHTS_FILENAME}
    fresh, _ = load_tiny(tiny_model_dir)
    torch.manual_seed(123)  # another init must not matter: everything is loaded
    loaded = load_adapter(fresh, tmp_path / "a", cfg.replace(lora_diffusion_schedule="1:1"))  # saved one wins
    outs = []
    for lam in (0.1, 0.9):
        with torch.no_grad(), noise_level(model, lam), noise_level(loaded, lam):
            a = model(input_ids=ids).logits
            assert torch.equal(a, loaded(input_ids=ids).logits)
            outs.append(a)
    assert not torch.equal(outs[0], outs[1])  # rank 2 vs rank 8: the noise level changes the function


def test_every_family_trains_a_step(tmp_path):
    """The family stand-ins of tests/tiny_families.py, through their real load(), with their attention targets."""
    from tiny_families import build_family_dir, build_hf_dir

    from dlm_triage.families import get_family

    cpu = torch.device("cpu")
    dirs = {fam: build_family_dir(fam, tmp_path) for fam in ("llada", "llada2", "llada_moe", "dream", "mdlm")}
    dirs.update({"ar": build_hf_dir("llama", tmp_path), "generic_mlm": build_hf_dir("bert", tmp_path)})
    for fam, path in dirs.items():
        cfg = RunConfig(family=fam, model_id=str(path), method="lora_diffusion", rank=2)
        family = get_family(fam)
        lm = family.load(cfg, cpu, torch.float32)
        model = apply_adapter(lm.model, cfg, family.attention_targets(lm.model))
        ids = torch.randint(5, 40, (2, 10), generator=torch.Generator().manual_seed(0))
        noisy, mask = mask_tokens(ids, 0.5, lm.mask_token_id, torch.Generator().manual_seed(1),
                                  protect=family.protected_positions(ids))
        with noise_level(model, 0.5):
            loss = masked_diffusion_loss(family.logits(model, noisy), ids, mask)
        loss.backward()
        grads = [p.grad for _, p in adapter_matrices(model)]
        assert torch.isfinite(loss) and ld.wrapped_modules(model), fam
        assert any(g is not None and g.abs().sum() > 0 for g in grads), fam  # B's gradient (A's is 0: B = 0)


def test_diffusion_gemma_trains_through_train_run(tmp_path):
    """The family with its own objective (and an encoder that calls the decoder's modules): one adapter for both."""
    from dlm_triage.runlog import read_run
    from dlm_triage.tiny_diffusion_gemma import save_tiny_diffusion_gemma
    from dlm_triage.train import train_run

    dg = save_tiny_diffusion_gemma(tmp_path / "dg", seed=3)
    cfg = RunConfig(family="diffusion_gemma", model_id=str(dg), method="lora_diffusion", rank=4, steps=3,
                    batch_size=2, seq_len=32, device="cpu", learning_rate=1e-2)
    res = train_run(cfg, tmp_path / "runs")
    rec = read_run(res.run_dir)
    assert res.status == "completed" and all("lora_diffusion_" in n for n in rec.manifest["matrix_names"])
    assert (rec.steps["grad_norm"].to_numpy() > 0).all()


def test_tiny_sweep_with_lora_and_lora_diffusion_calibrates_per_method(tiny_model_dir, tmp_path):
    """A real sweep grid (SweepSpec) trained with train_run, ingested into DuckDB, calibrated grouped by method."""
    from dlm_triage import store
    from dlm_triage.calibrate import run_calibration
    from dlm_triage.config import SweepSpec
    from dlm_triage.runlog import read_run
    from dlm_triage.train import train_run

    spec = SweepSpec(methods=("lora", "lora_diffusion"), ranks=(4,), mask_ratios=(0.2, 0.8),
                     learning_rates=(1e-2, 2e-1), seeds=(1, 2),
                     base={"model_id": str(tiny_model_dir), "steps": 12, "batch_size": 2, "seq_len": 16,
                           "device": "cpu", "save_adapter": False, "early_warning_step": 5})
    cfgs = spec.expand()
    assert len(cfgs) == 16
    for cfg in cfgs:
        train_run(cfg, tmp_path / "runs")
    ld_run = read_run(tmp_path / "runs" / next(c.run_id for c in cfgs if c.method == "lora_diffusion"))
    assert all("lora_diffusion_" in n for n in ld_run.manifest["matrix_names"])
    assert ld_run.manifest["grad_gini"] is not None  # concentration over its matrices, as for LoRA
    db = tmp_path / "t.duckdb"
    store.ingest_runs(db, tmp_path / "runs")
    out = run_calibration(db, tmp_path / "cal", group_by="method", n_resamples=20, stepk_resamples=10, ks=(5,))
    assert out.result.group_by == "method"
    assert set(out.result.groups) == {"lora", "lora_diffusion"}
    assert {g.n for g in out.result.groups.values()} == {8}


def test_lora_diffusion_is_a_method_choice_of_the_ui_form():
    """The Prefect UI renders SweepParams' JSON schema: the methods axis is a drop-down of this enum."""
    from dlm_triage.params import SweepParams

    schema = SweepParams.model_json_schema()
    items = schema["properties"]["methods"]["items"]
    enum = items.get("enum") or schema["$defs"][items["$ref"].rsplit("/", 1)[-1]]["enum"]
    assert "lora_diffusion" in enum and "nara" in enum
    assert SweepParams(methods=["lora", "lora_diffusion"]).to_spec().methods == ("lora", "lora_diffusion")


def test_a_fraction_times_rank_that_rounds_above_an_integer_stays_that_integer():
    assert 0.28 * 25 > 7 and ld.RankSchedule("0.5:0.28,1:1", 25).active_rank(0.1) == 7
