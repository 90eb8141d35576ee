"""One LoRA/PEFT fine-tune of a masked diffusion LM under the masked-diffusion objective, with its monitors.

Lifecycle (torchtune-style): setup (seed, device, model, adapter, optimizer, data) -> steps 0..cfg.steps ->
write the step log and the manifest (atomically, manifest last: `runlog`).

Step t (schema.py): batch t -> mask at rho -> logits -> masked CE -> backward -> monitors on the gradient of
the weights after t updates -> NaN/Inf check -> live early warning -> clip -> update t+1 (not after the last
step). The objective (below) replaces the three steps from masking to the CE; its output says where top-1 is
read and what the mask columns log. Monitors run every step, whatever the clip setting: the logged grad norm is
the pre-clip global L2 norm
over the adapter parameters. Statuses: completed | diverged (a non-finite loss or grad norm; the bad step is
logged, no update follows) | stopped_early (early warning with action 'stop') | stopped_by_legacy_detector
(cfg.legacy_detector_stop and the legacy top-1 detector fired; never a collapse) | failed (an exception; the
log so far is written with the manifest, then the exception propagates).

Objective (`cfg.objective`, dlm_triage.objective, registry config.OBJECTIVES): how batch t is corrupted and
scored: the paper's fixed rho (default), a family recipe (llada_sft, llada_pretrain, mdlm, llada2_sft, dream)
that draws its noise level t itself (the step log's mask_ratio is then that t, and a noise-conditioned adapter's
lambda too), or a family's own objective (diffusion_gemma). It is checked against the family, tokenizer and
data at setup, so every problem is an error before step 0.

Host syncs per step: ONE, the `.tolist()` of the packed scalar monitors (the NaN check, the live warning and the
legacy detector need them on the host). Everything else stays on the device: the clip reuses the grad norm as a
tensor, masking uniforms are copied without blocking, the noise levels are host floats from the start, and the
timers are CUDA events read after that one sync (perf_counter on CPU). tests/test_host_syncs.py counts them.

Gradient accumulation (cfg.grad_accum_steps = k micro-batches of cfg.batch_size = b): optimizer step t trains on
micro-batches t*k .. t*k+k-1 of the batch stream, the rows of batch t of a run with batch size k*b, corrupted
with the same generator draws in the same order. Normalisation rule: the accumulated gradient is the gradient
of the EFFECTIVE batch's loss, sum_j S_j / sum_j D_j, where S_j / D_j is micro-batch j's loss under the
objective and D_j its normaliser (`Objective.normaliser`: the masked count for the paper's per_masked_token,
b*L for per_token, the maskable count for MDLM/Dream, rows for LLaDA SFT, ...). So micro-batch j enters with
weight w_j = D_j / sum D, and k micro-batches equal one batch of k*b up to float rounding (a plain mean of the
micro-batch losses would weight a token of a sparsely masked micro-batch more). As sum D is known only after
the last forward, micro-batch j backpropagates L_j * D_j / c with c = k * D_0 (so the gradients keep their usual
scale; no fp16 overflow) and the accumulated gradient is multiplied by c / sum D at the end (on the device: no
host sync). Objectives that draw t per batch (MDLM's antithetic t) stratify within each micro-batch, and
DiffusionGemma's two-part loss is weighted by rows: equal to the big batch only in distribution. The logged loss
is sum_j w_j L_j; n_masked, mask_ratio and top-1 pool every micro-batch; the monitors read the accumulated,
pre-clip gradient once per optimizer step; the log keeps one row per optimizer step.

One module, over 400 lines: the run's lifecycle (setup, the step, the finish that writes its log and manifest)
shares the private `_Run` state and reads top to bottom as one recipe; what it calls (objectives, monitors, the
log, the summary) lives in its own modules.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import math
import random
import shutil
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl
import torch
from transformers.utils import logging as hf_logging

from dlm_triage import monitors, provenance, resident, runlog, runsummary
from dlm_triage.config import RunConfig
from dlm_triage.early_warning import EarlyWarning, emit_routed_event
from dlm_triage.objective import Objective, ObjectiveError, get_objective
from dlm_triage.peft_methods import adapter_matrices, apply_adapter, is_noise_conditioned, noise_level, save_adapter
from dlm_triage.schema import (
    ADAPTER_DIRNAME,
    COLLAPSE_DEFINITION,
    LEGACY_FIRST_STEP,
    MANIFEST_FILENAME,
    MANIFEST_KEYS,
    REUSABLE_STATUSES,
    STEPLOG_FILENAME,
)

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class FaultHooks:
    """Fault-injection points for tests (`train_run(..., hooks=)`); production runs pass none."""

    after_backward: Callable[[int, torch.nn.Module], None] | None = None
    """Called after backward with (step, model), before the monitors."""
    before_manifest_rename: Callable[[Path], None] | None = None
    """runlog.write_run_atomic's: called with the fsync'd tmp manifest, before its rename."""


@dataclass(frozen=True)
class RunResult:
    run_id: str
    run_dir: Path
    status: str
    final_loss: float | None
    max_grad_norm: float | None
    routed_for_inspection: bool
    wall_time_s: float
    reused: bool
    load_time_s: float | None = None
    """Wall time of this run's base-model load; 0.0 when the base was resident; None for a reused run dir."""
    train_time_s: float | None = None
    """Wall time of the steps (setup, load and the final writes excluded); None for a reused run dir."""
    model_resident: bool | None = None
    """The base model came from the process's resident cache (dlm_triage.resident): no load this run."""


