"""``reference-jsonl``: one JSON object per line and step, one file per run (see the package docstring)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dlm_triage import runsummary
from dlm_triage.importers.identity import _series_run, _StepColumns
from dlm_triage.importers.runconfig import _collapsed_means, _collapsed_value, _finish_config
from dlm_triage.importers.values import (
    _Bad, _bool, _int, _loads, _NotJson, _num, _read_text, _text
)
from dlm_triage.store import PreparedRun

JSONL_REQUIRED = ("step", "loss", "max_grad_norm", "top1_token_freq", "mask_ratio")


def parse_reference_jsonl(path: Path, *, family: str | None = None, **options: Any) -> list[PreparedRun]:
    """One run per file; see the module docstring. Raises LogFormatError listing every bad line."""
    path = Path(path)
    text = _read_text(path)
    problems: list[tuple[int | None, str]] = []
    cols = _StepColumns()
    constants: dict[str, tuple[Any, int]] = {}
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line:
            continue
        try:
            obj = _loads(line)
        except _NotJson as e:
            problems.append((lineno, str(e)))
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
        cols.add(lineno, **dict(zip(("step", "loss", "grad", "top1", "mask"), vals)))
    cols.check(path, problems, "the file holds no steps: expected one JSON object per line")
    means = _collapsed_means(path, options)
    cfg = {k: v for k, v in options.items() if v is not None and k != "collapsed_means"}
    if "lr" in cfg:
        cfg["learning_rate"] = cfg.pop("lr")
    if "model_family" in constants:
        cfg["family"] = constants["model_family"][0]
    if "rank" in constants:
        cfg["rank"] = constants["rank"][0]
    logged_mask = np.asarray(cols.cols["mask"], dtype=np.float64)
    logged_mask = logged_mask[np.isfinite(logged_mask)]
    if logged_mask.size:  # the log's own mask ratio wins: constant -> that value, varying -> its mean
        cfg["mask_ratio"] = float(logged_mask[0]) if np.ptp(logged_mask) == 0 else float(logged_mask.mean())
    cfg = _finish_config(path, cfg, family)
    steps = cols.frame()
    summary = runsummary.summarise(steps).row()  # a foreign log's status is unknown: never 'diverged'
    from dlm_triage.schema import COLLAPSE_DEFINITION

    extra = {"collapse_definition": COLLAPSE_DEFINITION}
    if "collapsed" in constants:  # the log's own verdict wins over the recomputed one
        what = _collapsed_value(constants["collapsed"][0], means)
        extra["collapse_definition"] = what.pop("collapse_definition")
        summary.update(what)
    return [_series_run("reference-jsonl", path, text, cfg, steps, summary, extra=extra)]
