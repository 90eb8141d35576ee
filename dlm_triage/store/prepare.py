"""Reading run directories for ingestion: which paths are run directories, and one validated manifest + step
log -> a `PreparedRun` (a `runs` row through `tables.RUNS.row`, its steps)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Iterable

import polars as pl

from dlm_triage import schema
from dlm_triage.config import ConfigError, RunConfig
from dlm_triage.tables import RUNS, int32_or_none, short_repr as _short
from dlm_triage.store.connection import STEPS_COLUMNS
from dlm_triage.store.records import PreparedRun

# -- reading run directories --------------------------------------------------------------------------------

def _read_run(run_dir: Path) -> tuple[dict, pl.DataFrame]:
    """Validated manifest + step log through runlog.read_run; raises `_Invalid(reason)`."""
    from dlm_triage.runlog import RunLogError, read_run

    try:
        rec = read_run(run_dir)
    except RunLogError as e:
        raise _Invalid(getattr(e, "reason", None) or str(e)) from e
    return rec.manifest, rec.steps


class _Invalid(Exception):
    """A run/log that must be quarantined; str = the reason."""


def _expand_run_dirs(runs: Path | str | Iterable[Path | str]) -> tuple[list[Path], set[Path]]:
    """(run directory candidates, the roots given). A path holding manifest.json or steps.parquet is a run
    directory; any other directory is a runs root whose sub-directories are candidates (hidden ones and
    'quarantine' skipped)."""
    items = [runs] if isinstance(runs, (str, Path)) else list(runs)
    out: list[Path] = []
    roots: set[Path] = set()
    for item in items:
        p = Path(item)
        if not p.exists():
            raise FileNotFoundError(f"run path {p} does not exist: give a run directory or a runs root")
        if not p.is_dir():
            raise NotADirectoryError(f"run path {p} is a file: give a run directory or a runs root")
        roots.add(p)
        try:
            if (p / schema.MANIFEST_FILENAME).exists() or (p / schema.STEPLOG_FILENAME).exists():
                out.append(p)
                continue
            children = sorted(c for c in p.iterdir() if not c.name.startswith((".", "_"))
                              and c.name != "quarantine" and _is_dir(c))
        except OSError as e:
            raise OSError(e.errno, f"run path {p} cannot be listed ({e.strerror or e}): fix its permissions"
                          ) from None
        out.extend(children if children else [p])
    return out, roots


def _is_dir(p: Path) -> bool:
    try:
        return p.is_dir()
    except OSError:
        return True  # unreadable: reported as such by the validation


def _protected(d: Path, roots: set[Path]) -> str | None:
    """Why `d` must never be moved (a root given to ingest, the working directory or one of its ancestors), or
    None."""
    try:
        rd, cwd = d.resolve(), Path.cwd().resolve()
    except OSError:
        return "its location cannot be resolved"
    if any(rd == r.resolve() for r in roots):
        return "it is the path given to ingest"
    if cwd == rd or rd in cwd.parents:
        return "it is the working directory or one of its parents"
    return None


def _recognised_run(d: Path) -> str | None:
    """None when `d` is recognisably a dlm-triage run directory (its step log beside a manifest that is damaged
    or carries our `schema_version`); otherwise why it is not one. Only recognised runs are ever quarantined."""
    if not (d / schema.STEPLOG_FILENAME).is_file():
        return f"no {schema.STEPLOG_FILENAME} beside {schema.MANIFEST_FILENAME}"
    try:
        m = json.loads((d / schema.MANIFEST_FILENAME).read_bytes())
    except (ValueError, RecursionError):
        return None  # damaged manifest next to our step log: a run
    if isinstance(m, dict) and "schema_version" in m:
        return None
    return f"{schema.MANIFEST_FILENAME} has no dlm-triage schema_version (another tool's manifest?)"


def _canonical_json(obj: Any) -> str:
    """Key-sorted compact JSON: the stored manifest text and the input of content_sha256."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, allow_nan=True)


def _opt_float(x: Any, name: str = "value") -> float | None:
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise _Invalid(f"manifest {name}={_short(x)} is not a number (use a JSON number, or null)")
    try:
        v = float(x)
    except OverflowError:
        raise _Invalid(f"manifest {name}={_short(x)} is out of range for a float") from None
    if not math.isfinite(v):
        raise _Invalid(f"manifest {name}={_short(x)} is NaN/Infinity: undefined values are written as null")
    return v


def _opt_int(x: Any, name: str = "value") -> int | None:
    try:
        return int32_or_none(x, f"manifest {name}")
    except ValueError as e:
        raise _Invalid(str(e)) from None


def _opt_bool(x: Any, name: str = "value") -> bool | None:
    """A JSON boolean or null; anything else ('no', 'false', 0) is refused rather than guessed."""
    if x is None or isinstance(x, bool):
        return x
    raise _Invalid(f"manifest {name}={_short(x)} is not a JSON boolean: write true or false (or null)")


