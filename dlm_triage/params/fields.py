"""The pieces every flow-parameter model shares: the `Literal` choices (checked against config.py at import),
the ranged item types of the list fields, the strict base model, the list checks, and the form grouping that
orders a model's fields into sections in the Prefect UI."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from dlm_triage import paths
from dlm_triage.config import (
    ALPHA_CONVENTIONS,
    EARLY_WARNING_ACTIONS,
    FAMILIES,
    METHODS,
    NORMALISATIONS,
    OBJECTIVES,
    RunConfig,
)

Family = Literal["tiny", "llada", "llada2", "llada_moe", "dream", "mdlm", "generic_mlm", "ar", "diffusion_gemma",
                 "tiny_ar", "tiny_gemma"]
Method = Literal["lora", "rslora", "dora", "pissa", "nara", "lora_diffusion"]
Normalisation = Literal["per_masked_token", "per_token", "per_token_over_p"]
GroupBy = Literal["family", "model", "cohort", "method", "objective"]
ObjectiveName = Literal[tuple(OBJECTIVES)]  # type: ignore[valid-type]  # follows config.OBJECTIVES
AlphaConvention = Literal["fixed", "per_rank"]
EarlyWarningAction = Literal["flag", "stop"]
ImportFormat = Literal["reference-jsonl", "cells", "json-rows", "hf-trainer", "wandb-csv"]

# The Literals above must list exactly what config.py accepts; checked at import so they cannot drift apart.
for _lit, _allowed in (
    (Family, FAMILIES), (Method, METHODS), (Normalisation, NORMALISATIONS),
    (AlphaConvention, ALPHA_CONVENTIONS), (EarlyWarningAction, EARLY_WARNING_ACTIONS),
):
    if set(_lit.__args__) != set(_allowed):  # type: ignore[attr-defined]
        raise ImportError(f"params/fields.py Literal {_lit.__args__} differs from config.py {_allowed}: "
                          "update params/fields.py")

_RUN_FIELDS = {f for f in RunConfig.__dataclass_fields__}

# List items carry their ranges in the JSON schema (the Prefect UI form checks each item, and a deployment with
# enforce_parameter_schema refuses an out-of-range value before a run is created); the field validators below
# run first (mode='before') so that the message names the field and every bad value at once.
Rank = Annotated[int, Field(ge=1, le=4096)]
MaskRatio = Annotated[float, Field(gt=0.0, lt=1.0)]
LearningRate = Annotated[float, Field(gt=0.0, le=10.0)]
Seed = Annotated[int, Field(ge=0)]
StepK = Annotated[int, Field(ge=0)]
_DEFAULT_KS = (5, 10, 11, 25, 50, 100, 200)


class _Params(BaseModel):
    # extra='forbid': a misspelt field is an error naming it, not a silently ignored value.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _nonempty_unique(name: str, values: list[Any]) -> list[Any]:
    if not values:
        raise ValueError(f"{name} is empty: give at least one value")
    dupes = sorted({repr(v) for v in values if values.count(v) > 1})
    if dupes:
        raise ValueError(f"{name} repeats {', '.join(dupes)}: give each value once")
    return values


def _numbers(v: Any) -> list[float]:
    """The numeric items of a list input, before pydantic checks each item's type (a non-number is left to it)."""
    if not isinstance(v, (list, tuple)):
        return []
    return [x for x in v if isinstance(x, (int, float)) and not isinstance(x, bool)]


def _check_items(name: str, v: Any, ok: Callable[[float], bool], why: str) -> Any:
    """A list input whose numeric items all pass `ok`, else a ValueError naming `name`, every bad item and
    `why` (what is wrong and the fix). Runs before pydantic's per-item check, so one message lists them all."""
    bad = [x for x in _numbers(v) if not ok(x)]
    if bad:
        raise ValueError(f"{name} {bad} {why}")
    return v


# Where an empty path parameter points: mixins of the models that have the field (`db`, `runs_dir`, `out`).
class _DbPath:
    def resolved_db(self) -> Path:
        return Path(self.db) if self.db is not None else paths.default_db_path()


class _RunsDirPath:
    def resolved_runs_dir(self) -> Path:
        return Path(self.runs_dir) if self.runs_dir is not None else paths.default_runs_dir()


class _OutPath:
    def resolved_out(self) -> Path:
        return Path(self.out) if self.out is not None else paths.default_report_dir()


def torch_threads_per_process(slots: int) -> int:
    """Torch threads for each of `slots` training processes: cores / processes (at least 1), so that processes
    x threads never oversubscribe the CPU."""
    return max(1, (os.cpu_count() or 1) // slots)


def _form_groups(groups: dict[str, tuple[str, ...]]):
    """A `json_schema_extra` that orders a model's form fields by group and prefixes each title with its group
    ('Grid: Ranks'): the Prefect UI renders the properties in schema order with their titles, so a long form
    reads as sections. Fields in no group keep their place after the grouped ones."""

    def extra(schema: dict[str, Any], _cls: Any) -> None:
        props = schema.get("properties") or {}
        ordered: dict[str, Any] = {}
        for group, names in groups.items():
            for name in names:
                if name in props:
                    prop = dict(props[name])
                    prop["title"] = f"{group}: {prop.get('title', name)}"
                    ordered[name] = prop
        ordered.update({k: v for k, v in props.items() if k not in ordered})
        schema["properties"] = ordered

    return extra
