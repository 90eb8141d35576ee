"""`dlm-triage`: the command line.

    dlm-triage run                      the embedded default (dlm_triage/defaults.py): pretrain (or reuse) the
                                        local tiny, tiny_gemma and tiny_ar models, sweep, ingest, calibrate,
                                        report -- all through the Prefect pipeline flow
    dlm-triage sweep  [axes...]         train a grid (Prefect sweep flow: parallel, cached, resumable)
    dlm-triage train  [--config F]      one run, in this process, no Prefect
    dlm-triage ingest [RUNS_DIR]        load run directories into DuckDB (idempotent)
    dlm-triage import --format F PATH.. bring your own logs (reference-jsonl, cells, hf-trainer, wandb-csv)
    dlm-triage calibrate                the paper's protocol per group -> calibration.json + DuckDB
    dlm-triage report                   HTML + Markdown triage report with figures
    dlm-triage queue                    runs routed to inspection, and why
    dlm-triage thresholds               the threshold registry (latest and history)
    dlm-triage pretrain [--family F]    build (or find) a local family's pretrained model
    dlm-triage connect RUN_A RUN_B      LoRA-Curve: loss barriers between two runs' adapters (linear, Bezier)

`run` and `sweep` go through Prefect flows (orchestration, retries, caching, artifacts); the other verbs call
the same core functions the Prefect tasks call, directly, so they answer in about a second. Every option that a
flow takes is validated by the same pydantic model the Prefect UI uses (`dlm_triage.params`).
Default locations: $DLM_TRIAGE_OUT (./dlm-triage-out) for runs, triage.duckdb and reports;
$DLM_TRIAGE_CACHE (~/.cache/dlm-triage) for the local families' pretrained models.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping, NoReturn, Sequence

from dlm_triage import paths
from dlm_triage.groups import GROUP_BY_COLUMNS
from dlm_triage.config import OBJECTIVES, ConfigError, RunConfig
from dlm_triage.defaults import EMBEDDED_DEFAULT_SWEEP  # the one definition of `run`'s default sweep
from dlm_triage.schema import MANIFEST_FILENAME, REUSABLE_STATUSES


QUEUE_COLUMNS = ("outcome", "run_id", "max_grad_up_to_k", "threshold", "k", "family", "learning_rate", "rank",
                 "mask_ratio", "seed", "status", "final_loss", "method")
"""Most important first: a narrow terminal drops columns from the end."""
THRESHOLD_COLUMNS = ("group_name", "live", "k", "threshold", "precision", "precision_ci", "baseline_ceiling",
                     "calibration_id", "created_at", "n", "n_unstable", "recall", "f1", "group_by")
"""Most important first: a narrow terminal drops columns from the end."""


def _progress_watcher(runs_dir: Path, run_ids: Sequence[str], desc: str) -> tuple[threading.Event, threading.Thread]:
    """A progress bar that counts run directories whose manifest exists (a run is complete when its manifest is
    written, see schema.py). Polling the file system keeps it independent of where the tasks execute."""
    from tqdm import tqdm

    stop = threading.Event()

    def watch() -> None:
        with tqdm(total=len(run_ids), desc=desc, unit="run", file=sys.stderr, dynamic_ncols=True) as bar:
            seen = 0
            while True:
                done = sum((runs_dir / rid / MANIFEST_FILENAME).exists() for rid in run_ids)
                bar.update(done - seen)
                seen = done
                if stop.is_set():
                    return
                stop.wait(1.0)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return stop, t


def _quiet_prefect() -> None:
    # Offline machines: the server's telemetry only logs failures; the first ephemeral start can exceed 20 s.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _json_object_file(path: str | Path, what: str) -> dict[str, Any]:
    """The JSON object in `path` (a --config / --spec file); ConfigError naming the file otherwise (a list or a
    number is refused, not read as "no settings")."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{what} file {path} cannot be read ({getattr(e, 'strerror', None) or e})"],
                          where=f"{what} file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError([f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})"], where=f"{what} file") from None
    except (ValueError, RecursionError) as e:
        raise ConfigError([f"{path}: not valid JSON ({str(e)[:200] or 'nested too deeply'})"],
                          where=f"{what} file") from None
    if not isinstance(data, dict):
        raise ConfigError([f"{path} holds a JSON {type(data).__name__}, not an object of settings: write "
                           "{\"key\": value, ...}"], where=f"{what} file")
    return data


