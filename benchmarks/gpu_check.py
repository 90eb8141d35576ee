"""One-command GPU check: every real-code family at tiny size, and a ~1B Llama-shaped model, trained in bf16.

    python benchmarks/gpu_check.py                      # on a CUDA machine: ~1-3 min -> benchmarks/results/gpu.json
    python benchmarks/gpu_check.py --device cpu --dry-run --out /tmp/gpu.json   # the same logic, tiny, on CPU

What runs (each through `train.train_run`, the code path users run, 50 steps unless --steps):
- `tiny`: the embedded model (pretrained 40 steps here: the numbers are about cost, not quality);
- `llada`, `llada2`, `llada_moe`, `dream`, `mdlm`: tiny random-init checkpoints built from the families' real
  published files in $DLM_TRIAGE_REMOTE_CODE/<family>/ (tests/remote_families.py builds them); without that
  variable, or without the builder, they are skipped and the reason is recorded;
- `diffusion_gemma`: transformers' own (native) DiffusionGemma classes at tiny size, when this transformers
  and this package's family list have it; skipped with the reason otherwise;
- `llama_1b`: LlamaForCausalLM with TinyLlama-1.1B's shape (2048 x 22 layers, GQA 32/4, vocab 32000), random
  init, bidirectional (config.is_causal = False), trained through the tiny family's loader; a second arm trains
  it with gradient checkpointing and 2 x 2 accumulation (same effective batch) to show the memory trade.

Per configuration: model-load time (first run; the second run on the resident base reports its load as 0),
median step time, peak CUDA memory, monitor overhead (% of the step: grad norms + the step's host sync; the
clean-batch top-1 forward apart, amortised over `top1_every`), and host syncs per step, counted with
`torch.cuda.set_sync_debug_mode("warn")` on a separate short run (the warnings themselves cost time) and
excluding the trainer's explicit timer `synchronize` calls.

Without CUDA (and without --dry-run) it prints why and exits with status 2, writing nothing: an old results
file is never replaced by an empty one. --dry-run runs everything at toy sizes for a few steps on --device (cpu
here) so tests/test_gpu_check.py keeps this script from rotting; its numbers mean nothing and say so.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
REMOTE_FAMILIES = ("llada", "llada2", "llada_moe", "dream", "mdlm")
ENV_REMOTE = "DLM_TRIAGE_REMOTE_CODE"
EXIT_NO_CUDA = 2

# TinyLlama-1.1B's shape: 1.10e9 parameters
LLAMA_1B = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048)
LLAMA_TOY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=RESULTS / "gpu.json")
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu with --dry-run")
    p.add_argument("--steps", type=int, default=None, help="steps per run (default 50; 3 with --dry-run)")
    p.add_argument("--dry-run", action="store_true", help="toy sizes, a few steps, any device: checks the script")
    p.add_argument("--only", default=None, help="comma-separated subset of configurations")
    p.add_argument("--workdir", type=Path, default=None, help="where checkpoints are built (default: a temp dir)")
    return p.parse_args(argv)


# -- checkpoints --------------------------------------------------------------------------------------------

def build_llama(out: Path, shape: dict, device: str) -> Path:
    """A random-init bidirectional Llama in bf16 with the tiny family's character tokenizer (the loader the
    tiny family uses reads exactly this layout)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from dlm_triage.tiny import CharTokenizer

    torch.manual_seed(0)
    cfg = LlamaConfig(**shape, tie_word_embeddings=False, use_cache=False, rms_norm_eps=1e-5)
    cfg.is_causal = False
    with torch.device(device):  # initialised where it trains: seconds on a GPU, minutes on a CPU core
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out)
    CharTokenizer().save_pretrained(out)
    del model
    return out


def remote_builder():
    """tests/remote_families.build_checkpoint(family, out) -> Path, or (None, why)."""
    if not os.environ.get(ENV_REMOTE):
        return None, f"${ENV_REMOTE} is not set: point it at the families' published files to check them"
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from remote_families import build_checkpoint  # noqa: PLC0415
    except Exception as e:  # the builder ships with the test suite; a stripped checkout has none
        return None, f"no checkpoint builder (tests/remote_families.py): {type(e).__name__}: {e}"
    return build_checkpoint, None


def gemma_builder():
    """A tiny DiffusionGemma checkpoint from transformers' native classes, or (None, why)."""
    from dlm_triage.config import FAMILIES

    if "diffusion_gemma" not in FAMILIES:
        return None, "this dlm_triage has no 'diffusion_gemma' family"
    try:
        import transformers.models.diffusion_gemma  # noqa: F401,PLC0415

        from dlm_triage.tiny_diffusion_gemma import save_tiny_diffusion_gemma  # noqa: PLC0415
    except Exception as e:
        return None, f"no DiffusionGemma here: {type(e).__name__}: {e}"
    return save_tiny_diffusion_gemma, None


