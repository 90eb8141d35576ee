"""Ingestion throughput: store.ingest_runs vs DuckDB's own read_parquet into a table, same run directories.

    python benchmarks/bench_ingest.py [--runs 5000] [--steps 200] [--workdir DIR] [--repeat 2]

Generates `--runs` synthetic run directories of `--steps`+1 rows each (through runlog.write_run_atomic, the
trainer's writer; reused from --workdir when already there), then times, each on a fresh database file:

- baseline: one `INSERT INTO steps SELECT <run_id from the path>, step, ... FROM read_parquet([all files])`
  into the same `steps` table (primary key included): DuckDB reading Parquet natively, no validation;
- ingest_runs: validation of every directory (runlog.read_run: manifest keys, sha256, dtypes, nulls,
  finiteness) + the `runs` rows + all steps, in one transaction.

Best of `--repeat`. Writes benchmarks/results/ingest.json and ingest.md (machine, versions, command).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dlm_triage import __version__, store  # noqa: E402
from dlm_triage.config import RunConfig  # noqa: E402
from dlm_triage.schema import STEPLOG_FILENAME  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def generate(root: Path, n_runs: int, steps: int) -> list[Path]:
    from runfactory import make_run

    marker = root / f".complete-{n_runs}x{steps}"
    if marker.exists():
        return sorted(p for p in root.iterdir() if p.is_dir())
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    ranks, ratios = (4, 8, 16, 32), (0.15, 0.3, 0.5, 0.7, 0.85)
    for i in range(n_runs):
        cfg = RunConfig(steps=steps, seed=i, rank=ranks[i % 4], mask_ratio=ratios[(i // 4) % 5])
        make_run(root, cfg, unstable=(i % 7 == 0))
    marker.touch()
    return sorted(p for p in root.iterdir() if p.is_dir())


def baseline(db: Path, dirs: list[Path]) -> float:
    con = store.connect(db)  # same schema (steps primary key) as ingest_runs writes into
    files = [str(d / STEPLOG_FILENAME) for d in dirs]
    t0 = time.perf_counter()
    con.execute(
        "INSERT INTO steps SELECT regexp_extract(filename, '([^/]+)/[^/]+$', 1) AS run_id, step, loss, grad_norm, "
        "max_grad_norm, top1_freq, mask_ratio, lr FROM read_parquet(?, filename = true)", [files])
    dt = time.perf_counter() - t0
    con.close()
    return dt


def ingest(db: Path, root: Path, workers: int | None) -> tuple[float, store.IngestReport]:
    t0 = time.perf_counter()
    report = store.ingest_runs(db, root, workers=workers)
    return time.perf_counter() - t0, report


def read_run_only(dirs: list[Path]) -> float:
    """The validation alone (runlog.read_run, one process): where ingest_runs spends most of its time."""
    from dlm_triage.runlog import read_run

    t0 = time.perf_counter()
    for d in dirs:
        read_run(d)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5000)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "dlm-triage-bench-ingest")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--workers", type=int, default=None,
                    help="validation processes for ingest_runs (default: its own choice)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    dirs = generate(args.workdir / "runs", args.runs, args.steps)
    gen_s = time.perf_counter() - t0
    n_rows = args.runs * (args.steps + 1)
    print(f"{len(dirs)} run directories, {n_rows} step rows ({gen_s:.1f} s to generate or find)", flush=True)

    base_times, ingest_times = [], []
    report = None
    for rep in range(args.repeat):
        for name in ("base.duckdb", "ingest.duckdb"):
            (args.workdir / name).unlink(missing_ok=True)
        base_times.append(baseline(args.workdir / "base.duckdb", dirs))
        dt, report = ingest(args.workdir / "ingest.duckdb", args.workdir / "runs", args.workers)
        ingest_times.append(dt)
        if report.added != args.runs or report.quarantined:
            raise SystemExit(f"ingest_runs did not add every run: {report.summary()}")
        print(f"repeat {rep}: read_parquet {base_times[-1]:.2f} s, ingest_runs {dt:.2f} s", flush=True)
    con = duckdb.connect(str(args.workdir / "ingest.duckdb"), read_only=True)
    stored = con.execute("SELECT count(*) FROM steps").fetchall()[0][0]
    con.close()
    if stored != n_rows:
        raise SystemExit(f"ingest stored {stored} step rows, expected {n_rows}")

    b, i = min(base_times), min(ingest_times)
    v = read_run_only(dirs)
    workers = args.workers if args.workers is not None else (
        min(os.cpu_count() or 1, 4) if len(dirs) >= store.PARALLEL_MIN_RUNS else 1)
    result = {
        "benchmark": "ingest", "n_runs": args.runs, "rows_per_run": args.steps + 1, "n_step_rows": n_rows,
        "baseline_read_parquet_s": round(b, 3), "ingest_runs_s": round(i, 3),
        "baseline_rows_per_s": round(n_rows / b), "ingest_rows_per_s": round(n_rows / i),
        "read_run_only_serial_s": round(v, 3), "ingest_workers": workers,
        "ratio_ingest_over_baseline": round(i / b, 2), "target_ratio": 2.0, "within_target": i / b <= 2.0,
        "all_times_s": {"baseline": [round(x, 3) for x in base_times],
                        "ingest_runs": [round(x, 3) for x in ingest_times]},
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "versions": {"dlm_triage": __version__, "duckdb": duckdb.__version__, "polars": pl.__version__,
                     "pyarrow": pyarrow.__version__, "numpy": np.__version__},
        "command": "python benchmarks/bench_ingest.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ingest.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "# Ingestion benchmark",
        "",
        f"`{result['command'].strip()}`: {args.runs} synthetic run directories x {args.steps + 1} steps = "
        f"{n_rows} step rows; best of {args.repeat}, each on a fresh DuckDB file.",
        "",
        "| path | seconds | rows/s |",
        "|---|---|---|",
        f"| DuckDB `read_parquet([...])` into `steps` (no validation) | {b:.2f} | {n_rows / b:,.0f} |",
        f"| `store.ingest_runs` (read_run validation + runs rows + steps, one transaction) | {i:.2f} | "
        f"{n_rows / i:,.0f} |",
        "",
        f"Ratio ingest_runs / read_parquet: **{i / b:.2f}x** (target <= 2x: "
        f"{'met' if i / b <= 2.0 else 'NOT met'}). ingest_runs validated in {workers} process(es).",
        "",
        f"Where the time goes: `runlog.read_run` over all {len(dirs)} directories in one process takes {v:.2f} s "
        f"({v / len(dirs) * 1e3:.2f} ms per run: manifest, sha256, Parquet read and per-column checks).",
        "All times are wall-clock on a machine shared with other jobs: compare the two rows of one run only.",
        "",
        f"Machine: {result['machine']['platform']}, {result['machine']['cpu_count']} CPUs (shared), "
        f"Python {result['machine']['python']}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + ".",
        "",
    ]
    (args.out / "ingest.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
