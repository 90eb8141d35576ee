"""What every report figure shares: the Agg backend, PNG bytes, the "cannot draw this" signal, panel limits."""

from __future__ import annotations

import io
import math
from typing import Sequence

import polars as pl

from dlm_triage.report.load import _Data

FIGURE_DPI = 110
INSPECTION_WINDOW = (25, 100)
"""Step-k band where max-grad precision is stable in the paper (App. B.1); drawn on the step-k figure."""


MAX_PANELS = 4
"""Per-group figures draw at most this many groups (the largest by n) and say so when they drop some."""


PREDICTOR_COLOURS = {"max-grad up to k": "#1f77b4", "loss at k": "#d62728", "max top-1 up to k": "#7f7f7f"}


class _Missing(Exception):
    """A figure cannot be drawn from this data; the message says why (shown in the report)."""


def _drop_infinite_monitor(runs: pl.DataFrame, notes: list[str], figure: str) -> pl.DataFrame:
    """`runs` without the ones whose monitor is +inf (a diverged run's non-finite norm within the window: above
    every threshold, and not placeable on a log axis); a note counts them, so no run leaves a figure silently."""
    inf = runs.filter(pl.col("monitor").is_infinite())
    if inf.height:
        notes.append(f"{figure}: {inf.height} diverged run(s) with a non-finite grad norm in the window "
                     "(max-grad +inf, above every threshold) are not drawn.")
    return runs.filter(pl.col("monitor").is_finite())


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    # every figure uses layout="constrained": one draw per savefig (bbox_inches="tight" would draw twice)
    fig.savefig(buf, format="png", dpi=FIGURE_DPI, facecolor="white")
    _plt().close(fig)
    return buf.getvalue()


def _panel_grid(n: int, *, width: float, height: float, pad_w: float = 0.0, pad_h: float = 0.0,
                ncol: int | None = None):
    """(fig, axes) for `n` panels of `width` x `height` inches, two per row unless `ncol`; the unused cells of
    the last row hidden."""
    ncol = min(2, n) if ncol is None else ncol
    nrow = math.ceil(n / ncol)
    fig, axes = _plt().subplots(nrow, ncol, figsize=(width * ncol + pad_w, height * nrow + pad_h), squeeze=False,
                                layout="constrained")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    return fig, axes


def _largest(data: _Data, names: Sequence[str], notes: list[str], what: str) -> list[str]:
    n = {g: data.cr.groups[g].n or 0 for g in names}
    keep = sorted(names, key=lambda g: (-n[g], g))[:MAX_PANELS]
    if len(names) > MAX_PANELS:
        notes.append(f"{what}: the {MAX_PANELS} largest of {len(names)} groups are drawn "
                     f"({', '.join(sorted(set(names) - set(keep)))} left out).")
    return keep


def _k_labels(ks: Sequence[int], min_gap_decades: float = 0.12) -> list[str]:
    """Tick labels on a log axis; ticks closer than `min_gap_decades` share one label ('10,11')."""
    labels = [str(k) for k in ks]
    last = 0
    for i in range(1, len(ks)):
        if math.log10(ks[i]) - math.log10(ks[last]) < min_gap_decades:
            labels[last] += f",{ks[i]}"
            labels[i] = ""
        else:
            last = i
    return labels
