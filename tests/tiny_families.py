"""Tiny stand-ins for the remote-code DLM families, loaded through the adapters' real `load()` path.

Each class mimics what the adapter relies on in the real checkpoint (its published modeling code): module names (LLaDA's
q/k/v_proj + attn_out and a block MLP and LM head both named `ff_out`; LLaDA2's fused
attention.query_key_value/dense and a Parameter router; MDLM's attn_qkv/attn_out; Dream's and LLaDA-MoE's
q/k/v/o_proj, LLaDA-MoE's nn.Linear router `gate`), the mask ids (vocabularies large enough to hold them),
and the quirks of the published files (each checked against them in tests/test_remote_code.py):
- LLaDA: no post_init() in __init__; tie_weights(self) without arguments; forward reads config.use_cache
  when use_cache is not passed (the config has none) and asserts no kv cache; the constructor turns
  mem-efficient SDPA off for the whole process; tokenizer without a mask token, pad = eos.
- Dream / LLaDA2 / LLaDA-MoE: a rotary module built through the module's own ROPE_INIT_FUNCTIONS['default']
  (gone in transformers 5) with a non-persistent inv_freq buffer that the logits depend on, and an
  `_init_weights` that never refills it (what from_pretrained leaves uninitialised under transformers 5).
- Dream: right-shifted logits, refuses non-bool attention masks, reads use_cache from its config
  (use_cache: true) and then returns a cache. LLaDA-MoE: no mask_token, '<|mask|>' in the vocabulary.
- LLaDA2: under sdpa a None mask is bidirectional; under eager None/2D masks become causal.
- MDLM: forward(input_ids, timesteps); timesteps zeroed when config.time_conditioning is false; no
  post_init(); get_input_embeddings() raises NotImplementedError.
Labels are refused everywhere (the adapters must never pass them). Not reproduced here (one module serves
every stand-in): LLaDA2's import of is_torch_fx_available, Dream's generation-config validate, MDLM's
flash_attn import; those are covered on the published files only.

`build_family_dir(family, root)` saves config + weights + a small fast tokenizer, with `auto_map` and this file
copied beside them (transformers' `register_for_auto_class`), so `from_pretrained(dir, trust_remote_code=True)`
loads the dynamic-module copy exactly as it would load a hub checkpoint's own code, offline.

`oracle_scale` (config, default 0) adds scale * one_hot(the token the position predicts) to the logits: a
perfectly trained model in miniature, so alignment (logits[:, i] predicts token i) is observable.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast, MaskedLMOutput
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[MASK]", "[EOS]"]
TOKENIZER_CHARS = " abcdefghijklmnopqrstuvwxyz0123456789.,+-=<>?'\n"


def _attend(q, k, v, n_heads, mask=None):
    b, length, d = q.shape
    hd = d // n_heads

    def split(t):
        return t.view(b, length, n_heads, hd).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
    return out.transpose(1, 2).reshape(b, length, d)


def _oracle(logits, input_ids, scale, shifted):
    if not scale:
        return logits
    target = input_ids
    if shifted:  # position i predicts token i+1; the last position predicts nothing
        target = torch.cat([input_ids[:, 1:], input_ids[:, -1:]], dim=1)
    return logits + scale * F.one_hot(target, logits.shape[-1]).to(logits.dtype)


def _refuse_labels(kwargs):
    if kwargs.get("labels") is not None:
        raise TypeError("labels passed to the model: the trainer must compute the masked CE itself")


class _Rotary(nn.Module):
    """Like the published rotary modules: rope_init_fn from the module global, non-persistent inv_freq."""

    def __init__(self, config):
        super().__init__()
        self.config, self.rope_type = config, "default"
        self.rope_init_fn = ROPE_INIT_FUNCTIONS[self.rope_type]  # KeyError under transformers 5 unless shimmed
        inv_freq, _ = self.rope_init_fn(config, None)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.original_inv_freq = self.inv_freq

    def forward(self, x):
        """x + a position signal built from inv_freq (so a wrong buffer changes the logits)."""
        pos = torch.arange(x.shape[1], device=x.device, dtype=torch.float32)[:, None] * self.inv_freq[None].float()
        sig = torch.cat([pos.sin(), pos.cos()], dim=-1)
        reps = -(-x.shape[-1] // sig.shape[-1])
        return x + 0.1 * sig.repeat(1, reps)[:, : x.shape[-1]].to(x.dtype)


class _MLP(nn.Module):
    def __init__(self, d, names=("gate_proj", "up_proj", "down_proj")):
        super().__init__()
        self.names = names
        setattr(self, names[0], nn.Linear(d, 2 * d, bias=False))
        setattr(self, names[1], nn.Linear(d, 2 * d, bias=False))
        setattr(self, names[2], nn.Linear(2 * d, d, bias=False))

    def forward(self, x):
        a, b, c = (getattr(self, n) for n in self.names)
        return c(F.silu(a(x)) * b(x))


class _QKVO(nn.Module):
    """Separate q/k/v/o projections (Qwen/Llama names) with `out_name` for the output projection."""

    def __init__(self, d, n_heads, out_name="o_proj"):
        super().__init__()
        self.n_heads, self.out_name = n_heads, out_name
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d, d, bias=False) for _ in range(3))
        setattr(self, out_name, nn.Linear(d, d, bias=False))

    def forward(self, x, mask=None):
        h = _attend(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.n_heads, mask)
        return getattr(self, self.out_name)(h)


class _FusedQKV(nn.Module):
    def __init__(self, d, n_heads, qkv_name, out_name):
        super().__init__()
        self.n_heads, self.qkv_name, self.out_name = n_heads, qkv_name, out_name
        setattr(self, qkv_name, nn.Linear(d, 3 * d, bias=True))
        setattr(self, out_name, nn.Linear(d, d, bias=True))

    def forward(self, x, mask=None):
        q, k, v = getattr(self, self.qkv_name)(x).chunk(3, dim=-1)
        return getattr(self, self.out_name)(_attend(q, k, v, self.n_heads, mask))


class _ParamRouter(nn.Module):
    """LLaDA2's router: a bare Parameter (not nn.Linear)."""

    def __init__(self, d, n_experts):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_experts, d) * 0.02)

    def forward(self, x):
        return F.linear(x, self.weight)


