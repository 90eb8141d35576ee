"""Bring your own logs: other tools' training logs -> the same `runs`/`steps` tables.

Formats (`import_logs(db_path, fmt, paths, ...)`):

- ``reference-jsonl``: one JSON object per line and step: step, loss, max_grad_norm, top1_token_freq,
  mask_ratio (null allowed for the last two), optional rank, model_family, collapsed. One file per run.
  `max_grad_norm` may be the step's norm or a running max: it is stored as the step's grad_norm and the
  running max is recomputed. Legacy warning/fire step/crossings/collapse use the rules of `monitors`
  (schema.LEGACY_*); final loss = the last step's loss; the logged mask_ratio is the run's (its value, or the
  mean when it varies).
- ``cells``: CSV, one row per configuration: family,model_name,rank,rho,seed,lr,top1_fired,top1_fire_step,
  collapsed,max_grad_norm,final_loss. `None`/empty = unknown (rank, seed, ...), `True`/`False` booleans. No
  step logs: runs only. `final_loss` and `max_grad_norm` may be absent (CELLS_OPTIONAL): such runs import with
  what they have and calibration lists what it skipped for them. Optional row columns cohort, method, alpha,
  steps, batch_size win over the flags.
- ``json-rows``: the same records as a JSON array, or an object holding one (``rows_key=`` names it when the
  object holds several lists); JSON types as they are.
- For both: ``map='rank=lora_r;final_loss=loss_200'`` takes a column from another one, and
  ``derive='rank=run_path:_r(\\d+)_;cohort=run_path:^runs/([^/]+)/'`` the first capture group of a regex searched in
  another column (a rank or cohort encoded in a run path); the rules are kept in the manifest.
- ``collapsed_means`` (cells, json-rows, reference-jsonl): what an imported `collapsed` value means:
  ``collapse`` (default: the source's actual-collapse flag) or ``detector_stop`` (the legacy detector's early
  stop: status stopped_by_legacy_detector, collapse not recorded). Each run keeps its collapse_definition.
- Family names are stored in one lower-case spelling (groups.group_key): 'LLaDA' and 'llada' are one family.
- ``hf-trainer``: a transformers ``trainer_state.json``; `log_history` entries holding `loss` are training
  steps (step, loss, grad_norm, learning_rate). Run config from the flags, from ``<stem>.config.json`` beside
  the file, or from ``config=<path>`` (flags win over files).
- ``wandb-csv``: a W&B run-history CSV export; columns mapped by `step_col` (default ``_step``), `loss_col`
  (``loss``), `grad_col` (``grad_norm``), optional `top1_col`, `mask_col`, `lr_col`. Rows with neither loss
  nor grad norm (eval-only rows) are skipped. Run config as for hf-trainer.

Run config precedence: for hf-trainer and wandb-csv, flags (family= included) override the config files;
for reference-jsonl and cells, values in the log itself win and flags fill what it leaves unknown.

Every problem names the file and the line (1-based) and says what to do. A bad file never half-loads: it is
parsed and validated completely before anything is written, its problems are reported in
`IngestReport.quarantined` (or raised with `strict=True`), and the good files go in in one transaction.
Identity from content, not from the file: a time-series run's id is its format + config + first logged step
(`_identity`), a cells row's its config + values. Re-importing a file adds nothing; a grown re-export (more
steps) replaces its shorter self in the import's transaction; a cells file with appended rows adds only those;
the same run from two files, or a row repeated inside one, is stored once and listed in
`IngestReport.duplicates`. Integers must fit their columns (Int32 steps, ranks, fire steps).
"""

from __future__ import annotations

import codecs
import csv
import functools
import hashlib
import io
import json
import math
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import polars as pl

from . import runsummary, store
from .store import IngestReport, PreparedRun
from .tables import RUNS

MAX_PROBLEMS_SHOWN = 20

FORMATS = ("reference-jsonl", "cells", "json-rows", "hf-trainer", "wandb-csv")

# Run-config keys an importer understands (as flags or in a config file); `lr` is an alias of learning_rate.
CONFIG_KEYS = ("family", "model_id", "method", "rank", "alpha", "mask_ratio", "learning_rate", "seed", "steps",
               "batch_size", "cohort")
_CONFIG_FLAGS = frozenset(CONFIG_KEYS) - {"family"} | {"lr", "config"}
_WANDB_COLS = {"step_col": "_step", "loss_col": "loss", "grad_col": "grad_norm", "top1_col": None,
               "mask_col": None, "lr_col": None}
_ROW_OPTIONS = frozenset({"map", "derive", "collapsed_means"})
_OPTIONS: dict[str, frozenset[str]] = {
    "reference-jsonl": _CONFIG_FLAGS - {"config"} | {"collapsed_means"},
    "cells": frozenset({"method", "alpha", "steps", "batch_size", "cohort"}) | _ROW_OPTIONS,
    "json-rows": frozenset({"method", "alpha", "steps", "batch_size", "cohort", "rows_key"}) | _ROW_OPTIONS,
    "hf-trainer": _CONFIG_FLAGS,
    "wandb-csv": _CONFIG_FLAGS | frozenset(_WANDB_COLS),
}

CELLS_COLUMNS = ("family", "model_name", "rank", "rho", "seed", "lr", "top1_fired", "top1_fire_step",
                 "collapsed", "max_grad_norm", "final_loss")
CELLS_OPTIONAL = ("final_loss", "max_grad_norm")
"""Columns a per-configuration table may lack: its runs import with what they have (calibration says which
analyses it skipped for them)."""
CELLS_ROW_CONFIG = ("cohort", "method", "alpha", "steps", "batch_size")
"""Run-config columns a row may carry (or get through map=/derive=); a row's value wins over the flag."""
COLLAPSED_MEANS = {
    "collapse": "imported `collapsed` column, read as the source's own actual-collapse flag "
                "(collapsed_means=collapse)",
    "detector_stop": "imported `collapsed` column, read as a legacy top-1 detector early stop "
                     "(collapsed_means=detector_stop): such runs are status stopped_by_legacy_detector, actual "
                     "collapse not recorded (NULL), never counted as a collapse",
}
"""What an imported `collapsed` value means (option collapsed_means); the text is the run's collapse_definition."""
JSONL_REQUIRED = ("step", "loss", "max_grad_norm", "top1_token_freq", "mask_ratio")
_NULL_TEXT = frozenset({"", "none", "null", "na", "n/a"})


