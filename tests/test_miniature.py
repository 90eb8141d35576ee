"""The embedded miniature: three tiny families built locally (a bidirectional Llama DLM, a DiffusionGemma from
transformers' own classes, a causal Llama AR control), each pretrained here and fine-tuned on the embedded SFT
set. The default grid `dlm-triage run` trains over them: test_defaults.py."""

from __future__ import annotations

import json

import pytest
import torch

from dlm_triage.config import RunConfig, SweepSpec
from dlm_triage.families import get_family
from dlm_triage.tiny import ensure_tiny_model, load_tiny, read_recipe, recipe_key
from dlm_triage.train import train_run


@pytest.fixture(scope="module")
def ar_dir(tmp_path_factory):
    return ensure_tiny_model(tmp_path_factory.mktemp("ar-cache"), pretrain_steps=3, kind="ar")


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    from dlm_triage.tiny_diffusion_gemma import ensure_tiny_diffusion_gemma

    return ensure_tiny_diffusion_gemma(tmp_path_factory.mktemp("gemma-cache"), pretrain_steps=3)


def test_the_ar_control_is_the_tiny_shape_with_causal_attention_pretrained_next_token(ar_dir, tiny_model_dir):
    model, tok = load_tiny(ar_dir, causal=True)
    assert model.config.is_causal is True and model.config.hidden_size == 128
    meta = read_recipe(ar_dir)
    assert meta["recipe"]["kind"] == "ar" and "eval_next_token_ce_pretrain" in meta["stats"]
    assert recipe_key(3, "ar") != recipe_key(3) and recipe_key(3).startswith("tiny-dlm-")  # the dlm key as it was
    # causal: a change at the last position leaves every earlier logit as it was; bidirectional: it does not
    ids = torch.tensor([tok.encode("the cat sat on the mat.")])
    later = ids.clone()
    later[0, -1] = tok.encode("x")[0]
    dlm, _ = load_tiny(tiny_model_dir)
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits[0, :-1], model(input_ids=later).logits[0, :-1], atol=1e-5)
        assert not torch.allclose(dlm(input_ids=ids).logits[0, :-1], dlm(input_ids=later).logits[0, :-1], atol=1e-5)
    with pytest.raises(ValueError, match="causal"):
        load_tiny(ar_dir)  # the DLM loader refuses the AR model
    with pytest.raises(ValueError, match="bidirectional"):
        load_tiny(tiny_model_dir, causal=True)


@pytest.mark.parametrize("family", ["tiny_ar", "tiny_gemma"])
def test_local_families_fine_tune_on_the_embedded_sft_set(family, ar_dir, gemma_dir, tmp_path):
    model_dir = ar_dir if family == "tiny_ar" else gemma_dir
    cfg = RunConfig(family=family, model_id=str(model_dir), dataset="tiny-instruct", seq_len=48, steps=3,
                    save_adapter=False, learning_rate=1e-2)
    assert cfg.objective == ("diffusion_gemma" if family == "tiny_gemma" else "paper")
    res = train_run(cfg, tmp_path)
    m = json.loads((tmp_path / cfg.run_id / "manifest.json").read_text())
    assert m["status"] == "completed" and m["config"]["family"] == family and m["n_steps_logged"] == 4
    assert res.max_grad_norm > 0
    adapter = get_family(family)
    assert adapter.name == family and adapter.default_model_id is None  # model_id None: built here, no hub


def test_local_families_resolve_their_default_model_without_the_hub(monkeypatch, ar_dir, gemma_dir):
    from dlm_triage import tiny, tiny_diffusion_gemma

    monkeypatch.setattr(tiny, "ensure_tiny_model", lambda **kw: ar_dir if kw.get("kind") == "ar" else None)
    monkeypatch.setattr(tiny_diffusion_gemma, "ensure_tiny_diffusion_gemma", lambda **kw: gemma_dir)
    assert get_family("tiny_ar").model_id(RunConfig(family="tiny_ar")) == str(ar_dir)
    assert get_family("tiny_gemma").model_id(RunConfig(family="tiny_gemma")) == str(gemma_dir)


