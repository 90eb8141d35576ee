"""Figures over the runs' configurations and step logs: the rank x mask-ratio surface of max-grad and the top-1
trajectories from step 0."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from dlm_triage.report.figkit import MAX_PANELS, _drop_infinite_monitor, _largest, _Missing, _panel_grid, _png
from dlm_triage.report.fmt import _fmt
from dlm_triage.report.load import _Data
from dlm_triage.report.verdicts import _group_names
from dlm_triage.schema import LEGACY_FIRST_STEP, LEGACY_TOP1_THRESHOLD

T_BIN = 0.1
"""Width of the noise-level bins of the rank x mask figure for objectives that draw t per batch."""


def _binned_realised_t(data: _Data) -> pl.DataFrame:
    """data.runs with `mask_ratio` replaced, for runs whose objective draws t itself (llada_sft, mdlm, ...), by
    the t logged at the step of the run's max grad norm, binned to T_BIN (bin centres): their configured rho is
    a placeholder, the noise level that produced the max-grad is what the figure should place."""
    from dlm_triage.config import draws_own_t

    runs = data.runs
    if "objective" not in runs.columns or data.steps is None or "mask_ratio" not in data.steps.columns:
        return runs
    sampled = [r for r, o in zip(runs["run_id"].to_list(), runs["objective"].to_list()) if o and draws_own_t(o)]
    if not sampled:
        return runs
    at_max = (data.steps.filter(pl.col("run_id").is_in(sampled) & pl.col("grad_norm").is_finite())
              .sort("grad_norm", descending=True).group_by("run_id").first()
              .select("run_id", (((pl.col("mask_ratio") / T_BIN).floor().clip(0, 1 / T_BIN - 1) + 0.5) * T_BIN)
                      .round(3).alias("_t_bin")))
    return (runs.join(at_max, on="run_id", how="left")
            .with_columns(pl.coalesce("_t_bin", "mask_ratio").alias("mask_ratio")).drop("_t_bin"))


def _fig_heatmap(data: _Data, notes: list[str]) -> bytes:
    if "rank" not in data.runs.columns:
        raise _Missing("runs have no rank column")
    runs = _binned_realised_t(data).filter(pl.col("rank").is_not_null() & pl.col("mask_ratio").is_not_null()
                            & pl.col("monitor").is_not_null() & (pl.col("monitor") > 0))
    runs = _drop_infinite_monitor(runs, notes, "Heatmap")
    if runs.height == 0:
        raise _Missing("no run has a rank, a mask ratio and a positive max-grad value")
    known = set(_group_names(data.cr))
    runs = runs.filter(pl.col("group").is_in(known))
    if runs.height == 0:
        raise _Missing("none of the calibration's groups has runs with these values in the database")
    # one panel per (group, model, learning rate): a rank x mask surface is never pooled over models or learning
    # rates (paper 4.2: LLaDA2.0-mini at lr 1e-4); the panels with the most runs are drawn
    for c in ("model_id", "learning_rate"):
        if c not in runs.columns:
            runs = runs.with_columns(pl.lit(None).alias(c))
    runs = runs.with_columns(pl.format("{} | {} | lr {}", pl.col("group"),
                                       pl.col("model_id").cast(pl.String).fill_null("(no model id)"),
                                       pl.col("learning_rate").cast(pl.String).fill_null("?")).alias("_panel"))
    sizes = runs.group_by("_panel").agg(pl.len().alias("n")).sort(["n", "_panel"], descending=[True, False])
    names = sizes["_panel"].to_list()[:MAX_PANELS]
    if sizes.height > MAX_PANELS:
        notes.append(f"Heatmap: the {MAX_PANELS} largest of {sizes.height} (group, model, learning rate) slices "
                     f"are drawn ({', '.join(sizes['_panel'].to_list()[MAX_PANELS:])} left out).")
    cells = (runs.filter(pl.col("_panel").is_in(names)).rename({"_panel": "panel"})
             .group_by("panel", "rank", "mask_ratio").agg(pl.col("monitor").median().alias("med"),
                                                         pl.len().alias("n")))
    vmin, vmax = float(cells["med"].min()), float(cells["med"].max())
    if vmax <= vmin:
        vmax = vmin * 1.01
    from matplotlib.colors import LogNorm

    max_cols = max(cells.filter(pl.col("panel") == g)["mask_ratio"].n_unique() for g in names)
    panel_w = min(10.0, max(4.6, 0.62 * max_cols + 1.6))
    fig, axes = _panel_grid(len(names), width=panel_w, height=3.9, pad_w=1.2,
                            ncol=1 if panel_w > 6.5 else None)
    norm = LogNorm(vmin=vmin, vmax=vmax)
    im = None
    for ax, g in zip(axes.flat, names):
        c = cells.filter(pl.col("panel") == g)
        ranks = sorted(c["rank"].unique().to_list())
        rhos = sorted(c["mask_ratio"].unique().to_list())
        grid = np.full((len(ranks), len(rhos)), np.nan)
        nn = np.zeros_like(grid, dtype=int)
        for r, m, med, n in c.select("rank", "mask_ratio", "med", "n").iter_rows():
            grid[ranks.index(r), rhos.index(m)] = med
            nn[ranks.index(r), rhos.index(m)] = n
        im = ax.imshow(np.ma.masked_invalid(grid), norm=norm, cmap="viridis", aspect="auto", origin="lower")
        ax.set_facecolor("#d9d9d9")  # cells without runs
        # cell labels only while they fit: value + n up to 8 columns, the value alone up to 14
        if len(rhos) <= 14 and len(ranks) <= 12:
            for (i, j), v in np.ndenumerate(grid):
                if np.isfinite(v):
                    txt = f"{_fmt(v)}\nn={nn[i, j]}" if len(rhos) <= 8 else _fmt(v)
                    ax.text(j, i, txt, ha="center", va="center", fontsize=7 if len(rhos) <= 8 else 6.5,
                            color="white" if norm(v) < 0.55 else "black")
        ax.set_xticks(range(len(rhos)), [f"{m:g}" for m in rhos], rotation=45 if len(rhos) > 8 else 0)
        ax.set_yticks(range(len(ranks)), [str(int(r)) for r in ranks])
        ax.set_xlabel("mask ratio rho")
        ax.set_ylabel("LoRA rank r")
        ax.set_title(g, fontsize=9)
    from matplotlib.ticker import FuncFormatter

    cb = fig.colorbar(im, ax=axes.ravel().tolist(), label=f"median {data.monitor_label} (log)", shrink=0.9,
                      aspect=30)
    # readable ticks on a log colour scale: 1-2-5 steps inside the data range, plain numbers
    nice = [m * 10.0 ** e for e in range(math.floor(math.log10(vmin)), math.ceil(math.log10(vmax)) + 1)
            for m in (1, 2, 5)]
    ticks = [t for t in nice if vmin <= t <= vmax] or [vmin, vmax]
    cb.set_ticks(ticks)
    cb.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _fmt(v)))
    cb.ax.minorticks_off()
    fig.suptitle("Rank x mask-ratio surface of max-grad", fontsize=11)
    return _png(fig)


def _fig_top1_traj(data: _Data, notes: list[str]) -> bytes:
    if data.steps is None:
        raise _Missing("no step logs for these runs (e.g. imported 'cells' rows): no trajectories to draw")
    st = data.steps.filter(pl.col("top1_freq").is_not_null() & pl.col("top1_freq").is_not_nan())
    if st.height == 0:
        raise _Missing("the step logs have no top-1 frequency values (top-1 monitor off)")
    lab = data.runs.select("run_id", "group", "label", "final_loss")
    st = st.join(lab, on="run_id", how="inner")
    names = [g for g in _group_names(data.cr) if g in set(st["group"].to_list())]
    if not names:
        raise _Missing("none of the calibration's groups has runs with these values in the database")
    names = _largest(data, names, notes, "Top-1 trajectories")
    fig, axes = _panel_grid(len(names), width=6.0, height=3.6, pad_h=0.6)
    for ax, g in zip(axes.flat, names):
        sub = st.filter(pl.col("group") == g)
        agg = (sub.group_by("step").agg(pl.col("top1_freq").median().alias("med"),
                                        pl.col("top1_freq").quantile(0.25, "linear").alias("q25"),
                                        pl.col("top1_freq").quantile(0.75, "linear").alias("q75"),
                                        pl.len().alias("n")).sort("step"))
        ax.fill_between(agg["step"], agg["q25"], agg["q75"], color="#9467bd", alpha=0.25, linewidth=0,
                        label="IQR over runs")
        ax.plot(agg["step"], agg["med"], color="#9467bd", linewidth=2, label="median")
        # a few individual runs: the three highest and three lowest final losses
        per = sub.select("run_id", "label", "final_loss").unique("run_id").drop_nulls("final_loss")
        pick = per.sort("final_loss", descending=True).head(3).vstack(per.sort("final_loss").head(3)).unique(
            "run_id", maintain_order=True)
        for rid, lb in pick.select("run_id", "label").iter_rows():
            t = sub.filter(pl.col("run_id") == rid).sort("step")
            ax.plot(t["step"], t["top1_freq"], linewidth=0.8, alpha=0.8,
                    color="#d62728" if lb == "unstable" else "#1f77b4" if lb == "stable" else "#7f7f7f")
        ax.axhline(LEGACY_TOP1_THRESHOLD, color="black", linestyle="--", linewidth=1,
                   label=f"legacy threshold {LEGACY_TOP1_THRESHOLD}")
        ax.axvline(LEGACY_FIRST_STEP, color="#ff7f0e", linestyle=":", linewidth=1.3,
                   label=f"legacy detector's first sample (step {LEGACY_FIRST_STEP})")
        s0 = agg.filter(pl.col("step") == agg["step"].min())
        ax.set_title(f"{g}: step-0 median top-1 {_fmt(float(s0['med'][0]))} (n={sub['run_id'].n_unique()})",
                     fontsize=10)
        ax.set_ylim(0, 1.02)
        # symlog: steps 0..10 linear (where saturation happens, paper App. B), then log out to the last step
        last = int(agg["step"].max())
        ax.set_xscale("symlog", linthresh=10, linscale=1.0)
        ax.set_xlim(0, last)
        ticks = [t for t in (0, 2, 4, 6, 8, 10, 25, 50, 100, 200, 500, 1000) if t <= last]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("step (linear to 10, log after)")
        ax.set_ylabel("top-1 frequency")
        ax.spines[["top", "right"]].set_visible(False)
    from matplotlib.lines import Line2D

    h, labels = axes.flat[0].get_legend_handles_labels()
    h += [Line2D([], [], color="#d62728", lw=0.8), Line2D([], [], color="#1f77b4", lw=0.8)]
    labels += ["run, highest final loss", "run, lowest final loss"]
    fig.legend(h, labels, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    return _png(fig)
