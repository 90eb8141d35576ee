"""The training step has one host sync (the packed scalar monitors), whatever the objective.

On CPU nothing can stall, so the test counts what WOULD sync on an accelerator: a TorchFunctionMode records
every call that reads a tensor's value on the host or has a data-dependent output size (`item`, `tolist`,
`bool`/`int`/`float` of a tensor, `nonzero`, `masked_select`, `bincount`, `unique`, a boolean-mask index, a
copy to the CPU), made directly by code outside torch (ours, transformers', peft's). torch's own internals are
trusted: AdamW's step counters live on the host by design. On a CUDA machine the second test runs one step
under `torch.cuda.set_sync_debug_mode("error")`, which covers torch's internals too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from dlm_triage import train
from dlm_triage.config import OBJECTIVES, RunConfig, draws_own_t

TORCH_DIR = str(Path(torch.__file__).parent)
SYNC_METHODS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "argwhere",
                "masked_select", "bincount", "unique", "unique_consecutive", "numpy", "cpu"}


def _is_bool_index(idx) -> bool:
    items = idx if isinstance(idx, tuple) else (idx,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


class HostSyncCounter(TorchFunctionMode):
    """Records (name, caller file:line) of each would-be host sync made by non-torch code."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        sync = name in SYNC_METHODS
        if name in ("__getitem__", "__setitem__") and len(args) > 1:
            sync = _is_bool_index(args[1])
        if name == "to":
            target = [a for a in list(args[1:]) + list(kwargs.values()) if isinstance(a, (str, torch.device))]
            sync = any(torch.device(t).type == "cpu" for t in target) and isinstance(args[0], torch.Tensor) \
                and args[0].device.type != "cpu"
        if sync:
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename.endswith(("overrides.py", "_device.py")):
                frame = frame.f_back
            where = f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "?"
            if not where.startswith(TORCH_DIR):
                self.calls.append((name, where))
        return func(*args, **kwargs)


def _step_syncs(r, step: int) -> list[tuple[str, str]]:
    with HostSyncCounter() as counter:
        row = train.train_step(r, step)
        train.clip_and_update(r, row["_grad_norm"])
    return counter.calls


def test_the_counter_sees_the_syncs_it_is_meant_to_count():
    x = torch.randn(4, 5)
    with HostSyncCounter() as c:
        _ = x[x > 0]          # boolean index: data-dependent size
        if (x > 5).any():      # bool() of a tensor
            pass
        int((x > 0).sum())
        x.sum().item()
        torch.where(x > 0, x, 0.0).sum()  # no sync
    assert [n for n, _ in c.calls] == ["__getitem__", "__bool__", "__int__", "item"]


@pytest.mark.parametrize("objective", sorted(o for o in OBJECTIVES if o == "paper" or draws_own_t(o)))
def test_one_training_step_has_exactly_one_host_sync(tiny_model_dir, objective):
    dataset = "tiny-instruct" if objective.endswith("_sft") else "tiny-shifted"
    cfg = RunConfig(model_id=str(tiny_model_dir), steps=4, batch_size=2, seq_len=48, device="cpu",
                    save_adapter=False, objective=objective, dataset=dataset, top1_every=1)
    r = train._setup(cfg)
    train.train_step(r, 0)  # first call: lazy initialisations (permutations, optimizer state) out of the count
    calls = _step_syncs(r, 1)
    assert [n for n, _ in calls] == ["tolist"], calls
    assert "dlm_triage/train.py" in calls[0][1]


def test_diffusion_gemma_step_has_exactly_one_host_sync(tmp_path):
    from dlm_triage.tiny_diffusion_gemma import save_tiny_diffusion_gemma

    cfg = RunConfig(family="diffusion_gemma", model_id=str(save_tiny_diffusion_gemma(tmp_path / "dg")), steps=4,
                    batch_size=2, seq_len=48, device="cpu", save_adapter=False, dataset="tiny-instruct")
    r = train._setup(cfg)
    train.train_step(r, 0)
    calls = _step_syncs(r, 1)
    assert [n for n, _ in calls] == ["tolist"], calls


def test_nara_step_has_exactly_one_host_sync(tiny_model_dir):
    cfg = RunConfig(model_id=str(tiny_model_dir), steps=4, batch_size=2, seq_len=16, device="cpu",
                    save_adapter=False, method="nara", rank=4)
    r = train._setup(cfg)
    train.train_step(r, 0)
    calls = _step_syncs(r, 1)
    assert [n for n, _ in calls] == ["tolist"], calls


def test_top1_at_masked_positions_is_sync_free():
    from dlm_triage.monitors import top1_frequency

    logits = torch.randn(2, 6, 9)
    mask = torch.rand(2, 6) < 0.5
    with HostSyncCounter() as c:
        top1_frequency(logits, mask)
    assert c.calls == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: torch.cuda.set_sync_debug_mode")
@pytest.mark.parametrize("objective", ["paper", "llada_sft"])
def test_cuda_step_raises_on_no_hidden_sync(tiny_model_dir, objective):
    dataset = "tiny-instruct" if objective.endswith("_sft") else "tiny-shifted"
    cfg = RunConfig(model_id=str(tiny_model_dir), steps=4, batch_size=2, seq_len=48, device="cuda",
                    save_adapter=False, objective=objective, dataset=dataset, top1_every=1)
    r = train._setup(cfg)
    train.train_step(r, 0)
    n_tolist = []
    orig = torch.Tensor.tolist

    def counted(self):
        n_tolist.append(1)
        torch.cuda.set_sync_debug_mode(0)  # the one allowed sync
        try:
            return orig(self)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    torch.Tensor.tolist = counted
    torch.cuda.set_sync_debug_mode("error")
    try:
        row = train.train_step(r, 1)
        train.clip_and_update(r, row["_grad_norm"])
    finally:
        torch.cuda.set_sync_debug_mode(0)
        torch.Tensor.tolist = orig
    assert n_tolist == [1]


def test_block_diffusion_step_has_exactly_one_host_sync(tiny_model_dir):
    cfg = RunConfig(model_id=str(tiny_model_dir), steps=4, batch_size=2, seq_len=48, device="cpu",
                    save_adapter=False, objective="llada2_sft", dataset="tiny-instruct", block_size=8)
    r = train._setup(cfg)
    train.train_step(r, 0)
    assert [n for n, _ in _step_syncs(r, 1)] == ["tolist"]


@pytest.mark.parametrize("family, objective", [("llada", "llada_sft"), ("dream", "dream"), ("mdlm", "mdlm"),
                                               ("llada2", "llada2_sft"), ("llada_moe", "paper")])
def test_stand_in_family_steps_have_exactly_one_host_sync(tmp_path, family, objective):
    """The remote-code stand-ins (tests/tiny_families.py): Dream's shifted logits and protected position 0, MDLM's
    top-1 at masked positions and SUBS, LLaDA2's explicit 4D mask, LLaDA's tokenizer without a mask token."""
    from tiny_families import build_family_dir

    model_dir = build_family_dir(family, tmp_path)
    sft = objective.endswith("_sft")
    cfg = RunConfig(family=family, model_id=str(model_dir), steps=4, batch_size=2, seq_len=32, device="cpu",
                    save_adapter=False, objective=objective, dataset="tiny-instruct" if sft else "tiny-shifted",
                    top1_every=1)
    r = train._setup(cfg)
    train.train_step(r, 0)
    calls = _step_syncs(r, 1)
    assert [n for n, _ in calls] == ["tolist"], calls
