"""The tiny model with an adapter config, and a few adapter training steps: shared by the adapter tests
(test_peft_methods, test_nara, test_lora_diffusion)."""

from __future__ import annotations

import torch

from dlm_triage.config import RunConfig
from dlm_triage.data import make_batches
from dlm_triage.objective import mask_tokens, masked_diffusion_loss
from dlm_triage.peft_methods import adapter_matrices, set_noise_level
from dlm_triage.tiny import load_tiny


def seeded_tiny(tiny_model_dir, **fields):
    """torch seeded with 0, then (cfg, model, tok): a RunConfig on the tiny model with `fields`, a fresh copy."""
    torch.manual_seed(0)
    cfg = RunConfig(model_id=str(tiny_model_dir), **fields)
    model, tok = load_tiny(tiny_model_dir)
    return cfg, model, tok


def base_logits(model, cfg, tok, step=0):
    """(ids, logits): the batch of `step` and the model's logits on it, without gradients."""
    ids = make_batches(cfg, tok).batch(step)
    with torch.no_grad():
        return ids, model(input_ids=ids).logits


def train_adapter(model, tok, cfg, *, rhos, steps, lr):
    """AdamW(lr) on the adapter matrices for `steps` masked-diffusion steps, the mask ratio (and noise level)
    cycling through `rhos`. Returns the last step's loss."""
    opt = torch.optim.AdamW([p for _, p in adapter_matrices(model)], lr=lr)
    batches, gen = make_batches(cfg, tok), torch.Generator().manual_seed(0)
    for step in range(steps):
        rho = rhos[step % len(rhos)]
        x0 = batches.batch(step)
        noisy, mask = mask_tokens(x0, rho, tok.mask_token_id, gen)
        set_noise_level(model, rho)
        loss = masked_diffusion_loss(model(input_ids=noisy).logits, x0, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()
