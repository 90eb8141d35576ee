"""Run and sweep configuration: one frozen, validated record per fine-tune.

A `RunConfig` is the single source of truth for a run. It is validated at construction (every problem is
collected and reported once, naming the value and the fix), it serialises to JSON, and its hash is the cache
key of the run, the run id, and the key under which the run lands in DuckDB.

Fields excluded from the hash (`HASH_EXCLUDED`) change where or how fast a run executes, not what it computes.

One module, over 400 lines: `RunConfig`'s fields, the validation that collects every problem (`_validate_run`)
and `SweepSpec`, which expands into RunConfigs, are one contract that changes together.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from dlm_triage.defaults import SWEEP_AXIS_DEFAULTS

FAMILIES = ("tiny", "llada", "llada2", "llada_moe", "dream", "mdlm", "generic_mlm", "ar", "diffusion_gemma",
            "tiny_ar", "tiny_gemma")
METHODS = ("lora", "rslora", "dora", "pissa", "nara", "lora_diffusion")
NORMALISATIONS = ("per_masked_token", "per_token", "per_token_over_p")
MASK_SAMPLINGS = ("bernoulli", "exact")
ALPHA_CONVENTIONS = ("fixed", "per_rank")
DTYPES = ("auto", "float32", "bfloat16", "float16")
EARLY_WARNING_ACTIONS = ("flag", "stop")
CHAT_TEMPLATES = ("auto", "require", "none")

# Training objectives: name -> "module:Class" (imported on use by objective.get_objective, so this module stays
# free of torch). Adding an objective is one line here; its class sets `name` to the key.
OBJECTIVES: dict[str, str] = {
    "paper": "dlm_triage.objective:PaperObjective",
    "llada_pretrain": "dlm_triage.objective:LLaDAPretrainObjective",
    "llada_sft": "dlm_triage.objective:LLaDASFTObjective",
    "mdlm": "dlm_triage.objective:MDLMObjective",
    "llada2_sft": "dlm_triage.objective:LLaDA2SFTObjective",
    "dream": "dlm_triage.objective:DreamObjective",
    "diffusion_gemma": "dlm_triage.objective:DiffusionGemmaObjective",
}
FAMILY_OBJECTIVES = {"diffusion_gemma": ("diffusion_gemma",), "tiny_gemma": ("diffusion_gemma",)}
"""Families with their own objective: the only objectives they can run, the first their default (others: 'paper').
The family's own objective needs that family's model (objective -> family, checked too)."""


def draws_own_t(objective: str) -> bool:
    """True for the objectives of this registry that draw t themselves and ignore rho (llada_sft, mdlm, ...):
    their runs refuse mask_ratio / mask_sampling / normalisation and are named by the objective. A family's own
    objective (diffusion_gemma) keeps the run id and knobs it had before objectives were named."""
    return objective not in FIXED_RHO_OBJECTIVES and not any(objective in v for v in FAMILY_OBJECTIVES.values())


def default_objective(family: str) -> str:
    """The objective a run of `family` gets when none is set: the family's own, else 'paper'."""
    return FAMILY_OBJECTIVES.get(family, ("paper",))[0]
FIXED_RHO_OBJECTIVES = frozenset({"paper"})
"""Objectives that mask at the fixed ratio cfg.mask_ratio (the sweep's mask_ratios axis); every other objective
draws its noise level t itself and logs it as the step's mask_ratio."""

# The clean-batch top-1 forward (families whose top-1 source is 'clean') costs ~1 forward, 35-47 % of a step
# when it runs: every step on the tiny model (cheap), every 5th step on real models (~7-9 % of training time).
TOP1_EVERY_DEFAULT = {"tiny": 1}
TOP1_EVERY_REAL_MODELS = 5

