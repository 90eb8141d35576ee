"""Training objectives: how a batch is corrupted and scored. The paper's fixed-rho masked CE and each family's
own recipe, as named options (`RunConfig.objective`, registry `config.OBJECTIVES`).

Primitives (shared by every objective, and by the tiny model's pretraining):

- `mask_tokens`: every eligible token of x0 is replaced by the mask token independently with probability rho
  ('bernoulli'), or exactly round(rho * L_eligible) tokens per row are ('exact'). rho is one float or one value
  per row. With `at_least_one` (the paper objective) a row whose draw masks nothing gets its eligible position
  with the smallest uniform masked (a row without one would contribute nothing and make 'per_masked_token'
  undefined for a batch of one). `protect` / `eligible` restrict which positions may be masked.
- `token_ce`: CE_i = -log p_theta(x0_i | x_t) at every position, float32, [b, L].
- `masked_diffusion_loss`: the paper's loss with its normalisations, CE_i over masked positions M, b x L:
  'per_masked_token' (Eq. 1, default) sum_M CE / |M|; 'per_token' sum_M CE / (b L); 'per_token_over_p'
  (LLaDA pretraining) sum_M CE / p_row / (b L).

Host syncs: none on the hot path. Every check that would read a device tensor on the host (`.all()`, `.any()`,
`int(mask.sum())`, a boolean index) runs only with `check=True` (the default for direct callers); the trainer
validates its inputs once at setup (`Objective.check`, the data loader) and calls with `check=False`. The
noise levels t of the sampled objectives are drawn on the host as Python floats (`random.Random`), so NaRA's
lambda and the logged t need no device read; the masking uniforms come from a CPU `torch.Generator` (the same
draw on every device) and are copied to the device without blocking.

Cost: the CE is taken at every position in float32 (no boolean gather, whose output size is data-dependent and
needs a host sync). With bf16 logits that is a transient float32 copy of [b, L, V] (LLaDA-8B, 4 x 1024 tokens:
~2 GiB) kept for the backward; the public recipes (dllm's trainers, dFactory) also take the CE at every
position.

One module, over 400 lines: the objectives are small classes over the same three primitives, kept side by side so
the recipes read against each other and `get_objective` lists them in one place.
"""

from __future__ import annotations

import importlib
import math
import random
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from dlm_triage.config import MASK_SAMPLINGS, NORMALISATIONS, OBJECTIVES


class ObjectiveError(ValueError):
    """An objective that cannot run on this family, tokenizer or data; the message names the value and the fix."""


# -- primitives ---------------------------------------------------------------------------------------------

def _check_ratio(r: torch.Tensor) -> None:
    if not torch.isfinite(r).all() or (r <= 0).any() or (r >= 1).any():
        raise ValueError(f"mask_ratio={r.tolist()} is out of range: use values strictly between 0 and 1")


def _ratio(mask_ratio: float | Sequence[float] | torch.Tensor, batch: int, device, check: bool) -> float | torch.Tensor:
    """A Python float stays a float (compared on the device as a scalar, no host->device copy); a sequence or a
    tensor becomes a float32 [batch] tensor on `device`."""
    if isinstance(mask_ratio, (int, float)) and not isinstance(mask_ratio, bool):
        r = float(mask_ratio)
        if not (math.isfinite(r) and 0.0 < r < 1.0):
            raise ValueError(f"mask_ratio={r!r} is out of range: use a number strictly between 0 and 1")
        return r
    r = torch.as_tensor(mask_ratio, dtype=torch.float32)
    if r.device.type == "cpu" and torch.device(device).type != "cpu":
        r = r.to(device, non_blocking=True)  # a host list: an async copy, no stream sync
    else:
        r = r.to(device)
    if r.dim() == 0:
        r = r.expand(batch)
    if r.shape != (batch,):
        raise ValueError(
            f"mask_ratio has shape {tuple(r.shape)}: give one float, or one value per row (shape ({batch},))"
        )
    if check:
        _check_ratio(r)
    return r