class _MoE(nn.Module):
    def __init__(self, d, n_experts=2, linear_router=False):
        super().__init__()
        self.gate = nn.Linear(d, n_experts, bias=False) if linear_router else _ParamRouter(d, n_experts)
        self.experts = nn.ModuleList(_MLP(d) for _ in range(n_experts))

    def forward(self, x):
        w = self.gate(x).softmax(-1)
        return sum(w[..., i : i + 1] * e(x) for i, e in enumerate(self.experts))


# -- configs ------------------------------------------------------------------------------------------------

class _TinyConfig(PretrainedConfig):
    # transformers 5 configs are dataclasses: fields, not an __init__.
    vocab_size: int = 128
    d_model: int = 16
    hidden_size: int = 16
    n_heads: int = 2
    num_attention_heads: int = 2
    n_layers: int = 2
    rope_theta: float = 10000.0
    oracle_scale: float = 0.0


class TinyLLaDAConfig(_TinyConfig):
    model_type = "tiny_llada"


class TinyLLaDA2Config(_TinyConfig):
    model_type = "tiny_llada2"


class TinyLLaDAMoEConfig(_TinyConfig):
    model_type = "tiny_llada_moe"


class TinyDreamConfig(_TinyConfig):
    model_type = "tiny_dream"
    use_cache: bool = True  # the published Dream config says so


class TinyMDLMConfig(_TinyConfig):
    model_type = "tiny_mdlm"
    time_conditioning: bool = False  # the OWT checkpoint's value


class _TinyPreTrained(PreTrainedModel):
    base_model_prefix = "model"
    _no_split_modules = []
    _supports_sdpa = True

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)


