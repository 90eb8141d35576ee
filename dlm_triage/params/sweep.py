"""The sweep's parameters: `SweepGrid` (the axes and how each run trains and where the grid runs) and
`SweepParams` (plus the runs folder and the database), validated whole: every expanded RunConfig is checked
when the model is, and the validated `SweepSpec` is handed on."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator

from dlm_triage.config import RunConfig, SweepSpec, draws_own_t
from dlm_triage.defaults import SWEEP_AXIS_DEFAULTS
from dlm_triage.params.fields import (_RUN_FIELDS, AlphaConvention, EarlyWarningAction, Family, LearningRate,
                                      MaskRatio, Method, Normalisation, ObjectiveName, Rank, Seed, _check_items,
                                      _DbPath, _form_groups, _nonempty_unique, _Params, _RunsDirPath)


_SWEEP_FORM = {
    "Grid": ("families", "methods", "ranks", "mask_ratios", "learning_rates", "seeds"),
    "Training": ("steps", "batch_size", "seq_len", "alpha", "alpha_convention", "normalisation", "objective",
                 "model_id", "dataset", "cohort", "extra"),
    "Early warning": ("early_warning", "early_warning_action", "early_warning_step", "legacy_detector_stop"),
    "Where it runs": ("runs_dir", "db", "device", "gpu_slots", "torch_threads", "task_runner", "runs_url",
                      "shard_deployment", "shard_job_variables", "shard_attempts", "heartbeat_s", "stale_after_s"),
}


# Each numeric axis's item range (the same as its item type's) and the message's end for the items outside it.
_AXIS_ITEMS = {
    "ranks": (lambda r: 1 <= r <= 4096, "out of range: use integers in [1, 4096]"),
    "mask_ratios": (lambda m: 0.0 < m < 1.0, "out of range: use numbers strictly between 0 and 1"),
    "learning_rates": (lambda x: 0.0 < x <= 10.0, "out of range: use numbers in (0, 10]"),
    "seeds": (lambda s: s >= 0, "are negative: use integers >= 0"),
}


class SweepGrid(_Params):
    """A grid of LoRA/PEFT fine-tunes (the product of the axes) and how to run it; `SweepParams` adds where."""

    model_config = ConfigDict(json_schema_extra=_form_groups(_SWEEP_FORM))
    _spec: SweepSpec | None = PrivateAttr(default=None)  # the validated grid, set by _whole_grid

    families: list[Family] = Field(list(SWEEP_AXIS_DEFAULTS["families"]), description="Model families (axis). 'tiny' needs no download.")
    methods: list[Method] = Field(list(SWEEP_AXIS_DEFAULTS["methods"]), description="PEFT methods (axis): lora, rslora, dora, pissa, nara, "
                                      "lora_diffusion (its rank schedule: extra.lora_diffusion_schedule).")
    ranks: list[Rank] = Field(list(SWEEP_AXIS_DEFAULTS["ranks"]), description="Adapter ranks r (axis), each in [1, 4096].")
    mask_ratios: list[MaskRatio] = Field(
        list(SWEEP_AXIS_DEFAULTS["mask_ratios"]), description="Mask ratios rho (axis), each strictly between 0 and 1 (paper Eq. 1)."
    )
    learning_rates: list[LearningRate] = Field(
        list(SWEEP_AXIS_DEFAULTS["learning_rates"]), description="AdamW learning rates (axis), each in (0, 10].")
    seeds: list[Seed] = Field(list(SWEEP_AXIS_DEFAULTS["seeds"]), description="Random seeds (axis), each >= 0.")
    steps: int = Field(200, ge=1, le=10_000_000, description="Optimizer updates per run (log holds 0..steps).")
    batch_size: int = Field(4, ge=1, le=65_536, description="Sequences per batch.")
    seq_len: int = Field(32, ge=2, le=1_048_576, description="Tokens per training sequence.")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha (scale alpha/r with the 'fixed' convention).")
    alpha_convention: AlphaConvention = Field(
        "fixed", description="'fixed': alpha as given; 'per_rank': alpha * rank (constant scale across ranks)."
    )
    normalisation: Normalisation = Field(
        "per_masked_token", description="Masked-CE normalisation: per_masked_token is the paper's Eq. 1."
    )
    objective: ObjectiveName | None = Field(
        None,
        description="Training objective: 'paper' (fixed rho from mask_ratios, Eq. 1) or a family recipe "
        "(llada_sft, llada_pretrain, mdlm, llada2_sft, dream), which draws its noise level t itself: "
        "mask_ratios then stays unset. Empty: each family's default ('paper'; diffusion_gemma its own).",
    )
    model_id: str | None = Field(
        None, description="HF hub id or local path; empty: the family default (tiny: the local pretrained model)."
    )
    dataset: str = Field(
        "tiny-shifted", description="'tiny-shifted' (embedded synthetic task) or a path to a text/JSONL file."
    )
    cohort: str = Field("", description="Free label to group runs in calibration (group_by='cohort').")
    early_warning_action: EarlyWarningAction = Field(
        "flag", description="When max-grad at step k crosses the registered threshold: flag the run, or stop it."
    )
    early_warning_step: int = Field(25, ge=0, description="Step k of the live early warning.")
    legacy_detector_stop: bool = Field(
        False, description="End a run when the legacy top-1 detector fires (status stopped_by_legacy_detector, "
                           "never a collapse), as the paper's runner did; off: the detector is only logged.")
    extra: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other RunConfig field, e.g. {\"clip_grad_norm\": 1.0, \"top1_every\": 5}.",
    )
    device: str = Field(
        "auto",
        description="'auto': runs round-robin over cuda:0..N-1 when GPUs exist, cpu otherwise; or a fixed "
        "device ('cpu', 'cuda:1', 'mps'). Not part of the run's hash.",
    )
    gpu_slots: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Shards of the grid, one per GPU slot, trained at once (each one config after the other, in "
        "one process). Empty: locally the number of GPUs, or of CPU cores without GPU; on a shard deployment "
        "the concurrency limit of the deployment or of its work pool.",
    )
    task_runner: Literal["process", "thread"] = Field(
        "process",
        description="Local sweeps (no shard_deployment). 'process': gpu_slots shard flow runs in subprocesses "
        "(true parallelism; each pays a spawn and its imports). 'thread': one shard inside the sweep's own "
        "process (no spawn: quickest for a handful of short runs, debugging).",
    )
    runs_url: str | None = Field(
        None,
        description="Publish each finished run directory to this fsspec URL (s3://, gs://, file://, memory://), "
        "manifest last; runs_dir is then each machine's staging folder. Empty: run dirs stay in runs_dir (a "
        "path every machine sees, for sweeps over several machines).",
    )
    shard_deployment: str | None = Field(
        None,
        description="Run each shard as a run of this deployment ('flow/deployment', e.g. "
        "'train-shard/train-shard'), picked up by the workers of its work pool on any number of machines. Empty: "
        "train on this machine (task_runner).",
    )
    shard_job_variables: dict[str, Any] = Field(
        default_factory=dict,
        description="Job variables of every shard run on the deployment path, merged over the deployment's "
        "(e.g. {\"env\": {\"OMP_NUM_THREADS\": \"4\"}}, or {\"gpu_count\": 1} on a Kubernetes pool).",
    )
    shard_attempts: int = Field(
        3, ge=1, le=100,
        description="Attempts per shard: a shard run that crashes hands its unfinished runs to a new run (any "
        "worker), at most this many times in all. Finished runs are never retrained.",
    )
    heartbeat_s: float = Field(
        30.0, gt=0, le=3600,
        description="Deployment path: shard runs renew their lease file (under runs_dir) this often.",
    )
    stale_after_s: float = Field(
        120.0, gt=0, le=86400,
        description="Deployment path: a running shard run without a heartbeat for this long counts as crashed "
        "(its worker or machine is gone) and its unfinished runs are retried on another worker.",
    )
    early_warning: bool = Field(
        True, description="Pass each family's registered max-grad threshold (from db) to training: runs at or "
        "above it at step k are routed for inspection (or stopped)."
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="torch intra-op threads per training process; empty: CPU cores / gpu_slots (no oversubscription).",
    )

    @field_validator("families", "methods", "ranks", "mask_ratios", "learning_rates", "seeds")
    @classmethod
    def _axis(cls, v: list[Any], info: Any) -> list[Any]:
        return _nonempty_unique(info.field_name, v)

    @field_validator("ranks", "mask_ratios", "learning_rates", "seeds", mode="before")
    @classmethod
    def _axis_items(cls, v: Any, info: Any) -> Any:
        ok, why = _AXIS_ITEMS[info.field_name]
        return _check_items(info.field_name, v, ok, why)

    @field_validator("model_id")
    @classmethod
    def _model_id(cls, v: str | None) -> str | None:
        return v.strip() or None if isinstance(v, str) else v

    @field_validator("extra")
    @classmethod
    def _extra(cls, v: dict[str, Any]) -> dict[str, Any]:
        axes_and_fields = {"family", "method", "rank", "mask_ratio", "learning_rate", "seed", "device"}
        unknown = sorted(set(v) - _RUN_FIELDS)
        if unknown:
            raise ValueError(f"extra sets unknown RunConfig field(s) {unknown}: use one of {sorted(_RUN_FIELDS)}")
        clash = sorted((set(v) & axes_and_fields) | (set(v) & set(cls.model_fields)))
        if clash:
            raise ValueError(f"extra sets {clash}, which have their own parameter: set them there")
        return v

    @model_validator(mode="after")
    def _thread_runner_is_serial(self) -> "SweepParams":
        # Measured: two threads loading a model at once fail with "Cannot copy out of meta tensor" (transformers
        # initialises weights on the meta device through process-global state).
        if self.task_runner == "thread" and self.gpu_slots is not None and self.gpu_slots > 1:
            raise ValueError(
                f"gpu_slots={self.gpu_slots} with task_runner='thread': concurrent model loading in threads is not "
                "safe; use task_runner='process' for parallel runs, or gpu_slots=1"
            )
        return self

    @field_validator("runs_url")
    @classmethod
    def _runs_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        if "://" not in v:
            raise ValueError(f"runs_url={v!r} is not a URL: give scheme://path (s3://bucket/runs, file:///shared/runs)"
                             ", or set runs_dir for a plain path")
        from dlm_triage.runstore import filesystem

        filesystem(v)  # an unknown or uninstalled protocol fails here, naming the package to install
        return v.rstrip("/")

    @model_validator(mode="after")
    def _heartbeat_within_staleness(self) -> "SweepParams":
        if self.stale_after_s <= 2 * self.heartbeat_s:
            raise ValueError(f"stale_after_s={self.stale_after_s} is not above 2 x heartbeat_s={self.heartbeat_s}: a "
                             "live shard would be declared crashed; raise stale_after_s")
        return self

    @model_validator(mode="after")
    def _mask_ratios_belong_to_paper(self) -> "SweepParams":
        if self.objective is not None and draws_own_t(self.objective) and "mask_ratios" in self.model_fields_set:
            raise ValueError(
                f"mask_ratios={self.mask_ratios} is the sweep axis of objective='paper'; objective="
                f"{self.objective!r} draws its noise level t per batch itself (logged as mask_ratio): drop "
                "mask_ratios, or use objective='paper'"
            )
        return self

    @model_validator(mode="after")
    def _whole_grid(self) -> "SweepParams":
        # Validate every expanded RunConfig now (SweepSpec does), so a bad combination fails before the flow
        # starts; ConfigError is a ValueError, so it reaches the UI/CLI as a validation error naming the values.
        # The spec is kept: `to_spec()` hands on these validated configs instead of validating them again
        # (validate_assignment reruns this validator, so a changed field gets a new spec).
        self._spec = self._build_spec()
        return self

    # -- conversions --------------------------------------------------------------------------------
    def base(self) -> dict[str, Any]:
        """RunConfig fields shared by every run of the grid (everything but the axes)."""
        b: dict[str, Any] = {
            "steps": self.steps,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "alpha": self.alpha,
            "alpha_convention": self.alpha_convention,
            "normalisation": self.normalisation,
            "model_id": self.model_id,
            "dataset": self.dataset,
            "cohort": self.cohort,
            "early_warning_action": self.early_warning_action,
            "early_warning_step": self.early_warning_step,
            "legacy_detector_stop": self.legacy_detector_stop,
            "device": self.device,
        }
        if self.objective is not None:
            b["objective"] = self.objective
        b.update(self.extra)
        return b

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> "SweepGrid":
        copy = super().model_copy(update=update, deep=deep)
        if update:  # an unvalidated change: the kept spec no longer describes the fields
            copy._spec = None
        return copy

    def to_spec(self) -> SweepSpec:
        """The validated `SweepSpec` (built once, when the grid was validated)."""
        return self._spec if self._spec is not None else self._build_spec()

    def _build_spec(self) -> SweepSpec:
        """The `SweepSpec` of these fields (raises ConfigError naming every bad value)."""
        return SweepSpec(
            families=tuple(self.families),
            methods=tuple(self.methods),
            ranks=tuple(self.ranks),
            # t-sampled objectives do not use rho: one value (RunConfig's default) instead of the axis
            mask_ratios=(RunConfig.mask_ratio,) if self.objective is not None and draws_own_t(self.objective)
            else tuple(self.mask_ratios),
            learning_rates=tuple(self.learning_rates),
            seeds=tuple(self.seeds),
            base=self.base(),
        )

    def devices(self, n_gpus: int) -> list[str]:
        """Where runs go: with device 'auto', cuda:0..N-1 over the N visible GPUs (cpu without one); else
        the device asked for."""
        if self.device == "auto":
            return [f"cuda:{i}" for i in range(n_gpus)] or ["cpu"]
        return [self.device]

    def placed_configs(self, n_gpus: int) -> list[RunConfig]:
        """The grid's configs, run i on `devices(n_gpus)[i mod len]` (round-robin over the GPUs)."""
        devices = self.devices(n_gpus)
        return [c.replace(device=devices[i % len(devices)]) for i, c in enumerate(self.to_spec().expand())]



class SweepParams(SweepGrid, _RunsDirPath, _DbPath):
    """A grid of LoRA/PEFT fine-tunes (the product of the axes) and where and how to run it."""

    runs_dir: Path | None = Field(
        None, description="Where run directories go; empty: $DLM_TRIAGE_OUT/runs (default ./dlm-triage-out/runs)."
    )
    db: Path | None = Field(
        None, description="DuckDB holding the registered thresholds; empty: $DLM_TRIAGE_OUT/triage.duckdb. "
        "No file: no live early warning."
    )
