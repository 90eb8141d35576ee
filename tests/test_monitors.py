"""monitors.py: the tensor monitors (grad norms, top-1 frequency) against direct computations. The series
monitors it re-exports are tested at their home, test_series.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dlm_triage import monitors as m


def _params_with_grads(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(shape, generator=g).to(dtype)) for shape in [(4, 8), (8,), (3, 5, 2)]]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g).to(dtype)
    ps.append(torch.nn.Parameter(torch.zeros(2)))  # no grad: counts as zero
    return ps


def test_global_grad_norm_equals_direct_computation():
    ps = _params_with_grads()
    direct = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in ps if p.grad is not None]))
    got = m.global_grad_norm(ps)
    assert got.dim() == 0 and got.dtype == torch.float32
    torch.testing.assert_close(got, direct, rtol=1e-6, atol=0)


def test_global_grad_norm_is_the_pre_clip_norm_clip_grad_norm_returns():
    ps = _params_with_grads(seed=3)
    ours = m.global_grad_norm(ps)
    pre = torch.nn.utils.clip_grad_norm_(ps, max_norm=1e-3)
    torch.testing.assert_close(ours, pre.float(), rtol=1e-6, atol=0)
    assert float(m.global_grad_norm(ps)) == pytest.approx(1e-3, rel=1e-4)  # clipped now


def test_global_grad_norm_bf16_accumulates_in_float32():
    ps = _params_with_grads(dtype=torch.bfloat16)
    direct = torch.linalg.vector_norm(torch.cat([p.grad.float().flatten() for p in ps if p.grad is not None]))
    torch.testing.assert_close(m.global_grad_norm(ps), direct, rtol=1e-5, atol=0)


def test_global_grad_norm_no_grads_is_zero():
    assert float(m.global_grad_norm([torch.nn.Parameter(torch.ones(3))])) == 0.0


def test_matrix_grad_norms_order_and_consistency():
    ps = _params_with_grads()
    named = [(f"p{i}", p) for i, p in enumerate(ps)]
    norms = m.matrix_grad_norms(named)
    expected = [float(torch.linalg.vector_norm(p.grad)) if p.grad is not None else 0.0 for p in ps]
    np.testing.assert_allclose(norms.numpy(), expected, rtol=1e-6)
    torch.testing.assert_close(torch.linalg.vector_norm(norms), m.global_grad_norm(ps), rtol=1e-6, atol=0)


def test_top1_frequency_hand_made_batch_pooled():
    V = 5
    # argmax tokens: row 0 -> [1, 1, 2, 3], row 1 -> [1, 4, 4, 0]
    arg = torch.tensor([[1, 1, 2, 3], [1, 4, 4, 0]])
    logits = torch.nn.functional.one_hot(arg, V).float() * 3.0
    every = torch.ones(2, 4, dtype=torch.bool)
    assert float(m.top1_frequency(logits, every)) == pytest.approx(3 / 8)  # token 1: 3 of 8 (pooled)
    sel = torch.tensor([[False, False, True, True], [False, True, True, False]])
    assert float(m.top1_frequency(logits, sel)) == pytest.approx(2 / 4)  # token 4: 2 of {2, 3, 4, 4}
    one = torch.tensor([[True, True, False, False], [False, False, False, False]])
    assert float(m.top1_frequency(logits, one)) == 1.0
    assert math.isnan(float(m.top1_frequency(logits, torch.zeros(2, 4, dtype=torch.bool))))
    with pytest.raises(ValueError, match=r"\[B, L, V\]"):
        m.top1_frequency(logits[0], every[0])
