"""The first run after install: `dlm-triage run` with no arguments, on an empty model cache, output folder and
Prefect home, timed end to end, and where its time goes.

Target (issue: the first run, larger grid included): no longer than 7 m 32 s (452 s) on a 2-core CPU; aim for
half (226 s). Phases, from what the run leaves behind (no instrumentation of its own):
- pretraining of the local models (their recipe.json stats: built in parallel processes when several);
- start-up: from the command's start to the first run's start, minus the pretraining;
- training: first run start -> last run finish (each run's manifest); within it, the summed per-run train time,
  model load + adapter wrap, and the clean-batch top-1 forwards (monitor_overhead);
- after training: ingest, calibrate, report and the summary (last run finish -> command end).
Also the CPU seconds of the command and all its processes: on a shared machine wall time measures the other
jobs as much as this one, CPU time much less (cpu_s / cores is a lower bound of the wall time on idle cores).

    python benchmarks/bench_first_run.py --out benchmarks/results            # the default grid (minutes)
    python benchmarks/bench_first_run.py --quick --out /tmp/b                # --seeds 7 --steps 12: a smoke run
Extra arguments after `--` go to `dlm-triage run` (e.g. `-- --seeds 7,42`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 452.0  # 7 m 32 s
AIM_S = TARGET_S / 2


def phases(out: Path, cache: Path, t_start: float, t_end: float) -> dict:
    """Where the time went, from the manifests and the models' recipe.json."""
    runs = []
    for m in (out / "runs").glob("*/manifest.json"):
        d = json.loads(m.read_text())
        mo = d.get("monitor_overhead") or {}
        runs.append({"family": d["config"]["family"], "start": datetime.fromisoformat(d["started_at"]).timestamp(),
                     "end": datetime.fromisoformat(d["finished_at"]).timestamp(), "train_s": mo.get("train_s") or 0.0,
                     "load_s": mo.get("model_load_s") or 0.0, "steps": d.get("n_steps_logged") or 0,
                     "step_ms": mo.get("step_ms_mean"), "top1_ms": mo.get("top1_forward_ms_mean"),
                     "top1_every": mo.get("top1_every")})
    built = {}
    for r in cache.glob("models/*/recipe.json"):
        built[r.parent.name] = json.loads(r.read_text()).get("stats", {}).get("pretrain_wall_s")
    res: dict = {"n_runs": len(runs), "pretrain_s": built}
    if runs:
        first, last = min(r["start"] for r in runs), max(r["end"] for r in runs)
        wall = sum(r["end"] - r["start"] for r in runs)
        res.update({
            "startup_incl_pretrain_s": round(first - t_start, 1),
            "training_span_s": round(last - first, 1),
            "after_training_s": round(t_end - last, 1),
            "run_wall_sum_s": round(wall, 1),
            "train_sum_s": round(sum(r["train_s"] for r in runs), 1),
            "model_load_sum_s": round(sum(r["load_s"] for r in runs), 1),
            "in_run_other_s": round(wall - sum(r["train_s"] + r["load_s"] for r in runs), 1),
            "parallelism": round(wall / max(1e-9, last - first), 2),
            "steps": sum(r["steps"] for r in runs),
        })
        by_family: dict = {}
        for r in runs:
            f = by_family.setdefault(r["family"], {"runs": 0, "step_ms": [], "top1_share": []})
            f["runs"] += 1
            if r["step_ms"]:
                f["step_ms"].append(r["step_ms"])
                if r["top1_ms"] is not None and r["top1_every"]:
                    f["top1_share"].append(r["top1_ms"] / r["step_ms"])
        res["by_family"] = {k: {"runs": v["runs"], "step_ms_mean": round(sum(v["step_ms"]) / len(v["step_ms"]), 1)
                                if v["step_ms"] else None,
                                "top1_forward_share_of_step_when_run": round(sum(v["top1_share"]) / len(v["top1_share"]), 3)
                                if v["top1_share"] else None} for k, v in by_family.items()}
    return res


def markdown(res: dict) -> str:
    ph = res["phases"]
    lines = [f"# First run: `{res['command'].strip()}`", "",
             f"{ph.get('n_runs')} runs, {ph.get('steps')} steps; {res['nproc']} cores, load average after "
             f"{', '.join(f'{x:.1f}' for x in res['loadavg_after'])}; exit status {res['returncode']}.", "",
             "| figure | value |", "|---|---|",
             f"| wall | {res['wall_s']} s (target <= {res['target_s']:.0f} s, aim {res['aim_s']:.0f} s) |",
             f"| CPU seconds, all processes | {res['cpu_s']} s (floor on {res['nproc']} idle cores: "
             f"{res['cpu_s'] / max(1, res['nproc'] or 1):.0f} s) |"]
    for key in ("startup_incl_pretrain_s", "training_span_s", "after_training_s", "run_wall_sum_s", "train_sum_s",
                "model_load_sum_s", "in_run_other_s", "parallelism"):
        if key in ph:
            lines.append(f"| {key} | {ph[key]} |")
    for model, s in (ph.get("pretrain_s") or {}).items():
        lines.append(f"| pretraining {model} | {s} s |")
    for fam, f in (ph.get("by_family") or {}).items():
        lines.append(f"| {fam}: runs, step ms, top-1 forward share when run | {f['runs']}, {f['step_ms_mean']}, "
                     f"{f['top1_forward_share_of_step_when_run']} |")
    return "\n".join(lines + ["", "End of the run's summary:", "", "```", *res["summary_tail"], "```", ""])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--quick", action="store_true", help="a smoke run: --seeds 7 --steps 12 (no target)")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a fresh temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--name", default="first_run")
    a = ap.parse_args(argv)
    if a.quick:
        extra = ["--seeds", "7", "--steps", "12", *extra]
    work = Path(tempfile.mkdtemp(prefix="dlm-first-run-", dir=a.workdir))
    env = dict(os.environ, DLM_TRIAGE_CACHE=str(work / "cache"), DLM_TRIAGE_OUT=str(work / "out"),
               PREFECT_HOME=str(work / "prefect"), PYTHONPATH=os.pathsep.join(
                   [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    cmd = [sys.executable, "-m", "cli", "run", *extra]
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    t1 = time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of the command and every process it waited for (shards, pretraining workers, the Prefect
    # server): on a shared machine far steadier than wall time, which other jobs stretch
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    res = {"command": "dlm-triage run " + " ".join(extra), "returncode": proc.returncode,
           "wall_s": round(t1 - t0, 1), "cpu_s": round(cpu, 1), "target_s": TARGET_S, "aim_s": AIM_S,
           "quick": a.quick,
           "loadavg_after": list(os.getloadavg()), "nproc": os.cpu_count(),
           "phases": phases(work / "out", work / "cache", t0, t1),
           "summary_tail": proc.stdout.splitlines()[-12:], "stderr_tail": proc.stderr.splitlines()[-5:]}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{a.name}.json").write_text(json.dumps(res, indent=1))
    (a.out / f"{a.name}.md").write_text(markdown(res))
    print(json.dumps({k: v for k, v in res.items() if k not in ("stderr_tail",)}, indent=1))
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
