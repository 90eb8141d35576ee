"""families.py: the registry, attention targets of every family (remote-code families via trust_remote_code from
a saved dir; AR/MLM via native transformers classes), the AR/MLM and tiny adapters, one objective step through
each family, devices and dtypes. The remote-code adapters' own quirks and load errors: test_families_remote.py.
"""

from __future__ import annotations

import copy

import pytest
import torch

from dlm_triage.config import FAMILIES, RunConfig
from dlm_triage.families import (
    FamilyError, check_targets, get_family, module_matches, resolve_device, resolve_dtype,
)
from dlm_triage.objective import mask_tokens, masked_diffusion_loss
from tiny_families import build_family_dir, build_hf_dir

CPU = torch.device("cpu")
REMOTE_FAMILIES = ("llada", "llada2", "llada_moe", "dream", "mdlm")
HF_KINDS = {"gpt_neox": "ar", "qwen2": "ar", "llama": "ar", "bert": "generic_mlm"}


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


# -- devices, dtypes ---------------------------------------------------------------------------------------------

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
