"""The diffusion_gemma family on transformers' own DiffusionGemma code (tiny checkpoint, always run, ~1 s to build).

Objective pieces are checked on hand-computed cases; the model-level tests go through the family's real load path
(`from_pretrained` of a checkpoint saved by `dlm_triage.tiny_diffusion_gemma`).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from dlm_triage import diffusion_gemma as dg
from dlm_triage.config import METHODS, RunConfig
from dlm_triage.families import get_family
from dlm_triage.families_diffusion_gemma import NO_MASK_TOKEN
from dlm_triage.peft_methods import adapter_matrices, apply_adapter
from dlm_triage.runlog import read_run
from dlm_triage.schema import MANIFEST_KEYS, OPTIONAL_MANIFEST_KEYS
from dlm_triage.tiny_diffusion_gemma import CANVAS_LENGTH, save_tiny_diffusion_gemma
from dlm_triage.train import train_run

# transformers 4.x has no DiffusionGemma (the adapter then raises a FamilyError naming the fix); every
# environment with the pinned transformers runs these tests.
pytest.importorskip("transformers.models.diffusion_gemma", reason="this transformers has no DiffusionGemma")

FAM = get_family("diffusion_gemma")


@pytest.fixture(scope="module")
def dg_dir(tmp_path_factory):
    return save_tiny_diffusion_gemma(tmp_path_factory.mktemp("tiny-dg"), seed=3)


def _cfg(dg_dir, **kw):
    base = dict(family="diffusion_gemma", model_id=str(dg_dir), steps=3, batch_size=2, seq_len=32, device="cpu",
                save_adapter=False)
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture()
def loaded(dg_dir):
    return FAM.load(_cfg(dg_dir), torch.device("cpu"), torch.float32)


def _ids(b=2, length=32, seed=0):
    return torch.randint(3, 80, (b, length), generator=torch.Generator().manual_seed(seed))


# -- corruption ---------------------------------------------------------------------------------------------

def test_corruption_replays_its_draws_and_never_touches_the_prompt():
    x0 = torch.arange(10, 22).reshape(2, 6)
    sup = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    c = dg.corrupt_uniform(x0, sup, 50, torch.Generator().manual_seed(5), eps=0.2)
    g = torch.Generator().manual_seed(5)  # the documented draw order: t [b], uniforms [b, L], tokens [b, L]
    t = 0.2 + 0.8 * torch.rand(2, generator=g)
    u = torch.rand(2, 6, generator=g)
    tok = torch.randint(0, 50, (2, 6), generator=g)
    assert torch.allclose(c.t, t)
    assert torch.equal(c.corrupted, (u < t[:, None]) & sup)
    assert torch.equal(c.noisy, torch.where(c.corrupted, tok, x0))
    assert not c.corrupted[~sup].any() and torch.equal(c.noisy[~sup], x0[~sup])


def test_corruption_level_and_replacement_tokens_are_uniform():
    # t ~ U(eps, 1): E[corrupted share] = (1 + eps) / 2; replacements uniform on [0, V) (chi-square, scipy)
    x0 = torch.zeros(4000, 16, dtype=torch.long)
    c = dg.corrupt_uniform(x0, None, 7, torch.Generator().manual_seed(0), eps=0.5)
    assert float(c.t.min()) >= 0.5 and float(c.t.max()) < 1.0
    assert stats.kstest(((c.t - 0.5) / 0.5).numpy(), "uniform").pvalue > 0.01
    assert c.corrupted.float().mean().item() == pytest.approx(0.75, abs=0.01)
    drawn = torch.where(c.corrupted, c.noisy, torch.full_like(x0, -1))
    counts = np.bincount(drawn[c.corrupted].numpy(), minlength=7)
    assert stats.chisquare(counts).pvalue > 0.01  # token 0 (the clean id) drawn as often as any other


def test_corruption_rejects_bad_input():
    with pytest.raises(ValueError, match="vocab_size"):
        dg.corrupt_uniform(torch.zeros(1, 4, dtype=torch.long), None, 1)
    with pytest.raises(ValueError, match="supervised has shape"):
        dg.corrupt_uniform(torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool), 9)


# -- canvas layout and masks ----------------------------------------------------------------------------------

def test_block_ids_and_block_causal_mask_by_hand():
    sup = torch.tensor([[0, 0, 1, 1, 1, 1]], dtype=torch.bool)  # prompt of 2, response of 4, blocks of 2
    ids = dg.canvas_block_ids(sup, 2)
    assert ids.tolist() == [[-1, -1, 0, 0, 1, 1]]
    m = dg.block_causal_masks(ids, 2, sliding_window=None, dtype=torch.float32)
    keep = (m["full_attention"][0, 0] == 0).int().tolist()
    #            encoder (clean) 0..5  | canvas 0..5
    assert keep == [
        [0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0],  # prompt rows see the prompt canvas only
        [0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0],  # block 0: the clean prompt, itself on the canvas
        [1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1],  # block 1: + clean block 0 (never its own clean tokens)
        [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1],
    ]
    assert torch.equal(m["full_attention"], m["sliding_attention"])
    assert float(m["full_attention"].min()) == torch.finfo(torch.float32).min
    # window 3: block 1's cache ends at 2 + 1*2 = 4, so it keeps encoder columns >= 4 - 3 + 1 = 2
    s = dg.block_causal_masks(ids, 2, sliding_window=3, dtype=torch.float32)["sliding_attention"]
    assert (s[0, 0, 4] == 0).int().tolist() == [0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1]
    assert (s[0, 0, 2] == 0).int().tolist() == keep[2]  # block 0: cache end 2, window reaches back to 0


def test_scored_block_is_one_response_block_per_row():
    sup = torch.tensor([[0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1], [0] * 7], dtype=torch.bool)
    ids = dg.canvas_block_ids(sup, 3)
    assert ids.tolist() == [[-1, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1, 2], [-1] * 7]
    seen = {0: set(), 1: set()}
    for seed in range(40):
        scored = dg.select_scored_block(ids, sup, torch.Generator().manual_seed(seed))
        for r in (0, 1):
            blocks = set(ids[r][scored[r]].tolist())
            assert len(blocks) == 1 and scored[r].sum() == (ids[r] == next(iter(blocks))).sum()
            seen[r] |= blocks
        assert not scored[2].any()  # no response, nothing scored
    assert seen == {0: {0, 1}, 1: {0, 1, 2}}


# -- losses ---------------------------------------------------------------------------------------------------

def test_diffusion_ce_by_hand():
    # V = 2, logits [a, 0]: CE(target 0) = log(1 + e^-a), CE(target 1) = log(1 + e^a); no 1/t weight
    logits = torch.tensor([[[2.0, 0.0], [0.0, 0.0], [1.0, 0.0]]])
    x0 = torch.tensor([[0, 1, 1]])
    scored = torch.tensor([[True, False, True]])
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(1))) / 2
    assert dg.diffusion_ce(logits, x0, scored).item() == pytest.approx(expected, rel=1e-6)
    assert dg.diffusion_ce(logits, x0, torch.zeros_like(scored)).item() == 0.0  # nothing scored


def test_encoder_ce_is_next_token_by_hand():
    # logits at i predict x0[i + 1]; pair (i, i+1) counts when both are valid
    logits = torch.tensor([[[3.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    x0 = torch.tensor([[1, 0, 1]])
    ce01 = math.log(1 + math.exp(-3))  # position 0 predicts x0[1] = 0 with logits [3, 0]
    ce12 = math.log(1 + math.exp(-1))  # position 1 predicts x0[2] = 1 with logits [0, 1]
    assert dg.encoder_ar_ce(logits, x0).item() == pytest.approx((ce01 + ce12) / 2, rel=1e-6)
    valid = torch.tensor([[True, True, False]])
    assert dg.encoder_ar_ce(logits, x0, valid).item() == pytest.approx(ce01, rel=1e-6)


# -- the real model -------------------------------------------------------------------------------------------

def test_loads_through_from_pretrained_with_a_shared_stack(loaded):
    from transformers import DiffusionGemmaForBlockDiffusion

    m = loaded.model
    assert isinstance(m, DiffusionGemmaForBlockDiffusion) and loaded.mask_token_id == NO_MASK_TOKEN
    assert loaded.family == "diffusion_gemma" and loaded.dtype == torch.float32
    assert m.config.canvas_length == CANVAS_LENGTH and m.config.text_config.num_experts == 2
    enc, dec = m.model.encoder.language_model.layers, m.model.decoder.layers
    for e, d in zip(enc, dec):
        assert e.self_attn.q_proj is d.self_attn.q_proj and e.mlp.down_proj is d.mlp.down_proj
        assert e.router.proj is d.router.proj
    names = [n for n, _ in m.named_modules()]
    assert not any(n.startswith("model.encoder.language_model.layers") and n.endswith("_proj") for n in names)
    # the tied copies were one Parameter before sharing: nothing was lost from the state dict's weights
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in {id(p): p for p in m.parameters()}.values())


def test_logits_shape_and_reference_forward(loaded):
    """Our forward (encoder once into a cache, decoder on it) equals transformers' own single call."""
    m, x = loaded.model.eval(), _ids()
    noisy = _ids(seed=1)
    sup = torch.ones_like(x, dtype=torch.bool)
    ids = dg.canvas_block_ids(sup, CANVAS_LENGTH)
    with torch.no_grad():
        ours = FAM.logits(m, noisy, clean_ids=x)
        from transformers import DynamicCache

        masks = dg.block_causal_masks(ids, CANVAS_LENGTH, sliding_window=m.config.text_config.sliding_window,
                                      dtype=torch.float32)
        ref = m(input_ids=x, **{dg._cache_kwarg(type(m).forward): DynamicCache()}, decoder_input_ids=noisy,
                decoder_attention_mask=masks, decoder_position_ids=torch.arange(32)[None].expand(2, 32)).logits
    assert ours.shape == (2, 32, m.config.text_config.vocab_size) and torch.isfinite(ours).all()
    torch.testing.assert_close(ours, ref)


