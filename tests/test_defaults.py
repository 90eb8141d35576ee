"""defaults.py: the embedded default sweep (the miniature `dlm-triage run` trains) and the axis defaults that
SweepSpec and SweepParams share. That prefect.yaml carries the same default: test_deployments.py."""

from __future__ import annotations

from dlm_triage.defaults import EMBEDDED_DEFAULT_SWEEP, embedded_default_sweep, n_default_runs
from dlm_triage.params import SweepParams


def test_embedded_default_sweep_is_a_fresh_copy():
    d = embedded_default_sweep()
    assert d == EMBEDDED_DEFAULT_SWEEP and d is not EMBEDDED_DEFAULT_SWEEP
    d["families"].append("llada")
    d["extra"]["top1_every"] = 1
    assert EMBEDDED_DEFAULT_SWEEP["families"] == ["tiny", "tiny_gemma", "tiny_ar"]
    assert EMBEDDED_DEFAULT_SWEEP["extra"] == {"top1_every": 5}


def test_the_sweep_axis_defaults_have_one_definition():
    """SweepSpec and SweepParams (the UI form, `dlm-triage sweep`) default their axes from one table."""
    from dlm_triage.config import SweepSpec
    from dlm_triage.defaults import SWEEP_AXIS_DEFAULTS
    from dlm_triage.params import SweepParams

    spec, form = SweepSpec(), SweepParams()
    for axis, default in SWEEP_AXIS_DEFAULTS.items():
        assert getattr(spec, axis) == default and tuple(getattr(form, axis)) == default, axis
    n = 1
    for values in SWEEP_AXIS_DEFAULTS.values():
        n *= len(values)
    assert len(spec.expand()) == len(form.to_spec().expand()) == n  # every default axis is a real grid axis


def test_the_embedded_default_is_the_miniature():
    configs = SweepParams(**EMBEDDED_DEFAULT_SWEEP).to_spec().expand()
    assert len(configs) == n_default_runs()
    fams = {c.family for c in configs}
    assert {"tiny", "tiny_gemma", "tiny_ar"} <= fams  # two DLM architectures and the AR control
    assert {c.dataset for c in configs} == {"tiny-instruct"}  # the SFT layout: prompt never masked, padded response
    assert {c.objective for c in configs if c.family != "tiny_gemma"} == {"paper"}  # one masked CE for DLM and AR
    assert len({c.learning_rate for c in configs}) >= 3 and len({c.steps for c in configs}) == 1