def _check_device(device: str | None) -> None:
    """An explicit cuda/mps device must exist here: checked before Prefect (and its server) starts."""
    if device and device not in ("auto", "cpu"):
        from dlm_triage.families import resolve_device

        resolve_device(device)


def _sweep_params(args: argparse.Namespace, defaults: dict[str, Any] | None = None):
    from dlm_triage.params import SweepParams

    data: dict[str, Any] = dict(defaults or {})
    if getattr(args, "spec", None):
        data.update(_json_object_file(args.spec, "--spec"))
    for name in ("families", "methods", "ranks", "mask_ratios", "learning_rates", "seeds"):
        v = getattr(args, name, None)
        if v:
            data[name] = v
    for name in ("steps", "batch_size", "seq_len", "gpu_slots", "model_id", "dataset", "cohort", "device",
                 "objective"):
        v = getattr(args, name, None)
        if v is not None:
            data[name] = v
    from dlm_triage.config import draws_own_t

    if data.get("objective") and draws_own_t(data["objective"]) and not getattr(args, "mask_ratios", None):
        data.pop("mask_ratios", None)  # a default grid's rho axis; the objective draws t itself
    data["runs_dir"] = str(args.out / "runs")
    data["db"] = str(args.out / "triage.duckdb")
    return SweepParams(**data)


def _check_sweep_model(sweep: Any) -> None:
    """An offline, uncached hub id fails before Prefect starts (the training task would fail on it too)."""
    from dlm_triage.hub import check_model_available

    check_model_available(sweep.model_id or None)


def _print_ingest(report: Any) -> None:
    print(f"ingest {report.ingest_id}: {report.added} added, {report.already_present} already present, "
          f"{report.incomplete} incomplete, {len(report.quarantined)} quarantined")
    for path in report.incomplete_paths:
        print(f"  incomplete (no manifest, or a failed attempt: a sweep re-runs it) {path}")
    for path, reason in report.quarantined:
        print(f"  quarantined {path}: {reason}")
    for rid in getattr(report, "updated_run_ids", ()):
        print(f"  updated {rid}: the re-imported log holds more steps")
    for path, why in getattr(report, "duplicates", ()):
        print(f"  duplicate {path}: {why}")
    for path, why in getattr(report, "skipped", ()):
        print(f"  skipped {path}: {why}")


def _g(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def run_summary(result: Mapping[str, Any], *, live: Mapping[str, tuple[Any, str]], routed: Mapping[str, int],
                runs: Sequence[Mapping[str, Any]], report_html: Any, out_flag: str = "") -> list[str]:
    """The end of `dlm-triage run`: the runs, then one line per group (its live threshold or why none, runs
    routed, precision [CI] of the registered rule vs the always-positive baseline ceiling), then what to type
    next. `live`: {group: store.live_threshold(...)}; `routed`: {group: queued runs}; `out_flag`: ' --out X'
    when the output root is not the default."""
    n_status = {st: sum(1 for r in runs if r.get("status") == st) for st in REUSABLE_STATUSES}
    failed = len(runs) - sum(n_status.values())
    lines = [f"{len(runs)} runs: {n_status['completed']} completed, {n_status['diverged']} diverged, "
             f"{n_status['stopped_early']} stopped early, "
             + (f"{n_status['stopped_by_legacy_detector']} stopped by the legacy detector, "
                if n_status["stopped_by_legacy_detector"] else "") + f"{failed} failed",
             f"calibration {result.get('calibration_id')} (by {result.get('group_by', 'family')}):"]
    from dlm_triage.report import group_answers

    lines += ["  " + a.line for a in group_answers(result, routed=routed,
                                                   live={g: rec for g, (rec, _why) in live.items()})]
    lines += [f"report: {report_html}", "next:",
              f"  dlm-triage{out_flag} queue           the runs to inspect, most severe first",
              f"  dlm-triage{out_flag} thresholds      every calibration's thresholds and why each is (not) live",
              f"  dlm-triage{out_flag} run [same axes] --seeds S1,S2,...   more seeds: finished runs are reused, "
              "the calibration redone"]
    return lines


def _print_run_summary(result: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], db: Path, report_html: Any,
                       out: Path) -> None:
    from dlm_triage import groups, store

    group_by = result.get("group_by", "family")
    con = store.connect(db, read_only=True)
    try:
        live = {g: store.live_threshold(con, g, group_by=group_by) for g in result.get("groups") or {}}
        q = store.inspection_queue(con)
    finally:
        con.close()
    routed: dict[str, int] = {}
    if q.height and groups.group_column(group_by) in q.columns:
        for k in groups.group_keys(q, group_by).to_list():
            routed[k] = routed.get(k, 0) + 1
    default_out = out.resolve() == paths.out_root().resolve()
    flag = "" if default_out else f" --out {out}"
    for line in run_summary(result, live=live, routed=routed, runs=runs, report_html=report_html, out_flag=flag):
        print(line)


