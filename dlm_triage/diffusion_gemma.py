"""DiffusionGemma's own SFT objective: uniform-noise canvas corruption, block-causal canvas, diffusion CE + encoder CE.

DiffusionGemma (google/diffusiongemma-26B-A4B-it, `transformers.models.diffusion_gemma`) has no [MASK] token. One
shared Gemma MoE stack runs twice: causally over the clean sequence (the "encoder", which fills a KV cache) and
bidirectionally over a noised copy of the response (the "decoder canvas"), which reads that cache read-only. The
recipe below is NeMo AutoModel's `DiffusionGemmaSFTRecipe` (docs: "Fine-Tuning DiffusionGemma with NeMo AutoModel";
code: `nemo_automodel/components/datasets/dllm/corruption.py::corrupt_uniform_random`,
`components/loss/dllm_loss.py::{BlockDiffusionCrossEntropyLoss, encoder_ar_loss}`,
`components/models/diffusion_gemma/attention_mask.py`, `recipes/dllm/train_ft.py::DiffusionGemmaSFTRecipe`); the
forward contract (`decoder_input_ids`, `decoder_attention_mask` as a dict of 4D masks, `decoder_position_ids`,
`self_conditioning_logits` / `self_conditioning_mask`, the encoder filling `past_key_values`) is transformers'.

Per batch x0 [b, L] with `supervised` [b, L] (the response positions; all True for packed plain text):

1. Corruption (`corrupt_uniform`): per sequence t ~ U(eps, 1), eps = 1e-3; each supervised token is replaced,
   independently with probability t, by a token drawn uniformly from the whole vocabulary [0, V). Prompt tokens
   are never corrupted.
2. Canvas layout (`canvas_block_ids`, `block_causal_masks`): the canvas is the full sequence (prompt positions
   stay clean and form block -1); response position j of row r is in block (j - prefix_r) // B, B =
   `config.canvas_length` (256 for the checkpoint), prefix_r = the row's first supervised position. A canvas
   query in block i attends (a) clean encoder columns of blocks strictly before i (the prompt is block -1, so
   always; a `>=` here would show the canvas its own clean answer) and (b) canvas columns of block i only.
   Sliding-attention layers keep, in addition, only encoder columns k >= prefix_r + i*B - W + 1 (W =
   `text_config.sliding_window`): the window the cache holds when block i is generated. Decoder positions are
   the absolute positions 0..L-1. On the response rows this is NeMo's response-window mask; the prompt rows
   only see each other and are never scored.
3. Diffusion CE (`diffusion_ce`): plain CE (no 1/t weight: that is the absorbing-kernel ELBO weight) over the
   scored canvas positions, divided by their number. Scored = the supervised positions, corrupted or not, of
   ONE response block per row drawn uniformly among the row's blocks (`select_scored_block`): NeMo's
   one-canvas-per-step scheme (all blocks are denoised, one is scored).
4. Encoder CE (`encoder_ar_ce`): next-token CE of the encoder's soft-capped logits on the clean sequence, over
   every (i, i+1) pair of valid positions, divided by their number.
5. Self-conditioning (`canvas_forward`): a first decoder pass without gradient and without self-conditioning
   gives logits; the scored pass receives them as `self_conditioning_logits`, gated per row by a coin with
   probability 0.5 (`self_conditioning_mask`; a row whose coin is False gets a zero signal). The encoder runs
   once; both decoder passes read its cache.
6. Loss = diffusion CE + w * encoder CE, w = 1.0.

Monitors: the canvas logits [b, L, V] are aligned (logits[:, i] predicts x0[:, i]); top-1 frequency is read on
the supervised canvas positions of the training logits (no extra forward); `n_masked` / `mask_ratio` are the
corrupted count and the corrupted share of the supervised positions. Everything stays on the device: no host sync.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-3
"""Lower bound of the corruption level t ~ U(eps, 1) (NeMo `corrupt_uniform_random` default)."""
SELF_CONDITIONING_P = 0.5
"""Probability that a row's scored pass is self-conditioned (NeMo `dllm.self_conditioning_p` default)."""
ENCODER_LOSS_WEIGHT = 1.0
"""w in loss = diffusion CE + w * encoder CE (NeMo `dllm.encoder_loss_weight` default)."""
PROMPT_BLOCK = -1
"""Block id of prompt (unsupervised leading) positions on the canvas."""


