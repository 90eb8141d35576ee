"""Tiny random-init checkpoints built from a family's *published* modeling files, read at run time.

`$DLM_TRIAGE_REMOTE_CODE/<family>/` holds the family's own .py files (and its config.json where one was published;
scripts/extract_remote_code.py writes that layout from public git mirrors). Nothing of them lives in this
repository. `build_checkpoint(family, out)` writes a loadable checkpoint directory:

- the published .py files, copied unchanged;
- config.json: the published config.json when there is one (its real architecture keys), else the keys the
  configuration class reads, with the sizes shrunk (`TINY`) and the vocabulary kept large enough for the
  family's mask id (the id itself is never moved);
- model.safetensors: random weights (seeded) for every parameter and persistent buffer of the real class;
- a tokenizer with the family's real special-token facts (`TOKENIZER_FACTS`: LLaDA has no mask token and
  pad = eos; LLaDA-MoE's `<|mask|>` sits at 156895; ...) over a character vocabulary.

The weights are produced by instantiating the real class through `dlm_triage.remote_code` (the same compat
layer the adapters use; without it, transformers 5 cannot construct Dream/LLaDA2/LLaDA-MoE at all).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

ENV = "DLM_TRIAGE_REMOTE_CODE"
CHARS = " abcdefghijklmnopqrstuvwxyz0123456789.,+-=<>?'\n"

# Architecture values per family. Sizes are tiny; vocabularies keep each family's real mask id valid.
TINY: dict[str, dict] = {
    "llada": dict(d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, mlp_hidden_size=64, max_sequence_length=64),
    "dream": dict(
        # no published config.json was found: model_type / auto_map / ids are the Dream-v0 facts; sizes tiny
        model_type="Dream", architectures=["DreamModel"],
        auto_map={"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        vocab_size=151680, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rope_theta=1000000.0, rms_norm_eps=1e-6,
        hidden_act="silu", tie_word_embeddings=False, use_cache=True, use_sliding_window=False,
        mask_token_id=151666, pad_token_id=151643, bos_token_id=151643, eos_token_id=151643,
        attention_dropout=0.0, torch_dtype="bfloat16",
    ),
    "llada2": dict(
        model_type="llada2_moe", num_hidden_layers=2, hidden_size=32, intermediate_size=64,
        moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2, num_shared_experts=1, n_group=2,
        topk_group=1, num_attention_heads=4, num_key_value_heads=2, head_dim=8, rotary_dim=4,
        first_k_dense_replace=1, max_position_embeddings=64,
    ),
    "llada_moe": dict(
        # no published config.json was found: the keys are those configuration_lladamoe.LLaDAConfig reads
        model_type="llada", architectures=["LLaDAMoEModelLM"],
        auto_map={"AutoConfig": "configuration_lladamoe.LLaDAConfig", "AutoModel": "modeling_lladamoe.LLaDAMoEModelLM"},
        vocab_size=157184, hidden_size=32, dense_intermediate_size=64, expert_intermediate_size=16,
        shared_expert_intermediate_size=None, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=64, rope_theta=50000.0, partial_rotary_factor=1.0, num_experts=4,
        num_experts_per_tok=2, moe_layer_freq=[0, 1], qk_layernorm=True, moe_router_enable_expert_bias=False,
        moe_router_score_function="softmax", norm_topk_prob=False, use_cache=False, pad_token_id=156892,
        eos_token_id=156892, tie_word_embeddings=False,
    ),
    "mdlm": dict(
        model_type="mdlm", architectures=["MDLM"],
        auto_map={"AutoConfig": "configuration_mdlm.MDLMConfig", "AutoModelForMaskedLM": "modeling_mdlm.MDLM"},
        vocab_size=50258, model_length=64, hidden_dim=32, cond_dim=16, n_blocks=2, n_heads=4, dropout=0.0,
        time_conditioning=False,
    ),
}
CODE_FILES = {
    "llada": ("modeling_llada.py", "configuration_llada.py"),
    "dream": ("modeling_dream.py", "configuration_dream.py", "generation_utils.py"),
    "llada2": ("modeling_llada2_moe.py", "configuration_llada2_moe.py"),
    "llada_moe": ("modeling_lladamoe.py", "configuration_lladamoe.py"),
    "mdlm": ("modeling_mdlm.py", "configuration_mdlm.py"),
}
# (eos, pad, mask token or None, extra specials {token: id}) -- the published tokenizers' facts
TOKENIZER_FACTS = {
    "llada": ("<|endoftext|>", "<|endoftext|>", None, {"<|endoftext|>": 126081, "<|mdm_mask|>": 126336}),
    "dream": ("<|endoftext|>", "<|endoftext|>", "<|mask|>", {"<|endoftext|>": 151643, "<|mask|>": 151666}),
    "llada2": ("<|endoftext|>", "<|endoftext|>", None, {"<|endoftext|>": 156892, "<|mask|>": 156895}),
    "llada_moe": ("<|endoftext|>", "<|endoftext|>", None, {"<|endoftext|>": 156892, "<|mask|>": 156895}),
    "mdlm": ("<|endoftext|>", None, None, {"<|endoftext|>": 50256}),
}


def remote_code_dir(family: str) -> Path | None:
    """$DLM_TRIAGE_REMOTE_CODE/<family> when it holds the family's code files, else None."""
    root = os.environ.get(ENV)
    if not root:
        return None
    d = Path(root) / family
    return d if all((d / f).is_file() for f in CODE_FILES[family]) else None


