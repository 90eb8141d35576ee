"""Import speed and memory per MB of input: hf-trainer (trainer_state.json) and cells (CSV).

    python benchmarks/bench_import.py [--hf-entries 20000] [--cells-rows 20000] [--out benchmarks/results]

Each figure comes from a fresh child process (peak RSS is a high-water mark): it imports dlm-triage, opens
the DuckDB file, records its peak RSS, then either parses the file (`importers.PARSERS[fmt]`: every row
validated, every run a Python object) or imports it (`importers.import_logs`, what the CLI does), and reports
rows/s and the peak RSS growth. Both formats are measured at the given size and at 4x: a linear parser keeps
rows/s roughly constant (a quadratic one loses ~4x), and the growth of the peak between the two sizes per MB of
input is the memory that scales with the file. Small defaults so it runs in a minute; pass larger sizes for the
figures in the issue (80,000 entries; a 20 MB cells file is ~280,000 rows).
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
from dlm_triage import importers, store  # imported before the baseline: only the parse / import counts
import polars, numpy, duckdb, pyarrow.parquet
what, fmt, path, db = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
kw = {"family": "llada"} if fmt != "cells" else {}
store.connect(db).close()  # DuckDB's own start-up (buffer manager, catalog) is not the file's cost
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if what == "parse":  # the parser API: every run as a Python object
    runs = importers.PARSERS[fmt](path, **kw)
    rows, added = (sum(r.steps.height for r in runs) if runs[0].steps is not None else len(runs)), None
else:  # what `dlm-triage import` does: validate, stage / build, dedupe, insert, commit
    rep = importers.import_logs(db, fmt, [path], **kw)
    rows, added = None, rep.added
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rows": rows, "added": added, "s": dt, "peak_mb": (peak - base) / 1024}))
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


def _child(what: str, fmt: str, path: Path, work: Path) -> dict:
    db = work / f"{path.stem}.{what}.duckdb"
    db.unlink(missing_ok=True)
    out = subprocess.run([sys.executable, "-c", _CHILD, what, fmt, str(path), str(db)], capture_output=True,
                         text=True, check=True,
                         env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(fmt: str, path: Path, work: Path) -> dict:
    """Parse and import, each in a fresh process (peak RSS is a high-water mark: one process per figure)."""
    parse, imp = _child("parse", fmt, path, work), _child("import", fmt, path, work)
    mb = path.stat().st_size / 2**20
    rows = parse["rows"]
    return {"format": fmt, "file_mb": round(mb, 3), "rows": rows, "added": imp["added"],
            "parse_rows_per_s": round(rows / parse["s"]), "parse_s": round(parse["s"], 3),
            "import_rows_per_s": round(rows / imp["s"]), "import_s": round(imp["s"], 3),
            "peak_parse_mb": round(parse["peak_mb"], 1), "peak_import_mb": round(imp["peak_mb"], 1),
            "peak_parse_mb_per_input_mb": round(parse["peak_mb"] / mb, 1),
            "peak_import_mb_per_input_mb": round(imp["peak_mb"] / mb, 1)}


def _slope(small: dict, big: dict, key: str) -> float:
    """Extra peak MB per extra MB of input between two sizes: the cost that grows with the file (fixed costs,
    e.g. a batch buffer or DuckDB's first allocations, cancel out)."""
    return round((big[key] - small[key]) / (big["file_mb"] - small["file_mb"]), 2)


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
        for n in (args.cells_rows, 4 * args.cells_rows):
            f = work / f"cells_{n}.csv"
            write_cells(f, n)
            rows.append(measure("cells", f, work))
    result = {"command": " ".join(["python", "benchmarks/bench_import.py", *(argv or sys.argv[1:])]),
              "machine": platform.platform(), "python": platform.python_version(), "rows": rows}
    for fmt in ("hf-trainer", "cells"):
        small, big = [r for r in rows if r["format"] == fmt]
        result[fmt] = {"rate_ratio_4x_parse": round(big["parse_rows_per_s"] / small["parse_rows_per_s"], 2),
                       "rate_ratio_4x_import": round(big["import_rows_per_s"] / small["import_rows_per_s"], 2),
                       "marginal_parse_mb_per_mb": _slope(small, big, "peak_parse_mb"),
                       "marginal_import_mb_per_mb": _slope(small, big, "peak_import_mb")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "import.json").write_text(json.dumps(result, indent=2) + "\n")
    head = ("| format | input MB | rows | parse rows/s | import rows/s | import s | peak MB parse | peak MB import | "
            "peak MB / input MB (parse) | (import) |")
    md = ["# Import speed and memory", "", f"`{result['command']}` on {result['machine']}", "", head,
          "|---|---|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['format']} | {r['file_mb']} | {r['rows']} | {r['parse_rows_per_s']} | {r['import_rows_per_s']} | "
           f"{r['import_s']} | {r['peak_parse_mb']} | {r['peak_import_mb']} | {r['peak_parse_mb_per_input_mb']} | "
           f"{r['peak_import_mb_per_input_mb']} |" for r in rows]
    md += ["", "| format | rows/s at 4x / at 1x (parse) | (import) | marginal peak MB per input MB (parse) | "
               "(import) |", "|---|---|---|---|---|"]
    md += [f"| {fmt} | {v['rate_ratio_4x_parse']} | {v['rate_ratio_4x_import']} | {v['marginal_parse_mb_per_mb']} | "
           f"{v['marginal_import_mb_per_mb']} |" for fmt, v in ((f, result[f]) for f in ("hf-trainer", "cells"))]
    md += ["", "Linear time: rows/s about constant from 1x to 4x (quadratic: ~0.25). Marginal memory: the peak's "
               "growth per MB of input between the two sizes (the import is what `dlm-triage import` costs; the "
               "parse column is the parser API, which returns every run as a Python object)."]
    (args.out / "import.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