def test_no_leakage_of_a_blocks_own_clean_tokens(loaded):
    """Changing a clean token in block k changes the canvas logits of later blocks only."""
    m, x, noisy = loaded.model.eval(), _ids(), _ids(seed=1)
    x2 = x.clone()
    x2[:, 2 * CANVAS_LENGTH + 3] = (x2[:, 2 * CANVAS_LENGTH + 3] + 1) % 80  # a token of block 2
    with torch.no_grad():
        a, b = FAM.logits(m, noisy, clean_ids=x), FAM.logits(m, noisy, clean_ids=x2)
    same = (a - b).abs().amax(dim=(0, 2)) < 1e-6  # per position
    assert same[: 3 * CANVAS_LENGTH].all() and not same[3 * CANVAS_LENGTH:].any()


def test_lora_wraps_only_the_decoder_attention_and_the_encoder_uses_it(loaded, dg_dir):
    m = loaded.model
    targets = FAM.attention_targets(m)
    assert targets == ("decoder.layers.0.self_attn.q_proj", "decoder.layers.0.self_attn.k_proj",
                       "decoder.layers.0.self_attn.v_proj", "decoder.layers.0.self_attn.o_proj",
                       "decoder.layers.1.self_attn.q_proj", "decoder.layers.1.self_attn.k_proj",
                       "decoder.layers.1.self_attn.o_proj")  # layer 1 is full attention: k_eq_v, no v_proj
    pm = apply_adapter(m, _cfg(dg_dir), targets)
    wrapped = sorted(n.removeprefix("base_model.model.") for n, mod in pm.named_modules() if hasattr(mod, "lora_A"))
    assert wrapped == sorted("model." + t for t in targets)  # no vision tower, router, MLP or expert
    base = pm.get_base_model()
    assert base.model.encoder.language_model.layers[1].self_attn.q_proj is base.model.decoder.layers[1].self_attn.q_proj
    names = [n for n, _ in adapter_matrices(pm)]
    assert len(names) == 14 and all(".decoder.layers." in n and "lora_" in n for n in names)