def mask_tokens(
    input_ids: torch.Tensor,
    mask_ratio: float | Sequence[float] | torch.Tensor,
    mask_token_id: int,
    generator: torch.Generator | None = None,
    *,
    sampling: str = "bernoulli",
    protect: torch.Tensor | None = None,
    eligible: torch.Tensor | None = None,
    at_least_one: bool = True,
    check: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask `input_ids` [b, L] at ratio rho; returns (noisy_ids, mask) with mask a bool [b, L].

    rho is one float or one value per row. `generator` (a torch.Generator on any device) makes the draw
    reproducible: the uniforms are drawn on the generator's device, then moved to the ids' device.
    `protect` (bool, [L] or [b, L]) marks positions that are never masked; `eligible` (bool [b, L]) the only
    positions that may be (e.g. the response of an SFT example). `at_least_one`: every row keeps >= 1 masked
    position (the eligible position with the smallest uniform). `check=False` skips the checks that need a host
    sync (rho in (0, 1) for tensor rho, every row has an eligible position): the caller validated them.
    """
    if sampling not in MASK_SAMPLINGS:
        raise ValueError(f"sampling={sampling!r} is not known: use one of {list(MASK_SAMPLINGS)}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids has shape {tuple(input_ids.shape)}: give a [batch, seq_len] tensor")
    b, length = input_ids.shape
    device = input_ids.device
    rho = _ratio(mask_ratio, b, device, check)
    ok = torch.ones(b, length, dtype=torch.bool, device=device) if eligible is None else eligible.to(device, torch.bool)
    if ok.shape != (b, length):
        raise ValueError(f"eligible has shape {tuple(ok.shape)}: give a bool tensor of shape ({b}, {length})")
    if protect is not None:
        protect = protect.to(device=device, dtype=torch.bool)
        if protect.shape not in ((length,), (b, length)):
            raise ValueError(
                f"protect has shape {tuple(protect.shape)}: give a bool tensor of shape ({length},) or ({b}, {length})"
            )
        ok = ok & ~protect.expand(b, length)
    n_eligible = ok.sum(dim=1)
    if check and (n_eligible == 0).any():
        rows = torch.nonzero(n_eligible == 0).flatten().tolist()
        raise ValueError(f"rows {rows} have every position protected: nothing can be masked; protect fewer positions")

    gen_device = generator.device if generator is not None else device
    u = torch.rand(b, length, generator=generator, device=gen_device)
    u = u.to(device, non_blocking=True) if u.device != device else u
    # Protected positions get u = 2 so they are never chosen (uniforms lie in [0, 1)).
    u = torch.where(ok, u, torch.full_like(u, 2.0))
    rho_col = rho if isinstance(rho, float) else rho[:, None]
    if sampling == "bernoulli":
        mask = u < rho_col
    else:
        k = torch.round(rho_col * n_eligible[:, None].float()).long().clamp(min=1)
        k = torch.minimum(k, n_eligible[:, None])
        ranks = u.argsort(dim=1).argsort(dim=1)  # rank of each position's uniform within its row
        mask = ranks < k
    if at_least_one:  # without a branch on the device: OR in the row minimum where the row is empty
        empty = ~mask.any(dim=1, keepdim=True)
        first = u.argmin(dim=1, keepdim=True)
        mask = mask | (empty & (torch.arange(length, device=device)[None, :] == first))
    mask = mask & ok
    noisy = torch.where(mask, torch.full_like(input_ids, mask_token_id), input_ids)
    return noisy, mask


def token_ce(logits: torch.Tensor, targets: torch.Tensor, *, forbid_token: int | None = None) -> torch.Tensor:
    """CE_i = -log softmax(logits_i)[targets_i] at every position, float32 [b, L].

    `forbid_token`: that token's logit is set to -inf first (MDLM's SUBS parameterisation: the mask token gets
    zero probability, so its never-trained head row takes no mass)."""
    z = logits.float()
    if forbid_token is not None:
        # A [V] comparison, not torch.tensor([id], device=...): building a device tensor from host data is a
        # blocking copy.
        z = z.masked_fill(torch.arange(z.shape[-1], device=z.device) == forbid_token, float("-inf"))
    b, length, v = z.shape
    return F.cross_entropy(z.reshape(b * length, v), targets.reshape(b * length), reduction="none").view(b, length)


def _masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # where(), not values * mask: an inf CE at an unmasked position must not turn the sum into NaN (inf * 0).
    return torch.where(mask, values, torch.zeros_like(values)).sum()


def masked_diffusion_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    *,
    normalisation: str = "per_masked_token",
    mask_ratio: float | Sequence[float] | torch.Tensor | None = None,
    check: bool = True,
) -> torch.Tensor:
    """Masked CE (float32) over positions where `mask` is True, normalised as named (see module docstring).

    logits [b, L, V] aligned so logits[:, i] predicts targets[:, i]; targets [b, L] (the clean ids x0);
    mask bool [b, L]. `mask_ratio` (float or [b]) is required for 'per_token_over_p'. `check=False`: the
    caller guarantees >= 1 masked position (no host sync to verify it).
    """
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation={normalisation!r} is not known: use one of {list(NORMALISATIONS)}")
    if logits.dim() != 3 or targets.shape != logits.shape[:2] or mask.shape != targets.shape:
        raise ValueError(
            f"shapes do not line up: logits {tuple(logits.shape)}, targets {tuple(targets.shape)}, "
            f"mask {tuple(mask.shape)}; give logits [b, L, V] and targets/mask [b, L]"
        )
    mask = mask.to(torch.bool)
    if check and not mask.any():
        raise ValueError("mask selects no position: mask at least one token per batch (mask_tokens does)")
    b, length = targets.shape
    ce = token_ce(logits, targets)
    if normalisation == "per_masked_token":
        return _masked_sum(ce, mask) / mask.sum().clamp_min(1)
    if normalisation == "per_token":
        return _masked_sum(ce, mask) / (b * length)
    if mask_ratio is None:
        raise ValueError("normalisation='per_token_over_p' needs mask_ratio (the p of each row): pass mask_ratio=")
    p = _ratio(mask_ratio, b, logits.device, check)
    p_col = p if isinstance(p, float) else p[:, None]
    return _masked_sum(ce / p_col, mask) / (b * length)


def cart_weights(mask: torch.Tensor, p: float = 0.3) -> torch.Tensor:
    """Dream's CART loss weight at each masked position, float32 [b, L] (0 elsewhere).

    w_i = sum over unmasked j != i of 0.5 * p * (1 - p)^(|i - j| - 1): the more clean context sits close to a
    masked token, the more its CE counts (dllm `pipelines/dream/trainer.py`, `cart_weight`, geo_p = 0.3)."""
    length = mask.shape[1]
    idx = torch.arange(length, device=mask.device)
    dist = (idx[None, :] - idx[:, None]).abs()
    geo = 0.5 * p * (1.0 - p) ** (dist - 1).clamp(min=0).float()
    geo = geo.masked_fill(dist == 0, 0.0)
    return ((~mask).float() @ geo.T) * mask.float()


# -- objectives ---------------------------------------------------------------------------------------------

@dataclass
class ObjectiveOutput:
    """What one forward under an objective gives the trainer (device tensors; `noise_level` a host float)."""

    loss: torch.Tensor
    """0-dim float32, the loss that is backpropagated."""
    logits: torch.Tensor
    """[b, L, V] aligned with the clean ids (top-1 at masked positions reads them)."""
    mask: torch.Tensor
    """bool [b, L], the corrupted positions."""
    noise_level: float | None
    """The batch's t (mean over rows when t is drawn per row): logged as `mask_ratio` and the lambda of a
    noise-conditioned adapter (NaRA, lora_diffusion). None: the objective has a fixed rho; the logged mask_ratio
    is `mask_ratio` below, or the realised share of masked tokens."""
    top1_positions: torch.Tensor | None = None
    """Where top-1 at masked positions is read (None: `mask`)."""
    n_masked: torch.Tensor | None = None
    """0-dim, the step log's n_masked (None: mask.sum())."""
    mask_ratio: torch.Tensor | None = None
    """0-dim, the step log's mask_ratio when noise_level is None (None: the share of masked tokens)."""


