"""The embedded default sweep: what `dlm-triage run` trains with no arguments, and the parameters the `sweep` and
`pipeline` deployments show in the Prefect UI form (deployments/prefect.yaml carries the same values; a test
compares them). One definition here, so the command line and the UI never disagree on the default.

No pydantic or torch import: the CLI reads this to print its help.
"""

from __future__ import annotations

from typing import Any

# The tiny family, 2 ranks x 4 mask ratios x 3 learning rates x 3 seeds = 72 runs. The learning-rate axis is what
# makes some runs really go bad (with one lr, tiny runs differ little: ENVIRONMENT-NOTES.md), so the
# calibration has unstable runs to find.
EMBEDDED_DEFAULT_SWEEP: dict[str, Any] = {
    "families": ["tiny"],
    "methods": ["lora"],
    "ranks": [4, 16],
    "mask_ratios": [0.15, 0.4, 0.65, 0.9],
    "learning_rates": [1e-3, 1e-2, 5e-2],
    "seeds": [7, 42, 1337],
    "steps": 200,
    "batch_size": 4,
}


def embedded_default_sweep() -> dict[str, Any]:
    """A fresh copy of the default sweep's fields (callers may update it)."""
    return {k: list(v) if isinstance(v, list) else v for k, v in EMBEDDED_DEFAULT_SWEEP.items()}



def n_default_runs() -> int:
    """Runs of the default grid once expanded (a family whose objective ignores rho trains one run per rho-free
    cell, not one per rho)."""
    from dlm_triage.config import SweepSpec

    d = embedded_default_sweep()
    axes = {a: tuple(d.pop(a)) for a in ("families", "methods", "ranks", "mask_ratios", "learning_rates", "seeds")}
    return len(SweepSpec(**axes, base=d).expand())