def prepare_run_dir(run_dir: Path) -> PreparedRun:
    """Validate one run directory (runlog.read_run, then the manifest config via RunConfig) into a `PreparedRun`."""
    manifest, steps = _read_run(run_dir)
    return _prepare_validated(Path(run_dir), manifest, steps)


def _stored_columns(steps: pl.DataFrame) -> pl.DataFrame:
    # read_run checked every column's presence and dtype, nulls, contiguous 0..n-1 steps and finiteness;
    # keep the stored columns only (df[cols]: ~45 us, a select ~130 us with polars 2.1).
    missing_cols = [c for c in STEPS_COLUMNS if c not in steps.columns]
    if missing_cols:
        raise _Invalid(f"step log lacks column(s) {missing_cols}")
    return steps[list(STEPS_COLUMNS)]


def _prepare_validated(run_dir: Path, manifest: dict, steps: pl.DataFrame | None,
                       span: tuple[int, int] | None = None, row: dict | _Invalid | None = None) -> PreparedRun:
    """A PreparedRun from a manifest + step log runlog has validated (the manifest config is checked here).
    `steps` None with a `span`: the rows are in the batch frame (runlog.read_runs_batch). `row`: the result of
    `_manifest_row` when already computed (an _Invalid is raised here, after the step-log check)."""
    if steps is not None:
        steps = _stored_columns(steps)
    if row is None:
        row = _manifest_row(run_dir, manifest)
    elif isinstance(row, _Invalid):
        raise row
    return PreparedRun(path=str(run_dir), row=row, steps=steps, move_on_conflict=False, span=span)


def _manifest_row(run_dir: Path, manifest: dict, source_path: str | None = None) -> dict:
    """The `runs` row of a run from its manifest alone (the config validated through RunConfig); raises
    _Invalid. `source_path`: run_dir resolved, when the caller has it."""
    try:
        cfg = RunConfig.from_dict(manifest["config"])
    except (ConfigError, TypeError, KeyError, AttributeError, ValueError, OverflowError, RecursionError) as e:
        raise _Invalid(f"manifest config is invalid: {_short(e, 2000)}") from None
    m = manifest
    if not isinstance(m.get("run_id"), str) or not m["run_id"].strip():
        raise _Invalid(f"manifest run_id={_short(m.get('run_id'))} is not a non-empty string")
    f, i, b = (lambda k: _opt_float(m[k], k)), (lambda k: _opt_int(m[k], k)), (lambda k: _opt_bool(m[k], k))
    try:
        manifest_json = _canonical_json(m)
        row = {
            "run_id": m["run_id"], "source": "dlm-triage",
            "source_path": str(run_dir.resolve()) if source_path is None else source_path,
            "family": cfg.family, "model_id": cfg.model_id, "cohort": cfg.cohort, "objective": cfg.objective,
            "method": cfg.method,
            "rank": cfg.rank, "alpha": float(cfg.alpha), "mask_ratio": float(cfg.mask_ratio),
            "learning_rate": float(cfg.learning_rate), "seed": cfg.seed, "steps": cfg.steps,
            "batch_size": cfg.batch_size, "config_hash": str(m["config_hash"]),
            "config_json": json.dumps(m["config"], sort_keys=True),
            "status": str(m["status"]), "final_loss": f("final_loss"),
            "max_grad_norm": f("max_grad_norm"), "top1_step0": f("top1_step0"),
            "top1_warning_detected": b("top1_warning_detected"),
            "top1_fire_step": i("top1_fire_step"), "top1_cross_050": i("top1_cross_050"),
            "top1_cross_080": i("top1_cross_080"), "top1_cross_095": i("top1_cross_095"),
            "collapsed": b("collapsed"), "diverged_at_step": i("diverged_at_step"),
            "routed_for_inspection": bool(b("routed_for_inspection")),
            "routing_json": None if m["routing"] is None else json.dumps(m["routing"], sort_keys=True),
            "grad_gini": f("grad_gini"), "grad_top1_share": f("grad_top1_share"),
            "n_steps": i("n_steps_logged"), "device": None if m["device"] is None else str(m["device"]),
            "code_version": None if m["code_version"] is None else str(m["code_version"]),
            "manifest_json": manifest_json, "content_sha256": hashlib.sha256(manifest_json.encode()).hexdigest(),
        }
    except (KeyError, TypeError, ValueError, OverflowError, RecursionError) as e:
        raise _Invalid(f"manifest value missing or of the wrong type: {_short(e, 200)}") from None
    if row["status"] not in schema.RUN_STATUSES:
        raise _Invalid(f"manifest status {_short(row['status'])} is not one of {list(schema.RUN_STATUSES)}")
    try:
        return RUNS.row(row)
    except ValueError as e:
        raise _Invalid(f"manifest value out of range: {e}") from None
