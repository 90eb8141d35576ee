"""What every importer shares to read a file: `LogFormatError` (file, line, reason), the value converters
(`_num`, `_int`, `_bool`, `_text`: one bad value raises `_Bad` naming the field and the fix), redaction of
secret-looking text in messages, reading text and CSV, content hashes."""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

MAX_PROBLEMS_SHOWN = 20
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


class _NotJson(Exception):
    """Text that is not valid JSON; str = the reason, `line` = its line within the text (None: not known)."""

    def __init__(self, reason: str, line: int | None = None):
        super().__init__(reason)
        self.line = line


def _loads(text: str) -> Any:
    """json.loads, every failure a `_NotJson`: a syntax error names its line and column; an integer beyond
    Python's digit limit (a ValueError) and nesting past the recursion limit say what they are."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _NotJson(f"not valid JSON ({e.msg} at column {e.colno})", e.lineno) from None
    except ValueError as e:
        raise _NotJson(f"not valid JSON ({e})") from None
    except RecursionError:
        raise _NotJson("not valid JSON (nested too deeply)") from None


def _load_json_file(path: Path, text: str) -> Any:
    """The JSON value of a whole file's `text`; LogFormatError (with the line where known) if it is not JSON."""
    try:
        return _loads(text)
    except _NotJson as e:
        raise LogFormatError(path, [(e.line, str(e))]) from None


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


def _check_steps_increasing(steps: list[int], lines: list[int], problems: list[tuple[int | None, str]]) -> None:
    for i in range(1, len(steps)):
        if steps[i] <= steps[i - 1]:
            what = "repeats" if steps[i] == steps[i - 1] else "goes back from"
            problems.append((lines[i], f"step {steps[i]} {what} step {steps[i - 1]} (line {lines[i - 1]}): "
                                       "steps must strictly increase within one run"))