@dataclass(frozen=True)
class Corruption:
    """`corrupt_uniform`'s draw: noisy ids [b, L], corrupted positions [b, L] (bool), t [b] (float32)."""

    noisy: torch.Tensor
    corrupted: torch.Tensor
    t: torch.Tensor


@dataclass(frozen=True)
class ObjectiveOutput:
    """One batch's loss and what the monitors read from it (all tensors, on the device; no host sync).

    loss: the scalar to backpropagate. logits: [b, L, V] aligned so logits[:, i] predicts x0[:, i].
    top1_positions: bool [b, L], where the top-1 frequency is read. n_masked / mask_ratio: 0-dim float32, the
    step log's count of noised positions and their share. `parts`: named 0-dim components (detached).
    """

    loss: torch.Tensor
    logits: torch.Tensor
    top1_positions: torch.Tensor
    n_masked: torch.Tensor
    mask_ratio: torch.Tensor
    parts: dict[str, torch.Tensor]


def _check_pair(x0: torch.Tensor, supervised: torch.Tensor | None) -> torch.Tensor:
    if x0.dim() != 2:
        raise ValueError(f"input_ids has shape {tuple(x0.shape)}: give a [batch, seq_len] tensor")
    if supervised is None:
        return torch.ones_like(x0, dtype=torch.bool)
    if supervised.shape != x0.shape:
        raise ValueError(f"supervised has shape {tuple(supervised.shape)}, input_ids {tuple(x0.shape)}: give one "
                         "bool per token (True = response)")
    return supervised.to(device=x0.device, dtype=torch.bool)


def corrupt_uniform(
    x0: torch.Tensor,
    supervised: torch.Tensor | None,
    vocab_size: int,
    generator: torch.Generator | None = None,
    *,
    eps: float = EPS,
) -> Corruption:
    """Uniform-noise corruption of the supervised tokens (step 1 of the module docstring).

    Draws, in this order, t [b] (t = eps + (1 - eps) * u), the per-token uniforms [b, L] (corrupted where
    u < t and supervised) and the replacement tokens [b, L] uniform on [0, vocab_size), all from `generator`
    (on its device, then moved to x0's device), so a seed reproduces the draw on any device.
    """
    supervised = _check_pair(x0, supervised)
    if not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"vocab_size={vocab_size!r} is invalid: give the model's vocabulary size (>= 2)")
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps={eps!r} is out of range: use a number in [0, 1)")
    b, length = x0.shape
    gen_device = generator.device if generator is not None else x0.device
    t = eps + (1.0 - eps) * torch.rand(b, generator=generator, device=gen_device)
    u = torch.rand(b, length, generator=generator, device=gen_device)
    tokens = torch.randint(0, vocab_size, (b, length), generator=generator, device=gen_device)
    t, u, tokens = t.to(x0.device), u.to(x0.device), tokens.to(device=x0.device, dtype=x0.dtype)
    corrupted = (u < t[:, None]) & supervised
    return Corruption(noisy=torch.where(corrupted, tokens, x0), corrupted=corrupted, t=t)


def canvas_block_ids(supervised: torch.Tensor, block_size: int) -> torch.Tensor:
    """Block id per canvas position [b, L] (long): (j - prefix) // block_size from the row's first supervised
    position on, PROMPT_BLOCK (-1) before it. A row without a supervised position is all prompt."""
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size={block_size!r} is invalid: use the model's canvas_length (an integer >= 1)")
    supervised = supervised.to(torch.bool)
    b, length = supervised.shape
    pos = torch.arange(length, device=supervised.device)
    # First supervised index per row (argmax of a bool row is its first True); rows without one -> L.
    prefix = torch.where(supervised.any(dim=1), supervised.int().argmax(dim=1), torch.full((b,), length,
                         device=supervised.device, dtype=torch.long))
    rel = pos[None, :] - prefix[:, None]
    return torch.where(rel >= 0, rel.div(block_size, rounding_mode="floor"), torch.full_like(rel, PROMPT_BLOCK))


