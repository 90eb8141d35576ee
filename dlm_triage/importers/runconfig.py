"""A run's config for formats whose file holds none (flags, `<stem>.config.json`, `config=`), its validation
and the canonical family spelling; what an imported `collapsed` value means (`COLLAPSED_MEANS`)."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from dlm_triage.importers.values import LogFormatError, _Bad, _int, _num, _read_text, _text

# Run-config keys an importer understands (as flags or in a config file); `lr` is an alias of learning_rate.
CONFIG_KEYS = ("family", "model_id", "method", "rank", "alpha", "mask_ratio", "learning_rate", "seed", "steps",
               "batch_size", "cohort")
_CONFIG_FLAGS = frozenset(CONFIG_KEYS) - {"family"} | {"lr", "config"}
_WANDB_COLS = {"step_col": "_step", "loss_col": "loss", "grad_col": "grad_norm", "top1_col": None,
               "mask_col": None, "lr_col": None}
COLLAPSED_MEANS = {
    "collapse": "imported `collapsed` column, read as the source's own actual-collapse flag "
                "(collapsed_means=collapse)",
    "detector_stop": "imported `collapsed` column, read as a legacy top-1 detector early stop "
                     "(collapsed_means=detector_stop): such runs are status stopped_by_legacy_detector, actual "
                     "collapse not recorded (NULL), never counted as a collapse",
}
"""What an imported `collapsed` value means (option collapsed_means); the text is the run's collapse_definition."""


# -- run config for formats without one in the file ---------------------------------------------------------


def _validate_config(cfg: dict[str, Any]) -> list[str]:
    """Type checks of the known keys (unknown keys are kept as they are, in config_json)."""
    problems = []
    checks: dict[str, Callable[[str, Any], Any]] = {
        "rank": lambda n, v: _int(n, v, required=False, minimum=1),
        "seed": lambda n, v: _int(n, v, required=False, maximum=2**63 - 1),
        "steps": lambda n, v: _int(n, v, required=False),
        "batch_size": lambda n, v: _int(n, v, required=False, minimum=1),
        "alpha": lambda n, v: _num(n, v, required=False),
        "mask_ratio": lambda n, v: _num(n, v, required=False),
        "learning_rate": lambda n, v: _num(n, v, required=False),
        "family": lambda n, v: _text(n, v), "model_id": lambda n, v: _text(n, v),
        "method": lambda n, v: _text(n, v), "cohort": lambda n, v: _text(n, v),
    }
    for key, check in checks.items():
        if key in cfg:
            try:
                cfg[key] = check(key, cfg[key])
            except _Bad as e:
                problems.append(f"config {e}")
    mr = cfg.get("mask_ratio")
    if mr is not None and not 0.0 < mr < 1.0:
        problems.append(f"config mask_ratio={mr!r} is out of range: use a number strictly between 0 and 1")
    return problems


def _config_from_files_and_flags(path: Path, options: Mapping[str, Any], family: str | None) -> dict[str, Any]:
    """Side file <stem>.config.json, then config=<path>, then flags, family= included (later wins)."""
    cfg: dict[str, Any] = {}
    sources = [path.with_name(path.stem + ".config.json")]
    if options.get("config") is not None:
        sources.append(Path(options["config"]))
    for src in sources:
        if not src.exists():
            if src is not sources[0]:
                raise LogFormatError(src, [(None, "config file does not exist: fix the config= path")])
            continue
        try:
            data = json.loads(_read_text(src))
        except json.JSONDecodeError as e:
            raise LogFormatError(src, [(e.lineno, f"config file is not valid JSON ({e.msg})")]) from None
        except (ValueError, RecursionError) as e:
            raise LogFormatError(src, [(None, f"config file is not valid JSON ({e})")]) from None
        if not isinstance(data, dict):
            raise LogFormatError(src, [(None, "config file must hold a JSON object of run-config keys")])
        cfg.update(data)
    if "lr" in cfg:
        cfg.setdefault("learning_rate", cfg.pop("lr"))
    for key, value in options.items():
        if key in ("config",) or key in _WANDB_COLS or value is None:
            continue
        cfg["learning_rate" if key == "lr" else key] = value
    if family is not None:
        cfg["family"] = family
    return cfg


@functools.lru_cache(maxsize=1024)
def _family_key(name: str) -> str:
    """groups.group_key for a family name (one canonical spelling: 'LLaDA' and 'llada' are one family), cached:
    a cells file repeats a handful of names over many rows, and each call builds a polars frame (~0.3 ms)."""
    from dlm_triage.groups import group_key

    return group_key("family", name)


def _resolved(path: Path) -> str:
    """str(path.resolve()), once per file and working directory (a cells file resolves its path per row)."""
    return _resolved_in(path, os.getcwd())


@functools.lru_cache(maxsize=64)
def _resolved_in(path: Path, cwd: str) -> str:
    return str(path.resolve())


def _finish_config(path: Path, cfg: dict[str, Any], family: str | None) -> dict[str, Any]:
    if cfg.get("family") in (None, "") and family is not None:
        cfg["family"] = family
    problems = _validate_config(cfg)
    if isinstance(cfg.get("family"), str) and cfg["family"]:
        cfg["family"] = _family_key(cfg["family"])
    if not cfg.get("family"):
        problems.append("no model family: pass family=... (--family) or put it in the file / config file")
    if problems:
        raise LogFormatError(path, [(None, p) for p in problems])
    for key in CONFIG_KEYS:
        cfg.setdefault(key, None)
    return cfg


def _collapsed_means(path: Path, options: Mapping[str, Any]) -> str:
    means = options.get("collapsed_means") or "collapse"
    if means not in COLLAPSED_MEANS:
        raise LogFormatError(path, [(None, f"collapsed_means={means!r} is not known: use one of "
                                           f"{sorted(COLLAPSED_MEANS)} (what the imported `collapsed` column means)")])
    return means


def _collapsed_value(value: bool | None, means: str) -> dict[str, Any]:
    """Summary fields of an imported `collapsed` value under COLLAPSED_MEANS[means]."""
    if means == "detector_stop":
        out: dict[str, Any] = {"collapsed": None, "collapse_definition": COLLAPSED_MEANS[means]}
        if value:
            out.update(status="stopped_by_legacy_detector", top1_warning_detected=True)
        return out
    return {"collapsed": value, "collapse_definition": COLLAPSED_MEANS[means]}
