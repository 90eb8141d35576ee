"""families_remote.py: the remote-code families (LLaDA, LLaDA2, LLaDA-MoE, Dream, MDLM), each loaded through its
real load() path (trust_remote_code from a saved tiny checkpoint with the family's module names and quirks, from
tests/tiny_families.py). Mask ids, logit alignment, Dream's bool mask, MDLM's timesteps, LLaDA2's 4D mask, the
stand-ins' quirks and the load errors. The registry, targets and the AR/MLM/tiny adapters: test_families.py."""

from __future__ import annotations

import pytest
import torch

from dlm_triage.config import RunConfig
from dlm_triage.families import FamilyError, LoadedModel, get_family
from dlm_triage.objective import mask_tokens
from dlm_triage.targets import module_matches
from tiny_families import build_family_dir

CPU = torch.device("cpu")
REMOTE_FAMILIES = ("llada", "llada2", "llada_moe", "dream", "mdlm")
EXPECTED_MASK_ID = {"llada": 126336, "llada2": 156895, "dream": 151666, "mdlm": 50257, "llada_moe": 2}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    """Tiny saved checkpoints of the remote-code families, with oracle logits (scale 50)."""
    root = tmp_path_factory.mktemp("remote_families")
    return {fam: build_family_dir(fam, root, oracle_scale=50.0) for fam in REMOTE_FAMILIES}


@pytest.fixture(scope="module")
def loaded(family_dirs):
    return {fam: get_family(fam).load(RunConfig(family=fam, model_id=str(path)), CPU, torch.float32)
            for fam, path in family_dirs.items()}


def _ids(b=2, length=10, seed=0):
    return torch.randint(5, 40, (b, length), generator=torch.Generator().manual_seed(seed))


def test_default_model_ids_and_auto_classes():
    assert get_family("llada").default_model_id == "GSAI-ML/LLaDA-8B-Instruct"
    assert (get_family("llada").auto_class, get_family("dream").auto_class) == ("AutoModel", "AutoModel")
    assert get_family("llada2").auto_class == "AutoModelForCausalLM"
    assert get_family("mdlm").auto_class == "AutoModelForMaskedLM"
    assert all(get_family(f).trust_remote_code for f in REMOTE_FAMILIES)



@pytest.mark.parametrize("family", REMOTE_FAMILIES)
def test_remote_code_families_load_through_trust_remote_code(loaded, family):
    lm = loaded[family]
    assert isinstance(lm, LoadedModel)
    # the class comes from the checkpoint dir's own code file (dynamic module), as with a hub checkpoint
    assert type(lm.model).__module__.startswith("transformers_modules.")
    assert lm.mask_token_id == EXPECTED_MASK_ID[family]
    assert lm.mask_token_id < lm.model.config.vocab_size
    assert lm.family == family and lm.tokenizer is not None



@pytest.mark.parametrize("family", REMOTE_FAMILIES)
def test_logits_are_aligned_so_position_i_predicts_token_i(loaded, family):
    # oracle_scale=50: each model "knows" the token it predicts, in its own convention (Dream: shifted)
    lm, adapter = loaded[family], get_family(family)
    ids = _ids()
    with torch.no_grad():
        logits = adapter.logits(lm.model, ids)
    assert logits.shape[:2] == ids.shape
    assert torch.equal(logits.argmax(-1)[:, 1:], ids[:, 1:])



def test_dream_raw_logits_are_right_shifted_and_position_0_is_protected(loaded):
    lm, adapter = loaded["dream"], get_family("dream")
    ids = _ids()
    with torch.no_grad():
        raw = lm.model(input_ids=ids).logits
    assert torch.equal(raw.argmax(-1)[:, :-1], ids[:, 1:])  # the logit at i-1 predicts token i
    protect = adapter.protected_positions(ids)
    assert protect.tolist() == [True] + [False] * (ids.shape[1] - 1)
    _, mask = mask_tokens(ids, 0.99, lm.mask_token_id, torch.Generator().manual_seed(0), protect=protect)
    assert not mask[:, 0].any()
    assert all(get_family(f).protected_positions(ids) is None for f in ("llada", "mdlm", "tiny", "llada2"))



def test_dream_attention_mask_must_be_bool_4d(loaded):
    lm, adapter = loaded["dream"], get_family("dream")
    ids = _ids()
    with pytest.raises(RuntimeError, match="bool"):
        lm.model(input_ids=ids, attention_mask=torch.ones_like(ids))  # a 2D long mask fails, like the real one
    keep = torch.ones_like(ids)
    bool4d = adapter.bool_attention_mask(keep)
    assert bool4d.dtype == torch.bool and bool4d.shape == (2, 1, 10, 10)
    with torch.no_grad():
        a = lm.model(input_ids=ids, attention_mask=bool4d).logits
        b = lm.model(input_ids=ids).logits  # what the adapter passes for packed batches: None
    assert torch.allclose(a, b, atol=1e-5)
    keep[0, -3:] = 0  # padding at the end of row 0: padded keys are not attended
    m = adapter.bool_attention_mask(keep)
    assert not m[0, 0, 0, -1] and m[0, 0, 0, 0] and m[1].all()
    assert adapter.forward_kwargs(lm.model, ids) == {"input_ids": ids, "use_cache": False}



