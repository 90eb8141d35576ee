"""The three names LLaDA2's and LLaDA-MoE's published modeling files import from
`transformers.modeling_attn_mask_utils`, a module transformers 5.24 removed (`remote_code.SHIMS`:
'attn_mask_utils'). Registered under that module name only when it is missing, before the files are executed.

Written here from the behaviour the files rely on (4.57-5.23), not copied: additive float masks, 0 where a query
may attend, the dtype's minimum where it may not.
- `_prepare_4d_causal_attention_mask(mask, (b, q), embeds, past)`: a 4D [b, 1, q, kv] keep-mask (1 = attend) is
  inverted as given (LLaDA2's eager path: the adapter's all-ones mask -> all zeros, bidirectional); None or a 2D
  [b, kv] padding mask gives the causal mask, padded keys masked.
- `_prepare_4d_causal_attention_mask_for_sdpa`: None when no mask is needed (no mask or an all-ones 2D mask, query
  as long as the keys or one token, not tracing): SDPA then runs on the model's own `is_causal` (the adapter's
  sdpa path passes None: bidirectional); otherwise the same 4D mask, with fully masked query rows cleared (an
  all-minimum row makes SDPA's memory-efficient kernel return NaN).
- `AttentionMaskConverter`: LLaDA-MoE imports the name and never calls it.
"""

from __future__ import annotations

import torch

__all__ = ["AttentionMaskConverter", "_prepare_4d_causal_attention_mask", "_prepare_4d_causal_attention_mask_for_sdpa"]


class AttentionMaskConverter:
    """Imported by modeling_lladamoe.py, never used by it; present so the import succeeds."""

    def __init__(self, is_causal: bool, sliding_window: int | None = None) -> None:
        self.is_causal = is_causal
        self.sliding_window = sliding_window


def _causal(mask: torch.Tensor | None, b: int, q: int, kv: int, dtype: torch.dtype,
            device: torch.device, sliding_window: int | None) -> torch.Tensor:
    """[b, 1, q, kv] additive: query i (at absolute position kv - q + i) sees keys j <= its position (and, with a
    sliding window, j > position - window); padded keys (mask == 0) are hidden from every query."""
    low = torch.finfo(dtype).min
    pos = torch.arange(q, device=device)[:, None] + (kv - q)
    key = torch.arange(kv, device=device)[None, :]
    hidden = key > pos
    if sliding_window is not None:
        hidden = hidden | (key <= pos - sliding_window)
    hidden = hidden[None, None].expand(b, 1, q, kv)
    if mask is not None:
        hidden = hidden | (mask[:, None, None, :].to(device) == 0)
    return torch.zeros(b, 1, q, kv, dtype=dtype, device=device).masked_fill(hidden, low)


def _prepare_4d_causal_attention_mask(attention_mask: torch.Tensor | None, input_shape, inputs_embeds: torch.Tensor,
                                      past_key_values_length: int, sliding_window: int | None = None) -> torch.Tensor:
    b, q = input_shape[0], input_shape[-1]
    kv = q + past_key_values_length
    dtype, device = inputs_embeds.dtype, inputs_embeds.device
    if attention_mask is not None and attention_mask.dim() == 4:
        if tuple(attention_mask.shape) != (b, 1, q, kv):
            raise ValueError(f"4D attention mask of shape {tuple(attention_mask.shape)}; expected {(b, 1, q, kv)}")
        inverted = 1.0 - attention_mask.to(dtype)
        return inverted.masked_fill(inverted.to(torch.bool), torch.finfo(dtype).min)
    return _causal(attention_mask, b, q, kv, dtype, device, sliding_window)


def _prepare_4d_causal_attention_mask_for_sdpa(attention_mask: torch.Tensor | None, input_shape,
                                               inputs_embeds: torch.Tensor, past_key_values_length: int,
                                               sliding_window: int | None = None) -> torch.Tensor | None:
    b, q = input_shape[0], input_shape[-1]
    kv = q + past_key_values_length
    tracing = torch.jit.is_tracing() or isinstance(inputs_embeds, torch.fx.Proxy)
    no_padding = attention_mask is None or (attention_mask.dim() == 2 and bool(torch.all(attention_mask == 1)))
    if no_padding and not tracing and (q == 1 or kv == q) and sliding_window is None:
        return None
    mask = _prepare_4d_causal_attention_mask(attention_mask, input_shape, inputs_embeds, past_key_values_length,
                                             sliding_window)
    if mask.device.type == "cuda":
        full = torch.all(mask == torch.finfo(mask.dtype).min, dim=-1, keepdim=True)
        mask = mask.mul(~full)
    return mask