def test_loss_is_finite_and_the_encoder_ce_reaches_the_shared_adapter(loaded, dg_dir):
    pm = apply_adapter(loaded.model, _cfg(dg_dir), FAM.attention_targets(loaded.model))
    pm.train()
    out = FAM.training_loss(pm, _ids(), torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and out.loss.requires_grad
    assert out.logits.shape == (2, 32, pm.get_base_model().config.text_config.vocab_size)
    assert out.top1_positions.all() and 0 < out.n_masked <= 64 and out.mask_ratio == out.n_masked / 64
    assert out.loss.item() == pytest.approx((out.parts["diffusion_ce"] + out.parts["encoder_ce"]).item(), rel=1e-6)
    # the encoder CE alone backpropagates into the (decoder-registered) LoRA B: the encoder runs the adapter
    enc_only = dg.encoder_ar_ce(dg.canvas_forward(pm, _ids(), _ids(seed=1), dg.canvas_block_ids(
        torch.ones(2, 32, dtype=torch.bool), CANVAS_LENGTH), with_encoder_logits=True)[1], _ids())
    enc_only.backward()
    grads = {n: p.grad for n, p in adapter_matrices(pm)}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)


def test_self_conditioning_off_rows_equal_the_plain_pass(loaded):
    m, x = loaded.model.eval(), _ids()
    ids = dg.canvas_block_ids(torch.ones_like(x, dtype=torch.bool), CANVAS_LENGTH)
    noisy = _ids(seed=1)
    with torch.no_grad():
        plain, _ = dg.canvas_forward(m, x, noisy, ids)
        mixed, _ = dg.canvas_forward(m, x, noisy, ids, self_conditioning_mask=torch.tensor([False, True]))
    torch.testing.assert_close(mixed[0], plain[0])  # coin False: zero signal, the plain pass
    assert (mixed[1] - plain[1]).abs().max() > 1e-4  # coin True: conditioned on the first pass