# Fields that do not change what a run computes (placement, memory strategy and output location only).
HASH_EXCLUDED = frozenset({"device", "adapter_dir", "save_adapter", "gradient_checkpointing"})
# Fields hashed only when they differ from their default, so adding one keeps every existing run id.
HASH_ONLY_WHEN_SET = {"legacy_detector_stop": False, "chat_template": "auto", "packing": True, "block_size": 0,
                      "grad_accum_steps": 1}
# Method-specific fields hashed only for their method, so adding one leaves every other run's hash (its cache
# key and run id) as it was.
METHOD_ONLY_FIELDS = {"lora_diffusion_schedule": "lora_diffusion"}
CONFIG_SCHEMA_VERSION = 1


class ConfigError(ValueError):
    """Raised with every problem of a configuration at once."""

    def __init__(self, problems: Sequence[str], *, where: str = "run config"):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid {where} ({len(self.problems)} problem(s)):\n{lines}")


def check_noise_level(lam: float, method: str) -> float:
    """The noise level lambda a noise-conditioned adapter (NaRA, lora_diffusion) is given: a mask ratio in [0, 1]."""
    lam = float(lam)
    if not math.isfinite(lam) or not 0.0 <= lam <= 1.0:
        raise ValueError(f"noise level {lam!r} is invalid: {method}'s lambda is a mask ratio in [0, 1]")
    return lam