def cmd_run(args: argparse.Namespace) -> int:
    _quiet_prefect()
    from dlm_triage.params import CalibrateParams, IngestParams, PipelineParams, ReportParams

    sweep = _sweep_params(args, EMBEDDED_DEFAULT_SWEEP)
    _check_device(sweep.device)
    _check_sweep_model(sweep)
    out: Path = args.out
    params = PipelineParams(
        sweep=sweep,
        ingest=IngestParams(db=out / "triage.duckdb", runs_dir=out / "runs"),
        calibrate=CalibrateParams(db=out / "triage.duckdb", out=out / "reports", seed=args.seed),
        report=ReportParams(db=out / "triage.duckdb", out=out / "reports"),
    )
    configs = sweep.to_spec().expand()
    print(f"dlm-triage: {len(configs)} runs -> {out.resolve()} (tiny model cache: {paths.cache_root()})",
          file=sys.stderr)
    from flows.pipeline import pipeline_flow

    from dlm_triage.console import CONSOLE_ENV, route_console_logging

    route_console_logging()  # Prefect's console logs above the progress bar, state lines in the UI only
    os.environ[CONSOLE_ENV] = "bar"  # shard subprocesses clear the bar's line before they print
    from flows.tempserver import temporary_server

    stop, t = _progress_watcher(out / "runs", [c.run_id for c in configs], "training")
    try:
        with temporary_server():  # with no API configured: a server that a kill -9 of this process takes down
            result = pipeline_flow(params)
    finally:
        stop.set()
        t.join()
        os.environ.pop(CONSOLE_ENV, None)
    runs = result["runs"]
    failed = [r for r in runs if r.get("status") not in REUSABLE_STATUSES]
    print()
    cal = json.loads(Path(result["calibration"]["json_path"]).read_text())
    _print_run_summary(cal, runs, out / "triage.duckdb", result["report"].get("html"), out)
    for r in failed:
        print(f"  failed {r.get('run_id')}: {r.get('error')}", file=sys.stderr)
    return 1 if failed else 0


def cmd_sweep(args: argparse.Namespace) -> int:
    _quiet_prefect()
    sweep = _sweep_params(args)
    _check_device(sweep.device)
    _check_sweep_model(sweep)
    configs = sweep.to_spec().expand()
    from flows.sweep import sweep_flow

    from dlm_triage.console import CONSOLE_ENV, route_console_logging

    route_console_logging()
    os.environ[CONSOLE_ENV] = "bar"  # shard subprocesses clear the bar's line before they print
    from flows.tempserver import temporary_server

    stop, t = _progress_watcher(args.out / "runs", [c.run_id for c in configs], "training")
    try:
        with temporary_server():  # with no API configured: a server that a kill -9 of this process takes down
            records = sweep_flow(sweep)
    finally:
        stop.set()
        t.join()
        os.environ.pop(CONSOLE_ENV, None)
    bad = [r for r in records if r.get("status") not in REUSABLE_STATUSES]
    flag = "" if args.out.resolve() == paths.out_root().resolve() else f" --out {args.out}"
    print(f"{len(records)} runs in {(args.out / 'runs').resolve()}; {len(bad)} failed\n"
          f"next: dlm-triage{flag} ingest && dlm-triage{flag} calibrate && dlm-triage{flag} report")
    for r in bad:
        print(f"  failed {r.get('run_id')}: {r.get('error')}", file=sys.stderr)
    return 1 if bad else 0


