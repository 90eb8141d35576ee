"""``wandb-csv``: a W&B run-history CSV export, its columns named by step_col/loss_col/grad_col (and optional
top1_col/mask_col/lr_col)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dlm_triage.importers.identity import _series_run, _StepColumns
from dlm_triage.importers.runconfig import _WANDB_COLS, _config_from_files_and_flags, _finish_config
from dlm_triage.importers.values import (
    _Bad, _csv_records, _int, _num, _read_text, _require_columns
)
from dlm_triage.store import PreparedRun


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
    cols = _StepColumns()
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
        cols.add(lineno, **dict(zip(_StepColumns.KEYS, vals)))
    cols.check(path, problems, f"no rows with {colmap['loss_col']!r} or {colmap['grad_col']!r} values")
    cfg = _finish_config(path, _config_from_files_and_flags(path, options, family), family)
    return [_series_run("wandb-csv", path, text, cfg, cols.frame())]