# -- setup ------------------------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    # Cheap determinism: cuDNN autotuning picks kernels by timing (run-to-run variation); no global
    # use_deterministic_algorithms (it would change the caller's process and needs CUBLAS_WORKSPACE_CONFIG).
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


class StepClock:
    """Timestamps without a host sync: CUDA events on a CUDA device (read once the step's one sync has passed
    them), perf_counter elsewhere. `ms(a, b)` needs both marks completed on the device."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def ms(self, a: Any, b: Any) -> float:
        return float(a.elapsed_time(b)) if self.cuda else (b - a) * 1e3

    def wait(self, mark: Any) -> None:
        if self.cuda:
            mark.synchronize()  # sync point: once per run, after the last step, to read its end time


@dataclass
class _Run:
    """Everything a step needs, built once by `_setup`."""

    cfg: RunConfig
    device: torch.device
    dtype: torch.dtype
    family: Any
    model: torch.nn.Module
    tokenizer: Any
    mask_id: int
    pad_id: int | None
    matrices: list[tuple[str, torch.nn.Parameter]]
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    batches: Any
    generator: torch.Generator
    noise_conditioned: bool
    """nara / lora_diffusion: the adapter needs the batch's noise level before each forward."""
    objective: Objective
    host_rng: random.Random
    """Noise levels t of the sampled objectives: host floats, so neither lambda nor the log needs a device read."""
    clock: StepClock
    legacy_fired: bool = False
    """The legacy top-1 detector has fired: from then on top-1 follows cfg.top1_every again."""
    lease: Any = None
    """resident.Lease of the base model: released (the base handed back clean) when the run ends."""
    checkpointing: str | None = None
    """The gradient-checkpointing mechanism in use (families.FamilyAdapter.set_gradient_checkpointing), or None."""
    train_s: float | None = None
    """Wall time of the steps, set when they end (manifest monitor_overhead.train_s)."""
    hooks: FaultHooks = FaultHooks()


