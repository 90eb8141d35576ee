"""A deterministic synthetic corpus shaped like the paper's (sec. 4.1, 4.2, 4.5, App. B-D), as `CalibrationInputs`.

Used by the tests, the calibration benchmark and the report's example figures; it is NOT evidence of anything.
Per run a latent instability z (U-shaped in mask ratio, amplified by rank at high mask, plus noise) drives:

- final loss  = family base + 0.3 z + noise;                         (the label is its top decile)
- max grad    = exp(mu_family + slope_family * z + noise)  (log-normal; unstable runs have higher gradients
  where slope > 0; dream is weak and mdlm sign-flipped, so thresholds do not transfer across families);
- trajectories: a per-step gradient level ~35% of the max with one spike reaching the max at an early-ish step
  (exponential, mean 20), loss decaying to the final loss, top-1 frequency starting at ~0.83 +- 0.13 and
  saturating within a few steps (faster for unstable runs, paper 4.5);
- the legacy top-1 detector (first sample at step 11, then every step) fires in every run: at step 11, or later
  (12..33, paper App. D: "shifts 11->33") for the share of runs whose top-1 stays below 0.5 until then; no run
  collapses; a small share diverges (NaN after the divergence step);
- per-matrix gradient masses with one dominant matrix (Gini ~0.5, top share ~0.6) and, at rank 64 / mask 0.95 only, per-token
  CE-gradient masses (Gini ~0.29), as in App. D.

`paper_corpus()` is the 671-configuration LLaDA-family corpus (four cohorts: 144, 120, 395, 12) x 201 steps.
"""

from __future__ import annotations

import zlib
from typing import Mapping

import numpy as np
import polars as pl

from dlm_triage.calinputs import CalibrationInputs, Trajectories
from dlm_triage import series
from dlm_triage.schema import TOP1_CROSS_LEVELS
from dlm_triage.stats import concentration

__all__ = ["FAMILIES", "synthetic_inputs", "paper_corpus"]

RANKS = (4, 8, 16, 32, 64)
MASK_RATIOS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
METHODS = ("lora", "rslora", "dora", "pissa", "nara")

# family -> (cohorts {name: (model_id, share)}, mu (log max-grad), slope on z, base loss, lr, share firing after 11)
FAMILIES: dict[str, dict] = {
    "llada": {"cohorts": {"llada2-mini-full": ("inclusionAI/LLaDA2.0-mini", 144),
                          "llada2-mini-crit12": ("inclusionAI/LLaDA2.0-mini", 120),
                          "llada-method-comp": ("GSAI-ML/LLaDA-8B-Instruct", 395),
                          "llada2.1-mini": ("inclusionAI/LLaDA2.1-mini", 12)},
              "mu": 2.6, "slope": 0.75, "loss": 1.2, "lr": 1e-4, "fire_late": 0.05},
    "dream": {"cohorts": {"dream-7b-boundary": ("Dream-org/Dream-v0-Base-7B", 100)},
              "mu": 0.4, "slope": 0.35, "loss": 1.8, "lr": 2e-6, "fire_late": 0.1},
    "mdlm": {"cohorts": {"mdlm-owt-boundary": ("kuleshov-group/mdlm-owt", 45)},
             "mu": 3.6, "slope": -0.25, "loss": 3.1, "lr": 1e-4, "fire_late": 0.3},
    "tiny": {"cohorts": {"tiny-local": ("tiny", 60)}, "mu": 1.0, "slope": 0.8, "loss": 2.0, "lr": 3e-3,
             "fire_late": 0.0},
}