class LogFormatError(ValueError):
    """A log file that cannot be imported. `path` and `problems` [(line or None, reason)] are attributes;
    the message lists them as 'path:line: reason'."""

    def __init__(self, path: Path | str, problems: Sequence[tuple[int | None, str]]):
        self.path = Path(path)
        self.problems = list(problems)
        shown = [f"{self.path}:{ln}: {why}" if ln is not None else f"{self.path}: {why}"
                 for ln, why in self.problems[:MAX_PROBLEMS_SHOWN]]
        more = len(self.problems) - MAX_PROBLEMS_SHOWN
        if more > 0:
            shown.append(f"... and {more} more problem(s)")
        super().__init__("\n".join(shown))


# -- value parsing ------------------------------------------------------------------------------------------

class _Bad(Exception):
    """One bad value; str = the reason (the caller adds file and line)."""


_SECRET_WORDS = re.compile(r"(key|token|secret|passw|pwd|auth|bearer|cookie|session|credential)", re.I)
_SECRET_LIKE = re.compile(r"^(?=.*[A-Za-z])(?=.*[0-9])[A-Za-z0-9_\-+/=.:]{20,}$")


def _redact(text: str, limit: int = 24) -> str:
    """A field of a file for a message: secret-looking text (a credential word, or a long mixed letters-and-
    digits token) is replaced by its length; anything else is cut to `limit` characters. A wrong file imported
    by mistake (an .env, a key file) must not be echoed to the terminal and the quarantine table."""
    t = str(text)
    if _SECRET_WORDS.search(t) or _SECRET_LIKE.match(t.strip()):
        return f"<redacted, {len(t)} chars>"
    return t if len(t) <= limit else t[: limit - 3] + "..."


def _show(v: Any, limit: int = 40) -> str:
    """repr of a value for a message, cut to `limit` characters (a 400-digit number is not helpful), secrets
    redacted (`_redact`)."""
    if isinstance(v, str) and _redact(v, limit=10**9) != v:
        return _redact(v)
    try:
        r = repr(v)
    except ValueError:  # an integer beyond Python's str-conversion digit limit
        return "<an integer of thousands of digits>"
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _num(name: str, v: Any, *, required: bool = True) -> float | None:
    """A finite float from a JSON number or CSV text; None for null-ish when not required."""
    if v is None or (isinstance(v, str) and v.strip().lower() in _NULL_TEXT):
        if required:
            raise _Bad(f"{name} is missing (null/empty): give a finite number")
        return None
    if isinstance(v, bool):
        raise _Bad(f"{name}={_show(v)} is a boolean, not a number")
    if isinstance(v, (int, float)):
        try:
            x = float(v)
        except OverflowError:
            raise _Bad(f"{name}={_show(v)} is out of range") from None
    elif isinstance(v, str):
        try:
            x = float(v.strip())
        except ValueError:
            raise _Bad(f"{name}={_show(v)} is not numeric") from None
    else:
        raise _Bad(f"{name}={_show(v)} is a {type(v).__name__}, not a number")
    if not math.isfinite(x):
        raise _Bad(f"{name}={_show(v)} is NaN/Inf: only finite values can be imported")
    return x


INT32_MAX = 2**31 - 1
_DECIMAL_INT = re.compile(r"[+-]?[0-9]+")  # ASCII digits only (str.isdigit also accepts '²')


def _int(name: str, v: Any, *, required: bool = True, minimum: int | None = 0,
         maximum: int = INT32_MAX) -> int | None:
    """An integer in [minimum, maximum] (default: what a 32-bit step/rank/count column holds)."""
    if isinstance(v, int) and not isinstance(v, bool):
        i = v  # exact, also beyond 2**53
    else:
        if isinstance(v, str) and _DECIMAL_INT.fullmatch(v.strip()):
            t = v.strip()
            if len(t) > 30:
                raise _Bad(f"{name}={_show(v)} is out of range: use an integer in [{minimum}, {maximum}]")
            i = int(t)
        else:
            x = _num(name, v, required=required)
            if x is None:
                return None
            if not x.is_integer():
                raise _Bad(f"{name}={_show(v)} is not an integer")
            i = int(x)
    if i > maximum or (minimum is not None and i < minimum) or i < -maximum - 1:
        lo = minimum if minimum is not None else -maximum - 1
        raise _Bad(f"{name}={_show(v)} is out of range: use an integer in [{lo}, {maximum}]")
    return i


def _bool(name: str, v: Any) -> bool | None:
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, str):
        t = v.strip().lower()
        if t in _NULL_TEXT:
            return None
        if t in ("true", "1", "yes"):
            return True
        if t in ("false", "0", "no"):
            return False
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    raise _Bad(f"{name}={_show(v)} is not a boolean: use True/False (or None when unknown)")


def _text(name: str, v: Any, *, required: bool = False) -> str | None:
    if v is None or (isinstance(v, str) and v.strip().lower() in _NULL_TEXT):
        if required:
            raise _Bad(f"{name} is missing: give a name")
        return None
    if not isinstance(v, (str, int, float)) or isinstance(v, bool):
        raise _Bad(f"{name}={_show(v)} is not text")
    return str(v).strip()


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise LogFormatError(path, [(None, f"not UTF-8 text ({e.reason} at byte {e.start})")]) from None
    except OSError as e:
        raise LogFormatError(path, [(None, f"cannot be read ({e.strerror or e})")]) from None


