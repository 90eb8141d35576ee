"""``cells`` (CSV, streamed row by row) and ``json-rows`` (a JSON array of the same records): one run per
configuration, no step logs (see the package docstring). `sink` streams the runs to the import's staging file."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from dlm_triage.importers.rows import (
    CELLS_COLUMNS, CELLS_OPTIONAL, CELLS_ROW_CONFIG, _cells_context, _cells_runs, _column_rules
)
from dlm_triage.importers.values import (
    LogFormatError, _load_json_file, _read_text, _redact, _require_columns, _sha, _stream_sha_and_check_utf8
)
from dlm_triage.store import PreparedRun


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
    data = _load_json_file(path, text)
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
