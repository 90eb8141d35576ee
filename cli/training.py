"""The verbs that train: `run` and `sweep` (through Prefect flows, with a progress bar over the run
directories), `train` (one run in this process), `pretrain` (a local family's model) and `connect` (LoRA-Curve
between two runs). `cli.main` builds the parser and dispatches here."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from dlm_triage import paths
from dlm_triage.config import ConfigError, RunConfig
from dlm_triage.defaults import EMBEDDED_DEFAULT_SWEEP  # the one definition of `run`'s default sweep
from dlm_triage.schema import MANIFEST_FILENAME, REUSABLE_STATUSES

if TYPE_CHECKING:
    from dlm_triage.calresult import CalibrationResult


PLAIN_PROGRESS_EVERY_S = 30.0
"""Without a terminal (output to a file or a pipe) progress is a plain line at most this often, and at the end."""


def _progress_watcher(runs_dir: Path, run_ids: Sequence[str], desc: str) -> tuple[threading.Event, threading.Thread]:
    """Progress over run directories whose manifest exists (a run is complete when its manifest is written, see
    schema.py). Polling the file system keeps it independent of where the tasks execute. On a terminal it is a
    tqdm bar with the logs scrolling above it; elsewhere a bar's carriage-return redraws would share lines with
    the log lines in the file, so it is a plain 'desc: i/n runs' line when the count moved (at most every
    PLAIN_PROGRESS_EVERY_S) and a last one when it stops."""
    stop = threading.Event()
    total = len(run_ids)

    def count() -> int:
        return sum((runs_dir / rid / MANIFEST_FILENAME).exists() for rid in run_ids)

    def bar() -> None:
        from tqdm import tqdm

        with tqdm(total=total, desc=desc, unit="run", file=sys.stderr, dynamic_ncols=True) as b:
            seen = 0
            while True:
                done = count()
                b.update(done - seen)
                seen = done
                if stop.is_set():
                    return
                stop.wait(1.0)

    def lines() -> None:
        shown, last = 0, time.monotonic()
        while True:
            done, now = count(), time.monotonic()
            final = stop.is_set()
            if done != shown and (final or done == total or now - last >= PLAIN_PROGRESS_EVERY_S):
                print(f"{desc}: {done}/{total} runs", file=sys.stderr, flush=True)
                shown, last = done, now
            if final:
                return
            stop.wait(1.0)

    t = threading.Thread(target=bar if sys.stderr.isatty() else lines, daemon=True)
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


def _g(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def run_summary(result: CalibrationResult | Mapping[str, Any], *, live: Mapping[str, tuple[Any, str]],
                routed: Mapping[str, int], runs: Sequence[Mapping[str, Any]], report_html: Any,
                out_flag: str = "") -> list[str]:
    """The end of `dlm-triage run`: the runs, then one line per group (its live threshold or why none, runs
    routed, precision [CI] of the registered rule vs the always-positive baseline ceiling), then what to type
    next. `result`: the calibration (a JSON-contract dict is read as the report's functions read it);
    `live`: {group: store.live_threshold(...)}; `routed`: {group: queued runs}; `out_flag`: ' --out X'
    when the output root is not the default."""
    from dlm_triage.report import group_answers
    from dlm_triage.report.verdicts import as_result

    result = as_result(result)
    n_status = {st: sum(1 for r in runs if r.get("status") == st) for st in REUSABLE_STATUSES}
    failed = len(runs) - sum(n_status.values())
    lines = [f"{len(runs)} runs: {n_status['completed']} completed, {n_status['diverged']} diverged, "
             f"{n_status['stopped_early']} stopped early, "
             + (f"{n_status['stopped_by_legacy_detector']} stopped by the legacy detector, "
                if n_status["stopped_by_legacy_detector"] else "") + f"{failed} failed",
             f"calibration {result.calibration_id} (by {result.group_by}):"]
    lines += ["  " + a.line for a in group_answers(result, routed=routed,
                                                   live={g: rec for g, (rec, _why) in live.items()})]
    lines += [f"report: {report_html}", "next:",
              f"  dlm-triage{out_flag} queue           the runs to inspect, most severe first",
              f"  dlm-triage{out_flag} thresholds      every calibration's thresholds and why each is (not) live",
              f"  dlm-triage{out_flag} run [same axes] --seeds S1,S2,...   more seeds: finished runs are reused, "
              "the calibration redone"]
    return lines


def _print_run_summary(result: CalibrationResult, runs: Sequence[Mapping[str, Any]], db: Path, report_html: Any,
                       out: Path) -> None:
    from dlm_triage import groups, store

    group_by = result.group_by
    with store.connect(db, read_only=True) as con:
        live = {g: store.live_threshold(con, g, group_by=group_by) for g in result.groups}
        q = store.inspection_queue(con)
    routed: dict[str, int] = {}
    if q.height and groups.group_column(group_by) in q.columns:
        for k in groups.group_keys(q, group_by).to_list():
            routed[k] = routed.get(k, 0) + 1
    default_out = out.resolve() == paths.out_root().resolve()
    flag = "" if default_out else f" --out {out}"
    for line in run_summary(result, live=live, routed=routed, runs=runs, report_html=report_html, out_flag=flag):
        print(line)


def _train_under_bar(runs_dir: Path, configs: list, start: Callable[[], Any]) -> Any:
    """`start()` (a flow that trains `configs`) under the terminal's progress bar, with a temporary Prefect server
    when no API is configured (a kill -9 of this process takes it down)."""
    from dlm_triage.console import CONSOLE_ENV, route_console_logging
    from flows.tempserver import temporary_server

    route_console_logging()  # Prefect's console logs above the progress bar, state lines in the UI only
    os.environ[CONSOLE_ENV] = "bar"  # shard subprocesses clear the bar's line before they print
    stop, t = _progress_watcher(runs_dir, [c.run_id for c in configs], "training")
    try:
        with temporary_server():
            return start()
    finally:
        stop.set()
        t.join()
        os.environ.pop(CONSOLE_ENV, None)


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

    result = _train_under_bar(out / "runs", configs, lambda: pipeline_flow(params))
    runs = result["runs"]
    failed = [r for r in runs if r.get("status") not in REUSABLE_STATUSES]
    print()
    from dlm_triage.calresult import CalibrationResult

    # the flow's result carries the calibration's JSON contract (a Prefect result stays plain JSON): read it once
    cal = CalibrationResult.from_json(result["calibration"]["result"])
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

    records = _train_under_bar(args.out / "runs", configs, lambda: sweep_flow(sweep))
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

        with store.connect(args.db, read_only=True) as con:
            threshold, why = store.live_threshold(con, cfg.family)
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
