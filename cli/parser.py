"""The argument parser's pieces: a parser without abbreviations that suggests the closest choice or flag,
a help formatter that shows each default, the comma-list types of the sweep axes, and `train --help`'s list
of config keys read from RunConfig's attribute docstrings."""

from __future__ import annotations

import argparse
import difflib
import json
import re
from typing import Any, Iterable, NoReturn, Sequence

from dlm_triage.config import RunConfig


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x]


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def _strs(s: str) -> list[str]:
    return [x for x in s.split(",") if x]


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each flag's help ends with its default (unless the help already says it, or there is none to show)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        h = action.help or ""
        d = action.default
        if action.option_strings and not (d is None or d is False or d == argparse.SUPPRESS) and "default" not in h:
            h += " (default: %(default)s)"
        return h


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class _Parser(argparse.ArgumentParser):
    """No abbreviations (`--rank` must not silently mean `--ranks`); 'did you mean' on a mistyped choice."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            message += _suggest(m.group(1), re.findall(r"'([^']*)'", m.group(2)))
        super().error(message)

    def unknown_options(self, extra: Sequence[str]) -> NoReturn:
        """Reject arguments this (sub)parser does not know, suggesting the closest flag it does."""
        flags = [o for a in self._actions for o in a.option_strings]
        hints = [_suggest(x.split("=", 1)[0], flags).removeprefix("; ") for x in extra if x.startswith("-")]
        msg = f"unrecognized arguments: {' '.join(extra)}"
        hints = [h for h in hints if h]
        super().error(msg + (f" ({'; '.join(hints)})" if hints else ""))


def _config_keys_epilog() -> str:
    """`train --help`: every RunConfig key, its default and the first line of its attribute docstring."""
    import ast
    import dataclasses
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    try:
        body = ast.parse(textwrap.dedent(inspect.getsource(RunConfig))).body[0].body
        for a, b in zip(body, body[1:]):
            if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
                docs[a.target.id] = str(b.value.value).strip().split("\n")[0]
    except (OSError, TypeError, SyntaxError):  # no source (frozen install): keys and defaults only
        pass
    lines = ["config keys (--set KEY=VALUE, or fields of the --config JSON file):"]
    for f in dataclasses.fields(RunConfig):
        default = f.default if f.default is not dataclasses.MISSING else None
        doc = docs.get(f.name, "")
        lines.append(f"  {f.name} = {json.dumps(default)}" + (f"\n      {doc}" if doc else ""))
    return "\n".join(lines)