@dataclass(frozen=True)
class RunConfig:
    """One LoRA/PEFT fine-tune of a masked diffusion LM under the masked-diffusion objective."""

    family: str = "tiny"
    """Model family adapter (see `dlm_triage.families`): knows loading, mask id, targets, logit alignment."""
    model_id: str | None = None
    """HF hub id or local path. None: the family default (the tiny family: the locally pretrained model)."""
    method: str = "lora"
    """PEFT method: lora, rslora, dora, pissa (through peft), nara (noise-aware LoRA, ours) or lora_diffusion
    (noise-scheduled low-rank residuals on hidden states, `dlm_triage.lora_diffusion`)."""
    rank: int = 8
    """Adapter rank r (1..4096)."""
    alpha: float = 16.0
    """LoRA alpha. With alpha_convention='fixed' the adapter scale is alpha/r (rsLoRA: alpha/sqrt r)."""
    alpha_convention: str = "fixed"
    """'fixed': alpha as given; 'per_rank': effective alpha = alpha * rank (constant scale across ranks)."""
    mask_ratio: float = 0.5
    """Mask ratio rho in (0, 1): the share of tokens replaced by the mask token (paper Eq. 1)."""
    mask_sampling: str = "bernoulli"
    """'bernoulli': each token masked with probability rho (>= 1 per row); 'exact': round(rho*L) per row."""
    learning_rate: float = 1e-4
    """AdamW learning rate (paper: LLaDA 1e-4, Dream 2e-6, MDLM 1e-4)."""
    weight_decay: float = 0.0
    steps: int = 200
    """Optimizer updates. The log holds steps 0..steps: step t is measured at the weights after t updates."""
    batch_size: int = 4
    """Sequences per micro-batch (one forward/backward)."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step (effective batch = batch_size * grad_accum_steps; the paper's LLaDA runs:
    4 x 16 = 64). The accumulated gradient is that of ONE batch of the effective size under `normalisation`
    (per_masked_token divides by the masked count of the whole effective batch); monitors read it once per
    optimizer step, before the clip, and the log keeps one row per optimizer step. Hashed only when > 1."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward instead of storing them (~30 % more compute, activation
    memory of ~one layer): the HF API where the model supports it, else the family's own (LLaDA). Not hashed."""
    seq_len: int = 32
    """Tokens per training sequence (sequences are packed/truncated to this length)."""
    seed: int = 42
    target_modules: tuple[str, ...] | None = None
    """Explicit adapter targets. None: the family's attention modules. Every target must match a module."""
    clip_grad_norm: float = 0.5
    """Clip threshold; the logged grad norm is always the pre-clip global L2 norm."""
    normalisation: str = "per_masked_token"
    """'per_masked_token' (paper Eq. 1), 'per_token' (masked CE sum / (b*L)), 'per_token_over_p' (LLaDA pretraining: CE/p / (b*L)). Objective 'paper' only."""
    objective: str | None = None
    """Training objective (config.OBJECTIVES): 'paper' (fixed rho, Eq. 1), 'llada_sft', 'llada_pretrain', 'mdlm',
    'llada2_sft', 'dream', 'diffusion_gemma'. None: the family's own (diffusion_gemma) or 'paper'. Hashed only when
    it is not that default."""
    top1_every: int | None = None
    """Cadence (steps) of the top-1 monitor's extra clean-batch forward for clean-batch families (costs ~1 forward,
    35-47 % of a step when it runs). None: 1 for the tiny family, 5 for real models (~7-9 % of training time)."""
    dataset: str = "tiny-shifted"
    """'tiny-shifted', 'tiny-instruct' (embedded SFT set) or a path: UTF-8 text, JSONL with "text", or SFT JSONL with "prompt"/"response" or "messages"."""
    chat_template: str = "auto"
    """SFT rendering: 'auto' (the tokenizer's chat template when it has one, else prompt + newline + response), 'require' (error without one), 'none'."""
    packing: bool = True
    block_size: int = 0
    """objective='llada2_sft' only: 0 = full attention; B > 0 = dFactory's block-diffusion training (noisy and clean
    copies side by side, block-diagonal / offset block-causal / block-causal mask; dFactory ships B = 32)."""
    """Plain text: pack documents into seq_len windows (True) or one document per row, padded with EOS (False)."""
    dtype: str = "auto"
    """'auto': bf16 on CUDA with bf16 support, float32 otherwise."""
    device: str = "auto"
    """'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'. Not part of the hash."""
    cohort: str = ""
    """Free label used to group runs in calibration (--group-by cohort)."""
    early_warning_step: int = 25
    """Step k at which max-grad-so-far is compared with the family's registered threshold."""
    early_warning_action: str = "flag"
    """'flag': mark the run routed_for_inspection and go on; 'stop': also end the run at step k."""
    legacy_detector_stop: bool = False
    """End the run when the legacy top-1 detector fires (status 'stopped_by_legacy_detector'), as the paper's
    runner did ("early-stops all 60 raw traces at step 11"). False: the detector is only logged."""
    nara_eta: float = 0.1
    """NaRA c_scale eta in C(lambda) = I + eta * F(e_lambda)."""
    lora_diffusion_schedule: str = "0.33:0.25,0.67:0.5,1:1"
    """lora_diffusion's active rank by noise phase: 'u1:f1,u2:f2,...,1:fn' means noise level lambda (the mask
    ratio) <= u_i (first such i) uses k = ceil(f_i * rank) of the rank; bounds increase to 1, the largest f is 1.
    Default: low noise (<= 0.33) a quarter of the rank, mid half, high noise all of it. Hashed only for
    lora_diffusion runs."""
    save_adapter: bool = True
    adapter_dir: str | None = None
    """Where adapter weights go. None: <run dir>/adapter. Not part of the hash."""

    def __post_init__(self) -> None:
        tm = self.target_modules
        # a list/tuple of names becomes a tuple; a bare string or a number is refused by _validate_run
        # (tuple("q_proj") would split it into characters)
        if isinstance(tm, list):
            object.__setattr__(self, "target_modules", tuple(tm))
        fam = self.family if isinstance(self.family, str) else ""  # a bad family is reported by _validate_run
        if self.objective is None:
            object.__setattr__(self, "objective", default_objective(fam))
        if self.top1_every is None:  # resolved here, so the stored config and the hash hold the cadence used
            object.__setattr__(self, "top1_every", TOP1_EVERY_DEFAULT.get(fam, TOP1_EVERY_REAL_MODELS))
        problems = _validate_run(self)
        if problems:
            raise ConfigError(problems)

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["target_modules"] is not None:
            d["target_modules"] = list(d["target_modules"])
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunConfig":
        if not isinstance(data, Mapping):
            raise ConfigError([f"a run config must be a JSON object of RunConfig fields, got a "
                               f"{type(data).__name__}: write {{\"rank\": 8, ...}}"])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, set(data) - known))
        problems = []
        if unknown:
            import difflib

            hints = [f"{u!r} -> did you mean {m[0]!r}?" for u in unknown
                     if (m := difflib.get_close_matches(u, known, n=1, cutoff=0.6))]
            problems.append(f"unknown key(s) {unknown}" + (f" ({'; '.join(hints)})" if hints else "")
                            + f": remove them or use one of {sorted(known)}")
        data = {k: v for k, v in data.items() if k in known}
        try:  # the other fields are still checked: one message lists every problem
            cfg = cls(**data)
        except ConfigError as e:
            raise ConfigError(problems + e.problems) from None
        if problems:
            raise ConfigError(problems)
        return cfg

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    # -- identity ------------------------------------------------------------------------------
    @property
    def config_hash(self) -> str:
        """sha256 of the canonical JSON of the hashed fields (and the schema version)."""
        payload = {k: v for k, v in self.to_dict().items()
                   if k not in HASH_EXCLUDED and not (k in HASH_ONLY_WHEN_SET and v == HASH_ONLY_WHEN_SET[k])
                   and METHOD_ONLY_FIELDS.get(k, self.method) == self.method
                   and not (k == "objective" and v == default_objective(self.family))}
        payload["_schema"] = CONFIG_SCHEMA_VERSION
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    @property
    def run_id(self) -> str:
        """Stable, readable id: family-method-r{rank}-m{rho}-lr{learning rate}-s{seed}-{hash12} (objective
        'paper'), or family-method-r{rank}-{objective}-lr{learning rate}-s{seed}-{hash12} for objectives that draw
        t themselves: every axis a sweep varies is readable in it (two runs never differ by their hash alone)."""
        noise = self.objective if draws_own_t(self.objective) else f"m{self.mask_ratio:g}"
        return (f"{self.family}-{self.method}-r{self.rank}-{noise}-lr{self.learning_rate:g}-s{self.seed}-"
                f"{self.config_hash[:12]}")

    @property
    def effective_alpha(self) -> float:
        return self.alpha * self.rank if self.alpha_convention == "per_rank" else self.alpha


