"""Every adapter method on the tiny model: wraps exactly the targets, trains, saves and loads back."""

from __future__ import annotations

import math

import pytest
import torch

from adapter_loop import seeded_tiny, train_adapter

from dlm_triage.config import RunConfig
from dlm_triage.data import make_batches
from dlm_triage.peft_methods import (
    AdapterTargetError,
    adapter_matrices,
    apply_adapter,
    load_adapter,
    noise_level,
    save_adapter,
)
from dlm_triage.tiny import load_tiny

TARGETS = ("q_proj", "v_proj")
METHODS = ("lora", "rslora", "dora", "pissa", "nara", "lora_diffusion")


def fresh_base(tiny_model_dir):
    model, tok = load_tiny(tiny_model_dir)
    return model, tok


def forward(model, ids, rho=0.5):
    model.eval()
    with torch.no_grad():
        with noise_level(model, rho):
            return model(input_ids=ids).logits


def train_a_few_steps(model, tok, cfg, n=3):
    model.train()
    return train_adapter(model, tok, cfg, rhos=(cfg.mask_ratio,), steps=n, lr=1e-2)


@pytest.mark.parametrize("method", METHODS)
def test_method_trains_saves_and_loads(tiny_model_dir, tmp_path, method):
    cfg, base, tok = seeded_tiny(tiny_model_dir, method=method, rank=4, batch_size=2, seq_len=16)
    ids = make_batches(cfg, tok).batch(99)
    base_out = forward(base, ids)

    model = apply_adapter(base, cfg, TARGETS)
    named = adapter_matrices(model)
    assert named and all(p.requires_grad for _, p in named)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n_trainable == sum(p.numel() for _, p in named)
    # only adapter tensors train: the targets' base weights are frozen
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any("q_proj" in n for n in frozen) and not any("k_proj" in n and p.requires_grad
                                                           for n, p in model.named_parameters())
    # at init the adapted model computes the base model's function (B = 0; PiSSA: W_res + B A = W)
    torch.testing.assert_close(forward(model, ids), base_out, rtol=1e-4, atol=1e-4)

    before = {n: p.detach().clone() for n, p in named}
    loss = train_a_few_steps(model, tok, cfg)
    assert math.isfinite(loss)
    assert any(not torch.equal(before[n], p) for n, p in named), "no adapter tensor moved"
    trained_out = forward(model, ids)

    path = save_adapter(model, tmp_path / "adapter", cfg)
    assert (path / "adapter_model.safetensors").is_file()
    base2, _ = fresh_base(tiny_model_dir)
    loaded = load_adapter(base2, path, cfg)
    torch.testing.assert_close(forward(loaded, ids), trained_out, rtol=1e-5, atol=1e-5)


def test_rslora_and_per_rank_alpha_scales(tiny_model_dir):
    base, _ = fresh_base(tiny_model_dir)
    cfg = RunConfig(model_id=str(tiny_model_dir), method="rslora", rank=4, alpha=8.0)
    m = apply_adapter(base, cfg, ("q_proj",))
    layer = m.get_submodule("base_model.model.model.layers.0.self_attn.q_proj")
    assert layer.scaling["default"] == pytest.approx(8.0 / math.sqrt(4))
    base, _ = fresh_base(tiny_model_dir)
    cfg = RunConfig(model_id=str(tiny_model_dir), method="lora", rank=4, alpha=2.0, alpha_convention="per_rank")
    m = apply_adapter(base, cfg, ("q_proj",))
    layer = m.get_submodule("base_model.model.model.layers.0.self_attn.q_proj")
    assert layer.scaling["default"] == pytest.approx(2.0)  # effective alpha = 2*4, / r = 2


@pytest.mark.parametrize("method", ["lora", "nara", "lora_diffusion"])
def test_target_mismatch_fails_loudly(tiny_model_dir, method):
    base, _ = fresh_base(tiny_model_dir)
    cfg = RunConfig(model_id=str(tiny_model_dir), method=method)
    with pytest.raises(AdapterTargetError) as e:
        apply_adapter(base, cfg, ("q_proj", "attn_out"))  # LLaDA's name: not in a Llama
    msg = str(e.value)
    assert "['attn_out']" in msg and "o_proj" in msg and "q_proj" in msg  # names the miss, lists the options


def test_adapter_matrices_order_is_stable(tiny_model_dir):
    cfg = RunConfig(model_id=str(tiny_model_dir), method="dora", rank=2)
    names = []
    for _ in range(2):
        base, _ = fresh_base(tiny_model_dir)
        names.append([n for n, _ in adapter_matrices(apply_adapter(base, cfg, TARGETS))])
    assert names[0] == names[1]
    assert names[0][0].endswith("layers.0.self_attn.q_proj.lora_A.default.weight")
    assert any("lora_magnitude_vector" in n for n in names[0])
