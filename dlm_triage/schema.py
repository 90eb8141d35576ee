"""The on-disk contracts every part of dlm-triage shares: run directory layout, step-log columns, manifest keys.

A run directory (``<runs root>/<run_id>/``) holds:

- ``steps.parquet``  one row per logged step (steps 0..cfg.steps), columns `STEP_COLUMNS`;
- ``manifest.json``  written last and atomically (tmp file + fsync + rename). A run directory without a
  manifest is incomplete, whatever else it holds; the manifest records the step log's sha256 and row count so a
  truncated or replaced log is detected at ingestion;
- ``adapter/``       adapter weights (peft format; NaRA adds its hypernetwork), unless the config says elsewhere.

Step t is measured at the weights after t optimizer updates: its loss and gradient come from one
forward/backward on batch t; update t+1 (clipped at cfg.clip_grad_norm) follows, except after the last step.
"""

from __future__ import annotations

STEPLOG_FILENAME = "steps.parquet"
MANIFEST_FILENAME = "manifest.json"
ADAPTER_DIRNAME = "adapter"
MANIFEST_SCHEMA_VERSION = 1

# name -> (polars dtype name, meaning)
STEP_COLUMNS: dict[str, tuple[str, str]] = {
    "step": ("Int32", "optimizer updates applied before this measurement (0 = adapter at init)"),
    "loss": ("Float64", "training loss of batch `step` under cfg.normalisation"),
    "grad_norm": ("Float64", "global L2 norm of all trainable adapter-parameter gradients, before clipping"),
    "max_grad_norm": ("Float64", "running max of grad_norm over steps 0..step (inclusive)"),
    "top1_freq": ("Float64", "argmax mode frequency (paper App. D): share of evaluated positions whose argmax "
                  "is the most common argmax token; NaN on steps where it was not computed (top1_every)"),
    "mask_ratio": ("Float64", "realised share of masked tokens in batch `step`"),
    "n_masked": ("Int64", "number of masked positions in batch `step`"),
    "lr": ("Float64", "learning rate used by the update that follows this step"),
    "clipped": ("Boolean", "grad_norm > clip threshold (the update was clipped)"),
    "step_time_ms": ("Float64", "wall time of the step including monitors"),
    "monitor_time_ms": ("Float64", "wall time spent in monitors (grad norms, top-1 without extra forward)"),
    "top1_forward_ms": ("Float64", "wall time of the extra clean-batch forward for top-1 (0 when none)"),
    "matrix_grad_norms": ("List(Float64)", "L2 grad norm of each adapter matrix, order = manifest.matrix_names"),
}

RUN_STATUSES = ("completed", "diverged", "stopped_early", "stopped_by_legacy_detector", "failed")
"""completed: all steps ran. diverged: a NaN/Inf loss or gradient ended the run (log kept up to that step,
the bad step included). stopped_early: the live early warning stopped it (action 'stop').
stopped_by_legacy_detector: RunConfig.legacy_detector_stop was set and the legacy top-1 detector fired (the
paper's runner "early-stops all 60 raw traces at step 11"); never a collapse. failed: an exception; only
written when the trainer could still write a manifest."""
REUSABLE_STATUSES = ("completed", "diverged", "stopped_early", "stopped_by_legacy_detector")
"""A run directory with one of these statuses and the same config hash is finished: reused, never retrained;
a 'failed' one is run again."""

# Manifest keys (all present; null where not applicable).
MANIFEST_KEYS = (
    "schema_version", "run_id", "config", "config_hash", "status", "status_reason",
    "code_version", "packages", "seed", "device", "dtype", "hostname",
    "started_at", "finished_at", "wall_time_s",
    "n_steps_logged", "final_loss", "max_grad_norm",
    "top1_step0", "top1_warning_detected", "top1_fire_step",
    "top1_cross_050", "top1_cross_080", "top1_cross_095", "top1_source",
    "collapsed", "collapse_definition",
    "diverged_at_step",
    "routed_for_inspection", "routing",
    "matrix_names", "grad_gini", "grad_top1_share",  # the paper's concentration (monitors.gradient_concentration)
    "steplog", "steplog_sha256", "adapter_path", "monitor_overhead",
)

OPTIONAL_MANIFEST_KEYS = ("grad_concentration", "objective", "data", "early_warning")
"""Written by the trainer, not required of a manifest (older run directories lack them).
grad_concentration: {definition name: {gini, top_share, n_steps, definition}} for both definitions of
monitors.CONCENTRATION_DEFINITIONS; grad_gini/grad_top1_share are its 'paper_last10_steps' values.
objective: {name, source, samples_t} of the run's objective. data: the batch source's counts (format, rows,
truncated responses, dropped tokens, the padding token). early_warning: what the live warning used or why none
was active (written when the trainer knows it)."""

# The legacy top-1 detector (paper 4.1, 4.5, Limitations): "The legacy detector samples at step 11 and fires in
# every configuration because the threshold (0.5) is below the corpus-wide initialization distribution". It
# first samples at step 11, then every step until it fires: fire step = the first evaluated step t >= 11 with
# top-1 frequency > 0.5 (strict: "more than 50%"); never above 0.5 from step 11 on = not fired.
LEGACY_TOP1_THRESHOLD = 0.5
LEGACY_FIRST_STEP = 11
TOP1_CROSS_LEVELS = (0.5, 0.8, 0.95)
COLLAPSE_DEFINITION = (
    "collapsed iff top-1 frequency >= 0.95 at every evaluated step of the last 10% of the run "
    "(at least one evaluated step) AND the final loss is >= the step-0 loss: the model predicts one token "
    "everywhere and did not learn"
)