def test_mdlm_needs_timesteps_ignores_them_unconditioned_and_never_predicts_the_mask(loaded):
    lm, adapter = loaded["mdlm"], get_family("mdlm")
    ids = _ids()
    with pytest.raises(TypeError):
        lm.model(input_ids=ids)  # forward(input_ids, timesteps): timesteps is required
    kw = adapter.forward_kwargs(lm.model, ids)
    assert torch.equal(kw["timesteps"], torch.zeros(2))
    with torch.no_grad():
        zero = adapter.logits(lm.model, ids)
        half = adapter.logits(lm.model, ids, timesteps=torch.full((2,), 0.5))
    # time_conditioning false (the OWT checkpoint): the backbone zeroes sigma, timesteps never reach the logits
    assert lm.model.config.time_conditioning is False and torch.equal(zero, half)
    assert (zero[..., 50257] == float("-inf")).all() and torch.isfinite(zero[..., :50257]).all()  # SUBS
    with pytest.raises(NotImplementedError):
        lm.model.get_input_embeddings()
    assert lm.model.get_output_embeddings() is None



def test_llada2_mask_none_under_sdpa_and_full_4d_under_eager(loaded):
    lm, adapter = loaded["llada2"], get_family("llada2")
    model = lm.model
    ids = _ids()
    other = ids.clone()
    other[:, -1] = (other[:, -1] + 1) % 30 + 5
    assert model.config._attn_implementation == "sdpa"
    assert adapter.attention_mask(model, ids) is None
    try:
        model.config._attn_implementation = "eager"
        mask = adapter.attention_mask(model, ids)
        assert mask.shape == (2, 1, 10, 10) and bool((mask == 1).all())
        with torch.no_grad():
            # under eager the (mimicked) modeling file makes None causal: position 0 cannot see the last token
            causal_a, causal_b = model(input_ids=ids).logits, model(input_ids=other).logits
            bi_a, bi_b = adapter.logits(model, ids), adapter.logits(model, other)
    finally:
        model.config._attn_implementation = "sdpa"
    assert torch.allclose(causal_a[:, 0], causal_b[:, 0])
    assert not torch.allclose(bi_a[:, 0], bi_b[:, 0])
    with torch.no_grad():  # under sdpa None is already bidirectional
        assert not torch.allclose(adapter.logits(model, ids)[:, 0], adapter.logits(model, other)[:, 0])



def test_stand_in_quirks_are_those_of_the_published_files(loaded, family_dirs):
    from dlm_triage import remote_code

    ids = _ids()
    llada = loaded["llada"]
    with pytest.raises(AttributeError, match="use_cache"):
        llada.model(input_ids=ids)  # reads config.use_cache, which the config lacks: the adapter passes False
    assert llada.tokenizer.mask_token is None and llada.tokenizer.pad_token_id == llada.tokenizer.eos_token_id
    assert loaded["llada_moe"].tokenizer.mask_token is None  # its mask id comes from '<|mask|>'
    dream = loaded["dream"]
    with torch.no_grad():
        assert dream.model(input_ids=ids).past_key_values is not None  # use_cache: true in its config
        kw = get_family("dream").forward_kwargs(dream.model, ids)
        assert dream.model(**kw).past_key_values is None
    for fam in ("dream", "llada2", "llada_moe"):  # rotary buffers: what the constructor's formula gives
        mods = remote_code.rotary_modules(loaded[fam].model)
        assert mods and all(torch.equal(m.inv_freq, remote_code.expected_inv_freq(m)) for _, m in mods), fam
    cuda = torch.backends.cuda
    cuda.enable_mem_efficient_sdp(True)
    get_family("llada").load(RunConfig(family="llada", model_id=str(family_dirs["llada"])), CPU, torch.float32)
    assert cuda.mem_efficient_sdp_enabled()  # the stand-in's constructor turned it off; the adapter restored it



def test_no_family_passes_labels_or_reads_a_model_loss(loaded):
    # the stand-ins raise on labels=, so every adapter forward above already proved this; check one directly
    lm = loaded["llada"]
    with pytest.raises(TypeError, match="labels"):
        lm.model(input_ids=_ids(), labels=_ids())



def test_llada_ff_out_is_both_mlp_and_head_so_it_is_never_a_target(loaded):
    model = loaded["llada"].model
    ff_out = [n for n, _ in model.named_modules() if module_matches(n, "ff_out")]
    assert "model.transformer.ff_out" in ff_out and any(".blocks." in n for n in ff_out)
    assert "ff_out" not in get_family("llada").attention_targets(model)
    assert "o_proj" not in get_family("llada").attention_targets(model)



def test_load_errors_name_the_model_and_the_fix(tmp_path, family_dirs):
    with pytest.raises(FamilyError, match="cannot load model_id=.*local directory"):
        get_family("dream").load(RunConfig(family="dream", model_id=str(tmp_path / "missing")), CPU, torch.float32)
    # a checkpoint of another family: LLaDA's mask id 126336 does not fit a 128-token vocabulary
    with pytest.raises(FamilyError, match="126336 is outside the vocabulary.*set family"):
        get_family("llada").load(RunConfig(family="llada", model_id=str(family_dirs["llada_moe"])), CPU,
                                 torch.float32)
