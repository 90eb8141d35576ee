"""Import speed and memory per MB of input: hf-trainer (trainer_state.json) and cells (CSV).

    python benchmarks/bench_import.py [--hf-entries 20000] [--cells-rows 20000] [--out benchmarks/results]

Each measurement runs in a fresh child process: it imports dlm-triage, records its peak RSS, parses the file
(`importers.PARSERS[fmt]`, every row validated, the runs/steps rows built) and imports it into a new DuckDB file,
then reports rows/s and the peak RSS growth in MB per MB of input. hf-trainer is measured at the given size and
at 4x: a linear parser keeps rows/s roughly constant (a quadratic one loses ~4x). Small defaults so it runs in
seconds; pass larger sizes for the figures in the issue (80,000 entries; a 20 MB cells file).
Writes benchmarks/results/import.json and import.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from dlm_triage import importers, store  # imported before the baseline: only the parse counts
import polars, numpy, duckdb
fmt, path, db = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
kw = {"family": "llada"} if fmt != "cells" else {}
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
runs = importers.PARSERS[fmt](path, **kw)
t_parse = time.perf_counter() - t0
peak_parse = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rows = sum(r.steps.height for r in runs) if runs[0].steps is not None else len(runs)
del runs
t1 = time.perf_counter()
rep = importers.import_logs(db, fmt, [path], **kw)
t_import = time.perf_counter() - t1
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rows": rows, "parse_s": t_parse, "import_s": t_import, "added": rep.added,
                  "peak_parse_mb": (peak_parse - base) / 1024, "peak_import_mb": (peak - base) / 1024}))
"""


def write_hf(path: Path, n: int) -> None:
    hist = [{"epoch": i / n, "grad_norm": 1.0 + (i % 97) / 100, "learning_rate": 1e-4, "loss": 3.0 - i / (2 * n),
             "step": i + 1} for i in range(n)]
    path.write_text(json.dumps({"global_step": n, "max_steps": n, "log_history": hist}, indent=2))


def write_cells(path: Path, n: int) -> None:
    lines = ["family,model_name,rank,rho,seed,lr,top1_fired,top1_fire_step,collapsed,max_grad_norm,final_loss"]
    lines += [f"llada,GSAI-ML/LLaDA-8B-Base,{(4, 8, 16)[i % 3]},0.{1 + i % 8},{i},1e-4,True,{11 + i % 5},False,"
              f"{1.0 + (i % 113) / 10:.4f},{1.0 + (i % 71) / 100:.4f}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")


def measure(fmt: str, path: Path, work: Path) -> dict:
    db = work / f"{path.stem}.duckdb"
    db.unlink(missing_ok=True)
    out = subprocess.run([sys.executable, "-c", _CHILD, fmt, str(path), str(db)], capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    r = json.loads(out.stdout.strip().splitlines()[-1])
    mb = path.stat().st_size / 2**20
    return {"format": fmt, "file_mb": round(mb, 3), "rows": r["rows"], "added": r["added"],
            "parse_rows_per_s": round(r["rows"] / r["parse_s"]), "parse_s": round(r["parse_s"], 3),
            "import_s": round(r["import_s"], 3),
            "peak_parse_mb_per_input_mb": round(r["peak_parse_mb"] / mb, 1),
            "peak_import_mb_per_input_mb": round(r["peak_import_mb"] / mb, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hf-entries", type=int, default=20000)
    ap.add_argument("--cells-rows", type=int, default=20000)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        for n in (args.hf_entries, 4 * args.hf_entries):
            f = work / f"trainer_state_{n}.json"
            write_hf(f, n)
            rows.append(measure("hf-trainer", f, work))
        f = work / "cells.csv"
        write_cells(f, args.cells_rows)
        rows.append(measure("cells", f, work))
    hf = [r for r in rows if r["format"] == "hf-trainer"]
    result = {"command": " ".join(["python", "benchmarks/bench_import.py", *(argv or sys.argv[1:])]),
              "machine": platform.platform(), "python": platform.python_version(), "rows": rows,
              "hf_rate_ratio_4x": round(hf[1]["parse_rows_per_s"] / hf[0]["parse_rows_per_s"], 2)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "import.json").write_text(json.dumps(result, indent=2) + "\n")
    head = "| format | input MB | rows | parse rows/s | parse s | import s | peak MB / input MB (parse) | (import) |"
    md = ["# Import speed and memory", "", f"`{result['command']}` on {result['machine']}", "", head,
          "|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['format']} | {r['file_mb']} | {r['rows']} | {r['parse_rows_per_s']} | {r['parse_s']} | "
           f"{r['import_s']} | {r['peak_parse_mb_per_input_mb']} | {r['peak_import_mb_per_input_mb']} |" for r in rows]
    md += ["", f"hf-trainer rows/s at 4x the entries / at 1x: {result['hf_rate_ratio_4x']} (linear: ~1; "
               "quadratic: ~0.25)."]
    (args.out / "import.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
