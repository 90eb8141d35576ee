"""adapter_parts.py: what NaRA and LoRA-Diffusion share. Putting a wrapper in place of a named module, the
noise level on an adapter's state (checked, restored after a block), and the adapter directory round trip."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from dlm_triage.adapter_parts import (WEIGHTS_FILENAME, load_adapter_tensors, noise_level, read_adapter_config,
                                      save_adapter_dir, set_noise_level, set_submodule)


class _State:
    """A noise state as the adapters hold one: `lam`, and `set_lam`, which also resets what lambda determines."""

    def __init__(self):
        self.lam, self.resets = None, 0

    def set_lam(self, lam):
        self.lam, self.resets = lam, self.resets + 1


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.ReLU(), nn.Linear(4, 2)))


def test_set_submodule_replaces_a_nested_and_a_top_level_module():
    model = _model()
    inner = nn.Linear(4, 2, bias=False)
    set_submodule(model, "1.1", inner)
    assert model[1][1] is inner
    top = nn.Identity()
    set_submodule(model, "0", top)
    assert model[0] is top
    with pytest.raises(AttributeError):
        set_submodule(model, "2.0", inner)  # no parent '2'


def test_noise_level_is_checked_and_restored_after_the_block():
    state = _State()
    set_noise_level(state, 0.25, "nara")
    assert state.lam == 0.25
    with noise_level(state, 1, "nara"):
        assert state.lam == 1.0 and isinstance(state.lam, float)
    assert state.lam == 0.25
    with pytest.raises(RuntimeError, match="inside"), noise_level(state, 0.5, "nara"):
        raise RuntimeError("inside")
    assert state.lam == 0.25  # restored on an error too
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"lora_diffusion's lambda is a mask ratio in \[0, 1\]"):
            set_noise_level(state, bad, "lora_diffusion")
    assert state.lam == 0.25
    fresh = _State()
    with noise_level(fresh, 0.5, "nara"):
        pass
    assert fresh.lam is None and fresh.resets == 2  # the previous value, None, is set back


def test_the_adapter_directory_round_trips(tmp_path):
    model = _model()
    tensors = {"1.1.weight": model[1][1].weight.detach() * 2, "1.1.bias": model[1][1].bias.detach() + 1}
    path = save_adapter_dir(tmp_path / "a", tensors, {"rank": 2, "method": "nara"}, "nara_config.json")
    assert sorted(p.name for p in path.iterdir()) == sorted([WEIGHTS_FILENAME, "nara_config.json"])
    assert read_adapter_config(path, "nara_config.json", "nara") == {"method": "nara", "rank": 2}
    other = _model()
    other[1][1].weight.data.zero_()
    out = load_adapter_tensors(other, path, set(tensors), "nara")
    assert out is other and not other.training
    torch.testing.assert_close(other[1][1].weight, tensors["1.1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(other[1][1].bias, tensors["1.1.bias"], rtol=0, atol=0)
    assert json.loads((path / "nara_config.json").read_text())["rank"] == 2


def test_adapter_directory_errors_name_the_file_and_the_misfit(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nara_config.json: no nara adapter config here; give the directory"):
        read_adapter_config(tmp_path, "nara_config.json", "nara")
    model = _model()
    path = save_adapter_dir(tmp_path / "a", {"1.1.weight": model[1][1].weight.detach()}, {}, "c.json")
    before = model[1][1].weight.detach().clone()
    with pytest.raises(ValueError, match=r"do not fit the rebuilt adapter: missing \['1.1.bias'\], unexpected \[\]"):
        load_adapter_tensors(model, path, {"1.1.weight", "1.1.bias"}, "lora_diffusion")
    assert torch.equal(model[1][1].weight, before)  # nothing loaded on a misfit