def cmd_train(args: argparse.Namespace) -> int:
    data: dict[str, Any] = _json_object_file(args.config, "--config") if args.config else {}
    for kv in args.set or []:
        key, _, raw = kv.partition("=")
        try:
            data[key] = json.loads(raw)
        except json.JSONDecodeError:
            data[key] = raw
    cfg = RunConfig.from_dict(data)  # validated before torch is imported: a bad value answers at once
    from dlm_triage.hub import check_model_available

    check_model_available(cfg.model_id)  # an offline hub id answers now, not after torch and ~50 s of retries

    from tqdm import tqdm

    from dlm_triage.train import train_run

    threshold = None
    if args.db and Path(args.db).exists():
        from dlm_triage import store

        con = store.connect(args.db, read_only=True)
        try:
            threshold, why = store.live_threshold(con, cfg.family)
        finally:
            con.close()
    else:
        why = f"early warning off for family {cfg.family}: no database at {args.db} (calibrate a sweep first)"
    print(why, file=sys.stderr)
    with tqdm(total=cfg.steps + 1, desc=cfg.run_id, unit="step", file=sys.stderr) as bar:
        res = train_run(cfg, args.out / "runs", threshold=threshold,
                        progress=lambda step, total: bar.update(step + 1 - bar.n))
    ew = "routed to inspection" if res.routed_for_inspection else "not routed"
    print(f"{res.run_id}: {res.status}{' (reused)' if res.reused else ''}, final loss {_g(res.final_loss)}, "
          f"max grad {_g(res.max_grad_norm)}, {ew}, {res.wall_time_s:.1f} s\n  {res.run_dir}")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from dlm_triage import store

    report = store.ingest_runs(args.db, args.runs_dir or args.out / "runs",
                               quarantine_dir=args.quarantine)
    _print_ingest(report)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from dlm_triage.importers import import_logs

    options: dict[str, Any] = {}
    for kv in args.option or []:
        key, _, value = kv.partition("=")
        options[key.replace("-", "_")] = value
    report = import_logs(args.db, args.format, args.paths, family=args.family, **options)
    _print_ingest(report)
    return 1 if report.quarantined else 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from dlm_triage.calibrate import run_calibration
    from dlm_triage.params import CalibrateParams

    p = CalibrateParams(db=args.db, out=args.out_dir or args.out / "reports", group_by=args.group_by,
                        n_resamples=args.resamples, stepk_resamples=args.stepk_resamples, seed=args.seed,
                        bonferroni_m=args.bonferroni_m)
    res = run_calibration(p.resolved_db(), p.resolved_out(), **p.calibrate_kwargs())
    print(f"calibration {res.calibration_id} (by {res.result.get('group_by', p.group_by)}): {res.json_path}")
    _print_answers(res.result, p.resolved_db())
    counts = [(scope, len(ws)) for scope, ws in [("all groups", res.result.get("warnings") or [])]
              + [(n, g.get("warnings") or []) for n, g in res.result["groups"].items()] if ws]
    if counts:  # counted here, read in the report (collapsed under its answer) or calibration.json
        print(f"{sum(n for _s, n in counts)} calibration warning(s) (" + ", ".join(f"{s} {n}" for s, n in counts)
              + "): `dlm-triage report` lists them under its answer")
    return 0


def _print_answers(result: Mapping[str, Any], db: Path) -> None:
    """One line per group: its live threshold or why none, and the registered rule's evidence."""
    from dlm_triage import store
    from dlm_triage.report import group_answers

    con = store.connect(db, read_only=True)
    try:
        live = {g: store.live_threshold(con, g, group_by=result.get("group_by", "family"))[0]
                for g in result.get("groups") or {}}
    finally:
        con.close()
    for a in group_answers(result, live=live):
        print(f"  {a.line}")


def cmd_report(args: argparse.Namespace) -> int:
    from dlm_triage.report import write_report

    paths_ = write_report(args.db, args.out_dir or args.out / "reports", calibration_id=args.calibration)
    for a in paths_.answers:  # the report's first section, here too
        print(a.line)
    print(f"report: {paths_.html}\nmarkdown: {paths_.markdown}")
    for name, why in paths_.missing.items():
        print(f"  figure {name} missing: {why}")
    return 0