def skip_reason(family: str) -> str:
    root = os.environ.get(ENV)
    if not root:
        return (f"{ENV} is not set: point it at a directory holding <family>/ with the published modeling files "
                "(scripts/extract_remote_code.py writes it from public git mirrors)")
    missing = [f for f in CODE_FILES[family] if not (Path(root) / family / f).is_file()]
    return f"{ENV}={root}: {family}/ lacks {missing}"


def tiny_config(family: str, src: Path) -> dict:
    base = json.loads((src / "config.json").read_text()) if (src / "config.json").is_file() else {}
    base.update(TINY[family])
    return base


def save_tokenizer(family: str, out: Path) -> None:
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    eos, pad, mask, specials = TOKENIZER_FACTS[family]
    vocab = {"[UNK]": 0, **{c: i + 1 for i, c in enumerate(CHARS)}, **specials}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]")),
                                  unk_token="[UNK]", eos_token=eos, **({"pad_token": pad} if pad else {}),
                                  **({"mask_token": mask} if mask else {}))
    tok.add_special_tokens({"additional_special_tokens": [s for s in specials if s not in (eos, pad, mask)]})
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # 4.57 lists every id of the sparse vocabulary's gap in a warning
    try:
        tok.save_pretrained(out)
    finally:
        hf_logging.set_verbosity(level)


def save_dream_tokenizer(out: Path) -> None:
    """Files for the published remote *slow* tokenizer (tokenization_dream.DreamTokenizer, byte-level BPE):
    a character vocab.json, an empty merges.txt, and its specials at their real ids."""
    eos, _, mask, ids = TOKENIZER_FACTS["dream"]
    byte_level = {" ": "\u0120", "\n": "\u010a"}  # GPT-2 byte-level spellings of space and newline
    (out / "vocab.json").write_text(json.dumps({byte_level.get(c, c): i for i, c in enumerate(CHARS)}))
    (out / "merges.txt").write_text("#version: 0.2\n")
    added = {str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False, "normalized": False,
                      "single_word": False} for t, i in ids.items()}
    (out / "tokenizer_config.json").write_text(json.dumps({
        "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
        "tokenizer_class": "DreamTokenizer", "eos_token": eos, "pad_token": eos, "unk_token": eos,
        "bos_token": None, "mask_token": mask, "added_tokens_decoder": added}, indent=2))


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Deterministic random values for every parameter and float persistent buffer (norm weights near 1),
    except rotary `inv_freq`: a published checkpoint saves its formula's values (MDLM's is persistent), so the
    tiny one does too and the load checks can compare it with the formula."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.state_dict(keep_vars=True).items()):
            if not p.is_floating_point() or name.endswith("inv_freq"):
                continue
            noise = torch.randn(p.shape, generator=g) * 0.05
            p.copy_((1.0 + noise) if "norm" in name.lower() and p.dim() == 1 else noise)


def build_checkpoint(family: str, out: Path, *, seed: int = 0) -> Path:
    """Write a tiny random-init checkpoint of `family` under out/<family> from the published files."""
    from safetensors.torch import save_file

    from dlm_triage import remote_code

    src = remote_code_dir(family)
    if src is None:
        raise FileNotFoundError(skip_reason(family))
    out = Path(out) / family
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.glob("*.py")):
        shutil.copy2(f, out / f.name)
    cfg = tiny_config(family, src)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    if family == "dream" and (src / "tokenization_dream.py").is_file():
        save_dream_tokenizer(out)  # the published remote slow tokenizer class, loaded with trust_remote_code
    else:
        save_tokenizer(family, out)
    if family == "dream":  # Dream's from_pretrained reads generation_config.json (the checkpoint ships one)
        eos, _, _, ids = TOKENIZER_FACTS[family]
        (out / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": ids[eos], "eos_token_id": ids[eos], "pad_token_id": ids[eos],
             "mask_token_id": ids["<|mask|>"]}, indent=2))
    model = remote_code.instantiate(family, out)  # the real class, random init, through the compat layer
    randomize_(model, seed)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def reference_model(family: str, directory: Path) -> torch.nn.Module:
    """The same weights loaded 'the reference way': the class constructed directly (buffers computed by its own
    constructor), then load_state_dict(strict=True) from model.safetensors. No from_pretrained involved."""
    from safetensors.torch import load_file

    from dlm_triage import remote_code

    model = remote_code.instantiate(family, directory)
    missing, unexpected = model.load_state_dict(load_file(str(Path(directory) / "model.safetensors")), strict=True)
    assert not missing and not unexpected
    return model.eval()
