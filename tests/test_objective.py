"""objective.py: masking (rates, >= 1 per row, protect, determinism) and the masked CE on hand-computed cases;
the named objectives (config.OBJECTIVES) on the same hand-made batch: loss weights, noise-level sampling, masking
limited to the maskable positions, setup errors, and a short real training run of the tiny family under each."""

from __future__ import annotations

import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm_triage import families, objective as obj, train
from dlm_triage.config import NORMALISATIONS, OBJECTIVES, ConfigError, RunConfig, draws_own_t
from dlm_triage.objective import ObjectiveError, cart_weights, get_objective, mask_tokens, masked_diffusion_loss, token_ce
from dlm_triage.runlog import read_run
from dlm_triage.train import device_batch, train_run

MASK_ID = 99
TINY_OBJECTIVES = sorted(o for o in OBJECTIVES if o == "paper" or draws_own_t(o))  # not a family's own


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# -- the hand-made batch -----------------------------------------------------------------------------------

# b=2, L=3, V=2; row 0 masks positions 0 and 2, row 1 position 1. Row 1's position 0 is prompt (not maskable).
LOGITS = torch.tensor([
    [[2.0, 0.0], [5.0, -5.0], [0.0, 1.0]],
    [[0.0, 0.0], [1.0, 3.0], [-7.0, 7.0]],
])
TARGETS = torch.tensor([[0, 1, 0], [1, 0, 1]])
MASK = torch.tensor([[True, False, True], [False, True, False]])
MASKABLE = torch.tensor([[True, True, True], [False, True, True]])
T = torch.tensor([0.25, 0.5])


def _ce(z_true, z_other):
    return -z_true + math.log(math.exp(z_true) + math.exp(z_other))


CE0, CE1, CE2 = _ce(2.0, 0.0), _ce(0.0, 1.0), _ce(1.0, 3.0)  # (row0,pos0), (row0,pos2), (row1,pos1)
CE = [CE0, CE1, CE2]
EPS = 1e-3
P0, P1 = (1 - EPS) * 0.25 + EPS, (1 - EPS) * 0.5 + EPS  # LLaDA's p = (1 - eps) t + eps

HAND = {
    # sum CE / p over masked, / (b * L)
    "llada_pretrain": (CE0 / P0 + CE1 / P0 + CE2 / P1) / 6,
    # per row: sum CE / p / answer length (row 0: 3, row 1: 2 maskable), mean over the batch
    "llada_sft": ((CE0 + CE1) / P0 / 3 + CE2 / P1 / 2) / 2,
    # sum CE * 1/t over masked, / number of maskable tokens (5)
    "mdlm": (CE0 / 0.25 + CE1 / 0.25 + CE2 / 0.5) / 5,
    # sum CE / number masked (3)
    "llada2_sft": (CE0 + CE1 + CE2) / 3,
    # CART geo p=0.3: w(d) = 0.5 * 0.3 * 0.7^(d-1); row 0 pos 0 and 2 each see the clean pos 1 at d=1 (0.15);
    # row 1 pos 1 sees clean pos 0 and pos 2 at d=1 (0.3); / number of maskable tokens (5)
    "dream": (0.15 * CE0 + 0.15 * CE1 + 0.3 * CE2) / 5,
}


# -- the paper's masked CE on the hand-made batch ----------------------------------------------------------

@pytest.mark.parametrize(
    "normalisation, mask_ratio, expected",
    [
        ("per_masked_token", None, sum(CE) / 3),
        ("per_token", None, sum(CE) / 6),
        ("per_token_over_p", 0.5, sum(CE) / 0.5 / 6),
        ("per_token_over_p", [0.25, 0.5], (CE[0] / 0.25 + CE[1] / 0.25 + CE[2] / 0.5) / 6),
    ],
)
def test_loss_matches_hand_computation(normalisation, mask_ratio, expected):
    loss = masked_diffusion_loss(LOGITS, TARGETS, MASK, normalisation=normalisation, mask_ratio=mask_ratio)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("normalisation", NORMALISATIONS)
def test_unmasked_positions_do_not_count(normalisation):
    other = LOGITS.clone()
    other[~MASK] = torch.randn(int((~MASK).sum()), 2) * 100
    kw = dict(normalisation=normalisation, mask_ratio=0.5)
    assert masked_diffusion_loss(other, TARGETS, MASK, **kw).item() == pytest.approx(
        masked_diffusion_loss(LOGITS, TARGETS, MASK, **kw).item(), rel=1e-7
    )