_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig)}


def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_rank_schedule(spec: Any) -> tuple[tuple[float, float], ...]:
    """'u1:f1,...,un:fn' -> ((u1, f1), ..., (un, fn)): noise-phase upper bounds 0 < u1 < ... < un = 1 and rank
    fractions f in (0, 1] with max f = 1 (so `rank` is the largest active rank). Raises ValueError naming the fix."""
    fix = ("use 'u1:f1,...,1:fn' with increasing noise bounds in (0, 1] ending at 1 and rank fractions in (0, 1], "
           "the largest 1 (e.g. '0.33:0.25,0.67:0.5,1:1')")
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"lora_diffusion_schedule={spec!r} is invalid: {fix}")
    pieces = []
    for part in spec.split(","):
        try:
            u, f = (float(x) for x in part.split(":"))
        except ValueError:
            raise ValueError(f"lora_diffusion_schedule={spec!r}: piece {part.strip()!r} is not 'bound:fraction'; {fix}") from None
        pieces.append((u, f))
    bounds = [u for u, _ in pieces]
    fracs = [f for _, f in pieces]
    if (not all(math.isfinite(u) and 0 < u <= 1 for u in bounds) or any(a >= b for a, b in zip(bounds, bounds[1:]))
            or bounds[-1] != 1.0 or not all(math.isfinite(f) and 0 < f <= 1 for f in fracs) or max(fracs) != 1.0):
        raise ValueError(f"lora_diffusion_schedule={spec!r} is invalid: {fix}")
    return tuple(pieces)