def block_causal_masks(
    block_ids: torch.Tensor,
    block_size: int,
    *,
    sliding_window: int | None,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """The decoder's additive masks {'full_attention', 'sliding_attention'}, each [b, 1, L, 2L] (0 = attend,
    dtype min = masked), key axis [encoder cache (L) ; canvas (L)] (step 2 of the module docstring)."""
    b, length = block_ids.shape
    q = block_ids[:, :, None]  # [b, L, 1]
    enc_keep = block_ids[:, None, :] < q  # strict: a block never sees its own clean tokens
    canvas_keep = block_ids[:, None, :] == q
    full = torch.cat([enc_keep, canvas_keep], dim=2)
    if sliding_window is None:
        sliding = full
    else:
        pos = torch.arange(length, device=block_ids.device)
        prefix = length - (block_ids >= 0).sum(dim=1)  # response is the suffix from the first supervised position
        block_start = prefix[:, None] + block_ids.clamp(min=0) * block_size  # [b, L]: cache end of the query's block
        within = pos[None, None, :] >= (block_start[:, :, None] - sliding_window + 1)
        sliding = torch.cat([enc_keep & within, canvas_keep], dim=2)
    neg = torch.finfo(dtype).min

    def additive(keep: torch.Tensor) -> torch.Tensor:
        return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill_(~keep, neg)[:, None]

    return {"full_attention": additive(full), "sliding_attention": additive(sliding)}


def select_scored_block(block_ids: torch.Tensor, supervised: torch.Tensor,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Scored canvas positions [b, L]: the supervised positions of one response block per row, the block drawn
    uniformly among the row's blocks (one uniform per row from `generator`). NeMo's one-canvas-per-step scheme."""
    b = block_ids.shape[0]
    n_blocks = (block_ids.max(dim=1).values + 1).clamp(min=1)  # [b]
    gen_device = generator.device if generator is not None else block_ids.device
    u = torch.rand(b, generator=generator, device=gen_device).to(block_ids.device)
    chosen = torch.minimum((u * n_blocks).long(), n_blocks - 1)
    return (block_ids == chosen[:, None]) & supervised.to(torch.bool)


def diffusion_ce(logits: torch.Tensor, x0: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """sum_{i in scored} CE(logits_i, x0_i) / |scored| in float32 (|scored| clamped to >= 1; no 1/t weight).

    The CE runs on the whole [b, L, V] tensor and is masked afterwards (a boolean index would cost a host sync).
    """
    ce = F.cross_entropy(logits.float().transpose(1, 2), x0, reduction="none")  # [b, L]
    w = scored.to(ce.dtype)
    return (ce * w).sum() / w.sum().clamp(min=1.0)


def encoder_ar_ce(encoder_logits: torch.Tensor, x0: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token CE: sum over pairs (i, i+1), both valid, of CE(encoder_logits_i, x0_{i+1}), divided by the number
    of pairs (clamped to >= 1). `valid` [b, L] bool (None: every position)."""
    ce = F.cross_entropy(encoder_logits[:, :-1].float().transpose(1, 2), x0[:, 1:], reduction="none")  # [b, L-1]
    pair = torch.ones_like(ce, dtype=torch.bool) if valid is None else valid[:, :-1] & valid[:, 1:]
    w = pair.to(ce.dtype)
    return (ce * w).sum() / w.sum().clamp(min=1.0)


# -- the real model's forward -------------------------------------------------------------------------------

def base_model(model: nn.Module) -> nn.Module:
    """The DiffusionGemmaForBlockDiffusion under a peft wrapper (adapters are injected in place, so calling its
    submodules runs them)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def geometry(model: nn.Module) -> tuple[int, int | None, int]:
    """(block size = config.canvas_length, text_config.sliding_window, vocabulary size) of a DiffusionGemma."""
    cfg = base_model(model).config
    text = cfg.get_text_config()
    return int(cfg.canvas_length), getattr(text, "sliding_window", None), int(text.vocab_size)


def _softcap(m: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """lm_head + final soft-capping, as DiffusionGemmaForBlockDiffusion.forward applies them (float32)."""
    logits = m.lm_head(hidden).float()
    cap = m.final_logit_softcapping
    return torch.tanh(logits / cap) * cap if cap else logits


@functools.cache
def _cache_kwarg(forward: Any) -> str:
    """The name `forward` (a class's function) takes the KV cache by: 'cache' from transformers 5.24 on (where
    'past_key_values' is a deprecated alias that warns on every call, removed in 5.40), 'past_key_values' before.
    Cached per function: every training step asks it three times."""
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def canvas_forward(
    model: nn.Module,
    clean_ids: torch.Tensor,
    canvas_ids: torch.Tensor,
    block_ids: torch.Tensor,
    *,
    self_conditioning_mask: torch.Tensor | None = None,
    with_encoder_logits: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Canvas logits [b, L, V] (and, if asked, the encoder's logits [b, L, V]) of a DiffusionGemma.

    The encoder runs once over `clean_ids` into a plain DynamicCache (every layer keeps all L positions; the
    sliding window is in the mask). `self_conditioning_mask` [b] bool: None = one decoder pass without
    self-conditioning; else a no-grad pass gives the self-conditioning logits of the scored pass (step 5).
    """
    from transformers import DynamicCache

    m = base_model(model)
    block_size, window, _ = geometry(model)
    b, length = clean_ids.shape
    dtype = next(m.parameters()).dtype
    cache = DynamicCache()  # no config: no sliding-layer truncation (the training mask needs every column)
    encoder = m.model.encoder
    enc = encoder(input_ids=clean_ids, **{_cache_kwarg(type(encoder).forward): cache}, return_dict=True)
    masks = block_causal_masks(block_ids, block_size, sliding_window=window, dtype=dtype)
    positions = torch.arange(length, device=clean_ids.device)[None, :].expand(b, length)
    decode = {_cache_kwarg(type(m).forward): cache, "decoder_input_ids": canvas_ids,
              "decoder_attention_mask": masks, "decoder_position_ids": positions}
    sc_logits = None
    if self_conditioning_mask is not None:
        with torch.no_grad():
            sc_logits = m(**decode).logits.detach()
    logits = m(**decode, self_conditioning_logits=sc_logits,
               self_conditioning_mask=self_conditioning_mask if sc_logits is not None else None).logits
    enc_logits = _softcap(m, enc.last_hidden_state) if with_encoder_logits else None
    return logits, enc_logits


def training_loss(
    model: nn.Module,
    x0: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    supervised: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    eps: float = EPS,
    self_conditioning_p: float = SELF_CONDITIONING_P,
    encoder_loss_weight: float = ENCODER_LOSS_WEIGHT,
) -> ObjectiveOutput:
    """DiffusionGemma's SFT loss on one batch (steps 1-6 of the module docstring).

    `supervised` [b, L] bool: response positions (None: all, packed plain text); they must be a suffix of each
    row (single-turn). `valid` [b, L] bool: non-padding positions for the encoder CE (None: all). Random draws,
    in order: corruption (t, uniforms, tokens), the scored block, the self-conditioning coins.
    """
    if not 0.0 <= self_conditioning_p <= 1.0:
        raise ValueError(f"self_conditioning_p={self_conditioning_p!r} is out of range: use a probability in [0, 1]")
    supervised = _check_pair(x0, supervised)
    block_size, _, vocab = geometry(model)
    c = corrupt_uniform(x0, supervised, vocab, generator, eps=eps)
    block_ids = canvas_block_ids(supervised, block_size)
    scored = select_scored_block(block_ids, supervised, generator)
    gen_device = generator.device if generator is not None else x0.device
    coins = (torch.rand(x0.shape[0], generator=generator, device=gen_device) < self_conditioning_p).to(x0.device)
    logits, enc_logits = canvas_forward(model, x0, c.noisy, block_ids, self_conditioning_mask=coins,
                                        with_encoder_logits=True)
    diff = diffusion_ce(logits, x0, scored)
    enc = encoder_ar_ce(enc_logits, x0, valid)
    n_sup = supervised.sum().float()
    n_cor = c.corrupted.sum().float()
    return ObjectiveOutput(
        loss=diff + encoder_loss_weight * enc, logits=logits, top1_positions=supervised, n_masked=n_cor,
        mask_ratio=n_cor / n_sup.clamp(min=1.0),
        parts={"diffusion_ce": diff.detach(), "encoder_ce": enc.detach(), "t_mean": c.t.mean(),
               "self_conditioned": coins.float().mean(), "n_scored": scored.sum().float()},
    )
