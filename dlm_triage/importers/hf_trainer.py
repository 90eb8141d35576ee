"""``hf-trainer``: a transformers ``trainer_state.json``; its `log_history` entries holding `loss` are the
training steps."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from dlm_triage.importers.identity import _series_run, _StepColumns
from dlm_triage.importers.runconfig import _config_from_files_and_flags, _finish_config
from dlm_triage.importers.values import LogFormatError, _Bad, _int, _load_json_file, _num, _read_text
from dlm_triage.store import PreparedRun

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
    state = _load_json_file(path, text)
    if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
        raise LogFormatError(path, [(None, "no 'log_history' list: give a transformers trainer_state.json "
                                           "(it is written in every checkpoint-*/ directory)")])
    history = state["log_history"]
    lines = _entry_lines(text, len(history))
    problems: list[tuple[int | None, str]] = []
    cols = _StepColumns()
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
        cols.add(where, **dict(zip(("step", "loss", "grad", "lr"), vals)))
    cols.check(path, problems, "log_history holds no training entries (with 'loss'): was logging enabled?")
    cfg = _config_from_files_and_flags(path, options, family)
    for key, state_key in (("steps", "max_steps"), ("batch_size", "train_batch_size")):
        if cfg.get(key) is None and isinstance(state.get(state_key), int) and state[state_key] > 0:
            cfg[key] = state[state_key]
    cfg = _finish_config(path, cfg, family)
    return [_series_run("hf-trainer", path, text, cfg, cols.frame())]
