"""train_run end to end on the tiny family: files and columns, determinism, divergence, failure, resume."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch

from dlm_triage import train
from dlm_triage.config import RunConfig
from dlm_triage.runlog import read_run
from dlm_triage.schema import MANIFEST_FILENAME, MANIFEST_KEYS, OPTIONAL_MANIFEST_KEYS, STEP_COLUMNS, STEPLOG_FILENAME
from dlm_triage.train import train_run

TIMING = ("step_time_ms", "monitor_time_ms", "top1_forward_ms")


def small(tiny_model_dir, **kw):
    base = dict(model_id=str(tiny_model_dir), steps=8, batch_size=2, seq_len=16, device="cpu", save_adapter=False)
    base.update(kw)
    return RunConfig(**base)


def test_200_step_run_is_complete(tiny_model_dir, tmp_path):
    # its speed (and the re-run's) is measured by benchmarks/bench_train_tiny.py, never asserted here
    cfg = RunConfig(model_id=str(tiny_model_dir), steps=200, device="cpu", top1_every=5)
    calls = []
    res = train_run(cfg, tmp_path, progress=lambda s, n: calls.append((s, n)))
    assert res.status == "completed" and not res.reused and not res.routed_for_inspection
    run_dir = tmp_path / cfg.run_id
    assert res.run_dir == run_dir
    assert {p.name for p in run_dir.iterdir()} == {STEPLOG_FILENAME, MANIFEST_FILENAME, "adapter"}
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert calls[0] == (0, 200) and calls[-1] == (200, 200) and len(calls) == 201

    rec = read_run(run_dir)
    steps, man = rec.steps, rec.manifest
    assert list(steps.columns) == list(STEP_COLUMNS) and steps.height == 201
    assert set(MANIFEST_KEYS) <= set(man) <= set(MANIFEST_KEYS) | set(OPTIONAL_MANIFEST_KEYS)
    assert man["config_hash"] == cfg.config_hash and man["config"] == cfg.to_dict()
    assert man["final_loss"] == pytest.approx(steps["loss"][-1]) == pytest.approx(res.final_loss)
    assert man["max_grad_norm"] == pytest.approx(steps["grad_norm"].max()) == pytest.approx(res.max_grad_norm)
    np.testing.assert_allclose(steps["max_grad_norm"].to_numpy(), np.maximum.accumulate(steps["grad_norm"].to_numpy()))
    # the logged grad norm is the global L2 of the per-matrix norms
    mat = np.array(steps["matrix_grad_norms"].to_list())
    np.testing.assert_allclose(np.linalg.norm(mat, axis=1), steps["grad_norm"].to_numpy(), rtol=1e-5)
    assert mat.shape[1] == len(man["matrix_names"]) == 4 * 4 * 2  # 4 layers x q,k,v,o x (A, B)
    # top-1 from the clean batch every 5 steps (the tiny family's source), NaN in between, plus the legacy
    # detector's own samples: step 11 and every step after it until it fires (tiny: already at 11, top-1 = 1)
    top1 = steps["top1_freq"].to_numpy()
    sampled = np.union1d(np.arange(0, 201, 5), [11])
    assert np.isfinite(top1[sampled]).all() and np.isnan(np.delete(top1, sampled)).all()
    assert man["top1_warning_detected"] is True and man["top1_fire_step"] == 11
    assert ((top1[::5] > 0) & (top1[::5] <= 1)).all()
    assert man["top1_source"] == "clean" and man["top1_step0"] == pytest.approx(top1[0])
    assert (steps["top1_forward_ms"].to_numpy()[::5] > 0).all()
    assert steps["n_masked"].min() >= 1 and 0.3 < steps["mask_ratio"].mean() < 0.7
    assert steps["clipped"].to_list() == (steps["grad_norm"] > cfg.clip_grad_norm).to_list()
    assert (steps["lr"] == cfg.learning_rate).all()
    # the run learned something on the shifted task
    assert steps["loss"][-20:].mean() < steps["loss"][:20].mean()
    ov = man["monitor_overhead"]
    assert 0 < ov["ratio"] < 0.5 and ov["top1_forward_ms_mean"] > 0
    assert 0 <= man["grad_gini"] <= 1 and 0 < man["grad_top1_share"] <= 1
    # grad_gini is the paper's: per-step Gini of the per-matrix norms, averaged over the last 10 steps
    from dlm_triage import monitors

    last10 = np.array(steps["matrix_grad_norms"].to_list())[-10:]
    assert man["grad_gini"] == pytest.approx(np.mean([monitors.gini(r) for r in last10]))
    conc = man["grad_concentration"]
    assert conc["paper_last10_steps"]["gini"] == man["grad_gini"] and conc["paper_last10_steps"]["n_steps"] == 10
    assert set(conc) == set(monitors.CONCENTRATION_DEFINITIONS) and conc["mass_last10pct"]["definition"]
    assert man["collapsed"] is False and man["diverged_at_step"] is None and man["status_reason"] is None
    assert isinstance(man["top1_warning_detected"], bool)
    assert man["code_version"] and man["packages"]["torch"] == torch.__version__
    assert man["device"] == "cpu" and man["dtype"] == "float32"

    # resume: the same config is reused without training (no step runs, nothing rewritten)
    written = {p.name: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    calls.clear()
    again = train_run(cfg, tmp_path, progress=lambda s, n: calls.append((s, n)))
    assert again.reused and again.status == "completed" and again.final_loss == res.final_loss
    assert calls == [] and {p.name: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == written


def test_same_config_and_seed_give_identical_logs(tiny_model_dir, tmp_path):
    cfg = small(tiny_model_dir, method="lora", steps=10)
    a = read_run(train_run(cfg, tmp_path / "a").run_dir).steps.drop(TIMING)
    b = read_run(train_run(cfg, tmp_path / "b").run_dir).steps.drop(TIMING)
    assert a.equals(b)
    c = read_run(train_run(cfg.replace(seed=7), tmp_path / "c").run_dir).steps.drop(TIMING)
    assert not a.equals(c)


def test_nan_gradient_diverges_and_keeps_the_log(tiny_model_dir, tmp_path):
    def inject(step, model):
        if step == 3:
            p = next(p for p in model.parameters() if p.requires_grad)
            p.grad.view(-1)[0] = float("nan")

    res = train_run(small(tiny_model_dir, save_adapter=True), tmp_path, hooks=train.FaultHooks(after_backward=inject))
    assert res.status == "diverged"
    rec = read_run(res.run_dir)  # valid: only the last step of a diverged run may hold NaN
    assert rec.steps.height == 4 and rec.manifest["diverged_at_step"] == 3
    assert math.isnan(rec.steps["grad_norm"][-1]) and math.isfinite(rec.steps["loss"][-1])
    assert "grad_norm=nan" in rec.manifest["status_reason"]
    assert rec.manifest["max_grad_norm"] == pytest.approx(rec.steps["grad_norm"][:3].max())
    assert rec.manifest["adapter_path"] is not None
    # a diverged run is a result: resume reuses it
    assert train_run(small(tiny_model_dir, save_adapter=True), tmp_path).reused


def test_absurd_learning_rate_diverges_on_its_own(tiny_model_dir, tmp_path):
    # lr=10: AdamW moves every adapter weight by ~10 per update; the gradients overflow within a few steps.
    res = train_run(small(tiny_model_dir, learning_rate=10.0, steps=20), tmp_path)
    rec = read_run(res.run_dir)
    assert res.status == "diverged", rec.steps.select("step", "loss", "grad_norm")
    last = rec.steps.tail(1)
    assert not (math.isfinite(last["loss"][0]) and math.isfinite(last["grad_norm"][0]))
    assert rec.manifest["diverged_at_step"] == rec.steps.height - 1 < 20


def test_exception_writes_a_failed_run_and_resume_reruns_it(tiny_model_dir, tmp_path):
    def boom(step, model):
        if step == 2:
            raise RuntimeError("simulated CUDA error")

    cfg = small(tiny_model_dir)
    with pytest.raises(RuntimeError, match="simulated"):
        train_run(cfg, tmp_path, hooks=train.FaultHooks(after_backward=boom))
    rec = read_run(tmp_path / cfg.run_id)
    assert rec.manifest["status"] == "failed" and "simulated CUDA error" in rec.manifest["status_reason"]
    assert rec.steps.height == 2
    res = train_run(cfg, tmp_path)
    assert not res.reused and res.status == "completed"


def test_kill_before_manifest_rename_leaves_an_incomplete_run(tiny_model_dir, tmp_path):
    def killed(tmp):
        raise KeyboardInterrupt  # like SIGINT/SIGKILL: not an Exception, nothing else gets written

    cfg = small(tiny_model_dir, steps=3)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, tmp_path, hooks=train.FaultHooks(before_manifest_rename=killed))
    assert (tmp_path / cfg.run_id / STEPLOG_FILENAME).is_file()
    assert not (tmp_path / cfg.run_id / MANIFEST_FILENAME).exists()
    assert not train_run(cfg, tmp_path).reused  # incomplete: trained again


def test_resume_ignores_a_run_with_another_config_hash(tiny_model_dir, tmp_path):
    cfg = small(tiny_model_dir, steps=3)
    train_run(cfg, tmp_path)
    man_path = tmp_path / cfg.run_id / MANIFEST_FILENAME
    import json

    man = json.loads(man_path.read_text())
    man["config_hash"] = "0" * 64
    man_path.write_text(json.dumps(man))
    assert not train_run(cfg, tmp_path).reused
    assert train_run(cfg, tmp_path, resume=True).reused
    assert not train_run(cfg, tmp_path, resume=False).reused


@pytest.mark.parametrize("method", ["dora", "nara", "lora_diffusion"])
def test_other_methods_through_train_run(tiny_model_dir, tmp_path, method):
    res = train_run(small(tiny_model_dir, method=method, steps=4, rank=4, save_adapter=True), tmp_path)
    rec = read_run(res.run_dir)
    assert res.status == "completed" and rec.steps.height == 5
    assert np.isfinite(rec.steps["grad_norm"].to_numpy()).all()
    if method == "nara":
        assert rec.manifest["matrix_names"][-1].startswith("nara_core.F.")


def test_target_mismatch_fails_before_training(tiny_model_dir, tmp_path):
    from dlm_triage.peft_methods import AdapterTargetError

    cfg = small(tiny_model_dir, target_modules=("q_proj", "query_key_value"))
    with pytest.raises(AdapterTargetError, match="query_key_value"):
        train_run(cfg, tmp_path)
    assert not (tmp_path / cfg.run_id / MANIFEST_FILENAME).exists()


def test_legacy_detector_stop_ends_the_run_at_its_fire_step_and_is_not_a_collapse(tiny_model_dir, tmp_path):
    # the tiny model's top-1 is saturated from step 0 (as the paper's LLaDA runs: 100% above 0.5 at step 0), so
    # the detector fires at its first sample, step 11; with top1_every=5 step 11 is sampled for the detector
    logged = train_run(small(tiny_model_dir, steps=20, top1_every=5), tmp_path / "logged")
    man = read_run(logged.run_dir).manifest
    assert logged.status == "completed" and man["top1_fire_step"] == 11
    cfg = small(tiny_model_dir, steps=20, top1_every=5, legacy_detector_stop=True)
    assert cfg.run_id != logged.run_id  # a different run: the option is hashed when set
    res = train_run(cfg, tmp_path / "stopped")
    rec = read_run(res.run_dir)
    assert res.status == "stopped_by_legacy_detector" == rec.manifest["status"]
    assert rec.steps.height == 12 and rec.manifest["top1_fire_step"] == 11
    assert "step 11" in rec.manifest["status_reason"]
    assert rec.manifest["collapsed"] is False
    # the same weights up to the stop: the option changes nothing before the detector fires
    np.testing.assert_allclose(rec.steps["loss"].to_numpy(), read_run(logged.run_dir).steps["loss"].to_numpy()[:12])
    # a stopped run is complete: resumed, not re-run
    assert train_run(cfg, tmp_path / "stopped").reused


def test_legacy_detector_option_keeps_existing_run_ids():
    base = RunConfig()
    assert base.config_hash == RunConfig(legacy_detector_stop=False).config_hash
    assert base.config_hash != RunConfig(legacy_detector_stop=True).config_hash
    with pytest.raises(Exception, match="legacy_detector_stop"):
        RunConfig(legacy_detector_stop="yes")
    from dlm_triage.params import SweepParams  # the sweep form / CLI spec carries the option to every run

    assert all(c.legacy_detector_stop for c in SweepParams(legacy_detector_stop=True).to_spec().expand())
