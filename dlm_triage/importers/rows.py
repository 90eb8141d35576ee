"""Per-configuration records (a cells CSV row, a json-rows record) -> one run each: the columns, the map= /
derive= column rules, the record's validation, and the loop that lists every bad record of a file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from dlm_triage.importers.identity import _identity, _prepared
from dlm_triage.importers.runconfig import _collapsed_means, _collapsed_value, _finish_config
from dlm_triage.importers.values import LogFormatError, _Bad, _bool, _int, _num, _show, _text
from dlm_triage.store import PreparedRun

CELLS_COLUMNS = ("family", "model_name", "rank", "rho", "seed", "lr", "top1_fired", "top1_fire_step",
                 "collapsed", "max_grad_norm", "final_loss")
CELLS_OPTIONAL = ("final_loss", "max_grad_norm")
"""Columns a per-configuration table may lack: its runs import with what they have (calibration says which
analyses it skipped for them)."""
CELLS_ROW_CONFIG = ("cohort", "method", "alpha", "steps", "batch_size")
"""Run-config columns a row may carry (or get through map=/derive=); a row's value wins over the flag."""
_ROW_OPTIONS = frozenset({"map", "derive", "collapsed_means"})


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
