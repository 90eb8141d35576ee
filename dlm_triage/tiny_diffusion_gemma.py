"""A tiny DiffusionGemma built from transformers' own classes, saved as a local checkpoint (offline, ~1 s).

`DiffusionGemmaForBlockDiffusion(DiffusionGemmaConfig(text_config=DiffusionGemmaTextConfig(...),
vision_config=Gemma4VisionConfig(...)))` at tiny sizes: 2 text layers (one sliding-attention, one
full-attention, as the checkpoint's 5:1 pattern ends), MoE with 2 experts / top-1, Gemma 4's attention_k_eq_v
geometry on the full-attention layer (no v_proj there, one KV head of `global_head_dim`), encoder text stack tied
to the decoder (the checkpoint's `tie_word_embeddings`), and a one-layer vision tower that only has to exist
(the config requires it; text-only training never calls it). The tokenizer is the tiny family's character
tokenizer (`dlm_triage.tiny.CharTokenizer`, [PAD]=0); the three image special ids sit past its vocabulary, so
no text token is ever read as an image placeholder.

Random init: enough for the family's load/forward/LoRA tests and the end-to-end run. A pretrained variant (the
tiny family's recipe under the DiffusionGemma objective) can reuse `build_tiny_diffusion_gemma`.
"""

from __future__ import annotations

from pathlib import Path

import torch

CANVAS_LENGTH = 8
"""Block size of the tiny model (the checkpoint's is 256): a 32-token sequence has 4 canvas blocks."""
SLIDING_WINDOW = 12
"""Sliding window of the tiny model's sliding layer (the checkpoint: 1024), < seq_len so the window matters."""

TEXT_KWARGS = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
    head_dim=16, global_head_dim=16, num_global_key_value_heads=1, max_position_embeddings=512,
    sliding_window=SLIDING_WINDOW, num_experts=2, top_k_experts=1, moe_intermediate_size=16,
    layer_types=["sliding_attention", "full_attention"], use_bidirectional_attention="vision",
)
VISION_KWARGS = dict(
    hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
    head_dim=8, patch_size=4, position_embedding_size=16,
)


def build_tiny_diffusion_gemma_config(vocab_size: int, **text_overrides):
    """DiffusionGemmaConfig of the tiny model for a tokenizer of `vocab_size` ids (+3 image special ids)."""
    from transformers import DiffusionGemmaConfig, DiffusionGemmaTextConfig, Gemma4VisionConfig

    kw = dict(TEXT_KWARGS)
    kw.update(text_overrides)
    v = vocab_size + 3
    text = DiffusionGemmaTextConfig(vocab_size=v, pad_token_id=0, eos_token_id=None, bos_token_id=None, **kw)
    return DiffusionGemmaConfig(text_config=text, vision_config=Gemma4VisionConfig(**VISION_KWARGS),
                                canvas_length=CANVAS_LENGTH, boi_token_id=v - 3, eoi_token_id=v - 2,
                                image_token_id=v - 1)


def build_tiny_diffusion_gemma(vocab_size: int, seed: int = 0, **text_overrides):
    """A random-init tiny DiffusionGemmaForBlockDiffusion (deterministic in `seed`)."""
    from transformers import DiffusionGemmaForBlockDiffusion

    torch.manual_seed(seed)
    return DiffusionGemmaForBlockDiffusion(build_tiny_diffusion_gemma_config(vocab_size, **text_overrides))


def save_tiny_diffusion_gemma(out_dir: Path | str, seed: int = 0) -> Path:
    """Build the tiny model and save it with its tokenizer as a checkpoint directory; returns the directory.

    Load it like any DiffusionGemma: `RunConfig(family='diffusion_gemma', model_id=str(out_dir))`.
    """
    from dlm_triage.tiny import CharTokenizer

    out = Path(out_dir)
    tok = CharTokenizer()
    model = build_tiny_diffusion_gemma(tok.vocab_size, seed=seed)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
