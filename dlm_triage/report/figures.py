"""The report's five figures: names, titles, captions, and drawing them all (a figure that cannot be drawn from
this data is reported missing with the reason)."""

from __future__ import annotations

from dlm_triage.report.fig_groups import _fig_maxgrad, _fig_stepk, _fig_top1
from dlm_triage.report.fig_surfaces import _fig_heatmap, _fig_top1_traj
from dlm_triage.report.figkit import INSPECTION_WINDOW, _Missing
from dlm_triage.report.load import _Data
from dlm_triage.schema import LEGACY_FIRST_STEP, LEGACY_TOP1_THRESHOLD

FIGURES: tuple[tuple[str, str], ...] = (
    ("top1_fire_vs_collapse", "Top-1 warning fire rate vs actual collapse rate per group"),
    ("maxgrad_stable_vs_unstable", "Max-grad distributions per learning rate, stable vs unstable runs (log scale)"),
    ("stepk_precision", "Step-k held-out precision per predictor (bootstrap CI bars)"),
    ("rank_mask_heatmap", "Median max-grad over LoRA rank x mask ratio, one model at one learning rate (log colour)"),
    ("top1_trajectories", "Top-1 frequency trajectories from step 0 (pre-equilibrium saturation)"),
)


_FIGURE_FUNCS = {
    "top1_fire_vs_collapse": _fig_top1, "maxgrad_stable_vs_unstable": _fig_maxgrad,
    "stepk_precision": _fig_stepk, "rank_mask_heatmap": _fig_heatmap, "top1_trajectories": _fig_top1_traj,
}


_CAPTIONS = {
    "top1_fire_vs_collapse": "Share of runs where the legacy top-1 warning fired (top-1 frequency > "
                             f"{LEGACY_TOP1_THRESHOLD} at some step >= {LEGACY_FIRST_STEP}: it first samples at "
                             f"step {LEGACY_FIRST_STEP}, then every step until it fires) next to the share that "
                             "actually collapsed. A warning that fires far more often than collapse happens has "
                             "no precision.",
    "maxgrad_stable_vs_unstable": "Max-grad per run, one column per group and learning rate (the rate moves "
                                  "max-grad by orders of magnitude), stable (final loss at or below the group "
                                  "median) vs unstable (final loss at/above the group's 90th percentile, or "
                                  "diverged); mid-band runs are left out. Dashed: the group's threshold.",
    "stepk_precision": "Held-out precision of each predictor read at step k (median over split-bootstrap "
                       "replicates; bar = CI, predictors side by side at each k). Dotted: the always-positive "
                       "baseline (flag every run); dashed: its ceiling, the bar max-grad's lower CI bound must "
                       "clear. Shaded: "
                       f"the inspection window k={INSPECTION_WINDOW[0]}..{INSPECTION_WINDOW[1]}. The last k's "
                       "loss is the label itself.",
    "rank_mask_heatmap": "Median max-grad per (LoRA rank, mask ratio) cell within one model at one learning "
                         "rate (one panel per group | model | learning rate; never pooled), log colour scale; "
                         "n = runs per cell; grey = no runs in that cell. Runs whose objective draws t per batch "
                         "(llada_sft, mdlm, ...) sit at the t of their max-grad step, binned to 0.1.",
    "top1_trajectories": "Top-1 frequency from step 0: median and IQR over runs, plus the three runs with the "
                         "highest (red) and lowest (blue) final loss. Dashed: the legacy 0.5 threshold; dotted: "
                         "the legacy detector's first sample (step 11). Curves already above 0.5 at step 0 show "
                         "pre-equilibrium "
                         "saturation: the warning fires before training can matter.",
}


def draw_figures(data: _Data, notes: list[str]) -> tuple[dict[str, bytes], dict[str, str]]:
    """({name: PNG bytes} of the figures drawn, {name: why missing} of the others), in FIGURES order; figure
    notes (groups left out, pooled rates) are appended to `notes`."""
    pngs: dict[str, bytes] = {}
    missing: dict[str, str] = {}
    for name, _title in FIGURES:
        try:
            pngs[name] = _FIGURE_FUNCS[name](data, notes)
        except _Missing as e:
            missing[name] = str(e)
    return pngs, missing
