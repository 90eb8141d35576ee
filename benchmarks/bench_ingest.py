"""Ingestion throughput: store.ingest_runs vs DuckDB's own read_parquet into a table, same run directories.

    python benchmarks/bench_ingest.py [--runs 5000] [--steps 200] [--workdir DIR] [--repeat 2]

Generates `--runs` synthetic run directories of `--steps`+1 rows each (through runlog.write_run_atomic, the
trainer's writer; reused from --workdir when already there), then times, each on a fresh database file:

- baseline: one `INSERT INTO steps SELECT <run_id from the path>, step, ... FROM read_parquet([all files])`
  into the same `steps` table (primary key included): DuckDB reading Parquet natively, no validation;
- ingest_runs: validation of every directory (runlog.read_runs_batch, read_run's rules: manifest keys, sha256,
  row count, dtypes, nulls, contiguous steps, finiteness) + the `runs` rows + all steps, in one transaction.

Best of `--repeat`. Writes benchmarks/results/ingest.json and ingest.md (machine, versions, command).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
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


class Clock:
    """Wall and CPU seconds of a block; CPU = this process (all threads) + reaped child processes, so DuckDB's
    threads (and any child process) count. CPU time is the robust number on a shared machine."""

    def __enter__(self) -> "Clock":
        self.w0, self.c0 = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.w0, self._cpu() - self.c0

    @staticmethod
    def _cpu() -> float:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def baseline(db: Path, dirs: list[Path]) -> Clock:
    con = store.connect(db)  # same schema (steps primary key) as ingest_runs writes into
    files = [str(d / STEPLOG_FILENAME) for d in dirs]
    with Clock() as c:
        con.execute(
            "INSERT INTO steps SELECT regexp_extract(filename, '([^/]+)/[^/]+$', 1) AS run_id, step, loss, "
            "grad_norm, max_grad_norm, top1_freq, mask_ratio, lr FROM read_parquet(?, filename = true)", [files])
    con.close()
    return c


def ingest(db: Path, root: Path) -> tuple[Clock, store.IngestReport]:
    with Clock() as c:
        report = store.ingest_runs(db, root)
    return c, report


def read_run_only(dirs: list[Path]) -> float:
    """The one-file validator (runlog.read_run) over every directory, one process: what ingestion cost before
    the batched validator."""
    from dlm_triage.runlog import read_run

    t0 = time.perf_counter()
    for d in dirs:
        read_run(d)
    return time.perf_counter() - t0


def read_runs_only(dirs: list[Path]) -> Clock:
    """The batched validation alone (runlog.read_runs_batch), as ingest_runs runs it."""
    from dlm_triage.runlog import RunLogError, read_runs_batch

    with Clock() as c:
        batch = read_runs_batch(dirs)
    if any(isinstance(r, RunLogError) for r in batch.results):
        raise SystemExit("read_runs_batch rejected a generated run")
    if batch.separate:
        raise SystemExit(f"{len(batch.separate)} step logs missed the bulk path (footer not recognised)")
    return c


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5000)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "dlm-triage-bench-ingest")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    dirs = generate(args.workdir / "runs", args.runs, args.steps)
    gen_s = time.perf_counter() - t0
    n_rows = args.runs * (args.steps + 1)
    print(f"{len(dirs)} run directories, {n_rows} step rows ({gen_s:.1f} s to generate or find)", flush=True)

    base: list[Clock] = []
    ing: list[Clock] = []
    report = None
    for rep in range(args.repeat):  # interleaved, so both paths see the same machine load
        for name in ("base.duckdb", "ingest.duckdb"):
            (args.workdir / name).unlink(missing_ok=True)
        base.append(baseline(args.workdir / "base.duckdb", dirs))
        c, report = ingest(args.workdir / "ingest.duckdb", args.workdir / "runs")
        ing.append(c)
        if report.added != args.runs or report.quarantined:
            raise SystemExit(f"ingest_runs did not add every run: {report.summary()}")
        print(f"repeat {rep}: read_parquet {base[-1].wall:.2f} s wall / {base[-1].cpu:.2f} s CPU, "
              f"ingest_runs {c.wall:.2f} s wall / {c.cpu:.2f} s CPU", flush=True)
    con = duckdb.connect(str(args.workdir / "ingest.duckdb"), read_only=True)
    stored = con.execute("SELECT count(*) FROM steps").fetchall()[0][0]
    con.close()
    if stored != n_rows:
        raise SystemExit(f"ingest stored {stored} step rows, expected {n_rows}")

    b, i = min(c.wall for c in base), min(c.wall for c in ing)
    pair_ratios = [round(y.wall / x.wall, 2) for x, y in zip(base, ing)]
    cpu_ing = ing  # ingest_runs validates in its own process: its CPU (DuckDB's threads included) is all here
    bc, ic = min(c.cpu for c in base), min(c.cpu for c in cpu_ing)
    pair_cpu_ratios = [round(y.cpu / x.cpu, 2) for x, y in zip(base, ing)]
    vb = min((read_runs_only(dirs) for _ in range(args.repeat)), key=lambda c: c.wall)
    v = read_run_only(dirs)
    result = {
        "benchmark": "ingest", "n_runs": args.runs, "rows_per_run": args.steps + 1, "n_step_rows": n_rows,
        "baseline_read_parquet_s": round(b, 3), "ingest_runs_s": round(i, 3),
        "baseline_rows_per_s": round(n_rows / b), "ingest_rows_per_s": round(n_rows / i),
        "ratio_ingest_over_baseline": round(i / b, 2), "ratio_per_repeat": pair_ratios,
        "baseline_cpu_s": round(bc, 3), "ingest_cpu_s": round(ic, 3), "ratio_cpu": round(ic / bc, 2),
        "ratio_cpu_per_repeat": pair_cpu_ratios,
        "target_ratio": 2.0, "within_target": i / b <= 2.0,
        "read_runs_batch_s": round(vb.wall, 3), "read_runs_batch_cpu_s": round(vb.cpu, 3),
        "read_run_only_serial_s": round(v, 3), "ingest_workers": 1,
        "all_times_s": {"baseline_wall": [round(c.wall, 3) for c in base],
                        "ingest_wall": [round(c.wall, 3) for c in ing],
                        "baseline_cpu": [round(c.cpu, 3) for c in base],
                        "ingest_cpu": [round(c.cpu, 3) for c in cpu_ing]},
        "load_average_at_end": os.getloadavg(),
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
        "| path | wall s (best) | rows/s | CPU s (best) |",
        "|---|---|---|---|",
        f"| DuckDB `read_parquet([...])` into `steps` (no validation) | {b:.2f} | {n_rows / b:,.0f} | {bc:.2f} |",
        f"| `store.ingest_runs` (batched read_run validation + runs rows + steps, one transaction) | {i:.2f} | "
        f"{n_rows / i:,.0f} | {ic:.2f} |",
        "",
        f"Ratio ingest_runs / read_parquet: **{i / b:.2f}x wall** (per repeat: {pair_ratios}), "
        f"**{ic / bc:.2f}x CPU** (per repeat: {pair_cpu_ratios}); target <= 2x wall: "
        f"{'met' if i / b <= 2.0 else 'NOT met'}. ingest_runs validates in its own process.",
        "",
        f"Validation: `runlog.read_runs_batch` over all {len(dirs)} directories takes {vb.wall:.2f} s wall / "
        f"{vb.cpu:.2f} s CPU ({vb.wall / len(dirs) * 1e3:.2f} ms per run: per file the manifest, the step log's "
        "bytes read once + sha256, row count and schema from the Parquet footer; then, in worker threads while the "
        "next files are read, one polars read per 1024 buffers and read_run's row rules as one vectorised pass "
        "with per-file sums). The one-file `runlog.read_run` "
        f"over the same directories takes {v:.2f} s ({v / len(dirs) * 1e3:.2f} ms per run).",
        f"The machine is shared (load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs): "
        "compare the two rows of one run, and prefer the CPU column.",
        "",
    ]
    if i / b > 2.0:
        md += [
            "Why the target is not met: what remains per run is Python work DuckDB's scan does not do (manifest "
            "JSON + key/type checks, RunConfig validation, the `runs` row, sha256 of the step log), plus the "
            "polars parse of all step logs and the Arrow insert; see the validation line above for its share.",
            "",
        ]
    md += [
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