def _family_frame(family: str, n: int, n_steps: int, seed: int, diverged_fraction: float):
    spec = FAMILIES[family]
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(family.encode())]))
    sizes = np.array([c[1] for c in spec["cohorts"].values()], float)
    counts = np.floor(sizes / sizes.sum() * n).astype(int)
    counts[np.argmax(sizes)] += n - counts.sum()
    cohort_names = list(spec["cohorts"])
    cohort = np.repeat(np.arange(len(cohort_names)), counts)
    i = np.arange(n)
    cell = i // 3  # three seeds per configuration cell
    rank = np.array(RANKS)[cell % len(RANKS)]
    mask = np.array(MASK_RATIOS)[(cell // len(RANKS)) % len(MASK_RATIOS)]
    method = np.where(np.array(cohort_names)[cohort] == "llada-method-comp",
                      np.array(METHODS)[(cell // (len(RANKS) * len(MASK_RATIOS))) % len(METHODS)], "lora")
    seed_col = i % 3
    # latent instability: U-shape in mask ratio, high-mask arm amplified by rank (paper 4.2)
    z = (6.0 * (mask - 0.35) ** 2 + 0.25 * (mask > 0.7) * np.log2(rank / 4) / 4 + rng.normal(0, 0.55, n))
    final = spec["loss"] + 0.3 * z + rng.normal(0, 0.12, n)
    log_g = spec["mu"] + spec["slope"] * z + rng.normal(0, 0.45, n)
    G = np.exp(log_g)
    T = n_steps - 1
    t = np.arange(n_steps)
    # gradients: a level below the max plus one spike at the max
    level = G[:, None] * 0.35 * np.exp(rng.normal(0, 0.25, (n, n_steps))) * (1 + 0.5 * np.exp(-t / 20.0))
    spike = np.minimum(rng.exponential(20.0, n).astype(int), T)
    grad = np.minimum(level, G[:, None] * 0.999)
    grad[i, spike] = G
    # loss: decays from ~step-0 loss to the final loss
    l0 = final + 1.5 + rng.normal(0, 0.2, n)
    tau = rng.uniform(8, 30, n)
    loss = final[:, None] + (l0 - final)[:, None] * np.exp(-t / tau[:, None]) + rng.normal(0, 0.04, (n, n_steps))
    loss[:, T] = final
    # top-1: ~0.83 at step 0, saturating within a few steps, faster for unstable runs
    s0 = np.clip(rng.normal(0.83, 0.13, n), 0.51, 0.995)
    tau1 = np.clip(3.0 * np.exp(-0.25 * z) * rng.uniform(0.6, 1.4, n), 0.5, None)
    top1 = 1 - (1 - s0)[:, None] * np.exp(-t / tau1[:, None])
    top1 = np.clip(top1 + rng.normal(0, 0.004, (n, n_steps)), 0.0, 1.0)
    top1[:, 0] = s0
    # divergence: a few of the most unstable runs, NaN after the bad step
    n_div = int(round(diverged_fraction * n))
    div = np.zeros(n, bool)
    div_step = np.full(n, -1)
    if n_div:
        cand = np.argsort(-z)[: max(4 * n_div, n_div)]
        pick = rng.choice(cand, n_div, replace=False)
        div[pick] = True
        div_step[pick] = rng.integers(20, T, n_div) if T > 21 else T
        for r in pick:
            d = div_step[r]
            grad[r, d] = G[r] * 40.0
            loss[r, d] = np.nan
            grad[r, d + 1:] = np.nan
            loss[r, d + 1:] = np.nan
            top1[r, d + 1:] = np.nan
    max_grad = np.nanmax(grad, axis=1)
    final_loss = np.where(div, np.nan, loss[:, T])
    # late firing: top-1 dips below 0.5 after step 0 until a step in 12..33 (deterministic in the row: no extra draw)
    # (only runs that reach that step: the warning fires in every run, paper 4.1 "816/816")
    late = (rng.random(n) < spec["fire_late"]) & ~div
    late_step = np.minimum(12 + (i * 7) % 22, T)
    below = late[:, None] & (t[None, :] >= 1) & (t[None, :] < late_step[:, None])  # step 0 keeps its ~0.83
    top1 = np.where(below & np.isfinite(top1), np.minimum(top1, 0.3 + 0.15 * top1), top1)
    # the run summary's definitions (series.py), over all runs at once
    cross = {}
    for lvl in TOP1_CROSS_LEVELS:
        first = series.first_crossing_steps(top1, lvl)
        cross[lvl] = np.where(first >= 0, first, np.nan)
    fire_step = series.legacy_fire_steps(top1)
    fired = fire_step >= 0
    # gradient concentration: 8 adapter matrices (q,k,v,o x A,B of one layer), one dominant (~60% of the mass)
    mats = np.exp(rng.normal(0, 0.5, (n, 8)))
    mats[:, 0] *= rng.uniform(6, 18, n)
    conc = concentration(mats)
    tok_logged = (rank == 64) & (mask == 0.95)
    toks = concentration(np.exp(rng.normal(0, 0.53, (n, 256))))
    names = np.array(cohort_names)[cohort]
    models = np.array([spec["cohorts"][c][0] for c in cohort_names])[cohort]
    run_ids = [f"{family}-{k:04d}-{zlib.crc32(f'{family}{k}{seed}'.encode()):08x}" for k in range(n)]
    n_logged = np.where(div, div_step + 1, n_steps)
    df = pl.DataFrame({
        "run_id": run_ids, "source": ["synthetic"] * n, "family": [family] * n, "model_id": models.tolist(),
        "cohort": names.tolist(), "method": method.tolist(), "rank": rank.astype(np.int64),
        "alpha": np.full(n, 16.0), "mask_ratio": mask, "learning_rate": np.full(n, spec["lr"]),
        "seed": seed_col.astype(np.int64), "steps": np.full(n, T, np.int64),
        "status": np.where(div, "diverged", "completed").tolist(),
        "final_loss": final_loss, "max_grad_norm": max_grad, "top1_step0": s0,
        "top1_warning_detected": fired, "top1_fire_step": np.where(fired, fire_step, np.nan),
        "top1_cross_050": cross[0.5], "top1_cross_080": cross[0.8], "top1_cross_095": cross[0.95],
        "collapsed": np.zeros(n, bool), "diverged": div,
        "diverged_at_step": np.where(div, div_step, -1).astype(np.int64),
        "grad_gini": conc.gini, "grad_top1_share": conc.top1_share,
        "ce_grad_gini": np.where(tok_logged, toks.gini, np.nan),
        "ce_grad_top1_share": np.where(tok_logged, toks.top1_share, np.nan),
        "n_steps": n_logged.astype(np.int64),
    }, nan_to_null=True)
    df = df.with_columns(pl.when(pl.col("diverged_at_step") < 0).then(None).otherwise(pl.col("diverged_at_step"))
                         .alias("diverged_at_step"))
    return df, run_ids, loss, grad, top1


def synthetic_inputs(families: Mapping[str, int] | None = None, *, n_steps: int = 201, seed: int = 0,
                     with_traj: bool = True, diverged_fraction: float = 0.005) -> CalibrationInputs:
    """{family: n runs} (default: the paper's 816 DLM configurations: llada 671, dream 100, mdlm 45)."""
    fams = dict(families) if families is not None else {"llada": 671, "dream": 100, "mdlm": 45}
    for f, k in fams.items():
        if f not in FAMILIES:
            raise ValueError(f"unknown synthetic family {f!r}; choose from {sorted(FAMILIES)}")
        if int(k) != k or k < 1:
            raise ValueError(f"`families[{f!r}]` must be a positive integer, got {k!r}")
    if int(n_steps) != n_steps or n_steps < 2:
        raise ValueError(f"`n_steps` must be an integer >= 2, got {n_steps!r}")
    parts = [_family_frame(f, int(k), int(n_steps), seed, diverged_fraction) for f, k in fams.items()]
    runs = pl.concat([p[0] for p in parts], how="vertical_relaxed")
    traj = None
    if with_traj:
        traj = Trajectories(run_ids=[r for p in parts for r in p[1]], loss=np.vstack([p[2] for p in parts]),
                            grad_norm=np.vstack([p[3] for p in parts]), top1=np.vstack([p[4] for p in parts]))
    return CalibrationInputs(runs=runs, traj=traj)


def paper_corpus(*, seed: int = 0, n_steps: int = 201, with_traj: bool = True) -> CalibrationInputs:
    """The benchmark corpus: 671 LLaDA-family configurations (four cohorts) x 201 steps (0..200)."""
    return synthetic_inputs({"llada": 671}, n_steps=n_steps, seed=seed, with_traj=with_traj)