def test_bf16_logits_give_float32_ce_close_to_fp32():
    logits = torch.randn(4, 16, 50, generator=_gen(1)) * 3
    targets = torch.randint(0, 50, (4, 16), generator=_gen(2))
    mask = torch.rand(4, 16, generator=_gen(3)) < 0.5
    ref = masked_diffusion_loss(logits, targets, mask)
    bf = masked_diffusion_loss(logits.bfloat16(), targets, mask)
    assert bf.dtype == torch.float32
    assert bf.item() == pytest.approx(ref.item(), rel=2e-2)


def test_loss_gradient_flows_only_through_masked_logits():
    logits = LOGITS.clone().requires_grad_(True)
    masked_diffusion_loss(logits, TARGETS, MASK).backward()
    assert (logits.grad[~MASK] == 0).all()
    assert (logits.grad[MASK].abs().sum(-1) > 0).all()


def test_loss_errors_name_the_fix():
    with pytest.raises(ValueError, match="per_token_over_p.*mask_ratio"):
        masked_diffusion_loss(LOGITS, TARGETS, MASK, normalisation="per_token_over_p")
    with pytest.raises(ValueError, match="not known"):
        masked_diffusion_loss(LOGITS, TARGETS, MASK, normalisation="mean")
    with pytest.raises(ValueError, match="no position"):
        masked_diffusion_loss(LOGITS, TARGETS, torch.zeros_like(MASK))
    with pytest.raises(ValueError, match="shapes"):
        masked_diffusion_loss(LOGITS, TARGETS[:, :2], MASK[:, :2])


# -- masking ---------------------------------------------------------------------------------------------

def test_mask_tokens_replaces_exactly_the_masked_positions():
    ids = torch.randint(0, 50, (8, 32), generator=_gen(0))
    noisy, mask = mask_tokens(ids, 0.4, MASK_ID, _gen(5))
    assert mask.dtype == torch.bool and mask.shape == ids.shape
    assert (noisy[mask] == MASK_ID).all()
    assert torch.equal(noisy[~mask], ids[~mask])


def test_mask_tokens_is_deterministic_given_the_generator():
    ids = torch.randint(0, 50, (4, 20), generator=_gen(0))
    a = mask_tokens(ids, 0.5, MASK_ID, _gen(7))
    b = mask_tokens(ids, 0.5, MASK_ID, _gen(7))
    c = mask_tokens(ids, 0.5, MASK_ID, _gen(8))
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
    assert not torch.equal(a[1], c[1])


def test_bernoulli_rate_matches_rho():
    ids = torch.zeros(256, 64, dtype=torch.long)
    for rho in (0.15, 0.5, 0.85):
        _, mask = mask_tokens(ids, rho, MASK_ID, _gen(11))
        # 16384 Bernoulli draws: sd ~0.004; 0.02 is > 4 sd.
        assert mask.float().mean().item() == pytest.approx(rho, abs=0.02)


def test_exact_sampling_masks_round_rho_L_per_row():
    ids = torch.zeros(16, 40, dtype=torch.long)
    _, mask = mask_tokens(ids, 0.3, MASK_ID, _gen(0), sampling="exact")
    assert (mask.sum(1) == 12).all()
    _, mask = mask_tokens(ids, [0.1, 0.9] * 8, MASK_ID, _gen(0), sampling="exact")
    assert mask.sum(1).tolist() == [4, 36] * 8


def test_at_least_one_masked_position_per_row_even_at_tiny_rho():
    ids = torch.zeros(500, 8, dtype=torch.long)
    for sampling in ("bernoulli", "exact"):
        _, mask = mask_tokens(ids, 1e-4, MASK_ID, _gen(3), sampling=sampling)
        assert (mask.sum(1) >= 1).all()


def test_protected_positions_are_never_masked():
    ids = torch.zeros(64, 10, dtype=torch.long)
    protect = torch.zeros(10, dtype=torch.bool)
    protect[0] = True
    for sampling in ("bernoulli", "exact"):
        _, mask = mask_tokens(ids, 0.95, MASK_ID, _gen(2), sampling=sampling, protect=protect)
        assert not mask[:, 0].any()
        assert (mask.sum(1) >= 1).all()
    # per-row protection: only position 3 eligible in row 0 -> it is the masked one even at tiny rho
    rows = torch.ones(2, 10, dtype=torch.bool)
    rows[0, 3] = False
    rows[1] = False
    _, mask = mask_tokens(torch.zeros(2, 10, dtype=torch.long), 1e-6, MASK_ID, _gen(0), protect=rows)
    assert mask[0].nonzero().flatten().tolist() == [3]


