"""A tiny DiffusionGemma built from transformers' own classes, saved as a local checkpoint (offline, ~1 s).

`DiffusionGemmaForBlockDiffusion(DiffusionGemmaConfig(text_config=DiffusionGemmaTextConfig(...),
vision_config=Gemma4VisionConfig(...)))` at tiny sizes: 2 text layers (one sliding-attention, one
full-attention, as the checkpoint's 5:1 pattern ends), MoE with 2 experts / top-1, Gemma 4's attention_k_eq_v
geometry on the full-attention layer (no v_proj there, one KV head of `global_head_dim`), encoder text stack tied
to the decoder (the checkpoint's `tie_word_embeddings`), and a one-layer vision tower that only has to exist
(the config requires it; text-only training never calls it). The tokenizer is the tiny family's character
tokenizer (`dlm_triage.tiny.CharTokenizer`, [PAD]=0); the three image special ids sit past its vocabulary, so
no text token is ever read as an image placeholder.

`save_tiny_diffusion_gemma`: random init, enough for the family's load/forward/LoRA tests.
`ensure_tiny_diffusion_gemma`: the `tiny_gemma` family's default model, pretrained locally on the tiny family's
corpus (`dlm_triage.tiny`) with DiffusionGemma's own objective (`diffusion_gemma.training_loss`: uniform-noise
canvas, diffusion CE + encoder CE, self-conditioning) and the tiny family's optimiser and schedule; cached like
the tiny model (`tiny.ensure_built`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

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


PRETRAIN_STEPS = 300
"""Pretraining updates of the tiny_gemma default model (batch 16 x 32 tokens)."""
PRETRAIN = dict(batch_size=16, seq_len=32, lr=3e-3, warmup=30, weight_decay=0.01, seed=1234, clip=1.0)
RECIPE_VERSION = 1


def recipe(pretrain_steps: int) -> dict:
    from dlm_triage.tiny import CHARS

    return {"recipe_version": RECIPE_VERSION, "pretrain_steps": pretrain_steps, "text": TEXT_KWARGS,
            "vision": VISION_KWARGS, "canvas_length": CANVAS_LENGTH, "pretrain": PRETRAIN, "chars": CHARS}


def recipe_key(pretrain_steps: int) -> str:
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps(recipe(pretrain_steps), sort_keys=True).encode()).hexdigest()[:10]
    return f"tiny-gemma-v{RECIPE_VERSION}-s{pretrain_steps}-{digest}"


def pretrain_tiny_diffusion_gemma(out_dir: Path, pretrain_steps: int,
                                  progress: Callable[[int, int], None] | None = None) -> dict:
    """Build the tiny model, pretrain it on the tiny corpus with the family's own objective (CPU, deterministic),
    save model + tokenizer to out_dir. Returns stats."""
    from dlm_triage import diffusion_gemma
    from dlm_triage.tiny import CharTokenizer, pretrain_loop

    p = PRETRAIN
    tok = CharTokenizer()
    model = build_tiny_diffusion_gemma(tok.vocab_size, seed=p["seed"])
    model.train()
    params = [q for q in model.parameters() if q.requires_grad]
    losses, train_s = pretrain_loop(params, p, pretrain_steps, tok,
                                    lambda ids, gen: diffusion_gemma.training_loss(model, ids, gen).loss, progress)
    model.eval()
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return {"pretrain_wall_s": round(train_s, 2), "ms_per_step": round(1000 * train_s / max(1, pretrain_steps), 1),
            "first_train_loss": losses[0] if losses else None,
            "final_train_loss_avg20": sum(losses[-20:]) / len(losses[-20:]) if losses else None}


def ensure_tiny_diffusion_gemma(cache_dir: Path | None = None, *, pretrain_steps: int = PRETRAIN_STEPS,
                                progress: Callable[[int, int], None] | None = None) -> Path:
    """The directory of the pretrained tiny DiffusionGemma (the tiny_gemma family's default), built once."""
    from dlm_triage.tiny import ensure_built

    if not isinstance(pretrain_steps, int) or isinstance(pretrain_steps, bool) or pretrain_steps < 0:
        raise ValueError(f"pretrain_steps={pretrain_steps!r} is invalid: use an integer >= 0")
    return ensure_built(cache_dir, recipe_key(pretrain_steps), recipe(pretrain_steps), lambda tmp: pretrain_tiny_diffusion_gemma(tmp, pretrain_steps, progress),
                        seed=PRETRAIN["seed"])