def _setup(cfg: RunConfig) -> _Run:
    from dlm_triage.data import make_batches
    from dlm_triage.families import get_family, resolve_device, resolve_dtype

    # A sweep loads one model per run: transformers' per-load weight bar would flood the sweep's log.
    hf_logging.disable_progress_bar()
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    family = get_family(cfg.family)
    objective = get_objective(cfg.objective)
    lease = resident.acquire(cfg, family, device, dtype)  # the resident base, or a load (kept resident)
    wrapped = None
    try:
        loaded = lease.loaded
        objective.check(cfg, family, loaded.tokenizer, loaded.mask_token_id)
        model = loaded.model
        checkpointing = lease.enable_gradient_checkpointing() if cfg.gradient_checkpointing else None
        targets = cfg.target_modules or family.attention_targets(model)
        lease.before_adapter(cfg.method, targets)  # PiSSA rewrites the target weights: saved for the release
        torch.manual_seed(cfg.seed)  # adapter init depends on the seed only, not on what loading consumed
        with warnings.catch_warnings():
            # peft 0.21 calls transformers' deprecated is_gradient_checkpointing once per wrap: not ours to fix
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            wrapped = apply_adapter(model, cfg, targets)  # freezes the base; raises on a target matching nothing
        wrapped.train()
        matrices = adapter_matrices(wrapped)
        if not matrices:
            raise RuntimeError(f"{cfg.run_id}: the adapter has no trainable parameter (targets {targets})")
        params = [p for _, p in matrices]
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        batches = make_batches(cfg, loaded.tokenizer)
        _check_maskable(cfg, family, batches)
        return _Run(
            cfg=cfg, device=device, dtype=dtype, family=family, model=wrapped, tokenizer=loaded.tokenizer,
            mask_id=loaded.mask_token_id, pad_id=getattr(loaded.tokenizer, "pad_token_id", None),
            matrices=matrices, params=params, optimizer=optimizer, batches=batches,
            generator=torch.Generator().manual_seed(cfg.seed),  # masking draws, on CPU: same on every device
            noise_conditioned=is_noise_conditioned(wrapped), objective=objective, host_rng=random.Random(cfg.seed),
            clock=StepClock(device), lease=lease, checkpointing=checkpointing,
        )
    except BaseException:
        lease.release(wrapped)
        raise


def _check_maskable(cfg: RunConfig, family: Any, batches: Any) -> None:
    """Every row must have a position the objective may mask (checked once here: the step does not look)."""
    protect = family.protected_positions(torch.zeros(1, cfg.seq_len, dtype=torch.long))
    ok = batches.maskable_rows if batches.maskable_rows is not None else torch.ones(1, cfg.seq_len, dtype=torch.bool)
    if protect is not None:
        ok = ok & ~protect
    if not bool(ok.any(dim=1).all()):  # host tensors, at setup
        raise ObjectiveError(f"family {cfg.family!r} with seq_len={cfg.seq_len}: some rows have no position that "
                             "may be masked (all prompt or protected); raise seq_len")


# -- monitors (each its own function; all computed every step) -------------------------------------------