def _validate_run(c: RunConfig) -> list[str]:
    p: list[str] = []

    def choice(name: str, value: Any, allowed: Sequence[str]) -> None:
        if value not in allowed:
            p.append(f"{name}={value!r} is not known: use one of {list(allowed)}")

    def int_range(name: str, value: Any, lo: int, hi: int) -> None:
        if not _is_int(value) or not lo <= value <= hi:
            p.append(f"{name}={value!r} is out of range: use an integer in [{lo}, {hi}]")

    choice("family", c.family, FAMILIES)
    choice("method", c.method, METHODS)
    choice("normalisation", c.normalisation, NORMALISATIONS)
    choice("mask_sampling", c.mask_sampling, MASK_SAMPLINGS)
    choice("alpha_convention", c.alpha_convention, ALPHA_CONVENTIONS)
    choice("dtype", c.dtype, DTYPES)
    choice("early_warning_action", c.early_warning_action, EARLY_WARNING_ACTIONS)
    choice("objective", c.objective, list(OBJECTIVES))
    choice("chat_template", c.chat_template, CHAT_TEMPLATES)
    if not isinstance(c.packing, bool):
        p.append(f"packing={c.packing!r} is invalid: use true or false")
    known_objective = isinstance(c.objective, str) and c.objective in OBJECTIVES
    own = FAMILY_OBJECTIVES.get(c.family) if isinstance(c.family, str) else None
    if own is not None and known_objective and c.objective not in own:
        p.append(f"objective={c.objective!r} cannot run on family {c.family!r}, which has its own corruption and loss: "
                 f"use objective={own[0]!r} (or leave objective unset)")
    owners = [f for f, objs in FAMILY_OBJECTIVES.items() if known_objective and c.objective in objs]
    if owners and c.family not in owners:
        p.append(f"objective={c.objective!r} needs the {owners[0]!r} family's model: set family={owners[0]!r} or "
                 "pick another objective")
    if known_objective and draws_own_t(c.objective):
        for name in ("mask_ratio", "mask_sampling", "normalisation"):
            if getattr(c, name) != _FIELD_DEFAULTS[name]:
                p.append(
                    f"{name}={getattr(c, name)!r} applies to objective='paper' only: objective={c.objective!r} "
                    f"draws its noise level t itself and has its own normalisation; leave {name} at "
                    f"{_FIELD_DEFAULTS[name]!r} or use objective='paper'"
                )
    int_range("rank", c.rank, 1, 4096)
    int_range("steps", c.steps, 1, 10_000_000)
    int_range("batch_size", c.batch_size, 1, 65_536)
    int_range("grad_accum_steps", c.grad_accum_steps, 1, 65_536)
    if not isinstance(c.gradient_checkpointing, bool):
        p.append(f"gradient_checkpointing={c.gradient_checkpointing!r} is invalid: use true or false")
    int_range("seq_len", c.seq_len, 2, 1_048_576)
    int_range("seed", c.seed, 0, 2**63 - 1)
    int_range("top1_every", c.top1_every, 1, 10_000_000)
    int_range("block_size", c.block_size, 0, 1_048_576)
    if _is_int(c.block_size) and c.block_size > 0 and c.objective != "llada2_sft":
        p.append(f"block_size={c.block_size} is LLaDA2's block-diffusion training: use it with objective='llada2_sft', "
                 "or leave block_size at 0")
    int_range("early_warning_step", c.early_warning_step, 0, 10_000_000)
    if not _is_real(c.mask_ratio) or not 0.0 < c.mask_ratio < 1.0:
        p.append(f"mask_ratio={c.mask_ratio!r} is out of range: use a number strictly between 0 and 1")
    if not _is_real(c.learning_rate) or not 0.0 < c.learning_rate <= 10.0:
        p.append(f"learning_rate={c.learning_rate!r} is out of range: use a finite number in (0, 10]")
    if not _is_real(c.weight_decay) or c.weight_decay < 0:
        p.append(f"weight_decay={c.weight_decay!r} is invalid: use a finite number >= 0")
    if not _is_real(c.alpha) or c.alpha <= 0:
        p.append(f"alpha={c.alpha!r} is invalid: use a finite number > 0")
    if not _is_real(c.clip_grad_norm) or c.clip_grad_norm <= 0:
        p.append(f"clip_grad_norm={c.clip_grad_norm!r} is invalid: use a finite number > 0")
    if not _is_real(c.nara_eta) or c.nara_eta < 0:
        p.append(f"nara_eta={c.nara_eta!r} is invalid: use a finite number >= 0")
    try:
        parse_rank_schedule(c.lora_diffusion_schedule)
    except ValueError as e:
        p.append(str(e))
    if c.model_id is not None and (not isinstance(c.model_id, str) or not c.model_id.strip()):
        p.append(f"model_id={c.model_id!r} is invalid: give a hub id or a local path, or None for the default")
    if c.target_modules is not None and not isinstance(c.target_modules, tuple):
        p.append(f"target_modules={c.target_modules!r} is invalid: give a list of module names such as "
                 "[\"q_proj\", \"v_proj\"] (a single name as a one-item list), or None for the family's "
                 "attention modules")
    elif c.target_modules is not None:
        bad = [t for t in c.target_modules if not isinstance(t, str) or not t.strip()]
        if not c.target_modules or bad:
            p.append(
                f"target_modules={c.target_modules!r} is invalid: give module names such as "
                "('q_proj', 'v_proj'), or None for the family's attention modules"
            )
    if not isinstance(c.dataset, str) or not c.dataset:
        p.append(f"dataset={c.dataset!r} is invalid: use 'tiny-shifted' or a path to a text/JSONL file")
    dev = c.device
    if not isinstance(dev, str) or not (
        dev in ("auto", "cpu", "cuda", "mps") or (dev.startswith("cuda:") and dev[5:].isdigit())
    ):
        p.append(f"device={dev!r} is not known: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if not isinstance(c.legacy_detector_stop, bool):
        p.append(f"legacy_detector_stop={c.legacy_detector_stop!r} is invalid: use true or false")
    if not isinstance(c.cohort, str):
        p.append(f"cohort={c.cohort!r} is invalid: use a string label")
    if not isinstance(c.save_adapter, bool):
        p.append(f"save_adapter={c.save_adapter!r} is invalid: use true or false (a JSON boolean)")
    if c.adapter_dir is not None and (not isinstance(c.adapter_dir, str) or not c.adapter_dir.strip()):
        p.append(f"adapter_dir={c.adapter_dir!r} is invalid: give a directory path, or None for <run dir>/adapter")
    if c.family == "tiny" and c.model_id is not None and c.model_id.startswith(("GSAI", "Dream", "inclusion")):
        p.append(f"model_id={c.model_id!r} looks like a hub model of another family: set family accordingly")
    return p


# -- sweeps ----------------------------------------------------------------------------------------

SWEEP_AXES = ("family", "method", "rank", "mask_ratio", "learning_rate", "seed")


NOISE_LEVEL_METHODS = frozenset({"nara", "lora_diffusion"})
"""Methods whose adapter is given the noise level: a family's own objective passes them cfg.mask_ratio."""


def _ignores_mask_ratio(d: Mapping[str, Any]) -> bool:
    """True for a combination whose run never reads mask_ratio: a family's own objective (DiffusionGemma draws
    its corruption itself) with a method that is not given the noise level. The sweep's rho axis then collapses
    to the default instead of training the same run once per rho under different ids."""
    fam = d.get("family")
    obj = d.get("objective") or (default_objective(fam) if isinstance(fam, str) else None)
    own = any(obj in objs for objs in FAMILY_OBJECTIVES.values())
    return own and d.get("method", "lora") not in NOISE_LEVEL_METHODS


@dataclass(frozen=True)
class SweepSpec:
    """A grid of run configurations: the product of the axes, on top of `base`.

    Axis names are RunConfig fields; `families`, `methods`, ... are the usual ones, `extra_axes` any other field.
    """

    families: tuple[str, ...] = SWEEP_AXIS_DEFAULTS["families"]
    methods: tuple[str, ...] = SWEEP_AXIS_DEFAULTS["methods"]
    ranks: tuple[int, ...] = SWEEP_AXIS_DEFAULTS["ranks"]
    mask_ratios: tuple[float, ...] = SWEEP_AXIS_DEFAULTS["mask_ratios"]
    learning_rates: tuple[float, ...] = SWEEP_AXIS_DEFAULTS["learning_rates"]
    seeds: tuple[int, ...] = SWEEP_AXIS_DEFAULTS["seeds"]
    base: Mapping[str, Any] = field(default_factory=dict)
    extra_axes: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("families", "methods", "ranks", "mask_ratios", "learning_rates", "seeds"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "base", dict(self.base))
        object.__setattr__(self, "extra_axes", {k: tuple(v) for k, v in dict(self.extra_axes).items()})
        problems = []
        for name in ("families", "methods", "ranks", "mask_ratios", "learning_rates", "seeds"):
            if len(getattr(self, name)) == 0:
                problems.append(f"{name} is empty: give at least one value")
        known = {f.name for f in dataclasses.fields(RunConfig)}
        for k in list(self.base) + list(self.extra_axes):
            if k not in known:
                problems.append(f"field {k!r} is not a RunConfig field: use one of {sorted(known)}")
        for k in self.base:
            if k in SWEEP_AXES:
                problems.append(f"base sets the axis {k!r}: set it through the axis instead")
        if problems:
            raise ConfigError(problems, where="sweep spec")
        # Validate every expanded config now, so a bad value fails before any work starts; the configs built
        # here are the ones `expand` returns (each validated once, not again per call).
        errors: list[str] = []
        configs: dict[str, RunConfig] = {}
        for combo in self._combos():
            try:
                cfg = RunConfig(**combo)
            except ConfigError as e:
                errors.extend(e.problems)
                continue
            configs.setdefault(cfg.config_hash, cfg)
        if errors:
            raise ConfigError(sorted(set(errors)), where="sweep spec")
        object.__setattr__(self, "_configs", tuple(configs.values()))  # not a field: no part of eq or to_dict

    def _combos(self) -> Iterable[dict[str, Any]]:
        names = list(SWEEP_AXES) + list(self.extra_axes)
        values = [
            self.families, self.methods, self.ranks, self.mask_ratios, self.learning_rates, self.seeds,
            *self.extra_axes.values(),
        ]
        for combo in itertools.product(*values):
            d = dict(self.base)
            d.update(zip(names, combo))
            if _ignores_mask_ratio(d):  # one run, not one identical copy per rho
                d["mask_ratio"] = _FIELD_DEFAULTS["mask_ratio"]
            if isinstance(d.get("target_modules"), list):  # a string stays a string (and is refused)
                d["target_modules"] = tuple(d["target_modules"])
            yield d

    def expand(self) -> list[RunConfig]:
        """All run configs, in a stable order, without duplicates (the frozen configs validated at construction)."""
        return list(self._configs)

    def __len__(self) -> int:
        return len(self.expand())

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["base"] = dict(self.base)
        d["extra_axes"] = {k: list(v) for k, v in self.extra_axes.items()}
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SweepSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError([f"unknown field(s) {unknown}: use {sorted(known)}"], where="sweep spec")
        return cls(**data)