class Objective:
    """A named objective: `check` at setup (clear errors before training), `forward` per step (no host sync).

    `forward(r, x0, maskable)` reads from `r`: model, family, mask_id, generator (CPU torch.Generator: masking
    uniforms), host_rng (random.Random: noise levels), noise_conditioned, cfg. `maskable` (bool [b, L]) marks positions
    that may be corrupted and are scored: the response of an SFT example (its EOS padding included), every
    position of packed text, minus the family's protected positions.
    """

    name: str = ""
    source: str = ""
    samples_t: bool = True
    """True: a noise level t is drawn per batch or row; cfg.mask_ratio (the paper's rho axis) is not used."""
    eps: float = 1e-3

    def check(self, cfg: Any, family: Any, tokenizer: Any, mask_id: int) -> None:
        """Raise ObjectiveError when this objective cannot run with this family/tokenizer/config."""

    # Per-row noise levels t (host floats) and the masking probability of each row.
    def sample_t(self, b: int, rng: random.Random) -> list[float]:
        return [self.eps + (1.0 - self.eps) * rng.random() for _ in range(b)]

    def mask_prob(self, t: list[float]) -> list[float]:
        return t

    def forward_logits(self, r: Any, noisy: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return r.family.logits(r.model, noisy)

    def reduce(self, ce: torch.Tensor, mask: torch.Tensor, maskable: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def normaliser(self, cfg: Any, out: "ObjectiveOutput", maskable: torch.Tensor) -> torch.Tensor:
        """What this objective divides its batch sum by (0-dim float32, on the device, before its clamp to >= 1):
        additive over sub-batches, so gradient accumulation weights micro-batch j by D_j / sum D and k
        micro-batches give the loss of one batch of k*b (train.py). Default: the number of rows."""
        return out.loss.new_full((), float(maskable.shape[0]), dtype=torch.float32)

    forbid_mask_logit: bool = False

    def forward(self, r: Any, x0: torch.Tensor, maskable: torch.Tensor) -> ObjectiveOutput:
        b = x0.shape[0]
        t_host = self.sample_t(b, r.host_rng)
        noisy, mask = mask_tokens(x0, self.mask_prob(t_host), r.mask_id, r.generator, eligible=maskable,
                                  at_least_one=False, check=False)
        lam = sum(t_host) / b
        if r.noise_conditioned:
            from dlm_triage.peft_methods import set_noise_level

            set_noise_level(r.model, lam)
        logits = self.forward_logits(r, noisy, x0)
        ce = token_ce(logits, x0, forbid_token=r.mask_id if self.forbid_mask_logit else None)
        t = torch.tensor(t_host, dtype=torch.float32).to(x0.device, non_blocking=True)
        return ObjectiveOutput(self.reduce(ce, mask, maskable, t), logits, mask, lam)


class PaperObjective(Objective):
    """The paper's study setting (Eq. 1): every eligible token masked at the fixed ratio rho = cfg.mask_ratio
    (cfg.mask_sampling), >= 1 masked position per row, CE on masked positions under cfg.normalisation
    (default: per masked token)."""

    name = "paper"
    source = "the paper, Eq. 1 ('When Top-1 Fails: Calibrating LoRA Monitors for Masked Diffusion LMs')"
    samples_t = False

    def forward(self, r: Any, x0: torch.Tensor, maskable: torch.Tensor) -> ObjectiveOutput:
        cfg = r.cfg
        noisy, mask = mask_tokens(x0, cfg.mask_ratio, r.mask_id, r.generator, sampling=cfg.mask_sampling,
                                  eligible=maskable, check=False)
        if r.noise_conditioned:
            from dlm_triage.peft_methods import set_noise_level

            set_noise_level(r.model, cfg.mask_ratio)  # lambda = the batch's (nominal) mask ratio
        logits = r.family.logits(r.model, noisy)
        loss = masked_diffusion_loss(logits, x0, mask, normalisation=cfg.normalisation,
                                     mask_ratio=cfg.mask_ratio, check=False)
        return ObjectiveOutput(loss, logits, mask, None)

    def normaliser(self, cfg, out, maskable):
        if cfg.normalisation == "per_masked_token":
            return out.mask.sum().float()
        return out.loss.new_full((), float(out.mask.numel()), dtype=torch.float32)  # b * L


class LLaDAPretrainObjective(Objective):
    """LLaDA pretraining: t ~ U[0, 1) per sequence, p = (1 - eps) t + eps (eps = 1e-3), each token masked with
    probability p; loss = sum over masked of CE / p, divided by b * L."""

    name = "llada_pretrain"
    source = "ML-GSAI/LLaDA GUIDELINES.md 'Pre-training' (forward_process, eps=1e-3); Nie et al. 2025 Alg. 1"

    def sample_t(self, b: int, rng: random.Random) -> list[float]:
        return [rng.random() for _ in range(b)]

    def mask_prob(self, t: list[float]) -> list[float]:
        return [(1.0 - self.eps) * x + self.eps for x in t]

    def reduce(self, ce, mask, maskable, t):
        p = (1.0 - self.eps) * t + self.eps
        return _masked_sum(ce / p[:, None], mask) / mask.numel()

    def normaliser(self, cfg, out, maskable):
        return out.loss.new_full((), float(out.mask.numel()), dtype=torch.float32)  # b * L


class LLaDASFTObjective(LLaDAPretrainObjective):
    """LLaDA SFT: as pretraining (t per sequence, p = (1 - eps) t + eps), but only response tokens are masked
    (the prompt never is); loss = sum over masked of CE / p / (answer length of the row), averaged over the
    batch. The answer length counts the response with its EOS padding, which is masked and trained on."""

    name = "llada_sft"
    source = "ML-GSAI/LLaDA GUIDELINES.md 'SFT' (answer_lengths include the padded <EOS>)"

    def reduce(self, ce, mask, maskable, t):
        p = (1.0 - self.eps) * t + self.eps
        answer_len = maskable.sum(dim=1, keepdim=True).clamp_min(1).float()
        return _masked_sum(ce / p[:, None] / answer_len, mask) / ce.shape[0]

    def normaliser(self, cfg, out, maskable):
        return out.loss.new_full((), float(maskable.shape[0]), dtype=torch.float32)  # rows


class MDLMObjective(Objective):
    """MDLM (continuous time, SUBS, log-linear noise): antithetic t over the batch, t_i = (1 - eps)((u_i / b +
    i / b) mod 1) + eps; each token masked with probability (1 - eps) t (the log-linear schedule's move
    chance 1 - exp(-sigma(t))); the mask token's logit is -inf; loss = sum over masked of CE * dsigma/expm1(sigma)
    (= 1 / t), divided by the number of maskable tokens (unmasked tokens contribute 0 under SUBS)."""

    name = "mdlm"
    source = ("kuleshov-group/mdlm diffusion.py (_sample_t antithetic, sampling_eps=1e-3; _subs_parameterization; "
              "_forward_pass_diffusion weight dsigma/expm1(sigma)); noise_schedule.py LogLinearNoise(eps=1e-3)")
    forbid_mask_logit = True

    def sample_t(self, b: int, rng: random.Random) -> list[float]:
        return [(1.0 - self.eps) * ((rng.random() / b + i / b) % 1.0) + self.eps for i in range(b)]

    def mask_prob(self, t: list[float]) -> list[float]:
        return [(1.0 - self.eps) * x for x in t]

    def check(self, cfg, family, tokenizer, mask_id):
        special = {n: getattr(tokenizer, f"{n}_token_id", None) for n in ("pad", "eos", "bos", "unk")}
        clash = [n for n, tid in special.items() if isinstance(tid, int) and tid == mask_id]
        if clash or getattr(family, "name", "") == "ar":
            raise ObjectiveError(
                f"objective='mdlm' (SUBS) sets the mask token's logit to -inf, but family {family.name!r} has no "
                f"dedicated mask token (mask id {mask_id} is also its {'/'.join(clash) or 'fallback'} token, which "
                "the data contains): use a model with a mask token, or objective='paper'"
            )

    def reduce(self, ce, mask, maskable, t):
        # dsigma / expm1(sigma) for sigma(t) = -log1p(-(1 - eps) t): ((1-eps)/(1-(1-eps)t)) / ((1-eps)t/(1-(1-eps)t)) = 1/t
        return _masked_sum(ce / t[:, None], mask) / maskable.sum().clamp_min(1)

    def normaliser(self, cfg, out, maskable):
        return maskable.sum().float()


def block_diffusion_keep(length: int, block_size: int, device=None) -> torch.Tensor:
    """dFactory's block-diffusion training mask over [noisy copy | clean copy] (2L x 2L, bool, True = attend).

    Position q < L is noisy (block q // B), q >= L clean (block (q - L) // B). Noisy attends noisy of its own
    block (block diagonal) and clean of earlier blocks (offset block-causal); clean attends clean of its own and
    earlier blocks (block-causal)."""
    idx = torch.arange(2 * length, device=device)
    clean = idx >= length
    block = torch.where(clean, idx - length, idx) // block_size
    bq, bk, cq, ck = block[:, None], block[None, :], clean[:, None], clean[None, :]
    diagonal = (bq == bk) & (cq == ck)
    offset_causal = (bq > bk) & ck & ~cq
    causal = (bq >= bk) & ck & cq
    return diagonal | offset_causal | causal


class LLaDA2SFTObjective(Objective):
    """LLaDA2 SFT (dFactory): t ~ U[0.3, 0.8] per example, each response token masked with probability t (the
    prompt never); loss = sum over masked of CE / number of masked tokens in the batch (no 1/t weight).

    cfg.block_size B > 0: dFactory's block-diffusion training. The model sees [noisy | clean] (2L tokens,
    position ids 0..L-1 twice) under `block_diffusion_keep` as an additive float mask (0 / -inf, the model's
    dtype), and the loss reads the logits of the noisy half. The families whose forward takes that 4D mask and
    position ids: tiny (Llama under sdpa/eager) and llada2 (as dFactory calls it, sdpa)."""

    name = "llada2_sft"
    source = ("inclusionAI/dFactory tasks/dataset/data_transform.py (sft_noise_transition, noise_range "
              "(0.3, 0.8)); tasks/train_llada2_bd.py (loss = sum / #labels, same_token_labels; "
              "block_diffusion_mask, block_size 32 in configs/sft/llada2_mini_bd_sft.yaml)")
    low, high = 0.3, 0.8
    BLOCK_FAMILIES = ("tiny", "llada2")

    def __init__(self) -> None:
        self._mask_cache: dict[tuple, torch.Tensor] = {}

    def sample_t(self, b: int, rng: random.Random) -> list[float]:
        return [self.low + (self.high - self.low) * rng.random() for _ in range(b)]

    def check(self, cfg, family, tokenizer, mask_id):
        bs = getattr(cfg, "block_size", 0)
        if bs and family.name not in self.BLOCK_FAMILIES:
            raise ObjectiveError(
                f"block_size={bs} (block diffusion) needs a model whose forward takes a 4D attention mask and "
                f"position ids; family {family.name!r} is not one of {list(self.BLOCK_FAMILIES)}: set block_size=0")

    def forward_logits(self, r: Any, noisy: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        bs = getattr(r.cfg, "block_size", 0)
        if not bs:
            return r.family.logits(r.model, noisy)
        b, length = noisy.shape
        dtype = next(r.model.parameters()).dtype
        key = (length, bs, noisy.device, dtype)
        if key not in self._mask_cache:  # built once per shape: a step allocates no mask
            keep = block_diffusion_keep(length, bs, noisy.device)
            self._mask_cache[key] = torch.zeros(keep.shape, dtype=dtype, device=noisy.device).masked_fill(
                ~keep, float("-inf"))[None, None]
        pos = torch.arange(length, device=noisy.device).repeat(2)[None].expand(b, -1)
        full = torch.cat([noisy, x0], dim=1)
        logits = r.family.logits(r.model, full, attention_mask=self._mask_cache[key].expand(b, -1, -1, -1),
                                 position_ids=pos)
        return logits[:, :length]

    def reduce(self, ce, mask, maskable, t):
        return _masked_sum(ce, mask) / mask.sum().clamp_min(1)

    def normaliser(self, cfg, out, maskable):
        return out.mask.sum().float()


class DreamObjective(Objective):
    """Dream (dllm's DreamTrainer on MDLMTrainer): t = eps + (1 - eps) u per row, each maskable token masked with
    probability t (linear schedule), CART weights (geometric p = 0.3) in place of the 1/t weight; loss = sum of
    weighted CE over masked positions divided by the number of maskable tokens in the batch ('token' norm)."""

    name = "dream"
    source = ("ZHZisZZ/dllm dllm/pipelines/dream/trainer.py (cart_weight, loss_weight_type 'cart[geo_p:0.3]'); "
              "dllm/core/trainers/mdlm.py (time_epsilon 1e-3, loss_norm_type 'token')")
    geo_p = 0.3

    def reduce(self, ce, mask, maskable, t):
        return _masked_sum(ce * cart_weights(mask, self.geo_p), mask) / maskable.sum().clamp_min(1)

    def normaliser(self, cfg, out, maskable):
        return maskable.sum().float()


class DiffusionGemmaObjective(Objective):
    """DiffusionGemma's own SFT objective (NeMo AutoModel's recipe; uniform-noise canvas corruption, block-causal
    canvas, diffusion CE + encoder CE, self-conditioning): `dlm_triage.diffusion_gemma.training_loss`, with the
    response (maskable) positions as its supervised positions. Only the diffusion_gemma family runs it
    (config.FAMILY_OBJECTIVES). t is drawn inside on the device-independent generator, so the step logs the
    corrupted share of the supervised tokens as mask_ratio, and a noise-conditioned adapter's lambda is
    cfg.mask_ratio (nominal)."""

    name = "diffusion_gemma"
    source = ("NeMo AutoModel DiffusionGemmaSFTRecipe (corrupt_uniform_random, BlockDiffusionCrossEntropyLoss, "
              "encoder_ar_loss); dlm_triage/diffusion_gemma.py")

    def check(self, cfg, family, tokenizer, mask_id):
        from dlm_triage.config import FAMILY_OBJECTIVES

        if self.name not in FAMILY_OBJECTIVES.get(getattr(family, "name", ""), ()):
            raise ObjectiveError(f"objective='diffusion_gemma' needs the diffusion_gemma family's model, not "
                                 f"{family.name!r}: set family='diffusion_gemma' or pick another objective")

    def forward(self, r: Any, x0: torch.Tensor, maskable: torch.Tensor) -> ObjectiveOutput:
        from dlm_triage import diffusion_gemma

        if r.noise_conditioned:
            from dlm_triage.peft_methods import set_noise_level

            set_noise_level(r.model, r.cfg.mask_ratio)
        # normaliser: the default (rows): its loss has two parts with their own counts, so accumulated
        # micro-batches are weighted equally (exact only when those counts match across micro-batches)
        own = diffusion_gemma.training_loss(r.model, x0, r.generator, supervised=maskable)
        return ObjectiveOutput(own.loss, own.logits, own.top1_positions, None, top1_positions=own.top1_positions,
                               n_masked=own.n_masked, mask_ratio=own.mask_ratio)


def get_objective(name: str) -> Objective:
    """The objective registered as `name` in config.OBJECTIVES ('module:Class'), instantiated."""
    if name not in OBJECTIVES:
        raise ObjectiveError(f"objective={name!r} is not known: use one of {list(OBJECTIVES)}")
    module, _, cls = OBJECTIVES[name].partition(":")
    obj = getattr(importlib.import_module(module), cls)()
    if obj.name != name:
        raise RuntimeError(f"config.OBJECTIVES[{name!r}] points at {OBJECTIVES[name]}, whose name is {obj.name!r}")
    return obj