def cmd_connect(args: argparse.Namespace) -> int:
    from dlm_triage import connect
    from dlm_triage.params import ConnectParams

    params = ConnectParams(run_a=args.run_a, run_b=args.run_b, runs_dir=args.out / "runs", db=args.db,
                           out=args.out / "reports" / "connect", segments=args.segments, steps=args.steps,
                           n_points=args.points, eval_batches=args.eval_batches, mask_ratio=args.mask_ratio,
                           lr=args.lr, device=args.device)
    result = connect.connect_and_store(params.run_a, params.run_b, params.resolved_db(), **params.connect_kwargs())
    print(f"connection {result.connect_id}: {result.run_a} (t=0) -> {result.run_b} (t=1), held-out loss at "
          f"rho={result.mask_ratio:g} on {result.n_eval_batches} batch(es)")
    print(f"{'path':<16}" + "".join(f"{t:>8.2f}" for t in result.ts) + f"{'barrier':>10}")
    for path, losses in result.profiles.items():
        print(f"{path:<16}" + "".join(f"{x:>8.4f}" for x in losses) + f"{result.barriers[path]:>10.4f}")
    for note in result.notes:
        print(f"  note: {note}")
    print(f"figure: {result.figure}\nstored in {params.resolved_db()} (tables connect_paths, connect_profiles)")
    return 0


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _fit_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], width: int) -> list[str]:
    """A plain table of `columns` (most important first) fitted to `width` characters: the least important
    columns are left out until it fits, then the widest remaining cell is shortened with an ellipsis."""
    cols = list(columns)
    cells = {c: [_cell(r.get(c)) for r in rows] for c in cols}
    w = {c: max(len(c), *(len(x) for x in cells[c])) for c in cols}

    def total() -> int:
        return sum(w[c] for c in cols) + 2 * (len(cols) - 1)

    while len(cols) > 2 and total() > width:
        cols.pop()
    if total() > width:  # two columns still too wide: shorten the wider one
        c = max(cols, key=lambda x: w[x])
        w[c] = max(8, w[c] - (total() - width))
    clip = lambda x, n: x if len(x) <= n else x[: n - 1] + "…"  # noqa: E731
    lines = ["  ".join(clip(c, w[c]).ljust(w[c]) for c in cols).rstrip()]
    for i in range(len(rows)):
        lines.append("  ".join(clip(cells[c][i], w[c]).ljust(w[c]) for c in cols).rstrip())
    left_out = [c for c in columns if c not in cols]
    if left_out:
        lines.append(f"(not shown at this width: {', '.join(left_out)}; --json has every column)")
    return lines


def cmd_queue(args: argparse.Namespace) -> int:
    import shutil
    import textwrap

    from dlm_triage import store

    con = store.connect(args.db, read_only=True)
    try:
        q = store.inspection_queue(con, calibration_id=args.calibration)
    finally:
        con.close()
    if args.json:
        print(q.write_json())
        return 0
    if q.is_empty():
        print("no run is routed to inspection (no live threshold yet, or every run is below its group's "
              "threshold): `dlm-triage thresholds` says which thresholds are live and why")
        return 0
    # most severe first (store.inspection_queue's order); the terminal gets what decides a look, fitted to it
    width = shutil.get_terminal_size((120, 24)).columns
    rows = q.to_dicts()
    for line in _fit_table(rows, QUEUE_COLUMNS, width):
        print(line)
    counts = q.group_by("outcome").len().sort("outcome").iter_rows()
    print(f"{q.height} run(s) in the queue: " + ", ".join(f"{n} {o}" for o, n in counts) + "; why:")
    for r in rows:
        print(textwrap.fill(f"{r['run_id']}: {r['reason']}", width=max(40, width - 2), initial_indent="  ",
                            subsequent_indent="      "))
    return 0


