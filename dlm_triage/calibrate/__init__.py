"""The paper's monitor audit and threshold calibration, per group, as a plain library (no Prefect).

`calibrate(inputs, ...)` turns one `CalibrationInputs` (runs table + optional step trajectories) into the
calibration dict of the JSON contract (docs/ARCHITECTURE.md); `run_calibration(db, out_dir)` reads the inputs
from DuckDB, calibrates, saves the result in DuckDB (versioned) and writes ``out_dir/calibration.json``.

Per group (family by default; paper 4.1, 4.5, App. B-D):

- labels (`stats.stability_labels`, `stats.LABEL_RULE`): unstable iff final loss >= the group's 90th
  percentile (numpy 'linear' = Hyndman-Fan type 7), stable iff <= the median (the paper's 336 of 671), mid-band
  otherwise (excluded from stable/unstable contrasts); percentiles over
  non-diverged runs with a finite final loss; diverged runs are unstable by definition; the rest is excluded.
- top-1 audit: fire and collapse rates of the legacy warning, its precision as a collapse detector and as an
  unstable-run detector (undefined when it never fires), top-1 at step 0, steps to cross 0.95, Mann-Whitney of
  the fire step and of the 0.95-saturation step, unstable vs stable.
- max-grad separation: medians (whole-run max grad norm), their ratio with a percentile bootstrap CI, Mann-Whitney
  U one-sided (unstable > stable) and two-sided; Bonferroni over m contrasts, m = `bonferroni_m` when given
  (the paper: m = 6), else the groups tested (>= 3 stable and >= 3 unstable runs), applied to the one-sided p
  (the directional hypothesis), m and where it came from recorded.
- held-out threshold: one fixed seeded 80/20 split (n_test = ceil(0.2 n)), F1-optimal threshold on train
  (candidates = train values, positive iff value >= threshold, lowest threshold among F1 ties), metrics on
  test, against the always-positive baseline (the top-1 warning fires everywhere: precision = prevalence).
- split bootstrap (B = n_resamples): resample configurations, redraw the split, reselect on train.
- step-k sweep (B = stepk_resamples random 80/20 splits, no resampling, paper App. B.1): max-grad-up-to-k,
  loss-at-k, max-top1-up-to-k ('up to k' includes step 0; a run with no value at k is predicted negative).
- rank amplification (within one model at one learning rate and one mask ratio), gradient concentration,
  power analysis; across groups: threshold transfer and fire-step
  Kruskal-Wallis with pairwise Mann-Whitney (Bonferroni over the pairs).

Random streams: every (seed, group, part) has its own generator (`group_rng`), so adding a group or a part
does not move the others, and `benchmarks/reference_calibration.py` draws the very same replicates.
Undefined numbers are JSON null with a warning (`protocol._jsonable`), never NaN.

Modules: `rules` (constants, random streams, the registry's evidence rule), `blocks` (notes, JSON blocks, step-k
predictors), `group` (one group's calibration, stage by stage), `descriptive` (its analyses that set no
threshold: top-1 audit, rank amplification, concentration, power), `protocol` (`calibrate`: every group, then the
cross-group parts), `driver` (`run_calibration`: DuckDB in, JSON and the versioned record out). Every public
name is importable here.
"""

from __future__ import annotations

from dlm_triage.calibrate.blocks import stepk_predictors
from dlm_triage.calibrate.descriptive import CONCENTRATION_DEFINITIONS
from dlm_triage.calibrate.driver import CalibrationOutput, run_calibration
from dlm_triage.calibrate.protocol import calibrate, default_threshold_step
from dlm_triage.calibrate.rules import (CELL_COLUMNS, GROUP_BY_COLUMNS, MIN_PER_ARM, MIN_RUNS, PREDICTORS, REGISTRY_K,
                                        group_rng, registry_evidence)
from dlm_triage.calinputs import REQUIRED_COLUMNS, CalibrationInputs, Trajectories
from dlm_triage.fsutil import write_json_atomic

__all__ = [
    "Trajectories", "CalibrationInputs", "CalibrationOutput", "calibrate", "run_calibration", "group_rng",
    "default_threshold_step", "GROUP_BY_COLUMNS", "REQUIRED_COLUMNS", "PREDICTORS", "write_json_atomic",
]
