"""Training monitors as pure functions: gradient norms, top-1 frequency, legacy warning, crossings, collapse, Gini.

Nothing here touches a model's state or an optimizer. Tensor functions return tensors (no host sync: the
caller decides when to pay for `.item()`); series functions take plain sequences / numpy arrays indexed by step.

Costs, measured against a LoRA training step of the same batch: the global grad norm through
`torch._foreach_norm` is < 1% of a LoRA step; top-1 on the training logits ~0.1%; top-1 on the clean batch
needs an extra forward (~35% of a step), which is why the trainer runs it every `cfg.top1_every` steps.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

# The series monitors (numpy only) live in series.py; monitors is where callers have always found them.
from dlm_triage.series import (  # noqa: F401
    CONCENTRATION_DEFINITIONS,
    CONCENTRATION_LAST_STEPS,
    LAST_FRACTION,
    finite_or_diverged,
    first_crossing,
    gini,
    gradient_concentration,
    is_collapsed,
    last_fraction_start,
    legacy_fires,
    legacy_warning,
    top_share,
)

# -- gradient norms ------------------------------------------------------------------------------------

def global_grad_norm(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of the gradients of `params` (pre-clip), as a 0-dim float32 tensor.

    ||g|| = sqrt(sum_p ||g_p||^2), one fused `torch._foreach_norm` kernel per device/dtype group, accumulated in
    float32 (bf16 gradients would otherwise be summed in bf16). Parameters without a gradient count as zero.
    No host sync: call `.item()` when the value is needed (that is the sync point).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), dtype=torch.float32)
    norms = torch._foreach_norm(grads, 2, dtype=torch.float32)
    return torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]), 2)


def matrix_grad_norms(named_params: Sequence[tuple[str, torch.Tensor]]) -> torch.Tensor:
    """L2 gradient norm of each parameter, in the order given, as a float32 tensor [n] (0 where no gradient).

    With `peft_methods.adapter_matrices(model)` as input this is the per-adapter-matrix norm the step log
    stores; `global_grad_norm` equals `vector_norm(matrix_grad_norms(...))`.
    """
    if not named_params:
        return torch.zeros(0, dtype=torch.float32)
    device = named_params[0][1].device
    grads = [p.grad for _, p in named_params]
    if all(g is not None and g.device == device for g in grads):  # the training case: one kernel, one stack
        return torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float32))
    if all(g is not None for g in grads):  # adapters spread over devices (device_map): gather on the first
        return torch.stack([n.to(device) for n in torch._foreach_norm(grads, 2, dtype=torch.float32)])
    out = torch.zeros(len(grads), dtype=torch.float32, device=device)
    idx = [i for i, g in enumerate(grads) if g is not None]
    if idx:
        norms = torch._foreach_norm([grads[i] for i in idx], 2, dtype=torch.float32)
        out[idx] = torch.stack([n.to(device) for n in norms])
    return out


# -- top-1 frequency -----------------------------------------------------------------------------------

def top1_frequency(logits: torch.Tensor, positions_mask: torch.Tensor) -> torch.Tensor:
    """Argmax mode frequency (paper App. D): max_v |{i in I : argmax_i = v}| / |I|, as a 0-dim float32 tensor.

    `logits` [B, L, V] (aligned: logits[:, i] predicts token i), `positions_mask` [B, L] bool = the evaluated
    positions I. The frequency is POOLED over all evaluated positions of the batch (not averaged per
    sequence): one histogram of argmax tokens over I. NaN when I is empty (0 / 0). No host sync: the histogram
    is a scatter-add of the mask over all positions (a boolean index would need the count of I on the host).
    """
    if logits.dim() != 3 or positions_mask.shape != logits.shape[:2]:
        raise ValueError(
            f"top1_frequency: logits must be [B, L, V] and positions_mask [B, L]; got {tuple(logits.shape)} "
            f"and {tuple(positions_mask.shape)}"
        )
    return top1_frequency_of_predictions(logits.argmax(dim=-1), positions_mask, logits.shape[-1])


def top1_frequency_of_predictions(pred_ids: torch.Tensor, positions_mask: torch.Tensor, n_classes: int) -> torch.Tensor:
    """`top1_frequency` from the argmax ids [B, L] already taken (what the trainer keeps per micro-batch, so
    micro-batches pool into one histogram without holding their logits); `n_classes` = the vocabulary size."""
    if pred_ids.shape != positions_mask.shape:
        raise ValueError(f"top1_frequency: pred_ids {tuple(pred_ids.shape)} and positions_mask "
                         f"{tuple(positions_mask.shape)} must have the same shape")
    pred = pred_ids.flatten()  # [B*L]
    w = positions_mask.flatten().to(torch.float32)
    counts = torch.zeros(n_classes, dtype=torch.float32, device=pred_ids.device).scatter_add_(0, pred, w)
    return counts.max() / w.sum()
