"""objective.py: masking (rates, >= 1 per row, protect, determinism) and the masked CE on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm_triage.config import NORMALISATIONS
from dlm_triage.objective import mask_tokens, masked_diffusion_loss

MASK_ID = 99


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# -- loss on a hand-computed case ------------------------------------------------------------------------

# b=2, L=3, V=2. Row 0 masks positions 0 and 2, row 1 masks position 1.
LOGITS = torch.tensor([
    [[2.0, 0.0], [5.0, -5.0], [0.0, 1.0]],
    [[0.0, 0.0], [1.0, 3.0], [-7.0, 7.0]],
])
TARGETS = torch.tensor([[0, 1, 0], [1, 0, 1]])
MASK = torch.tensor([[True, False, True], [False, True, False]])


def _ce(z_true, z_other):
    return -z_true + math.log(math.exp(z_true) + math.exp(z_other))


CE = [_ce(2.0, 0.0), _ce(0.0, 1.0), _ce(1.0, 3.0)]  # (row0,pos0), (row0,pos2), (row1,pos1)


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