def test_mask_tokens_errors_name_the_fix():
    ids = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        mask_tokens(ids, 1.0, MASK_ID, _gen())
    with pytest.raises(ValueError, match="one value per row"):
        mask_tokens(ids, [0.5, 0.5, 0.5], MASK_ID, _gen())
    with pytest.raises(ValueError, match="protect fewer"):
        mask_tokens(ids, 0.5, MASK_ID, _gen(), protect=torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="not known"):
        mask_tokens(ids, 0.5, MASK_ID, _gen(), sampling="uniform")
    with pytest.raises(ValueError, match=r"\[batch, seq_len\]"):
        mask_tokens(ids[0], 0.5, MASK_ID, _gen())


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 6), length=st.integers(2, 24), rho=st.floats(0.001, 0.999),
    seed=st.integers(0, 2**31), sampling=st.sampled_from(["bernoulli", "exact"]), n_protect=st.integers(0, 1),
)
def test_mask_invariants(b, length, rho, seed, sampling, n_protect):
    ids = torch.randint(0, 50, (b, length), generator=_gen(seed))
    protect = torch.zeros(length, dtype=torch.bool)
    protect[:n_protect] = True
    noisy, mask = mask_tokens(ids, rho, MASK_ID, _gen(seed), sampling=sampling, protect=protect)
    assert (mask.sum(1) >= 1).all()
    assert not (mask & protect).any()
    assert torch.equal(noisy, torch.where(mask, torch.full_like(ids, MASK_ID), ids))
    loss = masked_diffusion_loss(torch.randn(b, length, 50), ids, mask)
    assert torch.isfinite(loss)


# -- the named objectives on the hand-made batch -----------------------------------------------------------

@pytest.mark.parametrize("name", sorted(HAND))
def test_loss_on_the_hand_made_batch(name):
    o = get_objective(name)
    loss = o.reduce(token_ce(LOGITS, TARGETS), MASK, MASKABLE, T)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(HAND[name], rel=1e-6)


@pytest.mark.parametrize("name", sorted(HAND))
def test_unmasked_positions_do_not_count_even_when_their_ce_is_infinite(name):
    z = LOGITS.clone()
    z[~MASK] = torch.tensor([1e30, -1e30])  # CE there is huge / inf: where(), not a product with 0
    other = get_objective(name).reduce(token_ce(z, TARGETS), MASK, MASKABLE, T)
    assert other.item() == pytest.approx(HAND[name], rel=1e-6)


def test_every_registered_objective_is_importable_and_named_as_registered():
    for name in OBJECTIVES:
        o = get_objective(name)
        assert o.name == name and o.source
    with pytest.raises(ObjectiveError, match="not known"):
        get_objective("sedd")


def test_cart_weights_match_the_definition_written_as_loops():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(3, 9, generator=g) < 0.5
    w = cart_weights(mask, 0.3)
    for b in range(3):
        for i in range(9):
            ref = 0.0
            if mask[b, i]:
                ref = sum(0.5 * 0.3 * 0.7 ** (abs(i - j) - 1) for j in range(9) if j != i and not mask[b, j])
            assert w[b, i].item() == pytest.approx(ref, rel=1e-6, abs=1e-9)


def test_subs_gives_the_mask_token_no_probability():
    z = torch.cat([LOGITS, torch.full((2, 3, 1), 50.0)], dim=-1)  # a 3rd token (the mask id) with a huge logit
    ce = token_ce(z, TARGETS, forbid_token=2)
    assert torch.allclose(ce, token_ce(LOGITS, TARGETS))


# -- noise levels -------------------------------------------------------------------------------------------

def test_mdlm_t_is_antithetic_one_per_stratum():
    t = obj.MDLMObjective().sample_t(8, random.Random(3))
    u = sorted((x - EPS) / (1 - EPS) for x in t)
    assert all(i / 8 <= v < (i + 1) / 8 for i, v in enumerate(u))
    # the masking probability is the log-linear schedule's move chance (1 - eps) t
    assert obj.MDLMObjective().mask_prob([0.5]) == [pytest.approx(0.5 * (1 - EPS))]


def test_noise_level_ranges():
    rng = random.Random(0)
    assert all(0.3 <= t <= 0.8 for t in obj.LLaDA2SFTObjective().sample_t(500, rng))
    assert all(EPS <= t < 1 for t in obj.DreamObjective().sample_t(500, rng))
    p = obj.LLaDASFTObjective().mask_prob(obj.LLaDASFTObjective().sample_t(500, rng))
    assert min(p) >= EPS and max(p) < 1


# -- on the tiny model: what gets masked ---------------------------------------------------------------------

