"""Vectorised statistics primitives for the calibration protocol (paper 4.1, 4.5, App. B-D), in scipy's shape.

Every function validates its input (messages name the argument), computes, and returns a frozen result.
Resampling functions take the random stream as ``rng`` (a ``np.random.Generator``) and draw all replicates at
once, so a straightforward loop that draws with the same calls (`draw_splits`, `draw_resamples`) reproduces
every replicate exactly (``benchmarks/reference_calibration.py`` does, and the tests check it).

Degenerate data (too few values, no positives, constant values, undefined ratios) never raises and never
returns a silent NaN: the result carries ``flags`` (short machine-readable names) and ``warnings`` (sentences),
and a `DegenerateDataWarning` is emitted. NaN in a result field means "undefined" and is always flagged.

Rules (stated here, tested in tests/test_stats.py):

- labels: a run is unstable iff its final loss >= the group's 90th percentile (numpy 'linear'); stable iff its
  final loss < the group's median; otherwise mid-band (excluded from stable/unstable contrasts). Percentiles are
  computed over the non-diverged runs with a finite final loss. Diverged runs are unstable by definition. A run
  neither diverged nor with a finite final loss (e.g. failed) is excluded (flagged, counted).
- thresholds: a predictor is positive iff value >= threshold. Candidates are the training values; the
  threshold maximises F1 on train; among equal-F1 candidates the lowest wins. A NaN value is never positive and
  never a candidate (a run with no value at step k is predicted negative).
- precision = TP/(TP+FP), recall = TP/(TP+FN), F1 = 2TP/(2TP+FP+FN); each is undefined (NaN, flagged) when its
  denominator is 0 (sklearn's ``zero_division=np.nan``). A test split with no positives has undefined recall
  but a defined precision (0 when anything was predicted positive).
- split bootstrap: each replicate resamples the n configurations with replacement, redraws the train/test split
  (n_test = ceil(test_size * n), the first n_test positions of a fresh permutation), reselects the threshold on
  train and evaluates on test. A replicate with no positive in train has no threshold: it is counted
  (``n_no_positive_train``) and its metrics are NaN; one with no positive in test is counted
  (``n_no_positive_test``). Percentile CIs are over the replicates where the metric is defined.

Modules: `validate` (argument checks, `DegenerateDataWarning`), `labels`, `thresholds` (F1-optimal selection,
confusion counts), `bootstrap` (split bootstrap, percentile CIs, ratio CI), `ranktests` (Mann-Whitney,
Kruskal-Wallis, Bonferroni), `concentration`, `power`. Every public name is importable here.
"""

from __future__ import annotations

from dlm_triage.stats.bootstrap import (RatioCIResult, SplitBootstrapResult, SplitEvaluation, draw_resamples,
                                        draw_splits, n_test_of, percentile_ci, ratio_ci, split_bootstrap,
                                        split_evaluate, split_weights)
from dlm_triage.stats.concentration import ConcentrationResult, concentration
from dlm_triage.stats.labels import (LABEL_QUANTILES, LABEL_RULE, PERCENTILE_METHOD, Labels, label_masks,
                                     stability_labels)
from dlm_triage.stats.power import PowerResult, runs_per_cell, t_test_power
from dlm_triage.stats.ranktests import KruskalResult, MannWhitneyResult, bonferroni, kruskal, mann_whitney
from dlm_triage.stats.thresholds import Confusion, ThresholdSelection, confusion_at, select_threshold
from dlm_triage.stats.validate import DegenerateDataWarning

__all__ = [
    "DegenerateDataWarning", "Labels", "stability_labels", "ThresholdSelection", "select_threshold",
    "Confusion", "confusion_at", "draw_splits", "split_weights", "SplitEvaluation", "split_evaluate",
    "SplitBootstrapResult", "split_bootstrap",
    "percentile_ci", "MannWhitneyResult", "mann_whitney", "KruskalResult", "kruskal", "bonferroni",
    "draw_resamples", "RatioCIResult", "ratio_ci", "ConcentrationResult", "concentration", "PowerResult",
    "runs_per_cell", "n_test_of", "t_test_power",
]
