"""families.py: every adapter loaded through its real load() path on a tiny local model with the family's
module names and quirks (remote-code families via trust_remote_code from a saved dir; AR/MLM via native
transformers classes). Mask ids, targets, logit alignment, Dream's bool mask, MDLM's timesteps, LLaDA2's 4D mask.
"""

from __future__ import annotations

import copy

import pytest
import torch

from dlm_triage.config import FAMILIES, RunConfig
from dlm_triage.families import (
    FamilyError, LoadedModel, check_targets, get_family, module_matches, resolve_device, resolve_dtype,
)
from dlm_triage.objective import mask_tokens, masked_diffusion_loss
from tiny_families import build_family_dir, build_hf_dir

CPU = torch.device("cpu")
REMOTE_FAMILIES = ("llada", "llada2", "llada_moe", "dream", "mdlm")
HF_KINDS = {"gpt_neox": "ar", "qwen2": "ar", "llama": "ar", "bert": "generic_mlm"}
EXPECTED_MASK_ID = {"llada": 126336, "llada2": 156895, "dream": 151666, "mdlm": 50257, "llada_moe": 2}


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory):
    """Tiny saved checkpoints: remote-code families with oracle logits (scale 50), native AR/MLM models."""
    root = tmp_path_factory.mktemp("families")
    dirs = {fam: build_family_dir(fam, root, oracle_scale=50.0) for fam in REMOTE_FAMILIES}
    dirs.update({kind: build_hf_dir(kind, root) for kind in HF_KINDS})
    dirs["qwen2_with_mask"] = build_hf_dir("qwen2", root / "with_mask", with_mask=True)
    return dirs


@pytest.fixture(scope="session")
def loaded(family_dirs):
    out = {}
    for key, path in family_dirs.items():
        fam = HF_KINDS.get(key.replace("_with_mask", ""), key)
        out[key] = get_family(fam).load(RunConfig(family=fam, model_id=str(path)), CPU, torch.float32)
    return out


def _ids(b=2, length=10, seed=0):
    return torch.randint(5, 40, (b, length), generator=torch.Generator().manual_seed(seed))


# -- registry --------------------------------------------------------------------------------------------

def test_every_config_family_has_an_adapter():
    for name in FAMILIES:
        a = get_family(name)
        assert a.name == name and a.top1_source in ("clean", "masked", "canvas")
    assert get_family("mdlm").top1_source == "masked"
    assert {n for n in FAMILIES if get_family(n).top1_source == "clean"} >= {"tiny", "llada", "dream", "ar"}
    with pytest.raises(FamilyError, match="not known.*tiny"):
        get_family("gpt5")


def test_default_model_ids_and_auto_classes():
    assert get_family("llada").default_model_id == "GSAI-ML/LLaDA-8B-Instruct"
    assert (get_family("llada").auto_class, get_family("dream").auto_class) == ("AutoModel", "AutoModel")
    assert get_family("llada2").auto_class == "AutoModelForCausalLM"
    assert get_family("mdlm").auto_class == "AutoModelForMaskedLM"
    assert all(get_family(f).trust_remote_code for f in REMOTE_FAMILIES)


# -- loading through the real path ------------------------------------------------------------------------

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


# -- attention targets ------------------------------------------------------------------------------------

EXPECTED_TARGETS = {
    "llada": ("q_proj", "k_proj", "v_proj", "attn_out"),
    "llada2": ("attention.query_key_value", "attention.dense"),
    "llada_moe": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "dream": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mdlm": ("attn_qkv", "attn_out"),
    "gpt_neox": ("query_key_value", "attention.dense"),
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "bert": ("query", "key", "value", "attention.output.dense"),
}


