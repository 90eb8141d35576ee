"""Monitor overhead per training step on the tiny family: monitors on vs off, clean-batch top-1 apart.

Two measurements:
1. In-run timers (one `train_run`): `monitor_time_ms` (grad norm + per-matrix norms + the host sync that reads
   them) against `step_time_ms`; the clean-batch top-1 forward is timed separately (`top1_forward_ms`) and
   reported with its cadence (`top1_every`), amortised per step.
2. A/B wall clock on the same setup: the trainer's step (monitors on, top-1 off) against a bare step (forward,
   backward, clip_grad_norm_, AdamW: what a trainer without monitors does), interleaved in blocks so machine
   load drifts hit both arms alike. On a shared CPU the A/B difference is noisier than the in-run timers.

Run:  python benchmarks/bench_monitors.py [--steps 200] [--ab-steps 120] [--top1-every 5] [--threads 1]
Writes benchmarks/results/monitors.json and benchmarks/results/monitors.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dlm_triage import provenance, train
from dlm_triage.config import RunConfig
from dlm_triage.objective import mask_tokens, masked_diffusion_loss
from dlm_triage.runlog import read_run
from dlm_triage.tiny import DEFAULT_PRETRAIN_STEPS, ensure_tiny_model

RESULTS = Path(__file__).resolve().parent / "results"


def bare_step(r, step: int) -> None:
    """A step without monitors: what a plain trainer does (clip_grad_norm_ computes its own norm)."""
    cfg = r.cfg
    x0 = r.batches.batch(step).to(r.device)
    noisy, mask = mask_tokens(x0, cfg.mask_ratio, r.mask_id, r.generator, sampling=cfg.mask_sampling,
                              protect=r.family.protected_positions(x0))
    if r.noise_conditioned:
        train.set_noise_level(r.model, cfg.mask_ratio)
    loss = masked_diffusion_loss(r.family.logits(r.model, noisy), x0, mask, normalisation=cfg.normalisation,
                                 mask_ratio=cfg.mask_ratio)
    r.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(r.params, cfg.clip_grad_norm)
    r.optimizer.step()
    loss.item()  # the same one host sync per step as the monitored step (a trainer logs its loss)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the benchmark's own timer sync, outside the measured work


def monitored_step(r, step: int) -> None:
    row = train.train_step(r, step)
    train.clip_and_update(r, row["_grad_norm"])


def ab(cfg: RunConfig, n_steps: int, block: int = 10) -> dict:
    """Interleaved blocks of monitored / bare steps on one setup; per-step wall times in ms."""
    r = train._setup(cfg.replace(top1_every=10_000_000))  # top-1 forward only at step 0: measured apart
    times = {"on": [], "off": []}
    fns = {"on": monitored_step, "off": bare_step}
    for warm in range(3):  # warm-up, not timed
        bare_step(r, warm)
    step = 3
    while len(times["off"]) < n_steps:
        for arm in ("on", "off"):
            for _ in range(block):
                _sync(r.device)
                t0 = time.perf_counter()
                fns[arm](r, step)
                _sync(r.device)
                times[arm].append((time.perf_counter() - t0) * 1e3)
                step += 1
    on, off = np.median(times["on"]), np.median(times["off"])
    return {"steps_per_arm": len(times["off"]), "block": block, "on_ms_median": float(on),
            "off_ms_median": float(off), "overhead_ratio": float(on / off - 1.0)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--ab-steps", type=int, default=120)
    p.add_argument("--top1-every", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--pretrain-steps", type=int, default=DEFAULT_PRETRAIN_STEPS)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    model_dir = ensure_tiny_model(pretrain_steps=args.pretrain_steps)
    cfg = RunConfig(model_id=str(model_dir), steps=args.steps, top1_every=args.top1_every, device=args.device,
                    save_adapter=False)
    with tempfile.TemporaryDirectory() as tmp:
        res = train.train_run(cfg, Path(tmp), resume=False)
        rec = read_run(res.run_dir)
    s = rec.steps
    step_ms = s["step_time_ms"].to_numpy()
    mon_ms = s["monitor_time_ms"].to_numpy()
    top1_ms = s["top1_forward_ms"].to_numpy()
    evaluated = top1_ms[top1_ms > 0]
    train_ms = step_ms - mon_ms - top1_ms  # the step without any monitor work
    in_run = {
        "steps_logged": int(s.height),
        "step_ms_mean": float(step_ms.mean()),
        "train_ms_mean": float(train_ms.mean()),
        "monitor_ms_mean": float(mon_ms.mean()),
        "monitor_ratio": float(mon_ms.mean() / train_ms.mean()),
        "top1_source": rec.manifest["top1_source"],
        "top1_every": args.top1_every,
        "top1_forward_ms_mean": float(evaluated.mean()) if evaluated.size else 0.0,
        "top1_forward_ratio_when_run": float(evaluated.mean() / train_ms.mean()) if evaluated.size else 0.0,
        "top1_forward_ratio_amortised": float(top1_ms.mean() / train_ms.mean()),
        "manifest_monitor_overhead": rec.manifest["monitor_overhead"],
        "wall_time_s": res.wall_time_s,
    }
    result = {
        "benchmark": "monitor overhead per step, tiny family (LoRA r8 on q,k,v,o; batch 4 x 32 tokens)",
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "device": rec.manifest["device"], "dtype": rec.manifest["dtype"]},
        "provenance": provenance.collect(rec.manifest["device"]),
        "config": cfg.to_dict(),
        "in_run": in_run,
        "ab": ab(cfg, args.ab_steps),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "monitors.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    (args.out / "monitors.md").write_text(markdown(result))
    print(markdown(result))
    return result


def markdown(r: dict) -> str:
    i, a, m = r["in_run"], r["ab"], r["machine"]
    pk = r["provenance"]["packages"]
    return "\n".join([
        "# Monitor overhead per training step (tiny family)",
        "",
        f"Command: `{r['command']}`  ",
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs, torch threads {m['torch_threads']}, device "
        f"{m['device']} ({m['dtype']}); torch {pk['torch']}, transformers {pk['transformers']}, peft {pk['peft']}; "
        f"code {r['provenance']['code_version']}; measured {r['measured_at']}.",
        "",
        "| measurement | value |",
        "|---|---|",
        f"| step without monitors (in-run, mean) | {i['train_ms_mean']:.2f} ms |",
        f"| grad-norm monitors (global + per-matrix + sync, mean) | {i['monitor_ms_mean']:.3f} ms |",
        f"| **monitor overhead ratio (in-run timers)** | **{100 * i['monitor_ratio']:.2f} %** |",
        f"| A/B median step, monitors on / off ({a['steps_per_arm']} steps each, blocks of {a['block']}) | "
        f"{a['on_ms_median']:.2f} / {a['off_ms_median']:.2f} ms ({100 * a['overhead_ratio']:+.2f} %) |",
        f"| clean-batch top-1 forward ({i['top1_source']} source), when run | {i['top1_forward_ms_mean']:.2f} ms "
        f"({100 * i['top1_forward_ratio_when_run']:.1f} % of a step) |",
        f"| clean-batch top-1 amortised at top1_every={i['top1_every']} | "
        f"{100 * i['top1_forward_ratio_amortised']:.1f} % of a step |",
        f"| {i['steps_logged']}-row run wall time (setup included) | {i['wall_time_s']:.1f} s |",
        "",
        "In-run timers: `monitor_time_ms` vs the rest of `step_time_ms` in one train_run log: the figure to quote. "
        "A/B: the trainer's step vs a bare step (clip_grad_norm_ + AdamW, same single host sync), medians of "
        "interleaved blocks; on a shared CPU loaded by other jobs its difference is dominated by load noise "
        "(it can come out negative) and bounds the overhead only loosely.",
        "",
    ])


if __name__ == "__main__":
    main()
