"""Figures with one bar, column or panel per group: top-1 fire vs collapse, max-grad stable vs unstable per
learning rate, step-k precision."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import polars as pl

from dlm_triage.report.figkit import (INSPECTION_WINDOW, PREDICTOR_COLOURS, _drop_infinite_monitor, _k_labels,
                                      _largest, _Missing, _panel_grid, _plt, _png)
from dlm_triage.report.fmt import _fmt
from dlm_triage.report.load import _Data
from dlm_triage.report.verdicts import _baseline, _baseline_ceiling, _group_names, _stepk_series, _threshold

def _fig_top1(data: _Data, notes: list[str]) -> bytes:
    groups = data.cr.groups

    def rate(g: str, key: str) -> float | None:
        # over every run of the group (no label needed: runs imported without a final loss count too)
        every = groups[g].top1_all_runs
        v = getattr(every, key) if every is not None else None
        return getattr(groups[g].top1, key) if v is None else v

    def n_runs(g: str) -> int | None:
        every = groups[g].top1_all_runs
        return every.n if every is not None and every.n is not None else groups[g].n

    names = [g for g in groups if rate(g, "fire_rate") is not None]
    if not names:
        raise _Missing("no group has a top-1 fire rate (top-1 frequency was not logged for these runs)")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(names) + 3), 3.8), layout="constrained")
    x = np.arange(len(names))
    fire = [rate(g, "fire_rate") for g in names]
    coll = [rate(g, "collapse_rate") or 0.0 for g in names]
    w = 0.38
    b1 = ax.bar(x - w / 2, fire, w, color="#ff7f0e", label="top-1 warning fired")
    b2 = ax.bar(x + w / 2, coll, w, color="#2ca02c", label="actually collapsed")
    for bars, vals in ((b1, fire), (b2, coll)):
        for b, v in zip(bars, vals):
            ax.annotate(f"{100 * v:.0f}%", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom",
                        fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(x, [f"{g}\n(n={n_runs(g)})"
                      for g in names])
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("share of runs")
    ax.set_title("Top-1 warning fire rate vs actual collapse rate")
    ax.legend(loc="upper right", fontsize=8, frameon=False, ncols=2)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


MAX_LR_FACETS = 6
"""The max-grad figure splits a group by learning rate (what drives max-grad most) up to this many rates."""


def _lr_label(lr: Any) -> str:
    return "lr ?" if lr is None else f"lr {float(lr):g}"


def _maxgrad_columns(runs: pl.DataFrame, names: Sequence[str], notes: list[str]) -> list[tuple[str, Any]]:
    """The max-grad figure's columns: one per (group, learning rate), or (group, 'all') for a group with more
    than MAX_LR_FACETS rates (said in `notes`). The learning rate moves max-grad by orders of magnitude, so
    stable/unstable pooled over rates would mostly show which rate a run had."""
    cols: list[tuple[str, Any]] = []
    for g in names:
        lrs = sorted(set(runs.filter(pl.col("group") == g)["learning_rate"].to_list()), key=lambda x: (x is None, x))
        if len(lrs) > MAX_LR_FACETS:
            notes.append(f"Max-grad figure: {g} has {len(lrs)} learning rates; drawn pooled.")
            lrs = ["all"]
        cols += [(g, lr) for lr in lrs]
    return cols


def _fig_maxgrad(data: _Data, notes: list[str]) -> bytes:
    runs = data.runs.filter(pl.col("monitor").is_not_null() & (pl.col("monitor") > 0))
    runs = _drop_infinite_monitor(runs, notes, "Max-grad figure")
    if runs.height == 0:
        raise _Missing("no run has a positive max-grad value")
    names = [g for g in _group_names(data.cr) if g in set(runs["group"].to_list())]
    if not names:
        raise _Missing("none of the calibration's groups has runs with these values in the database")
    if "learning_rate" not in runs.columns:
        runs = runs.with_columns(pl.lit(None, pl.Float64).alias("learning_rate"))
    cols = _maxgrad_columns(runs, names, notes)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.5, 1.25 * len(cols) + 2.5), 4.6), layout="constrained")
    rng = np.random.default_rng(0)  # jitter only
    colours = {"stable": "#1f77b4", "unstable": "#d62728"}
    empty, ns = [], []
    for i, (g, lr) in enumerate(cols):
        sub = runs.filter(pl.col("group") == g)
        if lr != "all":
            sub = sub.filter(pl.col("learning_rate").is_null() if lr is None else pl.col("learning_rate") == lr)
        ns.append(sub.height)
        for j, lab in enumerate(("stable", "unstable")):
            v = sub.filter(pl.col("label") == lab)["monitor"].to_numpy()
            pos = i + (j - 0.5) * 0.4
            if v.size == 0:
                empty.append(f"{g}{'' if lr == 'all' else ' ' + _lr_label(lr)}: no {lab} runs")
                ax.text(pos, 0.03, f"no {lab}", ha="center", va="bottom", fontsize=7,
                        color="#888", transform=ax.get_xaxis_transform())
                continue
            ax.boxplot([v], positions=[pos], widths=0.3, showfliers=False, patch_artist=True,
                       boxprops={"facecolor": colours[lab], "alpha": 0.25}, medianprops={"color": "black"})
            ax.scatter(pos + rng.uniform(-0.1, 0.1, v.size), v, s=10, alpha=0.7, color=colours[lab],
                       linewidths=0)
    # the group's threshold across all of its columns; a thin line between groups
    for g in names:
        idx = [i for i, (gg, _lr) in enumerate(cols) if gg == g]
        thr = _threshold(data.cr.groups[g])
        if thr is not None and thr > 0:
            ax.hlines(thr, idx[0] - 0.45, idx[-1] + 0.45, colors="black", linestyles="--", linewidth=1.2)
            reg = data.cr.groups[g].registry
            rejected = reg is not None and reg.status == "rejected"
            ax.annotate(f"{g} threshold {_fmt(thr)}" + (" (rejected: not live)" if rejected else ""),
                        (idx[0] - 0.45, thr), fontsize=7, va="bottom", ha="left",
                        xytext=(0, 2), textcoords="offset points",
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
        if idx[0] > 0:
            ax.axvline(idx[0] - 0.5, color="#c8ccd4", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(cols)), [f"{g}\n{'all rates' if lr == 'all' else _lr_label(lr)}\n(n={n})"
                                     for (g, lr), n in zip(cols, ns)], fontsize=8)
    ax.set_xlim(-0.6, len(cols) - 0.4)
    ax.set_ylabel(data.monitor_label + " (log)")
    # a short title (a long one is clipped at the figure's edge); the definitions go in the legend
    ax.set_title("Max-grad per learning rate: stable vs unstable runs", fontsize=10)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    legend = {"stable": "stable (final loss <= group median)", "unstable": "unstable (>= p90, or diverged)"}
    # below the axes: inside, it covers the threshold labels and the tallest boxes
    fig.legend(handles=[Patch(color=colours[k], alpha=0.5, label=legend[k]) for k in colours]
               + [Line2D([], [], color="black", linestyle="--", linewidth=1.2, label="group threshold")],
               fontsize=8, frameon=False, loc="outside lower center", ncols=3)
    ax.spines[["top", "right"]].set_visible(False)
    if empty:
        notes.append("Max-grad figure: " + "; ".join(empty) + " (nothing to contrast there).")
    return _png(fig)


def _fig_stepk(data: _Data, notes: list[str]) -> bytes:
    groups = data.cr.groups
    names = [g for g in groups if _stepk_series(groups[g])]
    if not names:
        raise _Missing("no step-k sweep in the calibration (runs have no step logs, e.g. an imported 'cells' "
                       "CSV, or too few unstable runs)")
    names = _largest(data, names, notes, "Step-k figure")
    fig, axes = _panel_grid(len(names), width=6.0, height=3.8, pad_h=0.5)
    for ax, g in zip(axes.flat, names):
        series = _stepk_series(groups[g])
        allk = sorted({k for s in series.values() for k in s})
        ax.axvspan(*INSPECTION_WINDOW, color="#fff3cc", alpha=0.7, zorder=0, linewidth=0,
                   label=f"inspection window k={INSPECTION_WINDOW[0]}..{INSPECTION_WINDOW[1]}")
        # the CI of each predictor as a bar at its k, the predictors side by side (a small shift on the log
        # axis): overlapping filled ribbons of three predictors, often [0, 1] wide, hide each other
        for i, (label, s) in enumerate(series.items()):
            ks = sorted(s)
            shift = 1.045 ** (i - (len(series) - 1) / 2)
            med = np.array([np.nan if s[k]["median"] is None else s[k]["median"] for k in ks])
            lo = np.array([np.nan if s[k]["lo"] is None else s[k]["lo"] for k in ks])
            hi = np.array([np.nan if s[k]["hi"] is None else s[k]["hi"] for k in ks])
            c = PREDICTOR_COLOURS.get(label)
            xs = np.asarray(ks, dtype=float) * shift
            line, = ax.plot(xs, med, marker="o", ms=4, label=label, color=c, zorder=3)
            ok = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(med)
            ax.errorbar(xs[ok], med[ok], yerr=[np.clip(med[ok] - lo[ok], 0, None), np.clip(hi[ok] - med[ok], 0, None)],
                        fmt="none", ecolor=line.get_color(), elinewidth=1.6, capsize=3, alpha=0.75, zorder=2)
        base = _baseline(groups[g])
        if base is not None:
            ax.axhline(base, color="black", linestyle=":", linewidth=1.3,
                       label=f"always-positive baseline {_fmt(base)}")
        ceiling = _baseline_ceiling(groups[g])
        if ceiling is not None and base is not None and ceiling > base:
            ax.axhline(ceiling, color="#555", linestyle="--", linewidth=0.9,
                       label=f"its ceiling (upper CI bound) {_fmt(ceiling)}")
        ax.set_xscale("log")
        ax.set_xticks(allk, _k_labels(allk))
        ax.minorticks_off()
        ax.set_xlim(min(allk) * 0.85, max(max(allk), INSPECTION_WINDOW[1]) * 1.15)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("step k")
        ax.set_ylabel("held-out precision")
        ax.set_title(f"{g} (n={groups[g].n})")
        ax.spines[["top", "right"]].set_visible(False)
    h, lab = axes.flat[0].get_legend_handles_labels()
    # three columns: five entries in one row are wider than a one-group figure and get clipped
    fig.legend(h, lab, loc="outside lower center", ncols=min(3, len(lab)), fontsize=8, frameon=False)
    fig.suptitle("Step-k precision: median over split-bootstrap replicates, bars = CI", fontsize=11)
    return _png(fig)