@pytest.mark.parametrize("key", list(EXPECTED_TARGETS))
def test_attention_targets_are_explicit_and_match_only_attention(loaded, key):
    lm = loaded[key]
    adapter = get_family(HF_KINDS.get(key, key))
    targets = adapter.attention_targets(lm.model)
    assert targets == EXPECTED_TARGETS[key]
    matched = [n for n, m in lm.model.named_modules()
               if isinstance(m, torch.nn.Linear) and any(module_matches(n, t) for t in targets)]
    assert matched
    # never the LM head, the MLP, or a router
    for name in matched:
        leaf = name.rsplit(".", 1)[-1]
        assert leaf not in ("ff_out", "lm_head", "gate", "output_layer", "up_proj", "down_proj",
                            "dense_h_to_4h", "dense_4h_to_h"), name


def test_llada_ff_out_is_both_mlp_and_head_so_it_is_never_a_target(loaded):
    model = loaded["llada"].model
    ff_out = [n for n, _ in model.named_modules() if module_matches(n, "ff_out")]
    assert "model.transformer.ff_out" in ff_out and any(".blocks." in n for n in ff_out)
    assert "ff_out" not in get_family("llada").attention_targets(model)
    assert "o_proj" not in get_family("llada").attention_targets(model)


def test_a_target_that_matches_nothing_raises_with_the_fix(loaded):
    with pytest.raises(FamilyError, match=r"\['attn_out'\] match no linear module.*target_modules"):
        get_family("llada").attention_targets(loaded["dream"].model)
    with pytest.raises(FamilyError, match="model_type.*pass target_modules"):
        get_family("ar").attention_targets(loaded["llada"].model)
    assert check_targets(loaded["dream"].model, ("o_proj",), family="dream") == ("o_proj",)


def test_targets_wrap_with_peft(loaded):
    from peft import LoraConfig, get_peft_model

    for key in ("llada", "llada2", "llada_moe", "mdlm", "dream", "gpt_neox", "bert"):
        base = loaded[key].model
        targets = get_family(HF_KINDS.get(key, key)).attention_targets(base)
        model = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, lora_alpha=4, target_modules=list(targets)))
        wrapped = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")}
        assert wrapped == {t.rsplit(".", 1)[-1] for t in targets}, key
        # router and experts stay frozen
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in n for n in trainable)


# -- AR and generic MLM -----------------------------------------------------------------------------------

def test_ar_mask_id_choice(loaded):
    # mask token > pad > unk > eos; the embeddings are never resized
    assert loaded["qwen2_with_mask"].mask_token_id == loaded["qwen2_with_mask"].tokenizer.mask_token_id
    assert loaded["qwen2"].mask_token_id == loaded["qwen2"].tokenizer.pad_token_id
    neox = loaded["gpt_neox"]
    assert neox.tokenizer.pad_token_id is None and neox.mask_token_id == neox.tokenizer.unk_token_id


@pytest.mark.parametrize("key", ["gpt_neox", "qwen2", "llama"])
def test_ar_logits_are_shifted_to_predict_token_i(loaded, key):
    lm, adapter = loaded[key], get_family("ar")
    ids = _ids()
    with torch.no_grad():
        raw = lm.model(input_ids=ids).logits
        aligned = adapter.logits(lm.model, ids)
    assert torch.equal(aligned[:, 1:], raw[:, :-1])
    assert adapter.protected_positions(ids)[0]


def test_generic_mlm(loaded):
    lm = loaded["bert"]
    assert lm.mask_token_id == lm.tokenizer.mask_token_id
    assert get_family("generic_mlm").top1_source == "masked"


# -- one objective step through every family ----------------------------------------------------------------

@pytest.mark.parametrize("key", list(EXPECTED_TARGETS))
def test_masked_diffusion_step_is_finite_and_backpropagates(loaded, key):
    lm = loaded[key]
    adapter = get_family(HF_KINDS.get(key, key))
    ids = _ids(seed=3)
    noisy, mask = mask_tokens(ids, 0.5, lm.mask_token_id, torch.Generator().manual_seed(1),
                              protect=adapter.protected_positions(ids))
    lm.model.zero_grad(set_to_none=True)
    loss = masked_diffusion_loss(adapter.logits(lm.model, noisy), ids, mask)
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lm.model.parameters())
    lm.model.zero_grad(set_to_none=True)