def test_lora_run_trains_end_to_end_through_train_run(dg_dir, tmp_path):
    cfg = _cfg(dg_dir, steps=4, save_adapter=True, learning_rate=1e-2)
    res = train_run(cfg, tmp_path)
    assert res.status == "completed"
    rec = read_run(res.run_dir)
    steps, man = rec.steps, rec.manifest
    assert set(MANIFEST_KEYS) <= set(man) <= set(MANIFEST_KEYS) | set(OPTIONAL_MANIFEST_KEYS) and man["top1_source"] == "canvas" and man["config"]["family"] == "diffusion_gemma"
    assert steps.height == 5 and np.isfinite(steps["loss"].to_numpy()).all()
    assert np.isfinite(steps["grad_norm"].to_numpy()).all() and (steps["grad_norm"].to_numpy() > 0).all()
    top1 = steps["top1_freq"].to_numpy()
    assert np.isfinite(top1).all() and ((top1 > 0) & (top1 <= 1)).all()
    mat = np.array(steps["matrix_grad_norms"].to_list())
    assert mat.shape == (5, 14) and len(man["matrix_names"]) == 14
    np.testing.assert_allclose(np.linalg.norm(mat, axis=1), steps["grad_norm"].to_numpy(), rtol=1e-5)
    assert (steps["n_masked"].to_numpy() >= 0).all() and ((steps["mask_ratio"] >= 0) & (steps["mask_ratio"] <= 1)).all()
    assert (res.run_dir / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("method", [m for m in METHODS if m != "lora"])
def test_every_peft_method_trains_on_the_shared_stack(dg_dir, tmp_path, method):
    res = train_run(_cfg(dg_dir, steps=2, method=method), tmp_path)
    steps = read_run(res.run_dir).steps
    assert res.status == "completed" and np.isfinite(steps["loss"].to_numpy()).all()
    assert np.isfinite(steps["grad_norm"].to_numpy()).all() and (steps["grad_norm"].to_numpy() > 0).all()


def test_pissa_rewrites_the_shared_weights_once(dg_dir, tmp_path):
    """PiSSA leaves the model's function unchanged at init (W_res + BA = W): the same step-0 loss as LoRA, on the
    same draws. Two adapters on the tied encoder/decoder copies would factor the shared weight twice."""
    loss0 = {m: read_run(train_run(_cfg(dg_dir, steps=1, method=m), tmp_path / m).run_dir).steps["loss"][0]
             for m in ("lora", "pissa")}
    assert loss0["pissa"] == pytest.approx(loss0["lora"], rel=1e-5)


def test_training_loss_on_a_prompt_response_batch(loaded):
    """Prompt tokens are never corrupted nor scored; p = 0 gives the plain pass on the documented draws."""
    m, x = loaded.model.eval(), _ids()
    sup = torch.zeros_like(x, dtype=torch.bool)
    sup[0, 5:], sup[1, 11:] = True, True
    out = dg.training_loss(m, x, torch.Generator().manual_seed(4), supervised=sup, self_conditioning_p=0.0)
    g = torch.Generator().manual_seed(4)
    c = dg.corrupt_uniform(x, sup, m.config.text_config.vocab_size, g)  # first draws: the corruption
    ids = dg.canvas_block_ids(sup, CANVAS_LENGTH)
    scored = dg.select_scored_block(ids, sup, g)  # then the scored block
    assert not c.corrupted[~sup].any() and torch.equal(out.top1_positions, sup)
    assert out.n_masked == c.corrupted.sum() and out.mask_ratio == pytest.approx(c.corrupted.sum().item() / sup.sum().item())
    assert out.parts["self_conditioned"] == 0 and out.parts["n_scored"] == scored.sum()
    with torch.no_grad():
        plain, enc = dg.canvas_forward(m, x, c.noisy, ids, with_encoder_logits=True)
    torch.testing.assert_close(out.logits, plain)
    expected = dg.diffusion_ce(plain, x, scored) + dg.encoder_ar_ce(enc, x)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_an_untied_checkpoint_keeps_two_stacks_and_targets_both(tmp_path):
    from dlm_triage.tiny import CharTokenizer
    from dlm_triage.tiny_diffusion_gemma import build_tiny_diffusion_gemma_config
    from transformers import DiffusionGemmaForBlockDiffusion

    cfg = build_tiny_diffusion_gemma_config(CharTokenizer().vocab_size)
    cfg.tie_word_embeddings = False
    torch.manual_seed(0)
    DiffusionGemmaForBlockDiffusion(cfg).save_pretrained(tmp_path)
    CharTokenizer().save_pretrained(tmp_path)
    m = FAM.load(_cfg(tmp_path), torch.device("cpu"), torch.float32).model
    enc, dec = m.model.encoder.language_model.layers[0], m.model.decoder.layers[0]
    assert enc.self_attn.q_proj is not dec.self_attn.q_proj
    targets = FAM.attention_targets(m)
    assert len(targets) == 14 and "language_model.layers.0.self_attn.q_proj" in targets
