"""A parsed run -> the `PreparedRun` the store inserts: the step frame (running max-grad recomputed), the run's
identity from its content (format + config + first logged step, or a cells row's config + values) and its
content sha, the `runs` row built through `tables.RUNS`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import polars as pl

from dlm_triage import runsummary
from dlm_triage.importers.runconfig import _resolved
from dlm_triage.importers.values import LogFormatError, _Bad, _check_steps_increasing, _sha
from dlm_triage.store import PreparedRun
from dlm_triage.tables import RUNS

# -- step frame, identity, the stored row ---------------------------------------------------------------


def _steps_frame(step: list[int], loss: list[float], grad: list[float], top1: list[float],
                 mask: list[float], lr: list[float]) -> pl.DataFrame:
    g = np.asarray(grad, dtype=np.float64)
    running = runsummary.max_grad_so_far(g)  # NaN (not logged) steps carry the previous max
    return pl.DataFrame({
        "step": pl.Series(step, dtype=pl.Int32), "loss": np.asarray(loss, dtype=np.float64),
        "grad_norm": g, "max_grad_norm": running, "top1_freq": np.asarray(top1, dtype=np.float64),
        "mask_ratio": np.asarray(mask, dtype=np.float64), "lr": np.asarray(lr, dtype=np.float64),
    })


class _StepColumns:
    """The step series a time-series importer collects, one `add` per training step it reads (NaN where the
    log has no value), with each step's line for messages; `check` raises the problems found, `frame` is the
    steps frame."""

    KEYS = ("step", "loss", "grad", "top1", "mask", "lr")

    def __init__(self) -> None:
        self.cols: dict[str, list] = {k: [] for k in self.KEYS}
        self.lines: list[int | None] = []

    def add(self, line: int | None, **values: Any) -> None:
        unknown = set(values) - set(self.KEYS)
        if unknown:
            raise TypeError(f"_StepColumns.add: unknown column(s) {sorted(unknown)}; use {self.KEYS}")
        for k in self.KEYS:
            v = values.get(k)
            self.cols[k].append(np.nan if v is None else v)
        self.lines.append(line)

    def check(self, path: Path, problems: list[tuple[int | None, str]], no_steps: str) -> None:
        """Steps must strictly increase; no step at all (and no other problem) is the problem `no_steps`.
        Raises LogFormatError listing every problem, those already in `problems` first."""
        _check_steps_increasing(self.cols["step"], self.lines, problems)
        if not self.cols["step"] and not problems:
            problems.append((None, no_steps))
        if problems:
            raise LogFormatError(path, problems)

    def frame(self) -> pl.DataFrame:
        c = self.cols
        return _steps_frame(c["step"], c["loss"], c["grad"], c["top1"], c["mask"], c["lr"])


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