# -- tiny ----------------------------------------------------------------------------------------------

def test_tiny_adapter_loads_the_cached_model(tiny_model_dir, monkeypatch):
    import dlm_triage.tiny as tiny

    adapter = get_family("tiny")
    lm = adapter.load(RunConfig(model_id=str(tiny_model_dir)), CPU, torch.float32)
    assert lm.mask_token_id == 1 == lm.tokenizer.mask_token_id
    assert adapter.attention_targets(lm.model) == ("q_proj", "k_proj", "v_proj", "o_proj")
    ids = torch.tensor([lm.tokenizer.encode("12-3=9. is the cat red?")])
    other = ids.clone()
    other[0, -1] = 5
    with torch.no_grad():
        a, b = adapter.logits(lm.model, ids), adapter.logits(lm.model, other)
    assert not torch.allclose(a[0, 0], b[0, 0])  # bidirectional through the adapter
    # model_id=None -> ensure_tiny_model() (the default cache); here pointed at the session's model
    monkeypatch.setattr(tiny, "ensure_tiny_model", lambda: tiny_model_dir)
    assert adapter.load(RunConfig(), CPU, torch.float32).model_id == str(tiny_model_dir)


def test_tiny_rejects_a_causal_checkpoint(tmp_path, tiny_model_dir):
    import json
    import shutil

    bad = tmp_path / "causal"
    shutil.copytree(tiny_model_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["is_causal"] = True
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="is_causal"):
        get_family("tiny").load(RunConfig(model_id=str(bad)), CPU, torch.float32)


def test_tiny_in_bf16_on_cpu_gives_a_float32_loss(tiny_model_dir):
    adapter = get_family("tiny")
    lm = adapter.load(RunConfig(model_id=str(tiny_model_dir), dtype="bfloat16"), CPU, resolve_dtype("bfloat16", CPU))
    ids = torch.tensor([lm.tokenizer.encode("12-3=9. is the cat red? yes.")])
    noisy, mask = mask_tokens(ids, 0.5, lm.mask_token_id, torch.Generator().manual_seed(0))
    logits = adapter.logits(lm.model, noisy)
    assert logits.dtype == torch.bfloat16
    loss = masked_diffusion_loss(logits, ids, mask)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


# -- load errors, devices, dtypes -----------------------------------------------------------------------------

def test_load_errors_name_the_model_and_the_fix(tmp_path, family_dirs):
    with pytest.raises(FamilyError, match="cannot load model_id=.*local directory"):
        get_family("dream").load(RunConfig(family="dream", model_id=str(tmp_path / "missing")), CPU, torch.float32)
    # a checkpoint of another family: LLaDA's mask id 126336 does not fit a 128-token vocabulary
    with pytest.raises(FamilyError, match="126336 is outside the vocabulary.*set family"):
        get_family("llada").load(RunConfig(family="llada", model_id=str(family_dirs["llada_moe"])), CPU,
                                 torch.float32)


def test_resolve_device_and_dtype():
    assert resolve_device("cpu") == CPU
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(FamilyError, match="float16"):
        resolve_dtype("float16", "cpu")
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
        expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        assert resolve_dtype("auto", "cuda") == expected
    else:
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(FamilyError, match="CUDA is not available.*'cpu'"):
            resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tiny_on_cuda_bf16(tiny_model_dir):
    device = resolve_device("auto")
    dtype = resolve_dtype("auto", device)
    adapter = get_family("tiny")
    lm = adapter.load(RunConfig(model_id=str(tiny_model_dir)), device, dtype)
    ids = torch.tensor([lm.tokenizer.encode("12-3=9. is the cat red? yes.")], device=device)
    noisy, mask = mask_tokens(ids, 0.5, lm.mask_token_id, torch.Generator(device=device).manual_seed(0))
    logits = adapter.logits(lm.model, noisy)
    assert logits.dtype == dtype
    loss = masked_diffusion_loss(logits, ids, mask)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
