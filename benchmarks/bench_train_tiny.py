"""Time of a complete tiny-family run through `train.train_run`, and of re-running it (resume: nothing trains).

The speed side of tests/test_train.py's 200-step run, which asserts what the run writes, never how long it takes.
Targets (CPU, one thread): 200 steps in under 60 s of CPU time (~6 s measured when the target was set), and the
re-run under 5 s of wall time. CPU time, not wall time, for the run: on a shared machine the load moves the wall.

Run:  python benchmarks/bench_train_tiny.py [--steps 200] [--threads 1] [--out benchmarks/results]
Writes <out>/train_tiny.json and train_tiny.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from dlm_triage import provenance, train  # noqa: E402
from dlm_triage.config import RunConfig  # noqa: E402
from dlm_triage.tiny import ensure_tiny_model  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CPU_TARGET_S, RESUME_TARGET_S = 60.0, 5.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--pretrain-steps", type=int, default=40, help="the tiny model's pretraining (tests use 40)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-train-tiny-"))
    model_dir = ensure_tiny_model(work / "model", pretrain_steps=args.pretrain_steps)
    cfg = RunConfig(model_id=str(model_dir), steps=args.steps, device="cpu", top1_every=5)

    t0, c0 = time.perf_counter(), time.process_time()
    res = train.train_run(cfg, work / "runs")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    again = train.train_run(cfg, work / "runs")
    resume = time.perf_counter() - t0
    if res.status != "completed" or not again.reused:
        print(f"error: the run ended {res.status!r} (reused on re-run: {again.reused})", file=sys.stderr)
        return 1

    payload = {
        "benchmark": "train_tiny", "steps": args.steps, "threads": args.threads, "top1_every": cfg.top1_every,
        "run_cpu_s": cpu, "run_wall_s": wall, "resume_wall_s": resume,
        "targets": {"run_cpu_s": CPU_TARGET_S, "resume_wall_s": RESUME_TARGET_S},
        "met": {"run_cpu_s": cpu < CPU_TARGET_S, "resume_wall_s": resume < RESUME_TARGET_S},
        "versions": provenance.collect("cpu")["packages"],
        "command": " ".join(["python benchmarks/bench_train_tiny.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_tiny.json").write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    md = [
        "# A tiny-family run end to end (CPU)", "",
        f"{args.steps} steps, batch/seq_len defaults, top1_every=5, {args.threads} thread(s).", "",
        "| figure | measured | target |", "|---|---|---|",
        f"| run, CPU time | {cpu:.1f} s ({wall:.1f} s wall) | < {CPU_TARGET_S:.0f} s: "
        f"{'met' if payload['met']['run_cpu_s'] else 'NOT met'} |",
        f"| re-run of the same config (reused, nothing trains), wall | {resume:.2f} s | < {RESUME_TARGET_S:.0f} s: "
        f"{'met' if payload['met']['resume_wall_s'] else 'NOT met'} |",
        "", f"Command: `{payload['command']}`.",
    ]
    (args.out / "train_tiny.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
