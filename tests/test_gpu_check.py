"""benchmarks/gpu_check.py stays runnable: its CPU dry run trains through the real code path and writes every
figure; without CUDA the real check refuses with its message and exit status 2, writing nothing. The GPU
numbers themselves are never asserted here (benchmarks/results/gpu.json holds them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def run(*args, env=None, timeout=600):
    e = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=e)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA refusal")
def test_without_cuda_it_says_why_exits_2_and_writes_nothing(tmp_path):
    out = tmp_path / "gpu.json"
    proc = run("--out", str(out))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "no CUDA device here" in proc.stderr and "--device cpu --dry-run" in proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_cpu_dry_run_trains_and_writes_every_figure(tmp_path):
    out = tmp_path / "gpu.json"
    env = {k: v for k, v in os.environ.items() if k != "DLM_TRIAGE_REMOTE_CODE"}
    env["DLM_TRIAGE_REMOTE_CODE"] = ""  # unset for the script: the remote families must be skipped with why
    proc = run("--device", "cpu", "--dry-run", "--out", str(out), "--only",
               "llama_1b,llama_1b_checkpointing_accum,llada,diffusion_gemma", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["dry_run"] is True and "DRY RUN" in data["note"] and data["steps_per_run"] == 3
    rows = {r["name"]: r for r in data["results"]}
    assert set(rows) == {"llama_1b", "llama_1b_checkpointing_accum", "diffusion_gemma"}  # shipped natively
    for r in rows.values():
        assert r["status"] == "completed" and r["loss_finite"], r
        for key in ("model_load_s", "train_s", "step_ms_median", "monitor_overhead_pct", "load_share_of_run"):
            assert isinstance(r[key], float) and r[key] >= 0, (key, r[key])
        assert r["second_run_resident"] is True and r["second_run_load_s"] == 0.0
        assert r["n_params"] > 0 and r["dtype"] == "float32" and r["device"] == "cpu"
        assert r["host_syncs_per_step"] is None and "no CUDA" in r["host_syncs_counted_by"]
    acc = rows["llama_1b_checkpointing_accum"]
    assert acc["gradient_checkpointing"] == "hf" and acc["grad_accum_steps"] == 2 and acc["batch_size"] == 2
    skipped = {s["name"]: s["skipped"] for s in data["skipped"]}
    assert "DLM_TRIAGE_REMOTE_CODE is not set" in skipped["llada"] and "diffusion_gemma" not in skipped