@pytest.mark.parametrize("name", TINY_OBJECTIVES)
def test_prompt_never_masked_and_eos_padding_is(tiny_model_dir, name):
    cfg = RunConfig(model_id=str(tiny_model_dir), batch_size=8, seq_len=48, device="cpu", save_adapter=False,
                    objective=name, dataset="tiny-instruct", steps=2)
    r = train._setup(cfg)
    pad = r.batches.stats["pad_token_id"]
    masked_pad = 0
    for step in range(6):
        x0, maskable = device_batch(r, step)
        prompt_len = r.batches.prompt_lengths[r.batches._index(step)]
        prompt = torch.arange(48)[None, :] < prompt_len[:, None]
        assert torch.equal(maskable, ~prompt)
        assert (x0[:, -1] == pad).all()  # every response padded to seq_len with the padding token
        out = r.objective.forward(r, x0, maskable)
        assert not (out.mask & prompt).any()
        masked_pad += int((out.mask & (x0 == pad)).sum())
        assert torch.isfinite(out.loss)
        if out.noise_level is not None:
            assert 0 < out.noise_level < 1
    assert masked_pad > 0  # the EOS padding is masked and predicted


@pytest.mark.parametrize("name", TINY_OBJECTIVES)
def test_the_tiny_family_trains_under_every_objective(tiny_model_dir, tmp_path, name):
    sft = name in ("llada_sft", "llada2_sft")
    cfg = RunConfig(model_id=str(tiny_model_dir), batch_size=4, seq_len=48, device="cpu", save_adapter=False,
                    objective=name, dataset="tiny-instruct" if sft else "tiny-shifted", steps=6,
                    learning_rate=1e-3)
    res = train_run(cfg, tmp_path)
    assert res.status == "completed"
    rec = read_run(res.run_dir)
    assert rec.manifest["objective"]["name"] == name
    assert rec.manifest["config"]["objective"] == name
    rho = rec.steps["mask_ratio"].to_numpy()
    if name == "paper":
        assert res.run_id.startswith("tiny-lora-r8-m0.5-")
    else:
        assert name in res.run_id
        assert len(set(rho.round(6))) > 1  # a fresh t per batch, logged as mask_ratio
    if name == "llada2_sft":
        assert ((rho >= 0.3) & (rho <= 0.8)).all()
    assert rec.manifest["data"]["format"] == ("sft" if sft else "packed")


# -- setup errors ------------------------------------------------------------------------------------------

def test_subs_refused_on_a_family_without_a_mask_token():
    class Tok:
        pad_token_id, eos_token_id, mask_token_id = 0, 0, None

    ar = families.get_family("ar")
    mask_id = ar.mask_token_id(Tok())  # the AR family falls back to pad
    with pytest.raises(ObjectiveError, match=r"objective='mdlm' \(SUBS\).*no dedicated mask token"):
        get_objective("mdlm").check(RunConfig(objective="mdlm"), ar, Tok(), mask_id)


def test_paper_only_knobs_are_refused_for_t_sampled_objectives():
    with pytest.raises(ConfigError, match="mask_ratio=0.15 applies to objective='paper' only"):
        RunConfig(objective="llada_sft", mask_ratio=0.15)
    with pytest.raises(ConfigError, match="normalisation='per_token' applies to objective='paper' only"):
        RunConfig(objective="mdlm", normalisation="per_token")
    with pytest.raises(ConfigError, match="objective='sedd' is not known"):
        RunConfig(objective="sedd")


def test_objective_enters_the_hash_only_when_not_the_default():
    base = RunConfig()
    assert RunConfig(objective="paper").config_hash == base.config_hash
    assert RunConfig(objective="llada_sft").config_hash != base.config_hash
    assert RunConfig(packing=False).config_hash != base.config_hash
    # runs configured before objective/chat_template/packing existed keep their hash (values from that code)
    assert base.config_hash == "829693aa921112b9c21f2d6ee8160ad7011e3c8850d6f2c7f6aba96a05d0e0d1"
    assert RunConfig(family="llada", top1_every=1).config_hash == (
        "4e99d05729be6cae30fbb2470f4837074671f98b340875403b6f3d08f1ccdd2b")


def test_top1_every_default_is_every_step_on_tiny_and_every_fifth_on_real_models():
    assert RunConfig().top1_every == 1
    assert RunConfig(family="llada").top1_every == 5
    assert RunConfig(family="llada", top1_every=2).top1_every == 2


