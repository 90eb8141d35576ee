"""Live early warning: the rule, train_run integration, and the transformers Trainer callback."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest
import torch

from dlm_triage import nara
from dlm_triage.config import RunConfig
from dlm_triage.early_warning import DLMTriageCallback, EarlyWarning, emit_routed_event
from dlm_triage.runlog import read_run
from dlm_triage.train import train_run


@dataclass(frozen=True)
class Thr:  # the fields of store.ThresholdRecord the warning reads
    threshold: float
    calibration_id: str
    group: str


def feed(ew, values, steps=None):
    steps = range(len(values)) if steps is None else steps
    return [ew.observe(s, v) for s, v in zip(steps, values)]


def test_fires_at_k_on_max_so_far_including_step_0():
    ew = EarlyWarning(2.0, k=3, action="flag", group="tiny")
    out = feed(ew, [2.5, 0.1, 0.1, 0.1, 9.0])
    assert out[:3] == [None, None, None] and out[4] is None  # evaluated once, at k
    d = out[3]
    assert (d.step, d.value, d.threshold, d.action, d.group) == (3, 2.5, 2.0, "flag", "tiny")


def test_equal_to_threshold_is_positive_and_below_is_not():
    assert feed(EarlyWarning(2.0, k=1), [2.0, 0.0])[1] is not None
    ew = EarlyWarning(2.0, k=1)
    assert feed(ew, [1.9, 1.0, 5.0]) == [None, None, None]  # the late spike comes after k
    assert ew.evaluated and ew.decision is None


def test_first_observed_step_at_or_after_k_and_nonfinite():
    ew = EarlyWarning(1.0, k=5)
    assert feed(ew, [0.5, 0.7], steps=[0, 4]) == [None, None]
    assert ew.observe(9, 1.2).step == 9  # logging skipped k: evaluated at the next observed step
    ew = EarlyWarning(1e9, k=2)
    assert feed(ew, [0.1, float("nan"), 0.1])[2] is not None  # NaN counts as +inf


def test_threshold_record_and_none(caplog):
    d = feed(EarlyWarning(Thr(1.0, "cal-1", "llada"), k=0), [3.0])[0]
    assert d.calibration_id == "cal-1" and d.group == "llada"
    with caplog.at_level(logging.WARNING, logger="dlm_triage.early_warning"):
        ew = EarlyWarning(None, k=0, group="dream")
        assert feed(ew, [1e9, 1e9]) == [None, None] and not ew.enabled
    assert [r.getMessage() for r in caplog.records] == ["no threshold registered for family dream; early warning off"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dlm_triage.early_warning"):
        EarlyWarning(None, k=0, group="dream", announce=False)  # a sweep said it once for all its runs
    assert caplog.records == []


def test_status_says_when_a_run_ends_before_k():
    ew = EarlyWarning(Thr(5.0, "cal-1", "tiny"), k=25)
    feed(ew, [9.0] * 11)  # a 10-step smoke run: steps 0..10, max 9 >= 5, but k=25 is never reached
    st = ew.status(last_step=10)
    assert st["evaluated"] is False and st["ended_before_k"] is True and ew.decision is None
    assert "ended at step 10, before k=25" in st["note"] and "max grad so far 9" in st["note"]
    ew = EarlyWarning(Thr(5.0, "cal-1", "tiny"), k=3)
    feed(ew, [1.0] * 5)
    assert ew.status(last_step=4) == {"k": 3, "threshold": 5.0, "calibration_id": "cal-1", "group": "tiny",
                                      "evaluated": True, "ended_before_k": False, "note": None}


@pytest.mark.parametrize("bad, exc", [(-1.0, ValueError), (float("nan"), ValueError), ("2.0", TypeError)])
def test_invalid_threshold(bad, exc):
    with pytest.raises(exc, match="threshold"):
        EarlyWarning(bad)


def test_no_prefect_event_outside_a_run_context():
    pytest.importorskip("prefect")
    import prefect  # noqa: F401  (imported: the function then checks for a run context)

    d = feed(EarlyWarning(1.0, k=0), [2.0])[0]
    assert emit_routed_event("r", d) is False


@pytest.mark.parametrize("action", ["flag", "stop"])
def test_train_run_routes_at_step_k(tiny_model_dir, tmp_path, action):
    cfg = RunConfig(model_id=str(tiny_model_dir), steps=12, early_warning_step=4, early_warning_action=action,
                    batch_size=2, seq_len=16, device="cpu", save_adapter=False)
    res = train_run(cfg, tmp_path, threshold=Thr(1e-6, "cal-x", "tiny"))
    rec = read_run(res.run_dir)
    assert res.routed_for_inspection and rec.manifest["routed_for_inspection"]
    routing = rec.manifest["routing"]
    assert routing["step"] == 4 and routing["threshold"] == 1e-6 and routing["calibration_id"] == "cal-x"
    assert routing["action"] == action and routing["event_emitted"] is False
    assert routing["value"] == pytest.approx(rec.steps["grad_norm"][:5].max())
    if action == "stop":
        assert res.status == "stopped_early" and rec.steps.height == 5
    else:
        assert res.status == "completed" and rec.steps.height == 13


def test_train_run_not_routed_below_threshold_or_without_one(tiny_model_dir, tmp_path):
    cfg = RunConfig(model_id=str(tiny_model_dir), steps=5, early_warning_step=2, batch_size=2, seq_len=16,
                    device="cpu", save_adapter=False)
    for thr in (1e9, None):
        res = train_run(cfg, tmp_path / str(thr), threshold=thr)
        man = read_run(res.run_dir).manifest
        assert not res.routed_for_inspection and man["routing"] is None and res.status == "completed"
        assert man["early_warning"]["k"] == 2 and man["early_warning"]["evaluated"] is (thr is not None)
    # a run shorter than k says so in its manifest
    res = train_run(cfg.replace(early_warning_step=25), tmp_path / "short", threshold=1e9)
    ew = read_run(res.run_dir).manifest["early_warning"]
    assert ew["ended_before_k"] and not ew["evaluated"] and "ended at step 5, before k=25" in ew["note"]


def test_callback_on_a_real_trainer_run(tiny_model_dir, tmp_path):
    """A tiny transformers.Trainer run with LoRA and the masked-diffusion loss; the callback stops it at k."""
    from transformers import Trainer, TrainingArguments

    from dlm_triage.data import make_batches
    from dlm_triage.objective import mask_tokens, masked_diffusion_loss
    from dlm_triage.peft_methods import apply_adapter
    from dlm_triage.tiny import load_tiny

    cfg = RunConfig(model_id=str(tiny_model_dir), batch_size=2, seq_len=16, rank=4)
    model, tok = load_tiny(tiny_model_dir)
    model = apply_adapter(model, cfg, ("q_proj", "v_proj"))
    batches = make_batches(cfg, tok)
    train_ds = [{"input_ids": batches.windows[i]} for i in range(64)]
    gen = torch.Generator().manual_seed(0)

    class MaskedDiffusionTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
            x0 = inputs["input_ids"]
            noisy, mask = mask_tokens(x0, 0.5, tok.mask_token_id, gen)
            return masked_diffusion_loss(model(input_ids=noisy).logits, x0, mask)

    cb = DLMTriageCallback(1e-6, k=3, action="stop", group="tiny", run_id="trainer-test")
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=10, per_device_train_batch_size=2, logging_steps=1,
        learning_rate=1e-3, max_grad_norm=0.5, report_to=[], save_strategy="no", use_cpu=True,
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = MaskedDiffusionTrainer(model=model, args=args, train_dataset=train_ds, callbacks=[cb],
                                     data_collator=lambda rows: {"input_ids": torch.stack([r["input_ids"] for r in rows])})
    trainer.train()
    assert cb.decision is not None and cb.decision.step == 3  # global_step 4 = our step 3
    assert trainer.state.global_step == 4  # stopped there, not at max_steps
    logged = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
    assert cb.decision.value == pytest.approx(max(logged[:4]))


def test_callback_without_threshold_never_stops(tiny_model_dir):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    cb = DLMTriageCallback(None, k=1, action="stop")
    state, control = TrainerState(), TrainerControl()
    for g in range(1, 5):
        state.global_step = g
        cb.on_log(TrainingArguments("unused", report_to=[]), state, control, logs={"grad_norm": 1e9})
    assert cb.decision is None and not control.should_training_stop