def _sha(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


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
    from .groups import group_key

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


# -- monitors summary of a step log -------------------------------------------------------------------------

def _steps_frame(step: list[int], loss: list[float], grad: list[float], top1: list[float],
                 mask: list[float], lr: list[float]) -> pl.DataFrame:
    g = np.asarray(grad, dtype=np.float64)
    running = runsummary.max_grad_so_far(g)  # NaN (not logged) steps carry the previous max
    return pl.DataFrame({
        "step": pl.Series(step, dtype=pl.Int32), "loss": np.asarray(loss, dtype=np.float64),
        "grad_norm": g, "max_grad_norm": running, "top1_freq": np.asarray(top1, dtype=np.float64),
        "mask_ratio": np.asarray(mask, dtype=np.float64), "lr": np.asarray(lr, dtype=np.float64),
    })


IDENTITY_PREFIX_STEPS = 1
"""A time-series run is identified by its format, config and its first logged step (step, loss, grad norm):
a re-export of the same run after more steps, however short the first export was, has the same identity (and
is stored as the grown run); two runs of one config whose first logged values differ are two runs."""


def _frame_sha(steps: pl.DataFrame) -> str:
    """sha256 of a step frame's values (column by column, native bytes; linear in the rows)."""
    h = hashlib.sha256()
    for col in steps.columns:
        h.update(col.encode())
        h.update(np.ascontiguousarray(steps[col].to_numpy()).tobytes())
    return h.hexdigest()


def _identity(fmt: str, cfg: Mapping[str, Any], key: Any) -> tuple[str, str]:
    """(run_id, identity sha) from content: format + run config + the run's key (see IDENTITY_PREFIX_STEPS and
    parse_cells). Neither the file's name nor its bytes enter it: the same run imported from two files, or from
    a grown re-export, has one id."""
    ident = _sha(json.dumps({"format": fmt, "config": cfg, "key": key}, sort_keys=True, default=repr))
    return f"import-{'jsonl' if fmt == 'reference-jsonl' else fmt}-{ident[:20]}", ident


def _series_key(steps: pl.DataFrame) -> list[list[str]]:
    head = steps.head(IDENTITY_PREFIX_STEPS)
    return [[repr(int(s)), repr(float(lo)), repr(float(g))] for s, lo, g in
            zip(head["step"].to_list(), head["loss"].to_list(), head["grad_norm"].to_list())]


def _prepared(fmt: str, path: Path, run_id: str, content_sha: str, cfg: dict[str, Any],
              summary: Mapping[str, Any], steps: pl.DataFrame | None, extra: Mapping[str, Any]) -> PreparedRun:
    config_json = json.dumps(cfg, sort_keys=True, default=str)
    manifest = {"source": f"import:{fmt}", "source_path": str(path), **extra, "config": cfg, **summary}
    row = {
        "run_id": run_id, "source": f"import:{fmt}", "source_path": _resolved(path),
        "family": cfg["family"], "model_id": cfg["model_id"], "cohort": cfg["cohort"] or "",
        "objective": cfg.get("objective"),  # a foreign log's recipe is unknown unless it says
        "method": cfg["method"], "rank": cfg["rank"], "alpha": cfg["alpha"], "mask_ratio": cfg["mask_ratio"],
        "learning_rate": cfg["learning_rate"], "seed": cfg["seed"], "steps": cfg["steps"],
        "batch_size": cfg["batch_size"], "config_hash": _sha(config_json), "config_json": config_json,
        "status": summary.get("status") or "completed", "diverged_at_step": None, "routed_for_inspection": False,
        "routing_json": None,
        "grad_gini": None, "grad_top1_share": None, "device": None, "code_version": None,
        "manifest_json": json.dumps(manifest, sort_keys=True, default=str), "content_sha256": content_sha,
        **{k: summary.get(k) for k in ("final_loss", "max_grad_norm", "top1_step0", "top1_warning_detected",
                                       "top1_fire_step", "top1_cross_050", "top1_cross_080", "top1_cross_095",
                                       "collapsed", "n_steps")},
    }
    try:
        row = RUNS.row(row)
    except ValueError as e:
        raise _Bad(str(e)) from None
    return PreparedRun(path=str(path), row=row, steps=steps)


def _check_steps_increasing(steps: list[int], lines: list[int], problems: list[tuple[int | None, str]]) -> None:
    for i in range(1, len(steps)):
        if steps[i] <= steps[i - 1]:
            what = "repeats" if steps[i] == steps[i - 1] else "goes back from"
            problems.append((lines[i], f"step {steps[i]} {what} step {steps[i - 1]} (line {lines[i - 1]}): "
                                       "steps must strictly increase within one run"))


# -- reference-jsonl ----------------------------------------------------------------------------------------

def parse_reference_jsonl(path: Path, *, family: str | None = None, **options: Any) -> list[PreparedRun]:
    """One run per file; see the module docstring. Raises LogFormatError listing every bad line."""
    path = Path(path)
    text = _read_text(path)
    problems: list[tuple[int | None, str]] = []
    cols: dict[str, list] = {k: [] for k in ("step", "loss", "grad", "top1", "mask", "line")}
    constants: dict[str, tuple[Any, int]] = {}
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append((lineno, f"not valid JSON ({e.msg} at column {e.colno})"))
            continue
        except ValueError as e:  # e.g. an integer literal beyond Python's digit limit
            problems.append((lineno, f"not valid JSON ({e})"))
            continue
        except RecursionError:
            problems.append((lineno, "not valid JSON (nested too deeply)"))
            continue
        if not isinstance(obj, dict):
            problems.append((lineno, f"a JSON {type(obj).__name__}, expected an object per step"))
            continue
        missing = [k for k in JSONL_REQUIRED if k not in obj]
        if missing:
            problems.append((lineno, f"missing key(s) {missing}: each line needs {list(JSONL_REQUIRED)}"))
            continue
        try:
            vals = (
                _int("step", obj["step"]), _num("loss", obj["loss"]), _num("max_grad_norm", obj["max_grad_norm"]),
                _num("top1_token_freq", obj["top1_token_freq"], required=False),
                _num("mask_ratio", obj["mask_ratio"], required=False),
            )
            for key, conv in (("rank", lambda v: _int("rank", v, required=False, minimum=1)),
                              ("model_family", lambda v: _text("model_family", v)),
                              ("collapsed", lambda v: _bool("collapsed", v))):
                if key in obj:
                    v = conv(obj[key])
                    if v is None:
                        continue
                    if key in constants and constants[key][0] != v:
                        raise _Bad(f"{key}={v!r} differs from {constants[key][0]!r} on line {constants[key][1]}: "
                                   "one file holds one run")
                    constants.setdefault(key, (v, lineno))
        except _Bad as e:
            problems.append((lineno, str(e)))
            continue
        for k, v in zip(("step", "loss", "grad", "top1", "mask"), vals):
            cols[k].append(np.nan if v is None else v)
        cols["line"].append(lineno)
    _check_steps_increasing(cols["step"], cols["line"], problems)
    if not cols["step"] and not problems:
        problems.append((None, "the file holds no steps: expected one JSON object per line"))
    if problems:
        raise LogFormatError(path, problems)
    means = _collapsed_means(path, options)
    cfg = {k: v for k, v in options.items() if v is not None and k != "collapsed_means"}
    if "lr" in cfg:
        cfg["learning_rate"] = cfg.pop("lr")
    if "model_family" in constants:
        cfg["family"] = constants["model_family"][0]
    if "rank" in constants:
        cfg["rank"] = constants["rank"][0]
    logged_mask = np.asarray(cols["mask"], dtype=np.float64)
    logged_mask = logged_mask[np.isfinite(logged_mask)]
    if logged_mask.size:  # the log's own mask ratio wins: constant -> that value, varying -> its mean
        cfg["mask_ratio"] = float(logged_mask[0]) if np.ptp(logged_mask) == 0 else float(logged_mask.mean())
    cfg = _finish_config(path, cfg, family)
    steps = _steps_frame(cols["step"], cols["loss"], cols["grad"], cols["top1"], cols["mask"],
                         [np.nan] * len(cols["step"]))
    summary = runsummary.summarise(steps).row()  # a foreign log's status is unknown: never 'diverged'
    from .schema import COLLAPSE_DEFINITION

    extra = {"collapse_definition": COLLAPSE_DEFINITION}
    if "collapsed" in constants:  # the log's own verdict wins over the recomputed one
        what = _collapsed_value(constants["collapsed"][0], means)
        extra["collapse_definition"] = what.pop("collapse_definition")
        summary.update(what)
    return [_series_run("reference-jsonl", path, text, cfg, steps, summary, extra=extra)]


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


# -- cells ---------------------------------------------------------------------------------------------------

def _csv_records(path: Path, text: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line number, fields) per record; line = the record's first physical line."""
    try:
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        rows = []
        header = next(reader, None)
        if header is None:
            raise LogFormatError(path, [(None, "empty file: expected a header row")])
        prev = reader.line_num
        for rec in reader:
            rows.append((prev + 1, rec))
            prev = reader.line_num
    except csv.Error as e:
        raise LogFormatError(path, [(reader.line_num or None, f"not valid CSV ({e})")]) from None
    return [h.strip() for h in header], rows


def _require_columns(path: Path, header: list[str], required: Sequence[str], fix: str) -> None:
    dup = sorted({h for h in header if header.count(h) > 1})
    missing = [c for c in required if c not in header]
    problems = []
    if missing:
        shown = [_redact(h) for h in header[:12]] + ([f"... {len(header) - 12} more"] if len(header) > 12 else [])
        problems.append((1, f"missing column(s) {missing}; the header has {shown}. Fix: {fix}"))
    if dup:
        problems.append((1, f"duplicated column name(s) {[_redact(d) for d in dup[:12]]}: rename them"))
    if problems:
        raise LogFormatError(path, problems)


def _split_spec(path: Path, name: str, spec: Any) -> list[tuple[str, str]]:
    """'a=b;c=d' (or a mapping / list of pairs) -> [(a, b), (c, d)]."""
    if spec is None or spec == "":
        return []
    if isinstance(spec, Mapping):
        items = [(str(k), v) for k, v in spec.items()]
    elif isinstance(spec, str):
        items = []
        for part in spec.split(";"):
            if not part.strip():
                continue
            dst, eq, src = part.partition("=")
            if not eq or not dst.strip() or not src.strip():
                raise LogFormatError(path, [(None, f"{name}={spec!r}: each entry must read 'column=source' "
                                                   "(entries separated by ';')")])
            items.append((dst.strip(), src.strip()))
    else:
        items = [(str(k), v) for k, v in spec]
    return items


def _column_rules(path: Path, options: Mapping[str, Any], known: Sequence[str]) -> list[tuple[str, str, Any]]:
    """The map= and derive= rules as (target, source column, compiled regex or None), validated.

    map='rank=lora_r;final_loss=loss_200' takes a column from another one; derive='rank=run_path:_r(\\d+)_'
    takes the first capture group (the whole match without one) of a regex searched in another column's text,
    e.g. a rank or cohort encoded in a run path. Targets must be known columns."""
    rules: list[tuple[str, str, Any]] = []
    for dst, src in _split_spec(path, "map", options.get("map")):
        rules.append((dst, str(src), None))
    derive = options.get("derive")
    pairs = ([(k, v) for k, v in derive.items()] if isinstance(derive, Mapping)
             else _split_spec(path, "derive", derive))
    for dst, spec in pairs:
        if isinstance(spec, (tuple, list)) and len(spec) == 2:
            src, pattern = spec
        else:
            src, sep, pattern = str(spec).partition(":")
            if not sep:
                raise LogFormatError(path, [(None, f"derive {dst}={spec!r}: write 'column=source:regex', e.g. "
                                                   "rank=run_path:_r(\\d+)_")])
        try:
            rx = re.compile(pattern)
        except re.error as e:
            raise LogFormatError(path, [(None, f"derive {dst}: {pattern!r} is not a valid regex ({e})")]) from None
        rules.append((dst, str(src).strip(), rx))
    bad = [d for d, _, _ in rules if d not in known]
    if bad:
        raise LogFormatError(path, [(None, f"map/derive target(s) {bad} are not columns this format reads: use "
                                           f"{sorted(known)}")])
    return rules


def _apply_rules(rules: list[tuple[str, str, Any]], rec: dict[str, Any]) -> dict[str, Any]:
    """One record with the map/derive rules applied (raises _Bad naming the rule and the value)."""
    out = dict(rec)
    for dst, src, rx in rules:
        if src not in rec:
            raise _Bad(f"map/derive {dst} from {src!r}: the row has no column {src!r} (columns: {sorted(rec)})")
        v = rec[src]
        if rx is None:
            out[dst] = v
            continue
        m = rx.search("" if v is None else str(v))
        if m is None:
            raise _Bad(f"derive {dst} from {src}={_show(v)}: {rx.pattern!r} does not match: fix the regex or the value")
        out[dst] = m.group(1) if rx.groups else m.group(0)
    return out


def _stream_sha_and_check_utf8(path: Path) -> str:
    """sha256 of a text file's bytes (a leading UTF-8 BOM left out, as `_read_text` drops it), read in chunks;
    LogFormatError at the first byte that is not UTF-8."""
    h, dec, offset, first = hashlib.sha256(), codecs.getincrementaldecoder("utf-8")(), 0, True
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                if first and chunk.startswith(codecs.BOM_UTF8):
                    chunk, offset = chunk[3:], 3
                first = False
                h.update(chunk)
                pending = len(dec.getstate()[0])
                try:
                    dec.decode(chunk)
                except UnicodeDecodeError as e:
                    raise LogFormatError(path, [(None, f"not UTF-8 text ({e.reason} at byte "
                                                       f"{offset - pending + e.start})")]) from None
                offset += len(chunk)
            dec.decode(b"", final=True)
    except UnicodeDecodeError as e:
        raise LogFormatError(path, [(None, f"not UTF-8 text ({e.reason} at the end of the file)")]) from None
    except OSError as e:
        raise LogFormatError(path, [(None, f"cannot be read ({e.strerror or e})")]) from None
    return h.hexdigest()


def _cells_records(path: Path, fh: Any, header: list[str], reader: Any,
                   problems: list[tuple[int | None, str]]) -> Iterator[tuple[int, dict[str, str] | None]]:
    """(line, record) per CSV row of an open reader, streamed; a row with the wrong field count is a problem
    (and a None record)."""
    prev = reader.line_num
    try:
        for rec in reader:
            lineno, prev = prev + 1, reader.line_num
            if not rec or all(not f.strip() for f in rec):
                continue
            if len(rec) != len(header):
                problems.append((lineno, f"{len(rec)} fields but the header has {len(header)}"))
                yield lineno, None
                continue
            yield lineno, dict(zip(header, rec))
    except csv.Error as e:
        raise LogFormatError(path, [(reader.line_num or None, f"not valid CSV ({e})")]) from None


def _parse_cells_into(path: Path, family: str | None, options: Mapping[str, Any],
                      sink: Callable[[PreparedRun, int | None], None] | None) -> list[PreparedRun]:
    """parse_cells with the rows streamed from the file (see _cells_runs for `sink`)."""
    path = Path(path)
    file_sha = _stream_sha_and_check_utf8(path)
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, strict=True)
        try:
            header = next(reader, None)
        except csv.Error as e:
            raise LogFormatError(path, [(reader.line_num or None, f"not valid CSV ({e})")]) from None
        if header is None:
            raise LogFormatError(path, [(None, "empty file: expected a header row")])
        header = [h.strip() for h in header]
        rules = _column_rules(path, options, CELLS_COLUMNS + CELLS_ROW_CONFIG)
        mapped = {d for d, _, _ in rules}
        missing_src = sorted({src for _, src, _ in rules} - set(header))
        if missing_src:
            raise LogFormatError(path, [(1, f"map/derive source column(s) {missing_src} are not in the header "
                                            f"{[_redact(h) for h in header[:12]]}")])
        _require_columns(path, header + sorted(mapped - set(header)),
                         [c for c in CELLS_COLUMNS if c not in CELLS_OPTIONAL],
                         f"add them (write None where unknown) so the header holds {','.join(CELLS_COLUMNS)}, or "
                         "map/derive them from other columns (map=rank=lora_r, derive=rank=run_path:_r(\\d+))")
        ctx = _cells_context(path, rules, family, options)
        problems: list[tuple[int | None, str]] = []
        return _cells_runs("cells", path, file_sha, _cells_records(path, fh, header, reader, problems), ctx,
                           problems, sink=sink)