def clean_top1(r: _Run, x0: torch.Tensor | list[torch.Tensor],
               maskable: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """Top-1 frequency on the CLEAN batch: one extra forward without grad over the maskable non-pad positions
    (packed text: all but the family's protected positions; SFT: the response, not its padding). Costs ~1
    forward (35-47 % of a step); cadence cfg.top1_every. Lists of micro-batches are evaluated one forward each
    and pooled into one histogram. Noise-conditioned adapters (NaRA, lora_diffusion): the clean batch is at
    noise level 0."""
    xs, ms = (x0, maskable) if isinstance(x0, list) else ([x0], [maskable])
    preds, evaluated, vocab = [], [], 0
    was_training = r.model.training
    r.model.eval()
    try:
        with torch.no_grad():
            for x, m in zip(xs, ms):
                if r.noise_conditioned:
                    with noise_level(r.model, 0.0):
                        logits = r.family.logits(r.model, x)
                else:
                    logits = r.family.logits(r.model, x)
                preds.append(logits.argmax(dim=-1))
                evaluated.append(m if r.pad_id is None else m & (x != r.pad_id))
                vocab = logits.shape[-1]
                del logits  # one micro-batch of logits alive at a time
    finally:
        r.model.train(was_training)
    return monitors.top1_frequency_of_predictions(_cat(preds), _cat(evaluated), vocab)


def _cat(xs: list[torch.Tensor]) -> torch.Tensor:
    return xs[0] if len(xs) == 1 else torch.cat(xs)


def step_monitors(r: _Run, preds: torch.Tensor | None, positions: torch.Tensor, vocab: int) -> dict[str, torch.Tensor]:
    """Gradient monitors on the accumulated gradient (+ top-1 of the training predictions `preds` [B, L] at
    `positions` when that is the family's source: free). Tensors only: no host sync here."""
    matrix_norms = monitors.matrix_grad_norms(r.matrices)  # one fused foreach kernel over the adapter grads
    out = {
        # == monitors.global_grad_norm(r.params) (tested), without a second pass over the gradients
        "grad_norm": torch.linalg.vector_norm(matrix_norms),
        "matrix_grad_norms": matrix_norms,
    }
    if preds is not None:
        out["top1_freq"] = monitors.top1_frequency_of_predictions(preds, positions, vocab)
    return out


# -- one step ---------------------------------------------------------------------------------------------

def device_batch(r: _Run, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch `step` on the run's device: (x0 [b, L], maskable [b, L] without the family's protected positions)."""
    x0, maskable = r.batches.train_batch(step)
    x0 = x0.to(r.device, non_blocking=True)
    maskable = maskable.to(r.device, non_blocking=True)
    protect = r.family.protected_positions(x0)
    if protect is not None:
        maskable = maskable & ~protect
    return x0, maskable


def _micro_batch(r: _Run, x0: torch.Tensor, maskable: torch.Tensor, keep_preds: bool) -> dict[str, Any]:
    """One micro-batch's objective forward (no backward): its loss, normaliser and what the log pools."""
    out = r.objective.forward(r, x0, maskable)
    return {
        "out": out, "loss": out.loss, "D": r.objective.normaliser(r.cfg, out, maskable),
        "preds": out.logits.detach().argmax(dim=-1) if keep_preds else None,
        "positions": out.top1_positions if out.top1_positions is not None else out.mask,
        "n_masked": (out.n_masked if out.n_masked is not None else out.mask.sum()).float(),
        "vocab": out.logits.shape[-1],
    }


def _ratio(out: Any) -> torch.Tensor:
    if out.noise_level is not None:
        return out.loss.new_full((), out.noise_level, dtype=torch.float32)
    return (out.mask_ratio if out.mask_ratio is not None else out.mask.float().mean()).float()


def train_step(r: _Run, step: int) -> dict[str, Any]:
    """Forward/backward of the cfg.grad_accum_steps micro-batches of optimizer step `step` (gradients
    accumulated, module docstring) and the monitors on the accumulated gradient; returns the step-log row (no
    update here).

    Private keys for the loop: `_t0` (the step's start mark) and `_grad_norm` (the pre-clip norm, a device
    tensor, so the clip needs no host->device copy)."""
    cfg, clock = r.cfg, r.clock
    k = cfg.grad_accum_steps
    t0 = clock.mark()

    batches = [device_batch(r, step * k + j) for j in range(k)]
    top1_source = r.family.top1_source
    keep_preds = top1_source in ("masked", "canvas")
    r.optimizer.zero_grad(set_to_none=True)
    parts, c = [], None
    for j, (x0, maskable) in enumerate(batches):
        mb = _micro_batch(r, x0, maskable, keep_preds)
        if k == 1:
            mb["loss"].backward()
        else:
            if c is None:
                c = (k * mb["D"]).clamp_min(1.0)  # ~ sum D: the weights below stay near 1/k
            (mb["loss"] * (mb["D"] / c)).backward()  # accumulates into .grad
        mb["ratio"] = _ratio(mb["out"])
        mb["loss"] = mb["loss"].detach()
        del mb["out"]  # logits and graph of one micro-batch at a time
        parts.append(mb)
    if k > 1:
        D_total = torch.stack([mb["D"] for mb in parts]).sum()
        scale = c / D_total.clamp_min(1.0)
        torch._foreach_mul_([p.grad for p in r.params if p.grad is not None], scale.to(r.params[0].device))
        loss_t = torch.stack([mb["loss"] * mb["D"] for mb in parts]).sum() / D_total.clamp_min(1.0)
    else:
        loss_t = parts[0]["loss"]
    if r.hooks.after_backward is not None:
        r.hooks.after_backward(step, r.model)

    t_mon = clock.mark()
    positions = _cat([mb["positions"] for mb in parts])
    preds = _cat([mb["preds"] for mb in parts]) if keep_preds else None
    mon = step_monitors(r, preds, positions, parts[0]["vocab"])
    dev = loss_t.device
    top1 = mon["top1_freq"].to(dev).float() if "top1_freq" in mon else loss_t.new_full((), math.nan, dtype=torch.float32)
    t_mon_end = clock.mark()
    t_top1 = t_top1_end = None
    # the legacy detector samples every step from step 11 until it fires: one extra forward per such step
    detector_sample = step >= LEGACY_FIRST_STEP and not r.legacy_fired
    if top1_source == "clean" and (step % cfg.top1_every == 0 or detector_sample):
        t_top1 = clock.mark()
        top1 = clean_top1(r, [x for x, _ in batches], [m for _, m in batches]).to(dev).float()
        t_top1_end = clock.mark()
    n_masked_t = torch.stack([mb["n_masked"] for mb in parts]).sum() if k > 1 else parts[0]["n_masked"]
    if k == 1:
        ratio_t = parts[0]["ratio"]
    else:  # pooled: noise levels averaged by rows, realised shares by positions (equal-size micro-batches)
        ratio_t = torch.stack([mb["ratio"].to(dev) for mb in parts]).mean()
    packed = torch.cat([  # everything the step-log row needs, in one tensor: one device->host copy per step
        torch.stack([loss_t.float(), mon["grad_norm"].to(dev), top1, n_masked_t.to(dev).float(),
                     ratio_t.to(dev).float()]),
        mon["matrix_grad_norms"].to(dev),
    ]).tolist()  # this is a CPU-GPU sync point: the one per step
    loss_v, grad_v, top1_v, n_masked, rho = packed[:5]
    mat = packed[5:]
    monitor_ms = clock.ms(t_mon, t_mon_end)
    top1_forward_ms = clock.ms(t_top1, t_top1_end) if t_top1 is not None else 0.0

    return {
        "step": step, "loss": loss_v, "grad_norm": grad_v, "max_grad_norm": math.nan, "top1_freq": top1_v,
        "mask_ratio": rho, "n_masked": int(n_masked), "lr": r.optimizer.param_groups[0]["lr"],
        "clipped": bool(grad_v > cfg.clip_grad_norm), "step_time_ms": math.nan, "monitor_time_ms": monitor_ms,
        "top1_forward_ms": top1_forward_ms, "matrix_grad_norms": mat, "_t0": t0, "_grad_norm": mon["grad_norm"],
    }


def clip_and_update(r: _Run, grad_norm: torch.Tensor | float) -> None:
    """Clip at cfg.clip_grad_norm reusing the pre-clip norm already computed (no second norm pass), then step.
    Give the norm as the device tensor of the step (a float is copied to the device: a blocking copy)."""
    if not isinstance(grad_norm, torch.Tensor):
        grad_norm = torch.tensor(grad_norm)
    torch.nn.utils.clip_grads_with_norm_(r.params, r.cfg.clip_grad_norm, grad_norm)
    r.optimizer.step()


def _close_step_times(r: _Run, rows: list[dict[str, Any]], next_start: Any) -> None:
    """Step time of the last row = its start mark to `next_start` (the next step's start, or the run's end)."""
    if rows and "_t0" in rows[-1]:
        rows[-1]["step_time_ms"] = r.clock.ms(rows[-1].pop("_t0"), next_start)
        rows[-1].pop("_grad_norm", None)


# -- the run ------------------------------------------------------------------------------------------------

def _reusable(run_dir: Path, cfg: RunConfig) -> runlog.RunRecord | None:
    try:
        rec = runlog.read_run(run_dir)
    except runlog.RunLogError:
        return None
    if rec.manifest["config_hash"] != cfg.config_hash or rec.manifest["status"] not in REUSABLE_STATUSES:
        return None
    return rec


def _result_from_manifest(run_dir: Path, man: dict[str, Any], reused: bool) -> RunResult:
    return RunResult(
        run_id=man["run_id"], run_dir=run_dir, status=man["status"], final_loss=man["final_loss"],
        max_grad_norm=man["max_grad_norm"], routed_for_inspection=bool(man["routed_for_inspection"]),
        wall_time_s=float(man["wall_time_s"] or 0.0), reused=reused,
    )


def train_run(
    cfg: RunConfig,
    runs_dir: Path,
    *,
    threshold: Any = None,
    progress: Callable[[int, int], None] | None = None,
    resume: bool = True,
    hooks: FaultHooks | None = None,
) -> RunResult:
    """Fine-tune `cfg` into `runs_dir/cfg.run_id` (steps.parquet, manifest.json, adapter/) and return its result.

    `threshold`: the family's max-grad threshold for the live early warning at step cfg.early_warning_step (a
    float, a store.ThresholdRecord, or None: warning off, said once). `progress(step, cfg.steps)` after every
    logged step. `resume`: reuse a complete run directory with the same config hash (status completed,
    diverged or stopped_early; note a stopped run stays stopped even if the threshold changed since).
    `hooks`: fault injection for tests.
    """
    run_dir = Path(runs_dir) / cfg.run_id
    if resume and (rec := _reusable(run_dir, cfg)) is not None:
        log.info("%s: reusing the complete run in %s", cfg.run_id, run_dir)
        return _result_from_manifest(run_dir, rec.manifest, reused=True)

    if cfg.save_adapter and cfg.adapter_dir and Path(cfg.adapter_dir).exists() and not Path(cfg.adapter_dir).is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"adapter_dir {cfg.adapter_dir} is a file: give a directory "
                                 "path (it is created), or leave adapter_dir unset for <run dir>/adapter")
    try:  # an unusable output location (a file in the path, read-only mount) fails here, before any work
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise runlog.write_error(run_dir, None, e) from e
    for stale in run_dir.glob(".*.tmp"):  # left by a writer killed mid-write (runlog: .<file>.<pid>.tmp)
        stale.unlink(missing_ok=True)
    started_at = datetime.now(timezone.utc)
    t_start = time.perf_counter()
    # announce=False: the caller (sweep, `dlm-triage train`) says once which threshold is live, or why none is
    warning = EarlyWarning(threshold, k=cfg.early_warning_step, action=cfg.early_warning_action, group=cfg.family,
                           announce=False)
    rows: list[dict[str, Any]] = []
    status, reason, routing = "completed", None, None
    r: _Run | None = None
    running_max = -math.inf
    t_train = None
    try:
        r = _setup(cfg)
        r.hooks = hooks or FaultHooks()
        t_train = time.perf_counter()
        for step in range(cfg.steps + 1):
            row = train_step(r, step)
            _close_step_times(r, rows, row["_t0"])  # the previous step ended where this one started
            running_max = runsummary.fold_max_grad(running_max, row["grad_norm"])
            row["max_grad_norm"] = running_max

            bad = monitors.finite_or_diverged(row["loss"], row["grad_norm"])
            legacy_stop = False
            if not r.legacy_fired and monitors.legacy_fires(step, row["top1_freq"]):
                r.legacy_fired = True
                legacy_stop = cfg.legacy_detector_stop
            decision = warning.observe(step, row["grad_norm"])
            if decision is not None:
                routing = {**decision.to_dict(), "event_emitted": emit_routed_event(cfg.run_id, decision)}
                log.warning("%s routed for inspection at step %d: max grad %.4g >= %.4g", cfg.run_id,
                            decision.step, decision.value, decision.threshold)
            if bad is not None:
                status, reason = "diverged", f"non-finite at step {step}: {bad}"
            elif decision is not None and decision.action == "stop":
                status, reason = "stopped_early", f"early warning at step {step} (action 'stop')"
            elif legacy_stop:
                status, reason = "stopped_by_legacy_detector", (
                    f"legacy top-1 detector fired at step {step} (top-1 {row['top1_freq']:.3f} > 0.5)")
            elif step < cfg.steps:
                clip_and_update(r, row["_grad_norm"])

            rows.append(row)
            if progress is not None:
                progress(step, cfg.steps)
            if status != "completed":
                log.warning("%s: %s (%s)", cfg.run_id, status, reason)
                break
        end = r.clock.mark()
        r.clock.wait(end)
        _close_step_times(r, rows, end)
        r.train_s = time.perf_counter() - t_train
    except Exception as e:
        status, reason = "failed", f"{type(e).__name__}: {e}"
        try:
            if rows and r is not None:
                r.train_s = time.perf_counter() - t_train
                try:
                    end = r.clock.mark()
                    r.clock.wait(end)
                    _close_step_times(r, rows, end)
                except Exception:  # a device error: the partial log keeps NaN step times
                    for row in rows:
                        row.pop("_t0", None), row.pop("_grad_norm", None)
                _finish(cfg, r, run_dir, rows, status, reason, routing, started_at, t_start, save=False)
            else:
                _discard_partial_run(run_dir)  # failed before step 0 (e.g. a target that matches nothing)
        finally:
            if r is not None:
                r.lease.release(r.model)  # the base back clean for the process's next run (or evicted)
        raise
    try:
        man = _finish(cfg, r, run_dir, rows, status, reason, routing, started_at, t_start, save=cfg.save_adapter,
                      early_warning=warning.status(len(rows) - 1))
    except OSError:  # disk full / unwritable: no partial adapter or orphan step log left to look like a result
        _discard_partial_run(run_dir)
        raise
    finally:
        r.lease.release(r.model)  # after the adapter is saved: the base back clean for the next run
    res = _result_from_manifest(run_dir, man, reused=False)
    return dataclasses.replace(res, load_time_s=r.lease.load_s, train_time_s=r.train_s,
                               model_resident=r.lease.resident)


