"""Model-load time against training time per run, with and without the resident base model (CPU).

A sweep worker trains many runs on one base model. This measures, per run of `train.train_run`, the wall time of
its base-model load (`RunResult.load_time_s`) and of its steps (`train_time_s`), for the same sequence of runs
with the resident cache off (DLM_TRIAGE_RESIDENT_MODELS=0: every run loads) and on (the first run loads, the
others reuse the base). Arms alternate by round, so load drift hits both alike. The model: a Llama-shaped
bidirectional model (benchmarks/gpu_check.py's builder) of --hidden x --layers, random init, saved to disk.

Run:  python benchmarks/bench_resident.py [--runs 4] [--rounds 2] [--steps 20] [--hidden 512] [--layers 8]
Writes benchmarks/results/resident.json and resident.md. On a GPU machine, gpu_check.py records the same
quantities per family (model_load_s, train_s, second_run_load_s).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from dlm_triage import provenance, resident, train  # noqa: E402
from dlm_triage.config import RunConfig  # noqa: E402
from gpu_check import build_llama  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def arm(model_dir: Path, runs: int, steps: int, cache: bool, runs_dir: Path, seed0: int) -> list[dict]:
    os.environ[resident.ENV_MAX_RESIDENT] = "1" if cache else "0"
    resident.clear()
    out = []
    for i in range(runs):
        cfg = RunConfig(family="tiny", model_id=str(model_dir), steps=steps, batch_size=2, seq_len=64,
                        device="cpu", save_adapter=False, top1_every=10, seed=seed0 + i)
        t0 = time.perf_counter()
        res = train.train_run(cfg, runs_dir, resume=False)
        out.append({"run": i, "load_s": res.load_time_s, "train_s": res.train_time_s,
                    "wall_s": time.perf_counter() - t0, "resident": res.model_resident})
    resident.clear()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-resident-"))
    shape = dict(vocab_size=32000, hidden_size=args.hidden, intermediate_size=int(args.hidden * 2.6875),
                 num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=8,
                 max_position_embeddings=512)
    model_dir = build_llama(work / "model", shape, "cpu")
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_dir)
    d, f, v, nl = c.hidden_size, c.intermediate_size, c.vocab_size, c.num_hidden_layers
    n_params = 2 * v * d + nl * (4 * d * d + 3 * d * f + 2 * d) + d  # untied embeddings and head
    rounds = []
    for r in range(args.rounds):
        order = ("off", "on") if r % 2 == 0 else ("on", "off")
        rnd = {}
        for name in order:
            rnd[name] = arm(model_dir, args.runs, args.steps, name == "on", work / "runs", seed0=100 * r)
        rounds.append(rnd)

    def summary(name):
        rows = [row for rnd in rounds for row in rnd[name]]
        load = np.array([x["load_s"] for x in rows])
        tr = np.array([x["train_s"] for x in rows])
        wall = np.array([x["wall_s"] for x in rows])
        return {"load_s_mean": float(load.mean()), "outside_steps_s_mean": float((wall - tr).mean()), "load_s_first_run_mean": float(np.mean(
                    [rnd[name][0]["load_s"] for rnd in rounds])),
                "train_s_mean": float(tr.mean()), "wall_s_mean": float(wall.mean()),
                "load_share_of_run": float(load.sum() / (load.sum() + tr.sum())),
                "runs_resident": int(sum(bool(x["resident"]) for x in rows)), "n_runs": len(rows)}

    s_off, s_on = summary("off"), summary("on")
    payload = {
        "benchmark": "resident", "model": {"shape": shape, "n_params": n_params, "dtype": "float32"},
        "runs_per_arm_per_round": args.runs, "rounds": args.rounds, "steps_per_run": args.steps,
        "threads": args.threads, "off": s_off, "on": s_on,
        "outside_steps_saved_per_run_s": s_off["outside_steps_s_mean"] - s_on["outside_steps_s_mean"],
        "raw": rounds, "versions": provenance.collect("cpu")["packages"],
        "command": "python benchmarks/bench_resident.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "resident.json").write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    md = [
        "# Resident base model: load time vs training time per run (CPU)", "",
        f"Model: Llama-shaped, hidden {args.hidden} x {args.layers} layers, vocab 32000, {n_params / 1e6:.1f} M "
        f"parameters, float32; {args.steps} steps per run (batch 2 x 64 tokens), {args.runs} runs per arm, "
        f"{args.rounds} rounds (arm order alternating), {args.threads} thread(s).", "",
        "| arm | load per run (s) | training per run (s) | load share of the run | wall outside the steps per run (s) |",
        "|---|---|---|---|---|",
        f"| cache off (every run loads) | {s_off['load_s_mean']:.3f} | {s_off['train_s_mean']:.2f} | "
        f"{100 * s_off['load_share_of_run']:.1f} % | {s_off['outside_steps_s_mean']:.3f} |",
        f"| resident (first run loads: {s_on['load_s_first_run_mean']:.3f} s) | {s_on['load_s_mean']:.3f} | "
        f"{s_on['train_s_mean']:.2f} | {100 * s_on['load_share_of_run']:.1f} % | {s_on['outside_steps_s_mean']:.3f} |",
        "", f"Time outside the steps saved per run: {payload['outside_steps_saved_per_run_s']:.3f} s (load, and the "
        "setup that goes with it). Training time per run moves with the shared machine's load between arms; "
        "compare the load columns, not the training ones.", f"Command: `{payload['command']}`.",
        "On a real checkpoint the load is from disk of GBs (LLaDA-8B: 16 GB in bf16): gpu_check.py measures it.",
    ]
    (args.out / "resident.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
