"""The masked-diffusion fine-tuning objective: external masking at ratio rho and masked cross-entropy.

Masking (paper Eq. 1; FAMILIES.md "Objective used by the paper"): every token of x0 is replaced by the mask
token independently with probability rho ('bernoulli'), or exactly round(rho * L_eligible) tokens per row are
('exact'). At least one position per row is always masked (a row without one would contribute nothing and make
'per_masked_token' undefined for a batch of one). `protect` marks positions that are never masked (Dream's
position 0, which has no prediction after the logit shift; padding).

Loss, with CE_i = -log p_theta(x0_i | x_t) over masked positions M, b rows of L tokens:

- 'per_masked_token' (paper Eq. 1, the default): sum_{i in M} CE_i / |M|
- 'per_token'        : sum_{i in M} CE_i / (b * L)
- 'per_token_over_p' (LLaDA pretraining, Nie et al. 2025 Alg. 1): sum_{i in M} CE_i / p_row(i) / (b * L), with
  p the mask ratio of the row (a scalar, or one value per row when ratios are sampled per sequence).

CE is computed in float32 on the masked positions only (bf16 logits are upcast after the gather, so a
126k-vocabulary model does not materialise a float32 copy of the whole [b, L, V] tensor).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from dlm_triage.config import MASK_SAMPLINGS, NORMALISATIONS


def _ratio_per_row(mask_ratio: float | Sequence[float] | torch.Tensor, batch: int, device) -> torch.Tensor:
    r = torch.as_tensor(mask_ratio, dtype=torch.float32, device=device)
    if r.dim() == 0:
        r = r.expand(batch)
    if r.shape != (batch,):
        raise ValueError(
            f"mask_ratio has shape {tuple(r.shape)}: give one float, or one value per row (shape ({batch},))"
        )
    if not torch.isfinite(r).all() or (r <= 0).any() or (r >= 1).any():
        raise ValueError(f"mask_ratio={r.tolist()} is out of range: use values strictly between 0 and 1")
    return r


def mask_tokens(
    input_ids: torch.Tensor,
    mask_ratio: float | Sequence[float] | torch.Tensor,
    mask_token_id: int,
    generator: torch.Generator | None = None,
    *,
    sampling: str = "bernoulli",
    protect: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask `input_ids` [b, L] at ratio rho; returns (noisy_ids, mask) with mask a bool [b, L].

    rho is one float or one value per row. `generator` (a torch.Generator on any device) makes the draw
    reproducible: the uniforms are drawn on the generator's device, then moved to the ids' device.
    `protect` (bool, [L] or [b, L]) marks positions that are never masked. Every row keeps >= 1 masked
    position: when the Bernoulli draw masks none, the eligible position with the smallest uniform is masked.
    """
    if sampling not in MASK_SAMPLINGS:
        raise ValueError(f"sampling={sampling!r} is not known: use one of {list(MASK_SAMPLINGS)}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids has shape {tuple(input_ids.shape)}: give a [batch, seq_len] tensor")
    b, length = input_ids.shape
    device = input_ids.device
    rho = _ratio_per_row(mask_ratio, b, device)
    eligible = torch.ones(b, length, dtype=torch.bool, device=device)
    if protect is not None:
        protect = protect.to(device=device, dtype=torch.bool)
        if protect.shape not in ((length,), (b, length)):
            raise ValueError(
                f"protect has shape {tuple(protect.shape)}: give a bool tensor of shape ({length},) or ({b}, {length})"
            )
        eligible = eligible & ~protect.expand(b, length)
    n_eligible = eligible.sum(dim=1)
    if (n_eligible == 0).any():
        rows = torch.nonzero(n_eligible == 0).flatten().tolist()
        raise ValueError(f"rows {rows} have every position protected: nothing can be masked; protect fewer positions")

    gen_device = generator.device if generator is not None else device
    u = torch.rand(b, length, generator=generator, device=gen_device).to(device)
    # Protected positions get u = 2 so they are never chosen (uniforms lie in [0, 1)).
    u = torch.where(eligible, u, torch.full_like(u, 2.0))
    if sampling == "bernoulli":
        mask = u < rho[:, None]
    else:
        k = torch.round(rho * n_eligible.float()).long().clamp(min=1)
        k = torch.minimum(k, n_eligible)
        ranks = u.argsort(dim=1).argsort(dim=1)  # rank of each position's uniform within its row
        mask = ranks < k[:, None]
    # At least one masked position per row: the eligible position with the smallest uniform.
    empty = ~mask.any(dim=1)
    if empty.any():
        first = u.argmin(dim=1)
        mask[empty, first[empty]] = True
    mask &= eligible
    noisy = torch.where(mask, torch.full_like(input_ids, mask_token_id), input_ids)
    return noisy, mask


def masked_diffusion_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    *,
    normalisation: str = "per_masked_token",
    mask_ratio: float | Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Masked CE (float32) over positions where `mask` is True, normalised as named (see module docstring).

    logits [b, L, V] aligned so logits[:, i] predicts targets[:, i]; targets [b, L] (the clean ids x0);
    mask bool [b, L]. `mask_ratio` (float or [b]) is required for 'per_token_over_p'.
    """
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation={normalisation!r} is not known: use one of {list(NORMALISATIONS)}")
    if logits.dim() != 3 or targets.shape != logits.shape[:2] or mask.shape != targets.shape:
        raise ValueError(
            f"shapes do not line up: logits {tuple(logits.shape)}, targets {tuple(targets.shape)}, "
            f"mask {tuple(mask.shape)}; give logits [b, L, V] and targets/mask [b, L]"
        )
    mask = mask.to(torch.bool)
    n_masked = int(mask.sum())
    if n_masked == 0:
        raise ValueError("mask selects no position: mask at least one token per batch (mask_tokens does)")
    b, length = targets.shape
    ce = F.cross_entropy(logits[mask].float(), targets[mask], reduction="none")  # [n_masked]
    if normalisation == "per_masked_token":
        return ce.sum() / n_masked
    if normalisation == "per_token":
        return ce.sum() / (b * length)
    if mask_ratio is None:
        raise ValueError("normalisation='per_token_over_p' needs mask_ratio (the p of each row): pass mask_ratio=")
    p = _ratio_per_row(mask_ratio, b, logits.device)
    p_pos = p[:, None].expand(b, length)[mask]
    return (ce / p_pos).sum() / (b * length)
