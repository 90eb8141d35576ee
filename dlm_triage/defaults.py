"""The embedded default sweep: what `dlm-triage run` trains with no arguments, and the parameters the `sweep` and
`pipeline` deployments show in the Prefect UI form (deployments/prefect.yaml carries the same values; a test
compares them). One definition here, so the command line and the UI never disagree on the default.

No pydantic or torch import: the CLI reads this to print its help.
"""

from __future__ import annotations

from typing import Any

# The miniature (README "The embedded default"): three families built and pretrained locally -- `tiny` (a
# bidirectional Llama DLM), `tiny_gemma` (DiffusionGemma from transformers' own classes, its own objective) and
# `tiny_ar` (the same Llama shape, causal: the AR control under the same masked CE) -- fine-tuned on the embedded
# instruction set in LLaDA's SFT layout (prompt never masked; response padded to seq_len and the padding
# trained on). Grid: 2 ranks x 4 mask ratios x 3 learning rates x 4 seeds = 96 runs each for tiny and tiny_ar;
# tiny_gemma draws its own corruption, so its rho axis collapses (2 x 3 x 4 = 24 runs): 216 runs. The lr axis
# makes some runs really go bad. Sized by the first run's time budget, not by power: on this data the monitor's
# separation is small (README "Power": d = 0.57 for tiny), and benchmarks/power_default_grid.py gives no
# affordable size at which the split-bootstrap could register a threshold. 100 steps per run (the paper: 200),
# k = 25 stays early. top1_every 5: the clean-batch top-1 forward costs ~40 % of a tiny step when it runs.
EMBEDDED_DEFAULT_SWEEP: dict[str, Any] = {
    "families": ["tiny", "tiny_gemma", "tiny_ar"],
    "methods": ["lora"],
    "ranks": [4, 16],
    "mask_ratios": [0.15, 0.4, 0.65, 0.9],
    "learning_rates": [1e-3, 1e-2, 5e-2],
    "seeds": [7, 42, 1337, 21],
    "steps": 100,
    "batch_size": 4,
    "seq_len": 48,
    "dataset": "tiny-instruct",
    "extra": {"top1_every": 5},
}


# The library's axis defaults: what `SweepSpec()` and `SweepParams()` (hence `dlm-triage sweep`, and a form left at
# its defaults) grid over when an axis is not given. A small grid of the tiny family at the paper's learning rate
# (10^-4, Section 3.2); not the embedded default above, which `run` sets whole. Both dataclasses read this one table.
SWEEP_AXIS_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "families": ("tiny",),
    "methods": ("lora",),
    "ranks": (4, 16),
    "mask_ratios": (0.15, 0.5, 0.85),
    "learning_rates": (1e-4,),
    "seeds": (7, 42, 1337),
}


def embedded_default_sweep() -> dict[str, Any]:
    """A fresh copy of the default sweep's fields (callers may update it)."""
    import copy

    return copy.deepcopy(EMBEDDED_DEFAULT_SWEEP)



def n_default_runs() -> int:
    """Runs of the default grid once expanded (a family whose objective ignores rho trains one run per rho-free
    cell, not one per rho)."""
    from dlm_triage.config import SweepSpec

    d = embedded_default_sweep()
    axes = {a: tuple(d.pop(a)) for a in ("families", "methods", "ranks", "mask_ratios", "learning_rates", "seeds")}
    return len(SweepSpec(**axes, base={**d.pop("extra", {}), **d}).expand())