def _discard_partial_run(run_dir: Path) -> None:
    """Remove what a run that wrote no manifest left in its directory (adapter/, a step log), then the directory
    if it is empty. A directory with a manifest (e.g. an earlier failed attempt) is left as it is. Best effort:
    without a manifest the directory is incomplete whatever remains."""
    if (run_dir / MANIFEST_FILENAME).exists():
        return
    shutil.rmtree(run_dir / ADAPTER_DIRNAME, ignore_errors=True)
    try:
        (run_dir / STEPLOG_FILENAME).unlink(missing_ok=True)
        run_dir.rmdir()
    except OSError:
        pass


def _finish(cfg: RunConfig, r: _Run, run_dir: Path, rows: list[dict[str, Any]], status: str,
            reason: str | None, routing: dict | None, started_at: datetime, t_start: float,
            *, save: bool, early_warning: dict[str, Any] | None = None) -> dict[str, Any]:
    """Save the adapter, then write the step log and the manifest (last, atomically).

    `early_warning` (EarlyWarning.status): the live warning's rule and whether it evaluated the run (a run that
    ends before k says so here); an optional manifest key, beside the required schema.MANIFEST_KEYS."""
    adapter_path = None
    if save:
        adapter_path = Path(cfg.adapter_dir) if cfg.adapter_dir else run_dir / ADAPTER_DIRNAME
        try:
            save_adapter(r.model, adapter_path, cfg)
        except Exception as e:  # safetensors reports a full disk as SafetensorError("... os error 28")
            if isinstance(e, OSError) or "os error" in str(e):
                raise runlog.write_error(run_dir, f"the adapter ({adapter_path})", e) from e
            raise
    steps = pl.DataFrame(rows, schema=runlog.steps_schema())
    manifest = build_manifest(cfg, r, steps, status, reason, routing, started_at, t_start, adapter_path)
    if early_warning is not None:
        manifest["early_warning"] = early_warning
    return runlog.write_run_atomic(run_dir, steps, manifest, before_manifest_rename=r.hooks.before_manifest_rename)


