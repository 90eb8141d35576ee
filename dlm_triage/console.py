"""The terminal of `dlm-triage run` / `sweep`: one output channel for the progress bar and the logs.

- `BarStream`: a file for log handlers whose every line goes through `tqdm.write`, which clears the progress
  bar's line, prints the log line and redraws the bar under it: logs scroll, the bar stays on the last line, the
  two never share a line.
- `ConsoleFilter`: what the console shows of Prefect's logs. Per-task state lines ("Finished in state
  Completed()", one per task run: 84 on the default sweep) and training tasks' 'step i/n' lines (the bar shows
  progress) are dropped from the console only; the API handler still sends them to the Prefect UI. A message
  already shown (same level and text) is shown once.
- `route_console_logging()`: put both on the root logger's console handlers (Prefect's included).
- `route_child_console_logging()`: in a sweep's shard processes, which write to the same terminal without
  knowing the bar: the same filter, and each record starts by clearing the line (the bar redraws on its tick).

No Prefect import: the handlers are found by what they are (stream handlers on the root logger).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import TextIO

__all__ = ["BarStream", "ClearLineStream", "ConsoleFilter", "route_console_logging", "route_child_console_logging",
           "CONSOLE_ENV"]

_STATE_LINES = ("Finished in state Completed", "Finished in state Cached", "Finished in state Routed",
                "Created task run", "Submitting task run", "Executing ")
"""Prefect's per-run state messages (INFO): kept in the UI, not printed."""
_RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")
_PROGRESS_LINE = re.compile(r": step \d+/\d+$")
"""A training task's periodic 'run: step i/n' line: the progress bar shows it on the console."""


class BarStream:
    """A text stream whose writes are printed above the progress bar (tqdm.write), line by line."""

    def __init__(self, file: TextIO | None = None) -> None:
        self.file = file if file is not None else sys.stderr

    def write(self, s: str) -> int:
        from tqdm import tqdm

        text = s.rstrip("\n")
        if text:
            tqdm.write(text, file=self.file)
        return len(s)

    def flush(self) -> None:
        self.file.flush()

    def isatty(self) -> bool:
        return bool(getattr(self.file, "isatty", lambda: False)())

    def fileno(self) -> int:
        return self.file.fileno()


class ConsoleFilter(logging.Filter):
    """Drops Prefect's per-run state lines below WARNING, and any repeat of a message already shown (errors
    are always shown)."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[tuple[int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if (record.levelno < logging.WARNING and record.name.startswith(_RUN_LOGGERS)
                and (msg.startswith(_STATE_LINES) or _PROGRESS_LINE.search(msg))):
            return False
        key = (record.levelno, msg)
        if record.levelno < logging.ERROR and key in self._seen:
            return False
        self._seen.add(key)
        return True


def route_console_logging(stream_class: type[BarStream] = BarStream) -> list[logging.Handler]:
    """Route the root logger's terminal handlers through `BarStream` with one `ConsoleFilter`; returns them.

    Prefect's console handler prints through a rich Console: its file is swapped (rich writes each record in
    one call). A plain StreamHandler gets the stream. Idempotent: a handler already routed is left alone.
    """
    filt = ConsoleFilter()
    routed = []
    for h in logging.getLogger().handlers:
        if not isinstance(h, logging.StreamHandler) or isinstance(h, logging.FileHandler):
            continue
        if getattr(h, "_dlm_triage_routed", False):
            routed.append(h)
            continue
        if getattr(h, "stream", None) not in (sys.stderr, sys.stdout):
            continue
        stream = stream_class(h.stream)
        console = getattr(h, "console", None)
        if console is not None and hasattr(console, "file"):
            console.file = stream
        h.setStream(stream)
        h.addFilter(filt)
        h._dlm_triage_routed = True  # type: ignore[attr-defined]
        routed.append(h)
    return routed


class ClearLineStream(BarStream):
    """For processes that share the terminal with another process's progress bar (a sweep's shard runs): each
    write starts by clearing the line the bar may be on; the bar is redrawn on its next tick."""

    def write(self, s: str) -> int:
        if s.strip():
            self.file.write(("\r\x1b[K" if self.isatty() else "") + s)
        return len(s)


CONSOLE_ENV = "DLM_TRIAGE_CONSOLE"
"""Set to 'bar' by `dlm-triage run`/`sweep` while their progress bar is drawn; child processes inherit it."""


def route_child_console_logging() -> list[logging.Handler]:
    """In a child process of a CLI sweep (CONSOLE_ENV='bar'): the same filter, lines that clear the bar's line.
    Elsewhere (a worker of a deployment, a test) nothing changes."""
    if os.environ.get(CONSOLE_ENV) != "bar":
        return []
    return route_console_logging(stream_class=ClearLineStream)