def test_a_family_that_ignores_rho_trains_once_per_cell_not_once_per_rho():
    spec = SweepSpec(families=("tiny", "tiny_gemma"), ranks=(4,), mask_ratios=(0.15, 0.5, 0.85),
                     learning_rates=(1e-3, 1e-2), seeds=(7,))
    by = {}
    for c in spec.expand():
        by.setdefault(c.family, []).append(c)
    assert len(by["tiny"]) == 3 * 2 and len(by["tiny_gemma"]) == 2  # no identical copies under three run ids
    assert {c.mask_ratio for c in by["tiny_gemma"]} == {RunConfig.mask_ratio}
    # a noise-conditioned adapter is given cfg.mask_ratio as its noise level: the axis stays
    nara = SweepSpec(families=("tiny_gemma",), methods=("nara",), ranks=(4,), mask_ratios=(0.15, 0.85), seeds=(7,))
    assert len(nara.expand()) == 2


def test_end_of_run_summary_answers_for_each_family_of_the_miniature():
    from datetime import datetime

    import polars as pl

    from dlm_triage import store
    from dlm_triage.calibrate import CalibrationInputs, calibrate
    from cli.main import run_summary
    from dlm_triage.synthetic import synthetic_inputs

    # synthetic stand-ins under the miniature's family names: a large strong family (accepted), a weaker one
    # (rejected), a small cohort (too few to decide)
    inp = synthetic_inputs({"llada": 432, "dream": 144, "mdlm": 36}, n_steps=30, seed=3)
    names = {"llada": "tiny", "dream": "tiny_ar", "mdlm": "tiny_gemma"}
    inp = CalibrationInputs(inp.runs.with_columns(pl.col("family").replace(names)), inp.traj)
    res = calibrate(inp, ks=(25,), n_resamples=200, stepk_resamples=10)
    status = {f: g["registry"]["status"] for f, g in res["groups"].items()}
    assert status == {"tiny": "accepted", "tiny_ar": "rejected", "tiny_gemma": "rejected"}
    reg = res["groups"]["tiny"]["registry"]
    live = {"tiny": (store.ThresholdRecord("tiny", "family", "max_grad_norm", 25, reg["threshold"], None, None,
                                           432, res["calibration_id"], datetime.now()), ""),
            "tiny_ar": (None, ""), "tiny_gemma": (None, "")}
    lines = run_summary(res, live=live, routed={"tiny": 5}, runs=[{"status": "completed"}] * 612,
                        report_html="r.html")
    assert lines[0].startswith("612 runs: 612 completed")
    for fam in ("tiny", "tiny_ar", "tiny_gemma"):
        [line] = [x for x in lines if x.startswith(f"  {fam} ")]  # one answer per family
        reg = res["groups"][fam]["registry"]
        if fam == "tiny":
            assert f"live threshold max-grad-up-to-25 >= {reg['threshold']:.4g}" in line and "5 run(s) routed" in line
        else:  # why none, in the registry's own words
            assert "no live threshold: " in line and reg["rejection_reasons"][0][:40] in line
        assert f"vs baseline ceiling {reg['baseline_ceiling']:.3g}" in line


def test_missing_local_models_are_built_at_once_in_worker_processes(tmp_path, monkeypatch):
    from dlm_triage.tiny import ensure_local_models, is_built

    monkeypatch.setenv("DLM_TRIAGE_CACHE", str(tmp_path))  # the spawned workers inherit it
    steps = {"ar": 2, "gemma": 2}
    assert not is_built("ar", 2) and not is_built("gemma", 2)
    paths = ensure_local_models(["ar", "gemma"], workers=2, pretrain_steps=steps)
    assert set(paths) == {"ar", "gemma"} and is_built("ar", 2) and is_built("gemma", 2)
    for kind, path in paths.items():
        meta = read_recipe(path)
        assert meta["recipe"]["pretrain_steps"] == 2 and str(tmp_path) in path
        assert meta["stats"]["pretrain_wall_s"] >= 0  # pretrained by a worker, recipe written last
    load_tiny(paths["ar"], causal=True)
    again = ensure_local_models(["ar", "gemma"], workers=2, pretrain_steps=steps)  # built: nothing runs again
    assert again == paths and {read_recipe(p)["built_at"] for p in again.values()} == \
        {read_recipe(p)["built_at"] for p in paths.values()}
