"""Tiny stand-ins for the remote-code DLM families, loaded through the adapters' real `load()` path.

Each class mimics what the adapter relies on in the real checkpoint (FAMILIES.md): module names (LLaDA's
q/k/v_proj + attn_out and a block MLP and LM head both named `ff_out`; LLaDA2's fused
attention.query_key_value/dense and a Parameter router; MDLM's attn_qkv/attn_out; Dream's and LLaDA-MoE's
q/k/v/o_proj, LLaDA-MoE's nn.Linear router `gate`), the mask ids (vocabularies large enough to hold them),
and the quirks: Dream's right-shifted logits and its refusal of non-bool attention masks; MDLM's required
`timesteps`; LLaDA2 turning None/2D masks causal; labels refused everywhere (the adapters must never pass them).

`build_family_dir(family, root)` saves config + weights + a small fast tokenizer, with `auto_map` and this file
copied beside them (transformers' `register_for_auto_class`), so `from_pretrained(dir, trust_remote_code=True)`
loads the dynamic-module copy exactly as it would load a hub checkpoint's own code, offline.

`oracle_scale` (config, default 0) adds scale * one_hot(the token the position predicts) to the logits: a
perfectly trained model in miniature, so alignment (logits[:, i] predicts token i) is observable.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast, MaskedLMOutput

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
    n_layers: int = 2
    oracle_scale: float = 0.0


class TinyLLaDAConfig(_TinyConfig):
    model_type = "tiny_llada"


class TinyLLaDA2Config(_TinyConfig):
    model_type = "tiny_llada2"


class TinyLLaDAMoEConfig(_TinyConfig):
    model_type = "tiny_llada_moe"


class TinyDreamConfig(_TinyConfig):
    model_type = "tiny_dream"


class TinyMDLMConfig(_TinyConfig):
    model_type = "tiny_mdlm"


class _TinyPreTrained(PreTrainedModel):
    base_model_prefix = "model"
    _no_split_modules = []

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


class _LLaDAModel(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(c.vocab_size, c.d_model),
            blocks=nn.ModuleList(_LLaDABlock(c.d_model, c.n_heads) for _ in range(c.n_layers)),
            ln_f=nn.LayerNorm(c.d_model),
            ff_out=nn.Linear(c.d_model, c.vocab_size, bias=False),  # the LM head, also named ff_out
        ))


class TinyLLaDAModel(_TinyPreTrained):
    config_class = TinyLLaDAConfig

    def __init__(self, config):
        super().__init__(config)
        self.model = _LLaDAModel(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.transformer.wte

    def forward(self, input_ids, attention_mask=None, **kwargs):  # the original ignores attention_mask
        _refuse_labels(kwargs)
        t = self.model.transformer
        x = t.wte(input_ids)
        for blk in t.blocks:
            x = blk(x)
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
        x = self.model.word_embeddings(input_ids)
        neg = torch.finfo(x.dtype).min
        if attention_mask is None or attention_mask.dim() == 2:
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
        self.embed_tokens = nn.Embedding(c.vocab_size, c.d_model)
        self.layers = nn.ModuleList(_QwenLayer(c.d_model, c.n_heads, moe) for _ in range(c.n_layers))
        self.norm = nn.LayerNorm(c.d_model)


class TinyDreamModel(_TinyPreTrained):
    config_class = TinyDreamConfig

    def __init__(self, config):
        super().__init__(config)
        self.model = _QwenBackbone(config, moe=False)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def forward(self, input_ids, attention_mask=None, **kwargs):
        _refuse_labels(kwargs)
        if attention_mask is not None and (attention_mask.dtype != torch.bool or attention_mask.dim() != 4):
            # The real model fails here with a dtype error inside sdpa for a 2D long mask.
            raise RuntimeError(
                f"Expected attn_mask dtype to be bool or float, got {attention_mask.dtype} "
                f"with shape {tuple(attention_mask.shape)} (Dream needs None or a bool [B,1,L,L] mask)"
            )
        x = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            x = layer(x, attention_mask)
        logits = self.lm_head(self.model.norm(x))
        # Right-shifted: the logit at i predicts token i+1.
        return CausalLMOutputWithPast(logits=_oracle(logits, input_ids, self.config.oracle_scale, True))


class TinyLLaDAMoEModel(_TinyPreTrained):
    config_class = TinyLLaDAMoEConfig

    def __init__(self, config):
        super().__init__(config)
        self.model = _QwenBackbone(config, moe=True)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def forward(self, input_ids, attention_mask=None, **kwargs):
        _refuse_labels(kwargs)  # the original computes a causal (shifted) loss from labels: never use it
        x = self.model.embed_tokens(input_ids)
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

    def __init__(self, config):
        super().__init__(config)
        self.backbone = _MDLMBackbone(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.backbone.vocab_embed

    def get_output_embeddings(self):  # the original has none ("all-linear" would wrap the output layer)
        return None

    def forward(self, input_ids, timesteps, output_hidden_states=None, return_dict=None, **kwargs):
        _refuse_labels(kwargs)
        if timesteps is None or timesteps.shape != (input_ids.shape[0],):
            raise ValueError(f"timesteps must be a [B] tensor, got {None if timesteps is None else tuple(timesteps.shape)}")
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


def save_fast_tokenizer(directory: Path, *, with_mask: bool = True, with_pad: bool = True):
    """A char-level PreTrainedTokenizerFast (BPE with no merges), loadable by AutoTokenizer offline."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    specials = [s for s in SPECIAL_TOKENS if (with_mask or s != "[MASK]") and (with_pad or s != "[PAD]")]
    vocab = {t: i for i, t in enumerate(specials + list(TOKENIZER_CHARS))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    kw = dict(unk_token="[UNK]", eos_token="[EOS]")
    if with_mask:
        kw["mask_token"] = "[MASK]"
    if with_pad:
        kw["pad_token"] = "[PAD]"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kw)
    fast.save_pretrained(directory)
    return fast


def build_family_dir(family: str, root: Path, *, oracle_scale: float = 0.0, seed: int = 0) -> Path:
    """Save a tiny remote-code model of `family` (config + weights + this file + tokenizer) under root/family."""
    config_cls, model_cls, auto_class, vocab = REMOTE[family]
    out = Path(root) / family
    config_cls.register_for_auto_class()
    model_cls.register_for_auto_class(auto_class)
    torch.manual_seed(seed)
    model = model_cls(config_cls(vocab_size=vocab, oracle_scale=oracle_scale))
    model.save_pretrained(out)
    save_fast_tokenizer(out)
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