def test_diffusion_gemma_is_its_family_s_objective_and_trains_on_sft_data(tmp_path):
    from dlm_triage.tiny_diffusion_gemma import save_tiny_diffusion_gemma

    model_dir = save_tiny_diffusion_gemma(tmp_path / "dg", seed=1)
    assert RunConfig(family="diffusion_gemma").objective == "diffusion_gemma"  # its default
    with pytest.raises(ConfigError, match="objective='paper' cannot run on family 'diffusion_gemma'"):
        RunConfig(family="diffusion_gemma", objective="paper")
    cfg = RunConfig(family="diffusion_gemma", model_id=str(model_dir), dataset="tiny-instruct", seq_len=48,
                    batch_size=2, steps=2, device="cpu", save_adapter=False)
    r = train._setup(cfg)
    x0, maskable = device_batch(r, 0)
    out = r.objective.forward(r, x0, maskable)
    assert torch.equal(out.top1_positions, maskable)  # supervised = the response; the prompt never scored
    assert 0 <= float(out.mask_ratio) <= 1
    res = train_run(cfg, tmp_path / "runs")
    assert res.status == "completed"
    assert read_run(res.run_dir).manifest["objective"]["name"] == "diffusion_gemma"


def test_sweep_params_objective_and_the_rho_axis():
    from dlm_triage.params import SweepParams

    p = SweepParams(objective="llada_sft", dataset="tiny-instruct", seq_len=48, ranks=[4], seeds=[7, 42])
    cfgs = p.to_spec().expand()
    assert len(cfgs) == 2 and {c.objective for c in cfgs} == {"llada_sft"}  # no rho axis: one run per rank x seed
    with pytest.raises(ValueError, match="mask_ratios=.* is the sweep axis of objective='paper'"):
        SweepParams(objective="mdlm", mask_ratios=[0.2, 0.4])
    mixed = SweepParams(families=["tiny", "diffusion_gemma"], ranks=[4], seeds=[7], mask_ratios=[0.5])
    assert {(c.family, c.objective) for c in mixed.to_spec().expand()} == {
        ("tiny", "paper"), ("diffusion_gemma", "diffusion_gemma")}  # unset: each family's default


# -- LLaDA2 block diffusion ------------------------------------------------------------------------------------

def test_block_diffusion_mask_matches_dfactory_definition_written_as_loops():
    length, bs = 6, 2
    keep = obj.block_diffusion_keep(length, bs)
    for q in range(2 * length):
        for k in range(2 * length):
            cq, ck = q >= length, k >= length
            bq, bk = (q - length * cq) // bs, (k - length * ck) // bs
            ref = (bq == bk and cq == ck) or (bq > bk and ck and not cq) or (bq >= bk and ck and cq)
            assert bool(keep[q, k]) == ref, (q, k)


def test_block_diffusion_noisy_block_sees_only_earlier_clean_blocks(tiny_model_dir, tmp_path):
    cfg = RunConfig(model_id=str(tiny_model_dir), batch_size=2, seq_len=16, device="cpu", save_adapter=False,
                    objective="llada2_sft", block_size=4, steps=2)
    r = train._setup(cfg)
    r.model.eval()
    x0, _ = device_batch(r, 0)
    noisy = x0.clone()
    noisy[:, ::3] = r.mask_id
    with torch.no_grad():
        base = r.objective.forward_logits(r, noisy, x0)
        x1 = x0.clone()
        x1[:, 5] = (x1[:, 5] + 1) % 40 + 3  # a clean token in block 1 (positions 4..7)
        moved = (r.objective.forward_logits(r, noisy, x1) - base).abs().amax(dim=(0, 2))
    assert base.shape[:2] == (2, 16)
    assert (moved[:8] == 0).all()  # blocks 0 and 1 never see clean block 1
    assert (moved[8:] > 0).all()   # blocks 2 and 3 do


def test_block_diffusion_trains_and_is_refused_where_it_does_not_apply(tiny_model_dir, tmp_path):
    cfg = RunConfig(model_id=str(tiny_model_dir), batch_size=2, seq_len=48, device="cpu", save_adapter=False,
                    objective="llada2_sft", dataset="tiny-instruct", block_size=8, steps=3)
    assert cfg.config_hash != cfg.replace(block_size=0).config_hash
    assert train_run(cfg, tmp_path).status == "completed"
    with pytest.raises(ConfigError, match="block_size=8 is LLaDA2's block-diffusion training"):
        RunConfig(objective="llada_sft", block_size=8)
    with pytest.raises(ObjectiveError, match="family 'dream' is not one of"):
        get_objective("llada2_sft").check(cfg.replace(family="dream"), families.get_family("dream"), None, 0)