def parse_cells(path: Path, *, family: str | None = None, **options: Any) -> list[PreparedRun]:
    """One run per CSV row (no step logs). Raises LogFormatError listing every bad row. (`import_logs` streams
    the rows to a staging file instead of returning them: see stage_rows.)"""
    return _parse_cells_into(path, family, options, None)


def _rows_of_json(path: Path, data: Any, rows_key: str | None) -> list[Any]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        if rows_key is not None:
            if not isinstance(data.get(rows_key), list):
                raise LogFormatError(path, [(None, f"rows_key={rows_key!r}: the object has no list under that key "
                                                   f"(keys: {sorted(data)})")])
            return data[rows_key]
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if len(lists) == 1:
            return data[lists[0]]
        raise LogFormatError(path, [(None, f"the JSON object holds {len(lists)} lists ({lists}): expected one list "
                                           "of per-configuration records; name it with rows_key=")])
    raise LogFormatError(path, [(None, f"a JSON {type(data).__name__}: expected an array of per-configuration "
                                       "records, or an object holding one")])


def parse_json_rows(path: Path, *, family: str | None = None, **options: Any) -> list[PreparedRun]:
    """One run per record of a JSON array (or of the one array an object holds; rows_key= names it) of
    per-configuration records with the `cells` columns (CELLS_COLUMNS; CELLS_OPTIONAL may be absent). Records
    are numbered from 1 in messages."""
    return _parse_json_rows_into(path, family, options, None)


