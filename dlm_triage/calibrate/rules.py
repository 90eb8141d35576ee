"""The calibration's fixed rules: group sizes, the step the live warning reads, the random streams, and the
evidence a registered threshold must hold (paper 4.1)."""

from __future__ import annotations

import zlib
from typing import Any, Mapping

import numpy as np

from dlm_triage import groups as groups_mod
from dlm_triage.fsutil import finite_or_none

GROUP_BY_COLUMNS = groups_mod.GROUP_BY_COLUMNS
PREDICTORS = ("max_grad", "loss", "max_top1")
"""Step-k predictors: max grad norm over steps 0..k, loss at step k, max top-1 frequency over steps 0..k."""
MIN_RUNS = 10
"""Below this many labelled runs a group's threshold analyses are computed but flagged 'too_few_runs'."""
MIN_PER_ARM = 3
"""A group enters the max-grad test family (Bonferroni m) with >= this many stable and unstable runs."""
REGISTRY_K = 25
"""The live early warning reads max-grad-so-far at step 25 (paper 4.1 'log max-gradient by step ~25'): each
group's `registry` holds the held-out threshold of max-grad-up-to-25 when its logs reach step 25 (whether or not
25 is among the swept ks), else of the whole-run max grad norm (k = None).

A group is `degenerate` (its threshold is reported, never registered as accepted by store.save_calibration)
when it has fewer than MIN_RUNS labelled runs, meaningless labels (constant or too few final losses), no
unstable or no stable run, a constant max grad, or no threshold. A fixed split without an unstable test run is
only flagged ('heldout.unvalidated'): the threshold is still the best training estimate."""
CELL_COLUMNS = ("model_id", "method", "rank", "mask_ratio", "learning_rate")
"""A configuration cell (seeds are its replicates), for the power analysis."""
_PARTS = {"heldout": 0, "split_bootstrap": 1, "stepk": 2, "maxgrad_ratio": 3, "rank_amplification": 4}


def group_rng(seed: int, group: str, part: str) -> np.random.Generator:
    """The generator of one analysis part of one group: SeedSequence([seed, crc32(group), part id])."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(group.encode()), _PARTS[part]]))


def registry_evidence(reg: Mapping[str, Any]) -> list[str]:
    """Why the registered rule's evidence does not hold ([] when it does): the max-grad triage verdict of the
    paper (4.1: the split-bootstrap lower CI bound of held-out precision exceeds the always-positive baseline's
    ceiling, its upper CI bound over the same replicates), on the very rule that is registered (k, threshold),
    plus the two ways a CI can look fine and say nothing: held-out precision 0, or a CI of [0, 1]."""
    def num(key):
        return finite_or_none(reg.get(key))

    lo, hi, ceil, prec = num("precision_ci_low"), num("precision_ci_high"), num("baseline_ceiling"), num("precision")
    out = []
    rule = f"max-grad-up-to-{reg['k']}" if reg.get("k") is not None else "whole-run max grad"
    if lo is None or ceil is None:
        out.append(f"{rule}: no split-bootstrap precision CI or baseline ceiling (too few unstable runs)")
    elif lo <= ceil:
        out.append(f"{rule}: lower CI bound of held-out precision {lo:.3g} is not above the always-positive "
                   f"baseline ceiling {ceil:.3g}")
    if prec is not None and prec == 0:
        out.append(f"{rule}: held-out precision 0 on the fixed split")
    if lo is not None and hi is not None and lo <= 0 and hi >= 1:
        out.append(f"{rule}: precision CI [0, 1] carries no information")
    return out