def cmd_thresholds(args: argparse.Namespace) -> int:
    from dlm_triage import store

    con = store.connect(args.db, read_only=True)
    try:
        h = store.threshold_history(con, args.group)
    finally:
        con.close()
    if args.json:
        print(h.write_json())
        return 0
    if h.is_empty():
        print("no threshold registered yet: run `dlm-triage calibrate`")
        return 0
    # one rule per row: the registered threshold at k, its own held-out metrics and precision CI, judged against
    # the always-positive baseline ceiling (the numbers the report's per-group table shows)
    import shutil

    rows = [{**r, "live": "accepted" if r["accepted"] else "rejected",
             "precision_ci": f"[{_cell(r['precision_ci_low'])}, {_cell(r['precision_ci_high'])}]",
             "created_at": str(r["created_at"])[:19]} for r in h.to_dicts()]
    for line in _fit_table(rows, THRESHOLD_COLUMNS, shutil.get_terminal_size((120, 24)).columns):
        print(line)
    rejected = h.filter(~h["accepted"])
    if rejected.height:
        print("rejected (never live):")
        for cid, g, why in rejected.select("calibration_id", "group_name", "reason").iter_rows():
            print(f"  {cid} {g}: {why}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dlm_triage.tiny import ensure_tiny_model
    from dlm_triage.tiny_diffusion_gemma import ensure_tiny_diffusion_gemma

    kwargs = {} if args.steps is None else {"pretrain_steps": args.steps}
    with tqdm(desc=f"pretraining {args.family}", unit="step", file=sys.stderr) as bar:
        def progress(step: int, total: int) -> None:
            bar.total = total
            bar.update(step - bar.n)
        if args.family == "tiny_gemma":
            path = ensure_tiny_diffusion_gemma(args.cache, progress=progress, **kwargs)
        else:
            path = ensure_tiny_model(args.cache, progress=progress, kind="ar" if args.family == "tiny_ar" else "dlm",
                                     **kwargs)
    print(path)
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    from dlm_triage import __version__

    ap = _Parser(prog="dlm-triage", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None,
                    help="output root (runs/, triage.duckdb, reports/); default $DLM_TRIAGE_OUT or ./dlm-triage-out")
    ap.add_argument("--version", action="version", version=f"dlm-triage {__version__}",
                    help="print the version and exit")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")

    def db_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--db", type=Path, default=None, help="DuckDB file (default <out>/triage.duckdb)")

    def axes(p: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
        from dlm_triage.params import SweepParams

        def dflt(name: str) -> str:
            v = defaults.get(name, SweepParams.model_fields[name].default)
            if v is None or v == "":
                return ""
            return f" (default: {','.join(f'{x:g}' if isinstance(x, float) else str(x) for x in v)})" \
                if isinstance(v, list) else f" (default: {v})"

        p.add_argument("--spec", help="JSON file with sweep fields (axes and settings); flags given override it (default: none)")
        p.add_argument("--families", type=_strs, help="comma list of model families" + dflt("families"))
        p.add_argument("--methods", type=_strs, help="comma list of lora,rslora,dora,pissa,nara,lora_diffusion"
                       + dflt("methods"))
        p.add_argument("--ranks", type=_ints, help="comma list of adapter ranks" + dflt("ranks"))
        p.add_argument("--mask-ratios", dest="mask_ratios", type=_floats, help="comma list in (0,1)"
                       + dflt("mask_ratios"))
        p.add_argument("--learning-rates", dest="learning_rates", type=_floats, help="comma list"
                       + dflt("learning_rates"))
        p.add_argument("--seeds", type=_ints, help="comma list" + dflt("seeds"))
        p.add_argument("--steps", type=int, help="optimizer updates per run" + dflt("steps"))
        p.add_argument("--batch-size", dest="batch_size", type=int, help="sequences per batch" + dflt("batch_size"))
        p.add_argument("--gpu-slots", dest="gpu_slots", type=int,
                       help="training tasks at once (default: the number of GPUs, or of CPU cores without GPU)")
        p.add_argument("--model-id", dest="model_id", help="HF hub id or local path (default: the family's own; "
                       "tiny: the locally pretrained model)")
        p.add_argument("--seq-len", dest="seq_len", type=int, help="tokens per training sequence" + dflt("seq_len"))
        p.add_argument("--dataset", help="'tiny-shifted', 'tiny-instruct' (embedded SFT set) or a text/JSONL file "
                       "(SFT rows: prompt/response or messages)" + dflt("dataset"))
        p.add_argument("--objective", choices=list(OBJECTIVES),
                       help="training objective: paper (fixed rho) or a family recipe (default: each family's "
                       "own, else paper)")
        p.add_argument("--cohort", help="label for --group-by cohort (default: none)")
        p.add_argument("--device", help="auto, cpu, cuda, cuda:N, mps" + dflt("device"))

    from dlm_triage.defaults import n_default_runs

    p = sub.add_parser("run", help="the whole pipeline on the embedded default (families "
                       f"{', '.join(EMBEDDED_DEFAULT_SWEEP['families'])}: {n_default_runs()} runs)")
    axes(p, EMBEDDED_DEFAULT_SWEEP)
    p.add_argument("--seed", type=int, default=0, help="calibration resampling seed")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("sweep", help="train a grid through the Prefect sweep flow")
    axes(p, {})
    p.set_defaults(fn=cmd_sweep)

    p = sub.add_parser("train", help="one run in this process (no Prefect)", epilog=_config_keys_epilog())
    p.add_argument("--config", help="JSON file with config keys (listed below); default: all defaults")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override one config key (value as JSON, else a string); repeatable (default: none)")
    db_arg(p)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("ingest", help="load run directories into DuckDB (idempotent)")
    p.add_argument("runs_dir", nargs="?", type=Path, help="root of run directories (default <out>/runs)")
    p.add_argument("--quarantine", type=Path, default=None, help="move unreadable runs here (default: <db folder>/quarantine)")
    db_arg(p)
    p.set_defaults(fn=cmd_ingest)

    p = sub.add_parser("import", help="import existing logs (reference-jsonl, cells, json-rows, hf-trainer, "
                                      "wandb-csv)")
    p.add_argument("--format", required=True,
                   choices=["reference-jsonl", "cells", "json-rows", "hf-trainer", "wandb-csv"],
                   help="the logs' format (required)")
    p.add_argument("paths", nargs="+", type=Path, help="files or folders to import")
    p.add_argument("--family", default=None, help="family for logs that do not name one (default: none; logs without one are rejected)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="format option, e.g. config=run.json (hf-trainer), step_col=_step (wandb-csv), "
                        "map='rank=lora_r' or derive='rank=run_path:_r(\\d+)' (cells, json-rows), "
                        "collapsed_means=detector_stop (what an imported `collapsed` column means); "
                        "repeatable (default: none)")
    db_arg(p)
    p.set_defaults(fn=cmd_import)

    p = sub.add_parser("calibrate", help="calibrate thresholds per group -> calibration.json + DuckDB")
    db_arg(p)
    p.add_argument("--out", dest="out_dir", type=Path, default=None, help="folder for calibration.json (default $DLM_TRIAGE_OUT/reports)")
    p.add_argument("--group-by", choices=list(GROUP_BY_COLUMNS), default="family",
                   help="calibrate one threshold per family, model, cohort or method")
    p.add_argument("--resamples", type=int, default=1000, help="split-bootstrap replicates B")
    p.add_argument("--stepk-resamples", type=int, default=200, help="random splits of the step-k sweep")
    p.add_argument("--seed", type=int, default=0, help="resampling seed")
    p.add_argument("--bonferroni-m", type=int, default=None, metavar="M",
                   help="Bonferroni m: contrasts corrected for (the paper: 6); default: the groups tested")
    p.set_defaults(fn=cmd_calibrate)

    p = sub.add_parser("report", help="HTML + Markdown triage report of a calibration")
    db_arg(p)
    p.add_argument("--out", dest="out_dir", type=Path, default=None, help="report folder (default <out>/reports)")
    p.add_argument("--calibration", default=None, help="calibration id (default: latest)")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("queue", help="runs routed to inspection and why")
    db_arg(p)
    p.add_argument("--calibration", default=None,
                   help="use this calibration's thresholds (default: the latest accepted one per group)")
    p.add_argument("--json", action="store_true", help="every column of every queued run, as JSON")
    p.set_defaults(fn=cmd_queue)

    p = sub.add_parser("thresholds", help="threshold registry: every calibration's thresholds")
    db_arg(p)
    p.add_argument("--group", default=None, help="only this group (default: all)")
    p.add_argument("--json", action="store_true", help="every column of every threshold, as JSON")
    p.set_defaults(fn=cmd_thresholds)

    p = sub.add_parser("connect", help="LoRA-Curve: loss along linear and Bezier paths between two runs' adapters")
    db_arg(p)
    p.add_argument("run_a", help="run id (under <out>/runs) or run directory: t=0")
    p.add_argument("run_b", help="run id or run directory: t=1 (same base model, family, method, rank)")
    p.add_argument("--segments", type=int, default=2, help="Bezier segments N")
    p.add_argument("--steps", type=int, default=50, help="curve training updates (0: no training)")
    p.add_argument("--points", type=int, default=11, help="evaluation points t per path")
    p.add_argument("--eval-batches", dest="eval_batches", type=int, default=4, help="held-out batches")
    p.add_argument("--mask-ratio", dest="mask_ratio", type=float, default=None, help="default: the runs' own")
    p.add_argument("--lr", type=float, default=None, help="curve learning rate (default: run A's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.set_defaults(fn=cmd_connect)

    p = sub.add_parser("pretrain", help="build (or find) a local family's pretrained model")
    p.add_argument("--family", choices=["tiny", "tiny_gemma", "tiny_ar"], default="tiny",
                   help="which local model")
    p.add_argument("--steps", type=int, default=None, help="pretraining steps (default: the family recipe's)")
    p.add_argument("--cache", type=Path, default=None,
                   help="cache folder (default $DLM_TRIAGE_CACHE or ~/.cache/dlm-triage)")
    p.set_defaults(fn=cmd_pretrain)

    # `dlm-triage sweep --out X` means what `dlm-triage --out X sweep` does (SUPPRESS: absent, the global value
    # stands); calibrate and report keep their own --out (the folder for their files)
    for name, sp in sub.choices.items():
        if not any("--out" in a.option_strings for a in sp._actions):
            sp.add_argument("--out", type=Path, default=argparse.SUPPRESS,
                            help="output root, as `dlm-triage --out` (default $DLM_TRIAGE_OUT or ./dlm-triage-out)")
    return ap


def _validation_line(err: Mapping[str, Any], model: str, parser: argparse.ArgumentParser, cmd: str) -> str:
    """One pydantic error as the user typed it: the flag (or spec key) and item, never the model's field path."""
    from dlm_triage import params as params_mod

    loc = [x for x in err.get("loc", ()) if not isinstance(x, int)]
    items = [x for x in err.get("loc", ()) if isinstance(x, int)]
    name = str(loc[-1]) if loc else ""
    subs = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    sp = subs.choices.get(cmd) if subs is not None else None
    dests = {a.dest: a.option_strings[0] for a in (sp._actions if sp else ()) if a.option_strings}
    where = dests.get(name, f"{name!r}" if name else "arguments")
    if items:
        where += f" (item {items[0] + 1})"
    msg = str(err.get("msg", "")).removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        fields = getattr(getattr(params_mod, model, None), "model_fields", {})
        return f"  - unknown key {name!r}{_suggest(name, fields)}"
    return f"  - {where}: {msg}" + ("" if err.get("type") == "value_error" else f" (got {err.get('input')!r})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the subcommand's own parser, with its usage and the closest flag it knows
        subs = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        target = subs.choices.get(args.cmd, parser) if subs is not None and args.cmd else parser
        target.unknown_options(extra)
    if args.cmd is None:
        parser.print_help()
        return 2
    args.out = args.out if args.out is not None else paths.out_root()
    if hasattr(args, "db") and args.db is None:
        args.db = args.out / "triage.duckdb"
    try:
        return int(args.fn(args) or 0)
    except BrokenPipeError:
        # the reader went away (`dlm-triage queue | head -1`): stop quietly; point stdout at /dev/null so the
        # interpreter's final flush does not raise again; 141 = 128 + SIGPIPE, what a shell reports for it
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except ConfigError as e:
        print(f"dlm-triage {args.cmd}: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the boundary: one clear line, not a traceback, for known errors
        from pydantic import ValidationError

        if isinstance(e, ValidationError):  # one line per bad field, without pydantic's URL footer
            problems = "\n".join(_validation_line(err, e.title, parser, args.cmd) for err in e.errors())
            print(f"dlm-triage {args.cmd}: invalid arguments ({e.error_count()} problem(s)):\n{problems}",
                  file=sys.stderr)
            return 2
        if isinstance(e, (ValueError, OSError)) or type(e).__name__.endswith("Error") \
                and type(e).__module__.startswith("dlm_triage"):
            print(f"dlm-triage {args.cmd}: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
