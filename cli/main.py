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
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from dlm_triage import paths
from dlm_triage.config import OBJECTIVES, ConfigError
from dlm_triage.defaults import EMBEDDED_DEFAULT_SWEEP  # the one definition of `run`'s default sweep
from dlm_triage.groups import GROUP_BY_COLUMNS

# The verbs live per group: cli/training.py (run, sweep, train, pretrain, connect) and cli/analysis.py (ingest,
# import, calibrate, report, queue, thresholds); cli/parser.py holds the parser's pieces.
from cli.analysis import cmd_calibrate, cmd_import, cmd_ingest, cmd_queue, cmd_report, cmd_thresholds
from cli.parser import _config_keys_epilog, _floats, _ints, _Parser, _strs, _suggest
from cli.training import cmd_connect, cmd_pretrain, cmd_run, cmd_sweep, cmd_train
from cli.training import run_summary  # noqa: F401 - imported from cli.main by tests (the end of `run`)


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
