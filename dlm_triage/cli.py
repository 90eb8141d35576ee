"""`dlm-triage`: the command line.

    dlm-triage run                      the embedded default: pretrain (or reuse) the tiny family, sweep, ingest,
                                        calibrate, report -- all through the Prefect pipeline flow
    dlm-triage sweep  [axes...]         train a grid (Prefect sweep flow: parallel, cached, resumable)
    dlm-triage train  [--config F]      one run, in this process, no Prefect
    dlm-triage ingest [RUNS_DIR]        load run directories into DuckDB (idempotent)
    dlm-triage import --format F PATH.. bring your own logs (reference-jsonl, cells, hf-trainer, wandb-csv)
    dlm-triage calibrate                the paper's protocol per group -> calibration.json + DuckDB
    dlm-triage report                   HTML + Markdown triage report with figures
    dlm-triage queue                    runs routed to inspection, and why
    dlm-triage thresholds               the threshold registry (latest and history)
    dlm-triage pretrain                 build (or find) the tiny family's pretrained model
    dlm-triage connect RUN_A RUN_B      LoRA-Curve: loss barriers between two runs' adapters (linear, Bezier)

`run` and `sweep` go through Prefect flows (orchestration, retries, caching, artifacts); the other verbs call
the same core functions the Prefect tasks call, directly, so they answer in about a second. Every option that a
flow takes is validated by the same pydantic model the Prefect UI uses (`dlm_triage.params`).
Default locations: $DLM_TRIAGE_OUT (./dlm-triage-out) for runs, triage.duckdb and reports;
$DLM_TRIAGE_CACHE (~/.cache/dlm-triage) for the tiny family's pretrained model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

from dlm_triage import paths
from dlm_triage.groups import GROUP_BY_COLUMNS
from dlm_triage.config import ConfigError, RunConfig
from dlm_triage.schema import MANIFEST_FILENAME

# The embedded default sweep (`dlm-triage run`): the tiny family, 2 ranks x 4 mask ratios x 3 learning rates x 3
# seeds = 72 runs. The learning-rate axis is what makes some runs really go bad (with one lr, tiny runs differ
# little: ENVIRONMENT-NOTES.md), so the calibration has unstable runs to find.
EMBEDDED_DEFAULT_SWEEP: dict[str, Any] = {
    "families": ["tiny"],
    "methods": ["lora"],
    "ranks": [4, 16],
    "mask_ratios": [0.15, 0.4, 0.65, 0.9],
    "learning_rates": [1e-3, 1e-2, 5e-2],
    "seeds": [7, 42, 1337],
    "steps": 200,
    "batch_size": 4,
}


QUEUE_COLUMNS = ("run_id", "family", "method", "rank", "mask_ratio", "learning_rate", "seed", "status",
                 "final_loss", "max_grad_up_to_k", "threshold", "k")
THRESHOLD_COLUMNS = ("created_at", "calibration_id", "group_by", "group_name", "k", "threshold", "n", "n_unstable",
                     "precision", "recall", "f1", "precision_ci_low", "precision_ci_high", "baseline_ceiling",
                     "accepted")


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


def _sweep_params(args: argparse.Namespace, defaults: dict[str, Any] | None = None):
    from dlm_triage.params import SweepParams

    data: dict[str, Any] = dict(defaults or {})
    if getattr(args, "spec", None):
        data.update(json.loads(Path(args.spec).read_text()))
    for name in ("families", "methods", "ranks", "mask_ratios", "learning_rates", "seeds"):
        v = getattr(args, name, None)
        if v:
            data[name] = v
    for name in ("steps", "batch_size", "gpu_slots", "model_id", "dataset", "cohort", "device"):
        v = getattr(args, name, None)
        if v is not None:
            data[name] = v
    data["runs_dir"] = str(args.out / "runs")
    data["db"] = str(args.out / "triage.duckdb")
    return SweepParams(**data)


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


def cmd_run(args: argparse.Namespace) -> int:
    _quiet_prefect()
    from dlm_triage.params import CalibrateParams, IngestParams, PipelineParams, ReportParams

    sweep = _sweep_params(args, EMBEDDED_DEFAULT_SWEEP)
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

    stop, t = _progress_watcher(out / "runs", [c.run_id for c in configs], "training")
    try:
        result = pipeline_flow(params)
    finally:
        stop.set()
        t.join()
    runs = result["runs"]
    failed = [r for r in runs if r.get("status") not in ("completed", "diverged", "stopped_early")]
    report = result["report"]
    print()
    print(f"runs:        {len(runs)} ({sum(1 for r in runs if r.get('status') == 'completed')} completed, "
          f"{sum(1 for r in runs if r.get('status') == 'diverged')} diverged, {len(failed)} failed)")
    print(f"database:    {(out / 'triage.duckdb').resolve()}")
    print(f"calibration: {Path(result['calibration'].get('json_path')).resolve()}")
    print(f"report:      {report.get('html')}")
    for r in failed:
        print(f"  failed {r.get('run_id')}: {r.get('error')}", file=sys.stderr)
    return 1 if failed else 0


def cmd_sweep(args: argparse.Namespace) -> int:
    _quiet_prefect()
    sweep = _sweep_params(args)
    configs = sweep.to_spec().expand()
    from flows.sweep import sweep_flow

    stop, t = _progress_watcher(args.out / "runs", [c.run_id for c in configs], "training")
    try:
        records = sweep_flow(sweep)
    finally:
        stop.set()
        t.join()
    bad = [r for r in records if r.get("status") not in ("completed", "diverged", "stopped_early")]
    print(f"{len(records)} runs in {(args.out / 'runs').resolve()}; {len(bad)} failed")
    for r in bad:
        print(f"  failed {r.get('run_id')}: {r.get('error')}", file=sys.stderr)
    return 1 if bad else 0


def cmd_train(args: argparse.Namespace) -> int:
    data: dict[str, Any] = json.loads(Path(args.config).read_text()) if args.config else {}
    for kv in args.set or []:
        key, _, raw = kv.partition("=")
        try:
            data[key] = json.loads(raw)
        except json.JSONDecodeError:
            data[key] = raw
    cfg = RunConfig.from_dict(data)  # validated before torch is imported: a bad value answers at once

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
    print(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in vars(res).items()}, indent=2))
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
    print(f"calibration {res.calibration_id}: {res.json_path}")
    for name, g in res.result["groups"].items():
        reg = g.get("registry") or {}
        print(f"  {name}: n={g.get('n')} unstable={g.get('n_unstable')} threshold={reg.get('threshold')} "
              f"(k={reg.get('k')}, CI [{reg.get('ci_low')}, {reg.get('ci_high')}])")
    for w in res.result.get("warnings", []):
        print(f"  warning: {w}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from dlm_triage.report import write_report

    paths_ = write_report(args.db, args.out_dir or args.out / "reports", calibration_id=args.calibration)
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


def _print_table(df: Any, columns: Sequence[str], **fmt: Any) -> None:
    """`columns` of `df` (those it has), every row, as a plain terminal table: no shape or dtype lines."""
    import polars as pl

    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=250, tbl_hide_dataframe_shape=True,
                   tbl_hide_column_data_types=True, float_precision=4, **fmt):
        print(df.select([c for c in columns if c in df.columns]))


def cmd_queue(args: argparse.Namespace) -> int:
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
        print("no run is routed to inspection (no calibration yet, or every run is below its group's threshold)")
        return 0
    # The terminal gets what decides a look; --json has every column (config, monitors, routing).
    _print_table(q, QUEUE_COLUMNS, fmt_str_lengths=80)
    print(f"{q.height} run(s) routed to inspection; reasons:")
    for rid, reason in q.select("run_id", "reason").iter_rows():
        print(f"  {rid}: {reason}")
    return 0


def cmd_thresholds(args: argparse.Namespace) -> int:
    from dlm_triage import store

    con = store.connect(args.db, read_only=True)
    try:
        h = store.threshold_history(con, args.group)
    finally:
        con.close()
    if h.is_empty():
        print("no threshold registered yet: run `dlm-triage calibrate`")
        return 0
    # one rule per row: the registered threshold at k, its own held-out metrics and precision CI, judged against
    # the always-positive baseline ceiling (the numbers the report's per-group table shows)
    _print_table(h, THRESHOLD_COLUMNS)
    rejected = h.filter(~h["accepted"])
    if rejected.height:
        print("rejected (never live):")
        for cid, g, why in rejected.select("calibration_id", "group_name", "reason").iter_rows():
            print(f"  {cid} {g}: {why}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dlm_triage.tiny import ensure_tiny_model

    kwargs = {} if args.steps is None else {"pretrain_steps": args.steps}
    with tqdm(desc="pretraining tiny family", unit="step", file=sys.stderr) as bar:
        def progress(step: int, total: int) -> None:
            bar.total = total
            bar.update(step - bar.n)
        path = ensure_tiny_model(args.cache, progress=progress, **kwargs)
    print(path)
    return 0


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x]


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def _strs(s: str) -> list[str]:
    return [x for x in s.split(",") if x]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dlm-triage", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None,
                    help="output root (runs/, triage.duckdb, reports/); default $DLM_TRIAGE_OUT or ./dlm-triage-out")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")

    def db_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--db", type=Path, default=None, help="DuckDB file (default <out>/triage.duckdb)")

    def axes(p: argparse.ArgumentParser) -> None:
        p.add_argument("--spec", help="JSON file with SweepParams fields (axes and settings)")
        p.add_argument("--families", type=_strs, help="comma list, e.g. tiny")
        p.add_argument("--methods", type=_strs, help="comma list of lora,rslora,dora,pissa,nara,lora_diffusion")
        p.add_argument("--ranks", type=_ints, help="comma list, e.g. 4,16")
        p.add_argument("--mask-ratios", dest="mask_ratios", type=_floats, help="comma list in (0,1)")
        p.add_argument("--learning-rates", dest="learning_rates", type=_floats, help="comma list")
        p.add_argument("--seeds", type=_ints, help="comma list")
        p.add_argument("--steps", type=int)
        p.add_argument("--batch-size", dest="batch_size", type=int)
        p.add_argument("--gpu-slots", dest="gpu_slots", type=int, help="training tasks at once")
        p.add_argument("--model-id", dest="model_id", help="HF id or local path (default: family default)")
        p.add_argument("--dataset", help="'tiny-shifted' or a text/JSONL file")
        p.add_argument("--cohort", help="label for --group-by cohort")
        p.add_argument("--device", help="auto, cpu, cuda, cuda:N, mps")

    n_default = math.prod(len(EMBEDDED_DEFAULT_SWEEP[a]) for a in
                          ("families", "methods", "ranks", "mask_ratios", "learning_rates", "seeds"))
    p = sub.add_parser("run", help=f"the whole pipeline on the embedded default (tiny family, {n_default} runs)")
    axes(p)
    p.add_argument("--seed", type=int, default=0, help="calibration resampling seed")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("sweep", help="train a grid through the Prefect sweep flow")
    axes(p)
    p.set_defaults(fn=cmd_sweep)

    p = sub.add_parser("train", help="one run in this process (no Prefect)")
    p.add_argument("--config", help="JSON file with RunConfig fields")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a RunConfig field (JSON value)")
    db_arg(p)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("ingest", help="load run directories into DuckDB (idempotent)")
    p.add_argument("runs_dir", nargs="?", type=Path, help="root of run directories (default <out>/runs)")
    p.add_argument("--quarantine", type=Path, default=None, help="move unreadable runs here")
    db_arg(p)
    p.set_defaults(fn=cmd_ingest)

    p = sub.add_parser("import", help="import existing logs (reference-jsonl, cells, hf-trainer, wandb-csv)")
    p.add_argument("--format", required=True, choices=["reference-jsonl", "cells", "hf-trainer", "wandb-csv"])
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--family", default=None, help="family for logs that do not name one")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="format option, e.g. config=run.json (hf-trainer) or step_col=_step (wandb-csv)")
    db_arg(p)
    p.set_defaults(fn=cmd_import)

    p = sub.add_parser("calibrate", help="calibrate thresholds per group -> calibration.json + DuckDB")
    db_arg(p)
    p.add_argument("--out", dest="out_dir", type=Path, default=None, help="folder for calibration.json")
    p.add_argument("--group-by", choices=list(GROUP_BY_COLUMNS), default="family")
    p.add_argument("--resamples", type=int, default=1000, help="split-bootstrap replicates B")
    p.add_argument("--stepk-resamples", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
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
    p.add_argument("--calibration", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_queue)

    p = sub.add_parser("thresholds", help="threshold registry: every calibration's thresholds")
    db_arg(p)
    p.add_argument("--group", default=None)
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
    p.add_argument("--device", default="auto")
    p.set_defaults(fn=cmd_connect)

    p = sub.add_parser("pretrain", help="build (or find) the tiny family's pretrained model")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--cache", type=Path, default=None)
    p.set_defaults(fn=cmd_pretrain)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cmd is None:
        parser.print_help()
        return 2
    args.out = args.out if args.out is not None else paths.out_root()
    if hasattr(args, "db") and args.db is None:
        args.db = args.out / "triage.duckdb"
    try:
        return int(args.fn(args) or 0)
    except ConfigError as e:
        print(f"dlm-triage {args.cmd}: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the boundary: one clear line, not a traceback, for known errors
        from pydantic import ValidationError

        if isinstance(e, ValidationError):  # one line per bad field, without pydantic's URL footer
            problems = "\n".join(
                f"  - {'.'.join(map(str, err['loc'])) or 'params'}: {err['msg'].removeprefix('Value error, ')}"
                + ("" if err["type"] == "value_error" else f" (got {err.get('input')!r})")
                for err in e.errors())
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
