"""The resident base model (dlm_triage.resident): one load per process and base model, a clean base after
every run whatever the adapter method, process-wide settings undone, and a run on a resident base computing
bitwise what the same run computes on a fresh load (CPU, float32)."""

from __future__ import annotations

import logging

import polars as pl
import pytest
import torch
from safetensors.torch import load_file

from dlm_triage import nara, resident, train
from dlm_triage.config import RunConfig
from dlm_triage.runlog import read_run
from dlm_triage.schema import ADAPTER_DIRNAME
from dlm_triage.tiny import load_tiny
from tiny_families import build_family_dir

TIMING = ("step_time_ms", "monitor_time_ms", "top1_forward_ms")


def cfg_of(model_dir, **kw):
    base = dict(model_id=str(model_dir), steps=4, batch_size=2, seq_len=16, device="cpu", top1_every=2)
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch):
    monkeypatch.delenv(resident.ENV_MAX_RESIDENT, raising=False)
    resident.clear()
    yield
    resident.clear()


def the_base():
    (key,) = resident.resident_keys()
    return resident._entries[key].loaded.model


def assert_same_run(a, b):
    ra, rb = read_run(a.run_dir), read_run(b.run_dir)
    cols = [c for c in ra.steps.columns if c not in TIMING]
    assert ra.steps.select(cols).equals(rb.steps.select(cols))  # bitwise: NaN == NaN, floats exact
    wa = load_file(str(a.run_dir / ADAPTER_DIRNAME / "adapter_model.safetensors"))
    wb = load_file(str(b.run_dir / ADAPTER_DIRNAME / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def assert_clean(base, model_dir):
    fresh, _ = load_tiny(model_dir)
    assert resident.fingerprint(base) == resident.fingerprint(fresh)
    got, want = base.state_dict(), fresh.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("first_method", ["lora", "pissa", "nara", "dora", "lora_diffusion", "rslora"])
def test_second_run_on_the_resident_base_equals_the_same_run_on_a_fresh_load(tiny_model_dir, tmp_path, first_method):
    first = train.train_run(cfg_of(tiny_model_dir, method=first_method, seed=1), tmp_path / "a")
    second = train.train_run(cfg_of(tiny_model_dir, seed=2), tmp_path / "a")
    assert resident.stats()["loads"] == 1 and resident.stats()["reuses"] == 1
    assert first.model_resident is False and first.load_time_s > 0
    assert second.model_resident is True and second.load_time_s == 0.0 and second.train_time_s > 0
    man = read_run(second.run_dir).manifest["monitor_overhead"]
    assert man["model_resident"] is True and man["model_load_s"] == 0.0 and man["train_s"] > 0

    resident.clear()
    alone = train.train_run(cfg_of(tiny_model_dir, seed=2), tmp_path / "b")
    assert resident.stats()["loads"] == 1 and alone.model_resident is False
    assert_same_run(second, alone)


def test_pissa_edits_the_base_weights_during_the_run_and_they_are_restored(tiny_model_dir, tmp_path, monkeypatch):
    fresh_q = load_tiny(tiny_model_dir)[0].model.layers[0].self_attn.q_proj.weight.detach().clone()
    seen = []

    def peek(step, model):
        if step == 0:
            seen.append(model.get_submodule("base_model.model.model.layers.0.self_attn.q_proj.base_layer").weight.detach().clone())

    train.train_run(cfg_of(tiny_model_dir, method="pissa", steps=1), tmp_path,
                    hooks=train.FaultHooks(after_backward=peek))
    assert not torch.equal(seen[0], fresh_q)  # PiSSA's residual W - B A really replaced the weight
    assert_clean(the_base(), tiny_model_dir)


def test_nara_leaves_the_base_clean(tiny_model_dir, tmp_path):
    train.train_run(cfg_of(tiny_model_dir, method="nara", steps=1), tmp_path)
    base = the_base()
    assert not nara.is_nara_model(base)
    assert not any(isinstance(m, nara.NaRALinear) for m in base.modules())
    assert_clean(base, tiny_model_dir)


def test_lora_diffusion_leaves_the_base_clean(tiny_model_dir, tmp_path):
    from dlm_triage import lora_diffusion

    train.train_run(cfg_of(tiny_model_dir, method="lora_diffusion", steps=1), tmp_path)
    base = the_base()
    assert not lora_diffusion.is_lora_diffusion_model(base) and not lora_diffusion.wrapped_modules(base)
    assert_clean(base, tiny_model_dir)


def test_failed_run_gives_the_base_back_and_the_next_run_reuses_it(tiny_model_dir, tmp_path, monkeypatch):
    def boom(step, model):
        if step == 1:
            raise RuntimeError("injected")

    with pytest.raises(RuntimeError, match="injected"):
        train.train_run(cfg_of(tiny_model_dir, method="pissa"), tmp_path, hooks=train.FaultHooks(after_backward=boom))
    assert_clean(the_base(), tiny_model_dir)
    res = train.train_run(cfg_of(tiny_model_dir, seed=3), tmp_path)
    assert res.model_resident is True and resident.stats()["loads"] == 1


def test_a_base_left_changed_is_evicted_and_reloaded(tiny_model_dir, tmp_path, monkeypatch, caplog):
    def graft(step, model):  # something no release step knows how to undo
        if step == 0:
            model.get_submodule("base_model.model.model").extra = torch.nn.Linear(2, 2)

    with caplog.at_level(logging.WARNING, logger="dlm_triage.resident"):
        train.train_run(cfg_of(tiny_model_dir, steps=1), tmp_path, hooks=train.FaultHooks(after_backward=graft))
    assert "evicting" in caplog.text and resident.resident_keys() == []
    res = train.train_run(cfg_of(tiny_model_dir, steps=1, seed=5), tmp_path)
    assert res.model_resident is False and resident.stats()["loads"] == 2


def test_process_settings_a_model_changes_apply_only_to_its_runs(tiny_model_dir, tmp_path, monkeypatch):
    """LLaDA's constructor (and the stand-in's) calls enable_flash_sdp(True) and enable_mem_efficient_sdp(False)
    process-wide. The family's load guard puts mem-efficient back at once; the flash switch the load leaves
    changed is the resident cache's: applied while LLaDA's runs train, the process's own value after each."""
    llada = build_family_dir("llada", tmp_path / "models")
    cuda = torch.backends.cuda
    flash0, mem0 = cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled()
    cuda.enable_flash_sdp(False)
    cuda.enable_mem_efficient_sdp(True)
    try:
        during = []
        hooks = train.FaultHooks(after_backward=lambda step, model: during.append(
            (cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled())))
        for seed in (1, 2):  # a load, then the resident base
            res = train.train_run(cfg_of(llada, family="llada", steps=1, seed=seed, top1_every=10), tmp_path / "runs",
                                  hooks=hooks)
            assert (cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled()) == (False, True)  # as it was
        assert res.model_resident and resident.stats()["loads"] == 1
        assert during == [(True, True)] * 4
        # the next family's run sees the process as it was
        train.train_run(cfg_of(tiny_model_dir, steps=1), tmp_path / "runs", hooks=hooks)
        assert during[-2:] == [(False, True)] * 2
    finally:
        cuda.enable_flash_sdp(flash0)
        cuda.enable_mem_efficient_sdp(mem0)


def test_at_most_one_base_stays_resident_and_zero_turns_the_cache_off(tiny_model_dir, tmp_path, monkeypatch):
    llada = build_family_dir("llada", tmp_path / "models")
    train.train_run(cfg_of(tiny_model_dir, steps=1), tmp_path)
    train.train_run(cfg_of(llada, family="llada", steps=1, top1_every=10), tmp_path)
    assert [k[0] for k in resident.resident_keys()] == ["llada"] and resident.stats()["evictions"] == 1

    resident.clear()
    monkeypatch.setenv(resident.ENV_MAX_RESIDENT, "0")
    a = train.train_run(cfg_of(tiny_model_dir, steps=1, seed=8), tmp_path)
    b = train.train_run(cfg_of(tiny_model_dir, steps=1, seed=9), tmp_path)
    assert not a.model_resident and not b.model_resident and resident.stats()["loads"] == 2
    assert resident.resident_keys() == []
    monkeypatch.setenv(resident.ENV_MAX_RESIDENT, "many")
    with pytest.raises(ValueError, match="DLM_TRIAGE_RESIDENT_MODELS='many'"):
        resident.max_resident()


def test_a_base_in_use_is_not_handed_to_a_second_run(tiny_model_dir):
    from dlm_triage.families import get_family

    cfg, fam = cfg_of(tiny_model_dir), get_family("tiny")
    first = resident.acquire(cfg, fam, torch.device("cpu"), torch.float32)
    second = resident.acquire(cfg, fam, torch.device("cpu"), torch.float32)
    try:
        assert first.model is not second.model and not second.resident
        assert resident.stats()["loads"] == 2 and len(resident.resident_keys()) == 1
    finally:
        second.release(None)
        first.release(None)
    third = resident.acquire(cfg, fam, torch.device("cpu"), torch.float32)
    assert third.model is first.model and third.resident
    third.release(None)


def test_the_step_log_of_a_resident_run_has_the_training_columns(tiny_model_dir, tmp_path):
    train.train_run(cfg_of(tiny_model_dir, steps=1), tmp_path)
    res = train.train_run(cfg_of(tiny_model_dir, steps=1, seed=4), tmp_path)
    steps = read_run(res.run_dir).steps
    assert steps.height == 2 and steps.select(pl.col("loss").is_finite().all()).item()
