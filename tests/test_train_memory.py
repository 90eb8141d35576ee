"""Gradient accumulation and gradient checkpointing in train_run (tiny family and the remote-code stand-ins).

Accumulation rule under test (train.py docstring): k micro-batches of b sequences give the gradient of ONE batch
of k*b under cfg.normalisation, so the two runs agree up to float32 rounding. Tolerance: both arms sum the same
per-token CE gradients in a different order; float32 reassociation of n terms is bounded by ~n * eps * sum|g|,
which for these sizes (<= 256 masked tokens) stays under rtol 1e-5 of the norm; the plain mean of the
micro-batch means (the rule a naive trainer applies) is shown to miss by far more than that.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dlm_triage import resident, train
from dlm_triage.config import RunConfig
from dlm_triage.families import FamilyError
from dlm_triage.runlog import read_run
from tiny_families import build_family_dir

EPS32 = float(torch.finfo(torch.float32).eps)
VALUES = ("loss", "grad_norm", "top1_freq", "mask_ratio")


def cfg_of(model_dir, **kw):
    base = dict(model_id=str(model_dir), steps=4, batch_size=4, seq_len=16, device="cpu", save_adapter=False,
                top1_every=1)
    base.update(kw)
    return RunConfig(**base)


def step0_grads(cfg):
    r = train._setup(cfg)
    try:
        row = train.train_step(r, 0)
        grads = [p.grad.detach().clone() for p in r.params]
        return row, grads
    finally:
        r.lease.release(r.model)


def flat(grads):
    return torch.cat([g.flatten() for g in grads])


@pytest.mark.parametrize("normalisation", ["per_masked_token", "per_token", "per_token_over_p"])
@pytest.mark.parametrize("k,b", [(2, 2), (4, 1)])
def test_k_micro_batches_give_the_gradient_of_one_batch_of_k_times_b(tiny_model_dir, normalisation, k, b):
    big_row, big = step0_grads(cfg_of(tiny_model_dir, batch_size=k * b, normalisation=normalisation))
    acc_row, acc = step0_grads(cfg_of(tiny_model_dir, batch_size=b, grad_accum_steps=k, normalisation=normalisation))
    g_big, g_acc = flat(big), flat(acc)
    tol = 1e-5 * float(g_big.norm())
    assert float((g_acc - g_big).norm()) <= tol
    assert acc_row["grad_norm"] == pytest.approx(big_row["grad_norm"], rel=1e-5)
    np.testing.assert_allclose(acc_row["matrix_grad_norms"], big_row["matrix_grad_norms"], rtol=1e-4, atol=1e-9)
    # the logged loss is the effective batch's loss; masks are the same draws, so counts match exactly
    assert acc_row["loss"] == pytest.approx(big_row["loss"], rel=1e-6)
    assert acc_row["n_masked"] == big_row["n_masked"] and acc_row["mask_ratio"] == pytest.approx(big_row["mask_ratio"])
    assert acc_row["top1_freq"] == pytest.approx(big_row["top1_freq"])  # clean top-1 pooled over micro-batches


def test_a_plain_mean_of_micro_batch_means_would_be_detected(tiny_model_dir):
    """The tolerance above separates the rule from the naive one: per-micro-batch per_masked_token means
    averaged with equal weights give another gradient whenever the masked counts differ."""
    cfg = cfg_of(tiny_model_dir, batch_size=2, grad_accum_steps=2)
    grads, counts = {}, None
    for rule in ("naive", "ours"):
        r = train._setup(cfg)  # the same draws for both rules
        try:
            outs = []
            for j in range(2):
                x0, m = train.device_batch(r, j)
                out = r.objective.forward(r, x0, m)
                outs.append((out, r.objective.normaliser(cfg, out, m)))
                (out.loss * 0.5).backward() if rule == "naive" else None
            if rule == "ours":
                total = sum(float(d) for _, d in outs)
                for out, d in outs:
                    (out.loss * (d / total)).backward()
            counts = [int(out.mask.sum()) for out, _ in outs]
            # closed form: the paper's per_masked_token normaliser is the masked count
            assert [float(d) for _, d in outs] == counts
            grads[rule] = flat([p.grad.clone() for p in r.params])
        finally:
            r.lease.release(r.model)
    assert counts[0] != counts[1]  # else the two rules coincide and this test says nothing
    _, big = step0_grads(cfg_of(tiny_model_dir, batch_size=4))
    g_big = flat(big)
    tol = 1e-5 * float(g_big.norm())
    assert float((grads["ours"] - g_big).norm()) <= tol
    assert float((grads["naive"] - g_big).norm()) > 100 * tol


def test_accumulated_run_logs_one_row_per_optimizer_step_like_the_big_batch_run(tiny_model_dir, tmp_path):
    big = train.train_run(cfg_of(tiny_model_dir, batch_size=4), tmp_path / "big")
    acc = train.train_run(cfg_of(tiny_model_dir, batch_size=2, grad_accum_steps=2), tmp_path / "acc")
    a, b = read_run(acc.run_dir), read_run(big.run_dir)
    assert a.steps.height == b.steps.height == 5 and a.steps["step"].to_list() == list(range(5))
    assert a.steps["n_masked"].to_list() == b.steps["n_masked"].to_list()
    for col in VALUES:  # trajectories agree to rounding over the 4 updates (Adam amplifies rounding a little)
        np.testing.assert_allclose(a.steps[col].to_numpy(), b.steps[col].to_numpy(), rtol=2e-4, err_msg=col)
    assert a.manifest["monitor_overhead"]["grad_accum_steps"] == 2
    assert a.manifest["config"]["grad_accum_steps"] == 2 and acc.run_id != big.run_id


def test_masked_top1_source_pools_micro_batches(tmp_path_factory):
    # MDLM reads top-1 at the masked positions of the training logits (no dropout in the stand-in, so the
    # micro-batch forwards compute exactly what the big batch's does)
    mdlm = build_family_dir("mdlm", tmp_path_factory.mktemp("mdlm"))
    kw = dict(family="mdlm", steps=1)
    big_row, big = step0_grads(cfg_of(mdlm, batch_size=4, **kw))
    acc_row, acc = step0_grads(cfg_of(mdlm, batch_size=1, grad_accum_steps=4, **kw))
    assert acc_row["top1_freq"] == pytest.approx(big_row["top1_freq"])
    assert 0 < acc_row["top1_freq"] <= 1
    assert float((flat(acc) - flat(big)).norm()) <= 1e-5 * float(flat(big).norm())


# -- gradient checkpointing --------------------------------------------------------------------------------------

def _count_block_calls(r, suffix):
    calls = []
    block = next(m for n, m in r.model.named_modules() if n.endswith(suffix))
    # the first module inside the layer, by a PRE-hook: HF keeps the layer's own hooks outside the checkpoint,
    # and the recomputation stops early once it has what the backward needs (a post-hook may never run)
    handle = block.register_forward_pre_hook(lambda *a: calls.append(1))
    return calls, handle


@pytest.fixture(scope="module")
def llada_dir(tmp_path_factory):
    return build_family_dir("llada", tmp_path_factory.mktemp("llada"))


@pytest.mark.parametrize("family,block", [("tiny", "layers.0.input_layernorm"), ("llada", "blocks.0.attn_norm")])
def test_checkpointing_recomputes_each_layer_and_changes_no_number(tiny_model_dir, llada_dir, family, block):
    model_dir = tiny_model_dir if family == "tiny" else llada_dir
    rows, calls = {}, {}
    for gc in (False, True):
        r = train._setup(cfg_of(model_dir, family=family, batch_size=2, gradient_checkpointing=gc, top1_every=10**6))
        try:
            assert r.checkpointing == (None if not gc else "hf" if family == "tiny" else "llada_activation_checkpointing")
            c, h = _count_block_calls(r, block)
            row = train.train_step(r, 0)
            h.remove()
            calls[gc] = len(c) - 1  # minus the clean-batch top-1 forward at step 0 (no grad: no recompute)
            rows[gc] = (row, flat([p.grad.clone() for p in r.params]))
        finally:
            r.lease.release(r.model)
    assert calls == {False: 1, True: 2}  # forward once, then once more in the backward
    assert rows[True][0]["loss"] == rows[False][0]["loss"]
    torch.testing.assert_close(rows[True][1], rows[False][1], rtol=1e-6, atol=0)


def test_llada_uses_its_own_checkpointing_because_the_hf_api_raises(llada_dir):
    from dlm_triage.families import get_family

    fam = get_family("llada")
    loaded = fam.load(cfg_of(llada_dir, family="llada"), torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError, match="does not support"):
        loaded.model.gradient_checkpointing_enable()
    assert fam.set_gradient_checkpointing(loaded.model, True) == "llada_activation_checkpointing"
    assert loaded.model.model.activation_checkpointing_strategy == "whole_layer"
    assert fam.set_gradient_checkpointing(loaded.model, False) is None
    assert loaded.model.model.activation_checkpointing_strategy is None


def test_checkpointing_is_off_again_on_the_resident_base_after_the_run(tiny_model_dir, tmp_path):
    resident.clear()
    train.train_run(cfg_of(tiny_model_dir, steps=1, gradient_checkpointing=True), tmp_path)
    (key,) = resident.resident_keys()
    base = resident._entries[key].loaded.model
    assert not any(getattr(m, "gradient_checkpointing", False) for m in base.modules())
    assert not getattr(base, "_require_grads_hooks", None) and not hasattr(base, "_require_grads_hook")


def test_a_family_without_checkpointing_fails_before_training_with_the_fix(tmp_path_factory, tmp_path):
    mdlm = build_family_dir("mdlm", tmp_path_factory.mktemp("mdlm"))
    cfg = cfg_of(mdlm, family="mdlm", gradient_checkpointing=True)
    with pytest.raises(FamilyError, match=r"family 'mdlm'.*gradient_checkpointing=false"):
        train.train_run(cfg, tmp_path)
    assert not (tmp_path / cfg.run_id).exists()


def test_nara_trains_under_checkpointing(tiny_model_dir):
    out = {}
    for gc in (False, True):
        row, grads = step0_grads(cfg_of(tiny_model_dir, method="nara", gradient_checkpointing=gc))
        out[gc] = (row["loss"], flat(grads))
    assert out[True][0] == out[False][0] and math.isfinite(out[True][0])
    torch.testing.assert_close(out[True][1], out[False][1], rtol=1e-6, atol=0)


def test_a_family_with_its_own_objective_accumulates_too(tmp_path):
    """DiffusionGemma's own loss: micro-batch losses enter with weight 1/k; one row per optimizer step, the
    masked count pooled."""
    pytest.importorskip("transformers.models.diffusion_gemma", reason="this transformers has no DiffusionGemma")
    from dlm_triage.tiny_diffusion_gemma import save_tiny_diffusion_gemma

    dg = save_tiny_diffusion_gemma(tmp_path / "dg", seed=3)
    cfg = cfg_of(dg, family="diffusion_gemma", batch_size=1, grad_accum_steps=2, seq_len=32, steps=2)
    res = train.train_run(cfg, tmp_path / "runs")
    steps = read_run(res.run_dir).steps
    assert res.status == "completed" and steps.height == 3
    assert np.isfinite(steps["loss"].to_numpy()).all() and (steps["n_masked"].to_numpy() >= 0).all()
    assert ((steps["mask_ratio"].to_numpy() >= 0) & (steps["mask_ratio"].to_numpy() <= 1)).all()
