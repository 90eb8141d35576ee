"""NaRA: identity core and base-model function at init, noise dependence after training, save/load."""

from __future__ import annotations

import pytest
import torch

from adapter_loop import base_logits, seeded_tiny, train_adapter

from dlm_triage import nara
from dlm_triage.data import make_batches
from dlm_triage.peft_methods import adapter_matrices, load_adapter, save_adapter
from dlm_triage.tiny import load_tiny

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@pytest.fixture()
def setup(tiny_model_dir):
    return seeded_tiny(tiny_model_dir, method="nara", rank=4, batch_size=4, seq_len=16, nara_eta=0.1)


def test_core_is_identity_and_model_is_base_at_init(setup):
    cfg, model, tok = setup
    ids, base = base_logits(model, cfg, tok)
    nara.apply_nara(model, cfg, TARGETS)
    core = model.nara_core
    for lam in (0.0, 0.05, 0.5, 1.0):
        assert torch.equal(core.core(lam), torch.eye(cfg.rank))  # exactly I: last layer of F zero-initialised
    with torch.no_grad(), nara.noise_level(model, 0.3):
        assert torch.equal(model(input_ids=ids).logits, base)  # B = 0
    layers = [m for m in model.modules() if isinstance(m, nara.NaRALinear)]
    assert len(layers) == 4 * len(TARGETS)
    assert all(m._core is core for m in layers)  # ONE hypernetwork shared by all layers
    assert all(torch.count_nonzero(m.nara_B) == 0 for m in layers)
    assert not core.embed.W.requires_grad and core.embed.W.shape == (1, nara.FOURIER_DIM // 2)
    assert core.embed(torch.tensor(0.3)).shape == (1, nara.FOURIER_DIM)


def test_trainable_parameters_are_A_B_and_F(setup):
    cfg, model, _ = setup
    nara.apply_nara(model, cfg, TARGETS)
    names = [n for n, _ in adapter_matrices(model)]
    n_layers = 4 * len(TARGETS)
    assert sum(n.endswith("nara_A") for n in names) == n_layers
    assert sum(n.endswith("nara_B") for n in names) == n_layers
    f_names = [n for n in names if n.startswith("nara_core.F.")]
    assert len(f_names) == 6 and names[-6:] == f_names  # F once, after the layers
    assert len(names) == 2 * n_layers + 6
    last = model.nara_core.F[-1]
    assert last.out_features == cfg.rank**2 and model.nara_core.F[0].in_features == 64


def test_forward_needs_a_noise_level(setup):
    cfg, model, tok = setup
    nara.apply_nara(model, cfg, ("q_proj",))
    with pytest.raises(RuntimeError, match="set_noise_level"):
        model(input_ids=make_batches(cfg, tok).batch(0))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        nara.set_noise_level(model, 1.5)


def test_core_computed_once_per_forward(setup):
    cfg, model, tok = setup
    nara.apply_nara(model, cfg, TARGETS)
    calls = []
    model.nara_core.F.register_forward_hook(lambda *a: calls.append(1))
    nara.set_noise_level(model, 0.4)
    ids = make_batches(cfg, tok).batch(0)
    model(input_ids=ids)
    model(input_ids=ids)
    assert len(calls) == 2  # 16 wrapped layers, one C per forward


def _train(model, tok, cfg, rhos, steps=6):
    train_adapter(model, tok, cfg, rhos=rhos, steps=steps, lr=5e-3)


def test_core_depends_on_lambda_after_training(setup):
    cfg, model, tok = setup
    nara.apply_nara(model, cfg, TARGETS)
    _train(model, tok, cfg, rhos=(0.15, 0.85))
    core = model.nara_core
    with torch.no_grad():
        c_lo, c_hi = core.core(0.15), core.core(0.85)
    assert not torch.allclose(c_lo, torch.eye(cfg.rank))
    assert (c_lo - c_hi).abs().max() > 1e-6
    ids = make_batches(cfg, tok).batch(50)
    with torch.no_grad():
        with nara.noise_level(model, 0.15):
            out_lo = model(input_ids=ids).logits
        with nara.noise_level(model, 0.85):
            out_hi = model(input_ids=ids).logits
    assert not torch.allclose(out_lo, out_hi)


def test_save_load_round_trip(setup, tiny_model_dir, tmp_path):
    cfg, model, tok = setup
    nara.apply_nara(model, cfg, TARGETS)
    _train(model, tok, cfg, rhos=(0.3, 0.7), steps=3)
    model.eval()
    ids = make_batches(cfg, tok).batch(7)
    save_adapter(model, tmp_path / "a", cfg)
    assert {p.name for p in (tmp_path / "a").iterdir()} >= {nara.CONFIG_FILENAME, nara.WEIGHTS_FILENAME}
    fresh, _ = load_tiny(tiny_model_dir)
    torch.manual_seed(123)  # a different init must not matter: everything is loaded
    loaded = load_adapter(fresh, tmp_path / "a", cfg)
    for lam in (0.2, 0.9):
        with torch.no_grad(), nara.noise_level(model, lam), nara.noise_level(loaded, lam):
            assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)