# -- measuring ----------------------------------------------------------------------------------------------

def count_host_syncs(run) -> tuple[int | None, str]:
    """Synchronising CUDA operations warned by torch.cuda.set_sync_debug_mode while `run()` trains."""
    import torch

    if not torch.cuda.is_available():
        return None, "no CUDA: host syncs are not counted"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    hits = [w for w in caught if "synchroniz" in str(w.message)]
    return len(hits), "torch.cuda.set_sync_debug_mode('warn') warnings"


def measure(name: str, cfg_kw: dict, args, runs_dir: Path) -> dict:
    import numpy as np
    import torch

    from dlm_triage import resident, train
    from dlm_triage.config import RunConfig
    from dlm_triage.runlog import read_run

    cuda = torch.device(args.device).type == "cuda"
    base = dict(device=args.device, steps=args.steps, save_adapter=False, top1_every=5, seed=1, **cfg_kw)
    cfg = RunConfig(**base)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    res = train.train_run(cfg, runs_dir, resume=False)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    n_params = sum(sum(p.numel() for p in lm.model.parameters()) for lm in resident.loaded_models())
    rec = read_run(res.run_dir)
    step_ms = rec.steps["step_time_ms"].to_numpy()[1:]  # step 0 pays one-time kernel selection
    mon_ms = rec.steps["monitor_time_ms"].to_numpy()[1:]
    top1_ms = rec.steps["top1_forward_ms"].to_numpy()[1:]
    step_wo_top1 = step_ms - top1_ms
    # second run, same base: resident (no load); a few steps under the sync counter
    sync_steps = 3 if args.dry_run else 5
    again = RunConfig(**{**base, "steps": sync_steps, "seed": 2, "top1_every": 10**6})
    out2: dict = {}

    def second():
        out2["res"] = train.train_run(again, runs_dir, resume=False)

    # the trainer's timers are CUDA events read once per run, so the counter sees only the training path
    n_sync, how = count_host_syncs(second)
    if "res" not in out2:
        second()
    res2 = out2["res"]
    n_logged = sync_steps + 1
    man = rec.manifest
    return {
        "name": name, "status": res.status, "family": cfg.family, "steps": cfg.steps,
        "batch_size": cfg.batch_size, "grad_accum_steps": cfg.grad_accum_steps, "seq_len": cfg.seq_len,
        "gradient_checkpointing": man["monitor_overhead"]["gradient_checkpointing"],
        "dtype": man["dtype"], "device": man["device"],
        "n_params": n_params,
        "model_load_s": res.load_time_s, "train_s": res.train_time_s,
        "load_share_of_run": res.load_time_s / (res.load_time_s + res.train_time_s),
        "second_run_resident": res2.model_resident, "second_run_load_s": res2.load_time_s,
        "step_ms_median": float(np.median(step_ms)),
        "step_ms_median_without_top1": float(np.median(step_wo_top1)),
        "monitor_ms_median": float(np.median(mon_ms)),
        "monitor_overhead_pct": float(100 * np.median(mon_ms) / np.median(step_wo_top1)),
        "top1_forward_ms_mean": float(top1_ms[top1_ms > 0].mean()) if (top1_ms > 0).any() else 0.0,
        "top1_every": cfg.top1_every,
        "peak_memory_mib": peak,
        "host_syncs_per_step": None if n_sync is None else n_sync / n_logged,
        "host_syncs_counted_by": how,
        "final_loss": res.final_loss, "loss_finite": bool(np.isfinite(rec.steps["loss"].to_numpy()).all()),
    }