# -- LLaDA: model.transformer.{wte, blocks[i].{q,k,v_proj, attn_out, ff_proj, up_proj, ff_out}, ln_f, ff_out} --

class _LLaDABlock(nn.Module):
    def __init__(self, d, n_heads):
        super().__init__()
        self.attn_norm, self.ff_norm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.n_heads = n_heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d, d, bias=False) for _ in range(3))
        self.attn_out = nn.Linear(d, d, bias=False)
        self.mlp = _MLP(d, names=("ff_proj", "up_proj", "ff_out"))

    def forward(self, x):
        h = self.attn_norm(x)
        x = x + self.attn_out(_attend(self.q_proj(h), self.k_proj(h), self.v_proj(h), self.n_heads))
        return x + self.mlp(self.ff_norm(x))


class ActivationCheckpointingStrategy(str, Enum):  # LLaDA's own (a str enum in its configuration file)
    whole_layer = "whole_layer"


class _LLaDAModel(nn.Module):
    """LLaDA's inner model: its own activation checkpointing (`set_activation_checkpointing`; the HF API
    raises, PreTrainedModel.supports_gradient_checkpointing is False) and the process-wide
    `enable_flash_sdp(True)` the published constructor calls beside `enable_mem_efficient_sdp(False)`."""

    def __init__(self, c):
        super().__init__()
        self.activation_checkpointing_strategy = None
        torch.backends.cuda.enable_flash_sdp(True)
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(c.vocab_size, c.d_model),
            blocks=nn.ModuleList(_LLaDABlock(c.d_model, c.n_heads) for _ in range(c.n_layers)),
            ln_f=nn.LayerNorm(c.d_model),
            ff_out=nn.Linear(c.d_model, c.vocab_size, bias=False),  # the LM head, also named ff_out
        ))

    def set_activation_checkpointing(self, strategy):
        self.activation_checkpointing_strategy = strategy


class TinyLLaDAModel(_TinyPreTrained):
    config_class = TinyLLaDAConfig

    def __init__(self, config):  # like the published LLaDAModelLM: no post_init()
        super().__init__(config)
        torch.backends.cuda.enable_mem_efficient_sdp(False)  # the published constructor does this, process-wide
        self.model = _LLaDAModel(config)

    def get_input_embeddings(self):
        return self.model.transformer.wte

    def tie_weights(self):  # the published signature: no arguments
        pass

    def forward(self, input_ids, attention_mask=None, use_cache=None, **kwargs):  # attention_mask is ignored
        _refuse_labels(kwargs)
        if use_cache is None:
            use_cache = self.config.use_cache  # AttributeError: the config has no use_cache
        assert not use_cache, "The kvcache is not supported for MDM."
        t = self.model.transformer
        x = t.wte(input_ids)
        whole = self.model.activation_checkpointing_strategy == ActivationCheckpointingStrategy.whole_layer
        for blk in t.blocks:
            x = checkpoint(blk, x, use_reentrant=False) if whole else blk(x)
        logits = t.ff_out(t.ln_f(x))
        return CausalLMOutputWithPast(logits=_oracle(logits, input_ids, self.config.oracle_scale, False))


# -- LLaDA2: model.{word_embeddings, layers[i].{attention.{query_key_value, dense}, mlp(gate Param, experts)}} --

