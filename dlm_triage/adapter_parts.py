"""What the two hand-written adapters (`nara`, `lora_diffusion`) share, in one place.

- `set_submodule`: put a wrapper in place of a named module (and the base back on removal).
- `set_noise_level` / `noise_level`: the batch's noise level lambda on the adapter's noise state, checked, and
  restored after a `with` block. The state is the adapter's own object (NaRA's core, LoRA-Diffusion's schedule
  state) with a `lam` attribute and a `set_lam(lam)` method that also resets what lambda determines.
- The adapter directory: a config JSON beside `adapter_model.safetensors` (the file name peft uses too);
  loading rebuilds the adapter from the config first, then loads the saved tensors, which must fit it exactly.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator, Mapping, Protocol

import torch
from torch import nn

from dlm_triage.config import check_noise_level

WEIGHTS_FILENAME = "adapter_model.safetensors"


class NoiseState(Protocol):
    lam: float | None

    def set_lam(self, lam: float | None) -> None: ...


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """model.<name> = module, for a dotted module name."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def set_noise_level(state: NoiseState, lam: float, method: str) -> None:
    """Check lambda (the batch's mask ratio; the error names `method`) and set it on `state`."""
    state.set_lam(check_noise_level(lam, method))


@contextlib.contextmanager
def noise_level(state: NoiseState, lam: float, method: str) -> Iterator[None]:
    """lambda on `state` for the block; the previous value (None included) restored after."""
    previous = state.lam
    set_noise_level(state, lam, method)
    try:
        yield
    finally:
        state.set_lam(previous)


def save_adapter_dir(path: Path | str, tensors: Mapping[str, torch.Tensor], config: dict,
                     config_filename: str) -> Path:
    """Write `tensors` (on the CPU) to <path>/adapter_model.safetensors and `config` to <path>/<config_filename>."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.cpu() for k, v in tensors.items()}, str(path / WEIGHTS_FILENAME))
    (path / config_filename).write_text(json.dumps(config, indent=2, sort_keys=True))
    return path


def read_adapter_config(path: Path | str, config_filename: str, method: str) -> dict:
    """The saved adapter config, or a FileNotFoundError naming the file and what directory to give."""
    conf_path = Path(path) / config_filename
    if not conf_path.is_file():
        raise FileNotFoundError(f"{conf_path}: no {method} adapter config here; give the directory save_adapter wrote")
    return json.loads(conf_path.read_text())


def load_adapter_tensors(model: nn.Module, path: Path | str, expected: set[str], method: str) -> nn.Module:
    """Load <path>/adapter_model.safetensors into the rebuilt adapter of `model` (its key set must be exactly
    `expected`, the rebuilt adapter's tensor names) and put the model in eval mode. Returns `model`."""
    from safetensors.torch import load_file

    path = Path(path)
    state = load_file(str(path / WEIGHTS_FILENAME))
    if set(state) != expected:
        raise ValueError(f"{path}: saved {method} tensors do not fit the rebuilt adapter: "
                         f"missing {sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}")
    model.load_state_dict(state, strict=False)
    model.eval()
    return model
