"""attn_mask_compat: the mask builders LLaDA2's and LLaDA-MoE's files import, where transformers >= 5.24 has none.

Checked against closed forms and, where the installed transformers still ships the module (4.57-5.23), against
transformers' own functions on the same inputs.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from dlm_triage import attn_mask_compat as amc

MIN = torch.finfo(torch.float32).min
EMB = torch.zeros(2, 5, 8)


def test_a_4d_keep_mask_is_inverted_as_given_and_a_wrong_shape_names_the_expected_one():
    keep = torch.ones(2, 1, 5, 5)
    keep[1, 0, 2, 4] = 0
    out = amc._prepare_4d_causal_attention_mask(keep, (2, 5), EMB, 0)
    want = torch.zeros(2, 1, 5, 5)
    want[1, 0, 2, 4] = MIN
    assert torch.equal(out, want)  # all ones -> all zeros: bidirectional (LLaDA2's eager path)
    with pytest.raises(ValueError, match=r"expected \(2, 1, 5, 5\)"):
        amc._prepare_4d_causal_attention_mask(torch.ones(2, 1, 5, 4), (2, 5), EMB, 0)


def test_no_mask_or_a_2d_padding_mask_gives_the_causal_mask_with_padded_keys_hidden():
    out = amc._prepare_4d_causal_attention_mask(None, (2, 5), EMB, 0)
    assert torch.equal(out[0, 0] == MIN, torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1))
    pad = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])
    out = amc._prepare_4d_causal_attention_mask(pad, (2, 5), EMB, 0)
    assert (out[1, 0, :, 0] == MIN).all() and torch.equal(out[0], amc._prepare_4d_causal_attention_mask(
        None, (2, 5), EMB, 0)[0])
    # with a cache of 3 past tokens, 2 new queries see keys up to their absolute positions 3 and 4
    out = amc._prepare_4d_causal_attention_mask(None, (1, 2), torch.zeros(1, 2, 8), 3)
    assert torch.equal(out[0, 0] == MIN, torch.tensor([[False] * 4 + [True], [False] * 5]))


def test_sdpa_needs_no_mask_without_padding_and_gets_one_with_it():
    assert amc._prepare_4d_causal_attention_mask_for_sdpa(None, (2, 5), EMB, 0) is None
    assert amc._prepare_4d_causal_attention_mask_for_sdpa(torch.ones(2, 5), (2, 5), EMB, 0) is None
    pad = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])
    got = amc._prepare_4d_causal_attention_mask_for_sdpa(pad, (2, 5), EMB, 0)
    assert torch.equal(got, amc._prepare_4d_causal_attention_mask(pad, (2, 5), EMB, 0))


def _reference():
    try:
        ref = importlib.import_module("transformers.modeling_attn_mask_utils")
    except ModuleNotFoundError:
        pytest.skip("this transformers (>= 5.24) has no modeling_attn_mask_utils to compare with")
    if ref is amc:  # registered by the remote-code shim earlier in this process
        pytest.skip("transformers.modeling_attn_mask_utils is this module (the shim is active)")
    return ref


@pytest.mark.parametrize("case", ["none", "ones", "left_pad", "right_pad", "4d", "past"])
def test_equals_transformers_own_functions_where_it_has_them(case):
    ref = _reference()
    shape, emb, past = (2, 5), EMB, 0
    mask = {"none": None, "ones": torch.ones(2, 5, dtype=torch.long),
            "left_pad": torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]),
            "right_pad": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]),
            "4d": torch.ones(2, 1, 5, 5), "past": None}[case]
    if case == "past":
        shape, emb, past = (1, 2), torch.zeros(1, 2, 8), 3
    ours = amc._prepare_4d_causal_attention_mask(mask, shape, emb, past)
    theirs = ref._prepare_4d_causal_attention_mask(mask, shape, emb, past)
    assert torch.equal(ours, theirs)
    if case != "4d":
        ours, theirs = (f(mask, shape, emb, past) for f in (amc._prepare_4d_causal_attention_mask_for_sdpa,
                                                            ref._prepare_4d_causal_attention_mask_for_sdpa))
        assert (ours is None and theirs is None) or torch.equal(ours, theirs)
