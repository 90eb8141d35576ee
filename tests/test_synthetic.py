"""synthetic.py: the deterministic corpus shaped like the paper's. Its shape, its determinism, and the checks
on its arguments (the corpus itself is no evidence of anything; calibration's tests run on it)."""

from __future__ import annotations

import numpy as np
import pytest

from dlm_triage.calinputs import REQUIRED_COLUMNS
from dlm_triage.synthetic import paper_corpus, synthetic_inputs


def test_the_same_seed_gives_the_same_corpus_and_another_seed_another():
    a = synthetic_inputs({"llada": 30, "mdlm": 10}, n_steps=25, seed=3)
    b = synthetic_inputs({"llada": 30, "mdlm": 10}, n_steps=25, seed=3)
    assert a.runs.equals(b.runs) and a.traj.run_ids == b.traj.run_ids
    np.testing.assert_array_equal(a.traj.grad_norm, b.traj.grad_norm)
    other = synthetic_inputs({"llada": 30, "mdlm": 10}, n_steps=25, seed=4)
    assert not np.array_equal(other.runs.get_column("max_grad_norm").to_numpy(),
                              a.runs.get_column("max_grad_norm").to_numpy())


def test_one_row_and_one_trajectory_per_run():
    inp = synthetic_inputs({"llada": 12, "dream": 5}, n_steps=30, seed=1)
    assert set(REQUIRED_COLUMNS) <= set(inp.runs.columns)
    assert inp.runs.group_by("family").len().sort("family").rows() == [("dream", 5), ("llada", 12)]
    assert inp.traj.run_ids == inp.runs.get_column("run_id").to_list() and inp.traj.n_steps == 30
    assert inp.runs.get_column("run_id").n_unique() == 17
    assert synthetic_inputs({"tiny": 4}, n_steps=10, with_traj=False).traj is None
    assert not synthetic_inputs({"tiny": 40}, diverged_fraction=0.0).runs.get_column("diverged").any()


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="unknown synthetic family 'gpt5'"):
        synthetic_inputs({"gpt5": 3})
    with pytest.raises(ValueError, match=r"`families\['tiny'\]` must be a positive integer, got 0"):
        synthetic_inputs({"tiny": 0})
    with pytest.raises(ValueError, match="`n_steps` must be an integer >= 2, got 1"):
        synthetic_inputs({"tiny": 3}, n_steps=1)


def test_paper_corpus_shape():
    inp = paper_corpus(n_steps=21)
    assert inp.runs.height == 671 and inp.traj.dense()[0].shape == (671, 21)
    assert inp.runs.get_column("cohort").value_counts().sort("cohort").get_column("count").to_list() == [395, 120, 144, 12]
    assert inp.runs.get_column("top1_warning_detected").all() and not inp.runs.get_column("collapsed").any()
