"""targets.py: PEFT's suffix rule for target modules, resolved and checked, on a hand-built module tree and the
tiny model; peft itself wraps what the rule names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dlm_triage.targets import (AdapterTargetError, available_suffixes, check_wrapped, linear_like, linear_module_names,
                                module_matches, resolve_targets)
from dlm_triage.tiny import load_tiny


class _Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj, self.v_proj, self.xq_proj = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.layers = nn.ModuleList([_Attn(), _Attn()])
        self.lm_head = nn.Linear(4, 10)

    def forward(self, x):
        h = self.embed(x)
        for layer in self.layers:
            h = layer.q_proj(h) + layer.v_proj(h) + layer.xq_proj(h)
        return self.lm_head(h)


def fresh_base(tiny_model_dir):
    model, tok = load_tiny(tiny_model_dir)
    return model, tok


def test_module_matches_is_equality_or_a_dotted_suffix():
    assert module_matches("q_proj", "q_proj")
    assert module_matches("model.layers.0.self_attn.q_proj", "q_proj")
    assert module_matches("model.layers.0.self_attn.q_proj", "self_attn.q_proj")
    assert not module_matches("model.layers.0.self_attn.xq_proj", "q_proj")  # a suffix of the name, not a part
    assert not module_matches("model.layers.0.self_attn.q_proj", "q_pro")
    assert not module_matches("q_proj.lora_A", "q_proj")


def test_linear_like_is_linear_or_gpt2_conv1d():
    from transformers.pytorch_utils import Conv1D

    assert linear_like(nn.Linear(2, 3)) and linear_like(Conv1D(3, 2))
    assert not linear_like(nn.Embedding(4, 2)) and not linear_like(nn.LayerNorm(2))


def test_linear_module_names_in_module_order_and_suffixes_sorted():
    net = _Net()
    assert linear_module_names(net) == [f"layers.{i}.{n}" for i in (0, 1) for n in ("q_proj", "v_proj", "xq_proj")] \
        + ["lm_head"]
    assert available_suffixes(net) == ["lm_head", "q_proj", "v_proj", "xq_proj"]
    assert linear_module_names(nn.Linear(2, 2)) == []  # the root module itself is never a target name


def test_resolve_targets_maps_each_target_to_its_modules_and_names_a_miss():
    net = _Net()
    assert resolve_targets(net, ("q_proj", "0.v_proj")) == {"q_proj": ["layers.0.q_proj", "layers.1.q_proj"],
                                                          "0.v_proj": ["layers.0.v_proj"]}
    with pytest.raises(AdapterTargetError) as e:
        resolve_targets(net, ("q_proj", "norm", "o_proj"))  # a LayerNorm is not Linear-like
    msg = str(e.value)
    assert "['norm', 'o_proj']" in msg and "_Net" in msg and "['lm_head', 'q_proj', 'v_proj', 'xq_proj']" in msg
    with pytest.raises(AdapterTargetError, match="no target modules given"):
        resolve_targets(net, ())


def test_check_wrapped_after_peft_wraps_the_targets():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_Net(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    check_wrapped(model, ("q_proj",), "lora_A")  # every target carries an adapter: no error
    assert model(torch.tensor([[1, 2]])).shape == (1, 2, 10)
    with pytest.raises(AdapterTargetError, match=r"\['v_proj'\] received no adapter.*wrapped modules: \['q_proj'\]"):
        check_wrapped(model, ("q_proj", "v_proj"), "lora_A")


def test_available_suffixes_and_post_wrap_check(tiny_model_dir):
    base, _ = fresh_base(tiny_model_dir)
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= set(available_suffixes(base))
    with pytest.raises(AdapterTargetError, match="received no adapter"):
        check_wrapped(base, ("q_proj",), "lora_A")  # nothing was wrapped
