"""Which checkpoints may run their own modeling code (`trust_remote_code`).

A deployment parameter reaches `model_id`, and loading a remote-code family executes the Python files the
checkpoint ships: a model id is therefore an instruction to run code. Only ids on the allow-list are loaded
that way:

- the families' known checkpoints (`KNOWN_REMOTE_CODE_IDS`: each family's default and the published siblings
  the paper's families use), and local directories (their code is already on this machine, and checked by
  `remote_code.check_code_files` before it runs);
- plus what the setting `DLM_TRIAGE_TRUSTED_MODELS` adds: a comma-separated list of hub ids, `org/*` for every
  repository of an organisation, or `*` for any id (the old behaviour; do not set it on a shared server).

Families that load without remote code (tiny, generic_mlm, ar, diffusion_gemma) are not restricted.
"""

from __future__ import annotations

import os
from pathlib import Path

TRUSTED_MODELS_ENV = "DLM_TRIAGE_TRUSTED_MODELS"

KNOWN_REMOTE_CODE_IDS = frozenset({
    "GSAI-ML/LLaDA-8B-Base", "GSAI-ML/LLaDA-8B-Instruct",
    "inclusionAI/LLaDA2.0-mini", "inclusionAI/LLaDA2.0-mini-preview", "inclusionAI/LLaDA2.1-mini",
    "inclusionAI/LLaDA-MoE-7B-A1B-Base", "inclusionAI/LLaDA-MoE-7B-A1B-Instruct",
    "Dream-org/Dream-v0-Base-7B", "Dream-org/Dream-v0-Instruct-7B",
    "kuleshov-group/mdlm-owt",
})


class UntrustedModelError(ValueError):
    """A model id that would run its own code and is not on the allow-list."""


def extra_trusted() -> tuple[str, ...]:
    """The entries of DLM_TRIAGE_TRUSTED_MODELS (read at each call: a worker's environment can change it)."""
    return tuple(x.strip() for x in os.environ.get(TRUSTED_MODELS_ENV, "").split(",") if x.strip())


def is_local_path(model_id: str) -> bool:
    """A filesystem path rather than a hub id ('org/name'): absolute, relative ('./', '../'), '~', more or fewer
    than one '/', or an existing path. A missing local path is left to the loader, which names it."""
    return (model_id.startswith(("/", ".", "~")) or model_id.count("/") != 1
            or Path(model_id).expanduser().exists())


def is_trusted(model_id: str, *, defaults: frozenset[str] = KNOWN_REMOTE_CODE_IDS) -> bool:
    if is_local_path(model_id):
        return True
    if model_id in defaults:
        return True
    for entry in extra_trusted():
        if entry == "*" or entry == model_id or (entry.endswith("/*") and model_id.startswith(entry[:-1])):
            return True
    return False


def check_trusted(family: str, model_id: str, defaults: frozenset[str] = KNOWN_REMOTE_CODE_IDS) -> None:
    """Raise UntrustedModelError unless `model_id` may run its own modeling code (see the module docstring)."""
    if not is_trusted(model_id, defaults=defaults):
        raise UntrustedModelError(
            f"family {family!r}: model_id={model_id!r} would run the checkpoint's own Python code "
            "(trust_remote_code) and is not on the allow-list (the families' known checkpoints and local "
            f"directories). If you trust it, add it to {TRUSTED_MODELS_ENV} (comma-separated ids, 'org/*' for an "
            "organisation) in the environment of the process or worker that trains, or download it and pass "
            "the local directory")