def build_manifest(cfg: RunConfig, r: _Run, steps: pl.DataFrame, status: str, reason: str | None,
                   routing: dict | None, started_at: datetime, t_start: float,
                   adapter_path: Path | None) -> dict[str, Any]:
    """Every key of schema.MANIFEST_KEYS (null where not applicable; runlog fills the step-log keys)."""
    summary = runsummary.summarise(steps, status=status)  # the one run summary (final loss ... Gini)
    prov = provenance.collect(str(r.device))
    step_ms, mon_ms = steps["step_time_ms"].to_numpy(), steps["monitor_time_ms"].to_numpy()
    top1_ms = steps["top1_forward_ms"].to_numpy()
    top1_evaluated = top1_ms[top1_ms > 0]
    man = {
        "run_id": cfg.run_id, "config": cfg.to_dict(), "config_hash": cfg.config_hash,
        "status": status, "status_reason": reason,
        "code_version": prov["code_version"], "packages": prov["packages"], "seed": cfg.seed,
        "device": str(r.device), "dtype": str(r.dtype).removeprefix("torch."), "hostname": prov["hostname"],
        "started_at": started_at.isoformat(), "finished_at": datetime.now(timezone.utc).isoformat(),
        "wall_time_s": time.perf_counter() - t_start,
        **{k: getattr(summary, k) for k in runsummary.ROW_FIELDS if k != "n_steps"},  # n_steps_logged: runlog
        "top1_source": r.family.top1_source,
        "objective": {"name": r.objective.name, "source": r.objective.source,
                      "samples_t": r.objective.samples_t},
        "data": getattr(r.batches, "stats", None),
        "collapse_definition": COLLAPSE_DEFINITION,
        "diverged_at_step": int(steps.height - 1) if status == "diverged" else None,
        "routed_for_inspection": routing is not None, "routing": routing,
        "matrix_names": [name for name, _ in r.matrices],
        "grad_gini": summary.grad_gini, "grad_top1_share": summary.grad_top1_share,
        "grad_concentration": summary.grad_concentration,
        "adapter_path": str(adapter_path) if adapter_path is not None else None,
        "monitor_overhead": {
            "monitor_ms_mean": float(mon_ms.mean()),
            "step_ms_mean": float(step_ms.mean()),
            "ratio": float(mon_ms.mean() / step_ms.mean()) if step_ms.mean() > 0 else None,
            "top1_forward_ms_mean": float(top1_evaluated.mean()) if top1_evaluated.size else 0.0,
            "top1_every": cfg.top1_every,
            "top1_source": r.family.top1_source,
            # where the run's wall time went besides the steps (resident base: no load)
            "model_load_s": r.lease.load_s if r.lease is not None else None,
            "model_resident": r.lease.resident if r.lease is not None else None,
            "train_s": r.train_s,
            "grad_accum_steps": cfg.grad_accum_steps,
            "gradient_checkpointing": r.checkpointing,
        },
    }
    missing = [k for k in MANIFEST_KEYS if k not in man and k not in ("schema_version", "steplog", "steplog_sha256",
                                                                       "n_steps_logged")]
    if missing:  # a programming error, not user input
        raise RuntimeError(f"manifest misses keys {missing}: fill them in build_manifest")
    return man