def configurations(args, work: Path) -> tuple[list[tuple[str, dict]], list[dict]]:
    """[(name, RunConfig fields)] to train, and [{name, skipped}] with the reason for each one that cannot."""
    from dlm_triage.tiny import ensure_tiny_model

    dry = args.dry_run
    keep = set(args.only.split(",")) if args.only else None

    def want(name: str) -> bool:
        return keep is None or name in keep

    seq = 32 if dry else 128
    todo: list[tuple[str, dict]] = []
    skipped: list[dict] = []
    if want("tiny"):
        todo.append(("tiny", dict(family="tiny", model_id=str(ensure_tiny_model(work / "tiny", pretrain_steps=40)),
                                  batch_size=4, seq_len=seq)))
    build, why = remote_builder()
    for fam in filter(want, REMOTE_FAMILIES):
        if build is None:
            skipped.append({"name": fam, "skipped": why})
            continue
        try:
            todo.append((fam, dict(family=fam, model_id=str(build(fam, work / "remote")), batch_size=4,
                                   seq_len=min(seq, 64))))
        except Exception as e:
            skipped.append({"name": fam, "skipped": f"building the tiny checkpoint failed: {type(e).__name__}: {e}"})
    build_g, why_g = gemma_builder()
    if not want("diffusion_gemma"):
        pass
    elif build_g is None:
        skipped.append({"name": "diffusion_gemma", "skipped": why_g})
    else:
        try:
            todo.append(("diffusion_gemma", dict(family="diffusion_gemma", model_id=str(build_g(work / "gemma")),
                                                 batch_size=4, seq_len=32)))
        except Exception as e:
            skipped.append({"name": "diffusion_gemma",
                            "skipped": f"building the tiny checkpoint failed: {type(e).__name__}: {e}"})
    arms = [n for n in ("llama_1b", "llama_1b_checkpointing_accum") if want(n)]
    if arms:
        t0 = time.perf_counter()
        big = build_llama(work / "llama_1b", LLAMA_TOY if dry else LLAMA_1B, args.device)
        build_s = time.perf_counter() - t0
        seq_1b = 64 if dry else 512
        kw = {"llama_1b": dict(batch_size=4), "llama_1b_checkpointing_accum": dict(
            batch_size=2, grad_accum_steps=2, gradient_checkpointing=True)}  # the same effective batch
        for n in arms:
            todo.append((n, dict(family="tiny", model_id=str(big), seq_len=seq_1b, _build_s=build_s, **kw[n])))
    return todo, skipped


def main(argv=None) -> int:
    args = parse(argv)
    import torch

    if not args.dry_run:
        if not torch.cuda.is_available():
            print(f"gpu_check: no CUDA device here (torch {torch.__version__}, built for CUDA "
                  f"{torch.version.cuda}); run it on a GPU machine, or pass --device cpu --dry-run to check the "
                  "script itself. Nothing written.", file=sys.stderr)
            return EXIT_NO_CUDA
        if torch.device(args.device).type != "cuda":
            print(f"gpu_check: --device {args.device} is not a CUDA device; use --dry-run for a CPU check",
                  file=sys.stderr)
            return EXIT_NO_CUDA
    args.steps = args.steps or (3 if args.dry_run else 50)
    t_start = time.perf_counter()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="dlm-triage-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    from dlm_triage import provenance, resident

    todo, skipped = configurations(args, work)
    results: list[dict] = []
    for name, kw in todo:
        kw = dict(kw)
        build_s = kw.pop("_build_s", None)
        resident.clear()  # each configuration's first run loads its base: the load time is measured
        t0 = time.perf_counter()
        try:
            row = measure(name, kw, args, work / "runs")
        except Exception as e:
            row = {"name": name, "status": "error", "error": f"{type(e).__name__}: {e}",
                   "traceback": traceback.format_exc(limit=8)}
        row["wall_s"] = time.perf_counter() - t0
        if build_s is not None:
            row["checkpoint_build_s"] = build_s
        results.append(row)
        print(f"gpu_check: {name}: {row.get('status')} "
              + (f"step {row['step_ms_median']:.1f} ms, load {row['model_load_s']:.2f} s, "
                 f"monitors {row['monitor_overhead_pct']:.2f} %, syncs/step {row['host_syncs_per_step']}"
                 if row.get("status") != "error" else row["error"]), flush=True)
    resident.clear()
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    prov = provenance.collect(args.device)
    payload = {
        "benchmark": "gpu_check", "dry_run": args.dry_run,
        "note": ("DRY RUN: toy sizes, a few steps; the numbers check the script, not the hardware"
                 if args.dry_run else "tiny families and a ~1.1B Llama-shaped model, bf16, one device"),
        "command": "python benchmarks/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": args.device,
        "device_name": torch.cuda.get_device_name(torch.device(args.device)) if torch.device(args.device).type == "cuda" else platform.processor() or "cpu",
        "steps_per_run": args.steps, "wall_s": time.perf_counter() - t_start,
        "versions": prov["packages"], "code_version": prov["code_version"], "hostname": prov["hostname"],
        "results": results, "skipped": skipped,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n")
    tmp.replace(args.out)
    print(f"gpu_check: wrote {args.out} ({len(results)} trained, {len(skipped)} skipped) in {payload['wall_s']:.0f} s")
    return 1 if any(r.get("status") == "error" for r in results) else 0


def _json_default(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return str(x)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # a fresh checkout without `pip install -e .` still imports dlm_triage
    sys.exit(main())
