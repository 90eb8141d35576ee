"""Synthetic run directories for storage tests, written through runlog.write_run_atomic (the one writer), and
`db_rows` to read a stored database back.

Values are deterministic in (run config, `unstable`): a stable run's grad norm decays, an unstable one's grows;
top-1 climbs above 0.5 early when `top1_high` is set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from dlm_triage import runsummary, schema, store
from dlm_triage.config import RunConfig
from dlm_triage.runlog import write_run_atomic

MATRIX_NAMES = ["q.lora_A", "q.lora_B", "v.lora_A", "v.lora_B"]


def make_steps(cfg: RunConfig, *, n_rows: int | None = None, unstable: bool = False, top1_high: bool = False,
               diverge: bool = False) -> pl.DataFrame:
    n = cfg.steps + 1 if n_rows is None else n_rows
    rng = np.random.default_rng(cfg.seed * 1009 + cfg.rank)
    t = np.arange(n, dtype=np.float64)
    loss = 3.0 * np.exp(-t / 50) + 0.05 * rng.random(n) + (0.01 * t if unstable else 0.0)
    grad = (0.5 + 0.05 * t if unstable else 1.0 * np.exp(-t / 40) + 0.1) * (1 + 0.1 * rng.random(n))
    if diverge:
        loss[-1], grad[-1] = np.nan, np.inf
    top1 = np.clip((0.7 if top1_high else 0.2) + 0.01 * t / max(n, 1) + 0.01 * rng.random(n), 0, 1)
    mats = [list(np.abs(rng.normal(size=len(MATRIX_NAMES)))) for _ in range(n)]
    if diverge:
        mats[-1] = [float("nan")] * len(MATRIX_NAMES)
    return pl.DataFrame({
        "step": np.arange(n, dtype=np.int32), "loss": loss, "grad_norm": grad,
        "max_grad_norm": runsummary.max_grad_so_far(grad, diverged=diverge), "top1_freq": top1,
        "mask_ratio": np.full(n, cfg.mask_ratio), "n_masked": np.full(n, 16, dtype=np.int64),
        "lr": np.full(n, cfg.learning_rate), "clipped": grad > cfg.clip_grad_norm,
        "step_time_ms": np.full(n, 10.0), "monitor_time_ms": np.full(n, 0.1), "top1_forward_ms": np.zeros(n),
        "matrix_grad_norms": mats,
    })


def make_manifest(cfg: RunConfig, steps: pl.DataFrame, *, status: str = "completed",
                  routed: bool = False) -> dict:
    summary = runsummary.summarise(steps, status=status)  # the trainer's summary of the same log
    return {
        "schema_version": schema.MANIFEST_SCHEMA_VERSION, "run_id": cfg.run_id, "config": cfg.to_dict(),
        "config_hash": cfg.config_hash, "status": status, "status_reason": None, "code_version": "test",
        "packages": {}, "seed": cfg.seed, "device": "cpu", "dtype": "float32", "hostname": "test",
        "started_at": "2026-01-01T00:00:00", "finished_at": "2026-01-01T00:01:00", "wall_time_s": 60.0,
        "n_steps_logged": steps.height,
        **{k: getattr(summary, k) for k in runsummary.ROW_FIELDS if k != "n_steps"}, "top1_source": "clean",
        "collapse_definition": schema.COLLAPSE_DEFINITION,
        "diverged_at_step": steps.height - 1 if status == "diverged" else None,
        "routed_for_inspection": routed,
        "routing": {"k": 25, "threshold": 1.0, "max_grad_up_to_k": 2.0} if routed else None,
        # fixed concentration values (not the log's): storage tests read these exact numbers back
        "matrix_names": MATRIX_NAMES, "grad_gini": 0.3, "grad_top1_share": 0.4,
        "steplog": schema.STEPLOG_FILENAME, "steplog_sha256": "", "adapter_path": None, "monitor_overhead": None,
    }


def make_run(runs_dir: Path, cfg: RunConfig | None = None, *, n_rows: int | None = None, unstable: bool = False,
             top1_high: bool = False, status: str = "completed", routed: bool = False, **cfg_changes) -> Path:
    """Write one complete run directory <runs_dir>/<run_id>/ and return it."""
    cfg = (cfg or RunConfig(steps=20)).replace(**cfg_changes) if cfg_changes else (cfg or RunConfig(steps=20))
    steps = make_steps(cfg, n_rows=n_rows, unstable=unstable, top1_high=top1_high, diverge=status == "diverged")
    run_dir = Path(runs_dir) / cfg.run_id
    write_run_atomic(run_dir, steps, make_manifest(cfg, steps, status=status, routed=routed))
    return run_dir


def make_sweep(runs_dir: Path, n: int, *, steps: int = 20, family: str = "tiny", unstable_every: int = 4,
               seed_offset: int = 0, **base) -> list[Path]:
    """n runs differing by seed (seed_offset + i) and rank, every `unstable_every`-th unstable."""
    out = []
    for i in range(n):
        cfg = RunConfig(family=family, steps=steps, seed=seed_offset + i, rank=(4, 8, 16)[i % 3], **base)
        out.append(make_run(runs_dir, cfg, unstable=(i % unstable_every == 0)))
    return out


def db_rows(db: Path, sql: str) -> list[tuple]:
    """The rows of `sql` on the database at `db`, through a read-only connection closed afterwards."""
    con = store.connect(db, read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()
