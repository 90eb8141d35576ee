"""Smoke test of the benchmark runner: `benchmarks/run_all.py --quick` on the cheapest benchmarks (calibration,
ingest) into a temp folder. Asserts the files and that every figure is a number; never a timing target (speed
targets belong in benchmarks/results, not in tests). ~15-30 s on a loaded 2-core machine."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_run_all_quick_writes_summary_with_numeric_figures(tmp_path):
    out, work = tmp_path / "results", tmp_path / "work"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick", "--only", "calibration,ingest",
         "--out", str(out), "--workdir", str(work), "--timeout", "240"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("summary.json", "SUMMARY.md", "calibration.json", "calibration.md", "ingest.json", "ingest.md"):
        assert (out / name).is_file(), name

    summary = json.loads((out / "summary.json").read_text())
    assert summary["quick"] is True
    assert [b["name"] for b in summary["benchmarks"]] == ["calibration", "ingest"]
    assert summary["machine"]["nproc"] >= 1 and summary["versions"]["duckdb"]
    for b in summary["benchmarks"]:
        assert b["status"] == "ok" and b["returncode"] == 0, b
        assert b["command"].startswith("python benchmarks/bench_") and "--out" in b["command"]
        assert b["figures"], b["name"]
        for f in b["figures"]:
            assert isinstance(f["value"], (int, float)) and math.isfinite(f["value"]), f
            assert f["passed"] in (True, False, None) and f["target"], f

    figures = {(f["benchmark"], f["unit"]) for b in summary["benchmarks"] for f in b["figures"]}
    assert ("calibration", "ratio") in figures and ("ingest", "ratio") in figures  # the two headline ratios
    md = (out / "SUMMARY.md").read_text()
    assert "QUICK SMOKE RUN" in md and "| benchmark | figure | measured | target | pass/fail |" in md


def test_run_all_rejects_unknown_benchmark(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--only", "nope",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown ['nope']" in proc.stderr
    assert not (tmp_path / "summary.json").exists()


def _bench_module(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_orchestration_round_interval_is_the_student_t_interval():
    """Checked against the closed form of the t quantile at 2 degrees of freedom: (2p - 1) / sqrt(2 p (1 - p))."""
    bench = _bench_module("bench_orchestration")
    rounds = [0.01, 0.03, 0.08]
    ci = bench.mean_ci(rounds)
    mean = sum(rounds) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in rounds) / 2)
    t = 0.95 / math.sqrt(2 * 0.975 * 0.025)
    assert ci["mean"] == pytest.approx(mean) and ci["sd"] == pytest.approx(sd)
    assert (ci["lo"], ci["hi"]) == pytest.approx((mean - t * sd / math.sqrt(3), mean + t * sd / math.sqrt(3)))
    assert bench.mean_ci([0.02]) is None  # one round: no interval, not a zero-width one
    assert bench.straddles(ci, 0.05) and not bench.straddles(ci, 0.5) and not bench.straddles(None, 0.05)


def test_bench_import_runs_at_a_tiny_size_and_imports_every_row(tmp_path):
    bench = _bench_module("bench_import")
    assert bench.main(["--hf-entries", "20", "--cells-rows", "20", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "import.json").read_text())
    rows = result["rows"]
    assert [r["format"] for r in rows] == ["hf-trainer"] * 2 + ["cells"] * 2
    assert [r["rows"] for r in rows] == [20, 80, 20, 80]
    assert [r["added"] for r in rows] == [1, 1, 20, 80]  # one hf run per file; every cells row is a run
    assert all(r["parse_rows_per_s"] > 0 and r["import_rows_per_s"] > 0 for r in rows)
    assert set(result["cells"]) == {"rate_ratio_4x_parse", "rate_ratio_4x_import", "marginal_parse_mb_per_mb",
                                    "marginal_import_mb_per_mb"}