def _parse_json_rows_into(path: Path, family: str | None, options: Mapping[str, Any],
                          sink: Callable[[PreparedRun, int | None], None] | None) -> list[PreparedRun]:
    path = Path(path)
    text = _read_text(path)
    file_sha = _sha(text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise LogFormatError(path, [(e.lineno, f"not valid JSON ({e.msg} at column {e.colno})")]) from None
    except (ValueError, RecursionError) as e:
        raise LogFormatError(path, [(None, f"not valid JSON ({e})")]) from None
    del text  # the parsed records are what is needed from here on
    records = _rows_of_json(path, data, options.get("rows_key"))
    rules = _column_rules(path, options, CELLS_COLUMNS + CELLS_ROW_CONFIG)
    mapped = {d for d, _, _ in rules}
    rows: list[tuple[int | None, dict[str, Any] | None]] = []
    problems: list[tuple[int | None, str]] = []
    required = [c for c in CELLS_COLUMNS if c not in CELLS_OPTIONAL and c not in mapped]
    for i, rec in enumerate(records, 1):
        if not isinstance(rec, dict):
            problems.append((None, f"record {i}: a JSON {type(rec).__name__}, expected an object"))
            rows.append((None, None))
            continue
        missing = [c for c in required if c not in rec]
        if missing:
            problems.append((None, f"record {i}: missing key(s) {missing}: each record needs {required} (null "
                                   "where unknown), or map=/derive= them from other keys"))
            rows.append((None, None))
            continue
        rows.append((None, rec))
    opts = {k: v for k, v in options.items() if k != "rows_key"}
    return _cells_runs("json-rows", path, file_sha, rows, _cells_context(path, rules, family, opts), problems,
                       sink=sink)


def _cells_context(path: Path, rules: list[tuple[str, str, Any]], family: str | None,
                   options: Mapping[str, Any]) -> dict[str, Any]:
    """What every record of one cells / json-rows file shares (checked once, before the first record)."""
    return {"means": _collapsed_means(path, options), "rules": rules, "family": family,
            "flags": {k: v for k, v in options.items() if v is not None and k not in _ROW_OPTIONS},
            "mapping": {"map": options.get("map"), "derive": options.get("derive")} if rules else None}


def _cells_run(fmt: str, path: Path, file_sha: str, lineno: int | None, row_i: int, raw: Mapping[str, Any],
               ctx: Mapping[str, Any]) -> PreparedRun:
    """One per-configuration record (cells row / json-rows record) -> its run; raises LogFormatError listing
    the record's problems (line, or 'record N:' for JSON records, which have no line)."""
    label = "" if lineno is not None else f"record {row_i + 1}: "
    family = ctx["family"]
    try:
        v = _apply_rules(ctx["rules"], raw)
        rho = _num("rho", v["rho"], required=False)
        if rho is not None and not 0.0 < rho < 1.0:
            raise _Bad(f"rho={_show(v['rho'])} is out of range: use a number strictly between 0 and 1")
        vals = {
            "family": _text("family", v["family"], required=family is None) or family,
            "model_id": _text("model_name", v["model_name"]),
            "rank": _int("rank", v["rank"], required=False, minimum=1), "mask_ratio": rho,
            "seed": _int("seed", v["seed"], required=False, maximum=2**63 - 1),
            "learning_rate": _num("lr", v["lr"], required=False),
            "top1_warning_detected": _bool("top1_fired", v["top1_fired"]),
            "top1_fire_step": _int("top1_fire_step", v["top1_fire_step"], required=False),
            "collapsed": _bool("collapsed", v["collapsed"]),
            # a table without these imports what it has: calibration says what it skipped for such runs
            "max_grad_norm": _num("max_grad_norm", v.get("max_grad_norm"), required=False),
            "final_loss": _num("final_loss", v.get("final_loss"), required=False),
        }
        row_cfg = {k: v[k] for k in CELLS_ROW_CONFIG if k in v and v[k] is not None and v[k] != ""}
    except _Bad as e:
        raise LogFormatError(path, [(lineno, f"{label}{e}")]) from None
    cfg = dict(ctx["flags"])
    cfg.update(row_cfg)  # the row's own config columns win over the flags
    cfg.update({k: vals[k] for k in ("family", "model_id", "rank", "mask_ratio", "seed", "learning_rate")})
    try:
        cfg = _finish_config(path, cfg, family)
    except LogFormatError as e:
        raise LogFormatError(path, [(lineno, f"{label}{why}") for _, why in e.problems]) from None
    summary = {k: vals[k] for k in ("top1_warning_detected", "top1_fire_step", "collapsed", "max_grad_norm",
                                    "final_loss")}
    what = _collapsed_value(vals["collapsed"], ctx["means"])
    summary.update({k: x for k, x in what.items() if k != "collapse_definition"})
    summary["n_steps"] = None
    # a cells row is a finished configuration: its identity is its config and its values (the same row
    # twice, in one file or two, is one run; an appended row is a new one)
    run_id, content = _identity("cells", cfg, summary)
    extra = {"file_sha256": file_sha, "row": row_i, "line": lineno,
             "collapse_definition": what["collapse_definition"]}
    if ctx["mapping"]:
        extra["column_rules"] = ctx["mapping"]
    try:
        return _prepared(fmt, path, run_id, content, cfg, summary, None, extra)
    except _Bad as e:
        raise LogFormatError(path, [(lineno, f"{label}{e}")]) from None


def _cells_runs(fmt: str, path: Path, file_sha: str, rows: Iterable[tuple[int | None, dict[str, Any] | None]],
                ctx: Mapping[str, Any], problems: list[tuple[int | None, str]], *,
                sink: Callable[[PreparedRun, int | None], None] | None = None) -> list[PreparedRun]:
    """Validate per-configuration records (cells / json-rows) into runs; every bad record is listed.

    `rows` may be a stream (a CSV read record by record); with a `sink`, each run goes there as soon as it is
    built and nothing is kept here (memory bounded by the sink's batch, not by the file). A None record is one
    already reported in `problems`."""
    out: list[PreparedRun] = []
    n_ok = 0
    for row_i, (lineno, raw) in enumerate(rows):
        if raw is None:
            continue
        try:
            run = _cells_run(fmt, path, file_sha, lineno, row_i, raw, ctx)
        except LogFormatError as e:
            problems.extend(e.problems)
            continue
        n_ok += 1
        if problems:
            continue  # the file is rejected whole: the rest is only checked, so every bad record is listed
        if sink is not None:
            sink(run, lineno)
        else:
            out.append(run)
    if not n_ok and not problems:
        problems.append((None, "the file holds a header but no rows" if fmt == "cells" else "the file holds no records"))
    if problems:
        raise LogFormatError(path, problems)
    return out


# -- hf-trainer ----------------------------------------------------------------------------------------------

_LOG_HISTORY = re.compile(r'"log_history"\s*:\s*\[')


def _entry_lines(text: str, n: int) -> list[int | None]:
    """Line number of each log_history entry (scanning the raw text); None where it cannot be located."""
    m = _LOG_HISTORY.search(text)
    if not m:
        return [None] * n
    dec = json.JSONDecoder()
    pos, lines = m.end(), []
    line, counted = text.count("\n", 0, pos) + 1, pos  # newlines counted once, from the last entry on: linear
    try:
        while len(lines) < n:
            while pos < len(text) and text[pos] in " \t\r\n,":
                pos += 1
            if pos >= len(text) or text[pos] == "]":
                break
            line += text.count("\n", counted, pos)
            counted = pos
            lines.append(line)
            _, pos = dec.raw_decode(text, pos)
    except (ValueError, RecursionError):
        pass
    return lines + [None] * (n - len(lines))


def parse_hf_trainer(path: Path, *, family: str | None = None, **options: Any) -> list[PreparedRun]:
    """A transformers trainer_state.json -> one run. Raises LogFormatError."""
    path = Path(path)
    text = _read_text(path)
    try:
        state = json.loads(text)
    except json.JSONDecodeError as e:
        raise LogFormatError(path, [(e.lineno, f"not valid JSON ({e.msg} at column {e.colno})")]) from None
    except ValueError as e:
        raise LogFormatError(path, [(None, f"not valid JSON ({e})")]) from None
    except RecursionError:
        raise LogFormatError(path, [(None, "not valid JSON (nested too deeply)")]) from None
    if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
        raise LogFormatError(path, [(None, "no 'log_history' list: give a transformers trainer_state.json "
                                           "(it is written in every checkpoint-*/ directory)")])
    history = state["log_history"]
    lines = _entry_lines(text, len(history))
    problems: list[tuple[int | None, str]] = []
    cols: dict[str, list] = {k: [] for k in ("step", "loss", "grad", "lr", "line")}
    for i, entry in enumerate(history):
        where = lines[i]
        if not isinstance(entry, dict) or "loss" not in entry:
            continue  # eval entries (eval_loss) and the final summary (train_loss) are not training steps
        try:
            if "step" not in entry:
                raise _Bad("training entry without 'step'")
            if "grad_norm" not in entry:
                raise _Bad("training entry without 'grad_norm': max-grad triage needs it (transformers >= 4.38 "
                           "logs it at every logging step)")
            vals = (_int("step", entry["step"]), _num("loss", entry["loss"]), _num("grad_norm", entry["grad_norm"]),
                    _num("learning_rate", entry.get("learning_rate"), required=False))
        except _Bad as e:
            problems.append((where, f"log_history[{i}]: {e}"))
            continue
        for k, v in zip(("step", "loss", "grad", "lr"), vals):
            cols[k].append(np.nan if v is None else v)
        cols["line"].append(where)
    _check_steps_increasing(cols["step"], cols["line"], problems)
    if not cols["step"] and not problems:
        problems.append((None, "log_history holds no training entries (with 'loss'): was logging enabled?"))
    if problems:
        raise LogFormatError(path, problems)
    cfg = _config_from_files_and_flags(path, options, family)
    for key, state_key in (("steps", "max_steps"), ("batch_size", "train_batch_size")):
        if cfg.get(key) is None and isinstance(state.get(state_key), int) and state[state_key] > 0:
            cfg[key] = state[state_key]
    cfg = _finish_config(path, cfg, family)
    n = len(cols["step"])
    steps = _steps_frame(cols["step"], cols["loss"], cols["grad"], [np.nan] * n, [np.nan] * n, cols["lr"])
    return [_series_run("hf-trainer", path, text, cfg, steps)]


def _series_run(fmt: str, path: Path, text: str, cfg: dict[str, Any], steps: pl.DataFrame,
                summary: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None) -> PreparedRun:
    """One time-series run: id from its identity (_identity), content sha over config, summary and steps."""
    summary = runsummary.summarise(steps).row() if summary is None else summary
    run_id, _ = _identity(fmt, cfg, _series_key(steps))
    content = _sha(json.dumps({"config": cfg, "summary": summary, "steps": _frame_sha(steps)}, sort_keys=True,
                              default=repr))
    try:
        return _prepared(fmt, path, run_id, content, cfg, summary, steps, {"file_sha256": _sha(text), **(extra or {})})
    except _Bad as e:
        raise LogFormatError(path, [(None, str(e))]) from None


# -- wandb-csv -----------------------------------------------------------------------------------------------

def parse_wandb_csv(path: Path, *, family: str | None = None, **options: Any) -> list[PreparedRun]:
    """A W&B run-history CSV -> one run; columns mapped by step_col/loss_col/grad_col/top1_col/mask_col/lr_col."""
    path = Path(path)
    text = _read_text(path)
    colmap = {k: options.get(k, d) for k, d in _WANDB_COLS.items()}
    header, records = _csv_records(path, text)
    wanted = [c for c in colmap.values() if c is not None]
    _require_columns(path, header, wanted,
                     "map your column names with step_col=, loss_col=, grad_col= (and optionally top1_col=, "
                     "mask_col=, lr_col=)")
    idx = {h: i for i, h in enumerate(header)}
    problems: list[tuple[int | None, str]] = []
    cols: dict[str, list] = {k: [] for k in ("step", "loss", "grad", "top1", "mask", "lr", "line")}
    for lineno, rec in records:
        if not rec or all(not f.strip() for f in rec):
            continue
        if len(rec) != len(header):
            problems.append((lineno, f"{len(rec)} fields but the header has {len(header)}"))
            continue
        get = lambda key: rec[idx[colmap[key]]] if colmap[key] is not None else None  # noqa: E731
        try:
            loss = _num(colmap["loss_col"], get("loss_col"), required=False)
            grad = _num(colmap["grad_col"], get("grad_col"), required=False)
            if loss is None and grad is None:
                continue  # an eval-only / system row
            vals = (_int(colmap["step_col"], get("step_col")), loss, grad,
                    _num(str(colmap["top1_col"]), get("top1_col"), required=False),
                    _num(str(colmap["mask_col"]), get("mask_col"), required=False),
                    _num(str(colmap["lr_col"]), get("lr_col"), required=False))
        except _Bad as e:
            problems.append((lineno, str(e)))
            continue
        for k, v in zip(("step", "loss", "grad", "top1", "mask", "lr"), vals):
            cols[k].append(np.nan if v is None else v)
        cols["line"].append(lineno)
    _check_steps_increasing(cols["step"], cols["line"], problems)
    if not cols["step"] and not problems:
        problems.append((None, f"no rows with {colmap['loss_col']!r} or {colmap['grad_col']!r} values"))
    if problems:
        raise LogFormatError(path, problems)
    cfg = _finish_config(path, _config_from_files_and_flags(path, options, family), family)
    steps = _steps_frame(cols["step"], cols["loss"], cols["grad"], cols["top1"], cols["mask"], cols["lr"])
    return [_series_run("wandb-csv", path, text, cfg, steps)]


IMPORT_MEMORY_FLOOR_MB = 128
IMPORT_MEMORY_PER_INPUT_MB = 4
"""DuckDB's memory limit while it inserts staged rows: max(floor, per-input-MB x the files' size). A stored
cells row is ~15x its CSV line (config and manifest JSON), and DuckDB would otherwise hold a transaction's
rows in memory up to 80% of RAM; beyond the limit it writes them out. Where the limit is too small for the
database itself (the primary-key index of millions of runs) the write is retried without one."""

STAGE_BATCH_ROWS = 2048
"""Runs of a cells / json-rows file written to the staging file at a time: the import's memory for such a file
is one batch of Python rows, whatever the file's size (a run row with its manifest is ~5 KB in Python)."""
_STAGED_PARSERS = {"cells": _parse_cells_into, "json-rows": _parse_json_rows_into}


def stage_rows(fmt: str, path: Path, stage_dir: Path, *, family: str | None = None,
               **options: Any) -> store.StagedRows:
    """Validate a cells / json-rows file (as parse_cells / parse_json_rows do) and write its runs, batch by
    batch, to a Parquet file in `stage_dir` that `store._write_batch` inserts with DuckDB. Raises
    LogFormatError (the partial staging file removed) like the parser; OSError when the staging file cannot be
    written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    out = Path(stage_dir) / f"{len(list(Path(stage_dir).iterdir())):06d}.parquet"
    schema = pl.DataFrame(schema={**store.RUNS_SCHEMA, "line": pl.Int64}).to_arrow().schema
    batch: list[dict[str, Any]] = []
    n = 0
    writer = pq.ParquetWriter(out, schema)

    def flush() -> None:
        nonlocal batch, n
        if batch:
            frame = pl.DataFrame(batch, schema={**store.RUNS_SCHEMA, "line": pl.Int64}, orient="row")
            writer.write_table(frame.to_arrow().cast(schema))
            n += len(batch)
            batch = []

    def sink(run: PreparedRun, lineno: int | None) -> None:
        batch.append({**run.row, "line": lineno})
        if len(batch) >= STAGE_BATCH_ROWS:
            flush()

    try:
        _STAGED_PARSERS[fmt](path, family, options, sink)
        flush()
        writer.close()
    except BaseException:
        writer.close()
        out.unlink(missing_ok=True)
        raise
    return store.StagedRows(path=str(path), parquet=out, n=n)


PARSERS: dict[str, Callable[..., list[PreparedRun]]] = {
    "reference-jsonl": parse_reference_jsonl, "cells": parse_cells, "json-rows": parse_json_rows, "hf-trainer": parse_hf_trainer,
    "wandb-csv": parse_wandb_csv,
}


def import_logs(
    db_path: str | Path, fmt: str, paths: Sequence[Path | str] | Path | str, *, family: str | None = None,
    strict: bool = False, timeout_s: float = 60, **options: Any,
) -> IngestReport:
    """Parse and validate every file, then insert all good runs in one transaction (see module docstring).

    Bad files are listed in `report.quarantined` as (path, 'path:line: reason' lines) and recorded in the
    `quarantine` table (the files themselves are left where they are); `strict=True` raises the first
    LogFormatError instead, before anything is written. Unknown formats or options raise ValueError.
    """
    if fmt not in PARSERS:
        raise ValueError(f"unknown import format {fmt!r}: use one of {list(FORMATS)}")
    unknown = sorted(set(options) - _OPTIONS[fmt])
    if unknown:
        raise ValueError(f"option(s) {unknown} do not apply to {fmt!r}: use {sorted(_OPTIONS[fmt])}")
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not items:
        raise ValueError("no files given: pass one or more log files")
    started = store._now()
    prepared: list[PreparedRun] = []
    staged: list[store.StagedRows] = []
    rejected: list[tuple[str, str, bool]] = []
    db_path = Path(db_path)
    store.check_database_file(db_path)  # before any staging: a --db that is no database is refused first
    # Per-configuration tables are staged on disk beside the database (same file system, which needs the room
    # anyway; a tmpfs /tmp would be memory again), never held as Python rows.
    stage_dir = db_path.parent / f".{db_path.name}.import-{uuid.uuid4().hex[:8]}" if fmt in _STAGED_PARSERS else None
    try:
        for p in map(Path, items):
            try:
                if not p.is_file():
                    raise LogFormatError(p, [(None, "not a file: give the path of a log file")])
                if stage_dir is not None:
                    stage_dir.mkdir(parents=True, exist_ok=True)
                    staged.append(stage_rows(fmt, p, stage_dir, family=family, **options))
                else:
                    prepared.extend(PARSERS[fmt](p, family=family, **options))
            except LogFormatError as e:
                if strict:
                    raise
                rejected.append((str(p), str(e), False))
        write = functools.partial(
            store._write_batch, db_path, prepared, rejected=rejected, incomplete=[],
            ingest_id=store._new_ingest_id(), started=started, kind=f"import:{fmt}", paths=[str(p) for p in items],
            quarantine_dir=None, timeout_s=timeout_s, staged=staged)
        if not staged:
            return write()
        mb = sum(Path(st.path).stat().st_size for st in staged) / 2**20
        try:
            return write(memory_limit_mb=max(IMPORT_MEMORY_FLOOR_MB, int(IMPORT_MEMORY_PER_INPUT_MB * mb)))
        except store.MemoryLimitHit:
            return write()  # a large database's index needs more: DuckDB's own default limit
    finally:
        if stage_dir is not None:
            shutil.rmtree(stage_dir, ignore_errors=True)