class _LLaDA2Layer(nn.Module):
    def __init__(self, d, n_heads):
        super().__init__()
        self.input_layernorm, self.post_attention_layernorm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attention = _FusedQKV(d, n_heads, "query_key_value", "dense")
        self.mlp = _MoE(d, linear_router=False)

    def forward(self, x, mask):
        x = x + self.attention(self.input_layernorm(x), mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class _LLaDA2Backbone(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.rotary_emb = _Rotary(c)
        self.word_embeddings = nn.Embedding(c.vocab_size, c.d_model)
        self.layers = nn.ModuleList(_LLaDA2Layer(c.d_model, c.n_heads) for _ in range(c.n_layers))
        self.norm = nn.LayerNorm(c.d_model)


class TinyLLaDA2Model(_TinyPreTrained):
    config_class = TinyLLaDA2Config

    def __init__(self, config):
        super().__init__(config)
        self.model = _LLaDA2Backbone(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.word_embeddings

    def forward(self, input_ids, attention_mask=None, **kwargs):
        _refuse_labels(kwargs)
        b, length = input_ids.shape
        x = self.model.rotary_emb(self.model.word_embeddings(input_ids))
        neg = torch.finfo(x.dtype).min
        if attention_mask is None and self.config._attn_implementation == "sdpa":
            mask = None  # the published file: under sdpa a None mask stays None (bidirectional)
        elif attention_mask is None or attention_mask.dim() == 2:
            # The quirk: like the original's _prepare_4d_causal_attention_mask*, None/2D masks become causal.
            causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
            mask = torch.zeros(length, length, dtype=x.dtype, device=x.device).masked_fill(~causal, neg)
            if attention_mask is not None:
                keep = attention_mask[:, None, None, :].to(torch.bool)
                mask = mask[None, None].masked_fill(~keep, neg)
        else:  # 4D: 1 = attend, converted to additive as the original does (1 - mask) * min
            mask = (1.0 - attention_mask.to(x.dtype)) * neg
        for layer in self.model.layers:
            x = layer(x, mask)
        logits = self.lm_head(self.model.norm(x)).float()
        return CausalLMOutputWithPast(logits=_oracle(logits, input_ids, self.config.oracle_scale, False))


# -- Dream / LLaDA-MoE: model.{embed_tokens, layers[i].{self_attn.{q,k,v,o_proj}, mlp}}, lm_head ---------------

class _QwenLayer(nn.Module):
    def __init__(self, d, n_heads, moe):
        super().__init__()
        self.input_layernorm, self.post_attention_layernorm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = _QKVO(d, n_heads)
        self.mlp = _MoE(d, linear_router=True) if moe else _MLP(d)

    def forward(self, x, mask=None):
        x = x + self.self_attn(self.input_layernorm(x), mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class _QwenBackbone(nn.Module):
    def __init__(self, c, moe):
        super().__init__()
        self.rotary_emb = _Rotary(c)
        self.embed_tokens = nn.Embedding(c.vocab_size, c.d_model)
        self.layers = nn.ModuleList(_QwenLayer(c.d_model, c.n_heads, moe) for _ in range(c.n_layers))
        self.norm = nn.LayerNorm(c.d_model)


class _QwenLM(_TinyPreTrained):
    """Dream's and LLaDA-MoE's layout: a Qwen backbone under `model` (MoE MLPs with `moe`) and an untied
    `lm_head`; each stand-in has its own forward."""

    moe = False

    def __init__(self, config):
        super().__init__(config)
        self.model = _QwenBackbone(config, moe=self.moe)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens


class TinyDreamModel(_QwenLM):
    config_class = TinyDreamConfig

    def forward(self, input_ids, attention_mask=None, use_cache=None, **kwargs):
        _refuse_labels(kwargs)
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if attention_mask is not None and (attention_mask.dtype != torch.bool or attention_mask.dim() != 4):
            # The real model fails here with a dtype error inside sdpa for a 2D long mask.
            raise RuntimeError(
                f"Expected attn_mask dtype to be bool or float, got {attention_mask.dtype} "
                f"with shape {tuple(attention_mask.shape)} (Dream needs None or a bool [B,1,L,L] mask)"
            )
        x = self.model.rotary_emb(self.model.embed_tokens(input_ids))
        cache = [] if use_cache else None
        for layer in self.model.layers:
            if cache is not None:
                cache.append(x.detach())  # what a kv cache costs: kept per layer
            x = layer(x, attention_mask)
        logits = self.lm_head(self.model.norm(x))
        # Right-shifted: the logit at i predicts token i+1.
        return CausalLMOutputWithPast(logits=_oracle(logits, input_ids, self.config.oracle_scale, True),
                                      past_key_values=cache)


class TinyLLaDAMoEModel(_QwenLM):
    config_class = TinyLLaDAMoEConfig
    moe = True

    def forward(self, input_ids, attention_mask=None, **kwargs):
        _refuse_labels(kwargs)  # the original computes a causal (shifted) loss from labels: never use it
        x = self.model.rotary_emb(self.model.embed_tokens(input_ids))
        for layer in self.model.layers:
            x = layer(x)
        logits = self.lm_head(self.model.norm(x))
        return MaskedLMOutput(logits=_oracle(logits, input_ids, self.config.oracle_scale, False))


# -- MDLM: backbone.{vocab_embed, sigma_map, blocks[i].{attn_qkv, attn_out, mlp}, output_layer} --------------

class _MDLMBlock(nn.Module):
    def __init__(self, d, n_heads):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.n_heads = n_heads
        self.attn_qkv = nn.Linear(d, 3 * d, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.adaLN_modulation = nn.Linear(d, d)

    def forward(self, x, c):
        h = self.norm1(x) * (1 + self.adaLN_modulation(c)[:, None, :])
        q, k, v = self.attn_qkv(h).chunk(3, dim=-1)
        x = x + self.attn_out(_attend(q, k, v, self.n_heads))
        return x + self.mlp(self.norm2(x))


class _MDLMBackbone(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.vocab_embed = nn.Embedding(c.vocab_size, c.d_model)
        self.sigma_map = nn.Linear(1, c.d_model)
        self.blocks = nn.ModuleList(_MDLMBlock(c.d_model, c.n_heads) for _ in range(c.n_layers))
        self.output_layer = nn.Linear(c.d_model, c.vocab_size)


class TinyMDLMModel(_TinyPreTrained):
    config_class = TinyMDLMConfig

    def __init__(self, config):  # like the published MDLM: no post_init()
        super().__init__(config)
        self.backbone = _MDLMBackbone(config)

    def get_input_embeddings(self):  # the published embedding is a bare Parameter; the base class raises
        raise NotImplementedError

    def get_output_embeddings(self):  # the original has none ("all-linear" would wrap the output layer)
        return None

    def forward(self, input_ids, timesteps, output_hidden_states=None, return_dict=None, **kwargs):
        _refuse_labels(kwargs)
        if timesteps is None or timesteps.shape != (input_ids.shape[0],):
            raise ValueError(f"timesteps must be a [B] tensor, got {None if timesteps is None else tuple(timesteps.shape)}")
        if not self.config.time_conditioning:  # the published backbone: sigma = zeros_like(sigma)
            timesteps = torch.zeros_like(timesteps)
        c = F.silu(self.backbone.sigma_map(timesteps[:, None].to(self.backbone.sigma_map.weight.dtype)))
        x = self.backbone.vocab_embed(input_ids)
        for blk in self.backbone.blocks:
            x = blk(x, c)
        logits = self.backbone.output_layer(x)
        return MaskedLMOutput(loss=None, logits=_oracle(logits, input_ids, self.config.oracle_scale, False))


# -- building saved dirs ------------------------------------------------------------------------------------

REMOTE = {
    # family: (config class, model class, auto class, vocab size holding the family's mask id)
    "llada": (TinyLLaDAConfig, TinyLLaDAModel, "AutoModel", 126_464),
    "llada2": (TinyLLaDA2Config, TinyLLaDA2Model, "AutoModelForCausalLM", 157_184),
    "llada_moe": (TinyLLaDAMoEConfig, TinyLLaDAMoEModel, "AutoModel", 128),
    "dream": (TinyDreamConfig, TinyDreamModel, "AutoModel", 151_680),
    "mdlm": (TinyMDLMConfig, TinyMDLMModel, "AutoModelForMaskedLM", 50_258),
}


def save_fast_tokenizer(directory: Path, *, with_mask: bool = True, with_pad: bool = True,
                        pad_is_eos: bool = False, mask_string: str | None = None):
    """A char-level PreTrainedTokenizerFast (BPE with no merges), loadable by AutoTokenizer offline.
    `pad_is_eos`: pad = eos (LLaDA's tokenizer). `mask_string`: a token of that name where [MASK] would be,
    not declared as the mask token (LLaDA-MoE's '<|mask|>')."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    specials = [s for s in SPECIAL_TOKENS if (with_mask or mask_string or s != "[MASK]")
                and (with_pad and not pad_is_eos or s != "[PAD]")]
    specials = [mask_string if s == "[MASK]" and mask_string else s for s in specials]
    vocab = {t: i for i, t in enumerate(specials + list(TOKENIZER_CHARS))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    kw = dict(unk_token="[UNK]", eos_token="[EOS]")
    if with_mask and not mask_string:
        kw["mask_token"] = "[MASK]"
    if pad_is_eos:
        kw["pad_token"] = "[EOS]"
    elif with_pad:
        kw["pad_token"] = "[PAD]"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kw)
    if mask_string:
        fast.add_special_tokens({"additional_special_tokens": [mask_string]})
    fast.save_pretrained(directory)
    return fast


# family -> save_fast_tokenizer keywords: the published tokenizers' facts
TOKENIZER_QUIRKS = {
    "llada": dict(with_mask=False, pad_is_eos=True),  # no mask token; pad = eos
    "llada_moe": dict(with_mask=False, mask_string="<|mask|>"),  # '<|mask|>' known, not declared mask_token
}


def build_family_dir(family: str, root: Path, *, oracle_scale: float = 0.0, seed: int = 0) -> Path:
    """Save a tiny remote-code model of `family` (config + weights + this file + tokenizer) under root/family."""
    config_cls, model_cls, auto_class, vocab = REMOTE[family]
    out = Path(root) / family
    import sys

    from dlm_triage import remote_code

    config_cls.register_for_auto_class()
    model_cls.register_for_auto_class(auto_class)
    if remote_code.TRANSFORMERS_5:  # building goes through the shims loading uses (on this module's own copy)
        remote_code._patch_module_rope(sys.modules[__name__])
    remote_code._patch_class(family, model_cls)
    torch.manual_seed(seed)
    with remote_code.process_state_guard():  # the LLaDA stand-in flips the SDPA switch like the original
        # tie_word_embeddings=False: transformers 4.x configs default to True and would tie the LM heads
        model = model_cls(config_cls(vocab_size=vocab, oracle_scale=oracle_scale, tie_word_embeddings=False))
    model.save_pretrained(out)
    save_fast_tokenizer(out, **TOKENIZER_QUIRKS.get(family, {}))
    return out


def build_hf_dir(kind: str, root: Path, *, with_mask: bool = False, seed: int = 0) -> Path:
    """Native transformers tiny models: 'gpt_neox', 'qwen2', 'llama' (AR controls) and 'bert' (generic MLM)."""
    import transformers as tr

    out = Path(root) / kind
    torch.manual_seed(seed)
    vocab = len(SPECIAL_TOKENS) + len(TOKENIZER_CHARS)
    common = dict(vocab_size=vocab, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=64)
    if kind == "gpt_neox":
        model = tr.GPTNeoXForCausalLM(tr.GPTNeoXConfig(**common))
    elif kind == "qwen2":
        model = tr.Qwen2ForCausalLM(tr.Qwen2Config(num_key_value_heads=2, **common))
    elif kind == "llama":
        model = tr.LlamaForCausalLM(tr.LlamaConfig(num_key_value_heads=2, **common))
    elif kind == "bert":
        model = tr.BertForMaskedLM(tr.BertConfig(**common))
        with_mask = True
    else:
        raise ValueError(f"kind={kind!r}: use gpt_neox, qwen2, llama or bert")
    model.save_pretrained(out)
    save_fast_tokenizer(out, with_mask=with_mask, with_pad=kind != "gpt_neox")
    return out
