"""The remote-code families on their *published* modeling files (read from $DLM_TRIAGE_REMOTE_CODE/<family>/,
never stored here): tiny random-init checkpoints load through each adapter's real load() path
(from_pretrained(dir, trust_remote_code=True)), compute what their weights define, and train a LoRA run end to
end through train_run. Run under both supported transformers lines (4.57.x and 5.x); skipped, with the reason,
when the files are not there. `pytest -m remote_code` runs only these.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dlm_triage import remote_code
from dlm_triage.config import RunConfig
from dlm_triage.families import FamilyError, get_family
from remote_families import CODE_FILES, build_checkpoint, reference_model, remote_code_dir, skip_reason

pytestmark = pytest.mark.remote_code
CPU = torch.device("cpu")
FAMILIES = ("llada", "dream", "llada2", "llada_moe", "mdlm")
MASK_ID = {"llada": 126336, "dream": 151666, "llada2": 156895, "llada_moe": 156895, "mdlm": 50257}


def _need(family):
    if remote_code_dir(family) is None:
        pytest.skip(skip_reason(family))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    built = {}

    def get(family):
        _need(family)
        if family not in built:
            built[family] = build_checkpoint(family, tmp_path_factory.mktemp(f"rc-{family}"))
        return built[family]

    return get


def _load(family, path):
    return get_family(family).load(RunConfig(family=family, model_id=str(path)), CPU, torch.float32)


def _ids(b=2, length=12, seed=0):
    return torch.randint(1, 40, (b, length), generator=torch.Generator().manual_seed(seed))


def _expected_shims(family):
    from packaging.version import Version

    return {name for name, (fams, needs, _) in remote_code.SHIMS.items()
            if family in fams and (needs == "all" or remote_code.TRANSFORMERS_VERSION >= Version(needs[2:]))}


@pytest.mark.parametrize("family", FAMILIES)
def test_loads_the_published_class_through_the_adapter(ckpt, family):
    path = ckpt(family)
    lm = _load(family, path)
    assert type(lm.model).__module__.startswith("transformers_modules.")  # the checkpoint's own code file
    src = remote_code_dir(family)
    assert (path / CODE_FILES[family][0]).read_bytes() == (src / CODE_FILES[family][0]).read_bytes()
    assert lm.mask_token_id == MASK_ID[family]
    assert set(lm.compat) == _expected_shims(family)
    if family == "dream" and (src / "tokenization_dream.py").is_file():  # its remote slow tokenizer
        assert type(lm.tokenizer).__name__ == "DreamTokenizer"
        assert lm.tokenizer.convert_tokens_to_ids("<|mask|>") == MASK_ID["dream"]
    cfg = json.loads((path / "config.json").read_text())
    assert lm.model.config.vocab_size == cfg["vocab_size"] or cfg.get("embedding_size") == lm.model.config.vocab_size


@pytest.mark.parametrize("family", FAMILIES)
def test_loaded_checkpoint_computes_what_its_weights_define(ckpt, family):
    path = ckpt(family)
    lm = _load(family, path)
    ref = reference_model(family, path)
    model = lm.model.eval()
    # non-persistent buffers (rotary inv_freq) equal both the reference construction and the closed form
    saved = set(model.state_dict())
    ref_buffers = dict(ref.named_buffers())
    for name, buf in model.named_buffers():
        if name not in saved:
            assert torch.equal(buf, ref_buffers[name]), name
    rotary = [name for name, _ in model.named_buffers() if name.endswith("inv_freq")]
    assert bool(rotary) == (family != "llada"), rotary  # LLaDA computes its rotary tables in a cache, no buffer
    for name in rotary:
        buf = model.get_buffer(name)
        c = model.config
        if family == "mdlm":  # persistent, saved with the weights; Rotary(hidden_dim // n_heads), base 10000
            dim, theta = c.hidden_dim // c.n_heads, 10_000.0
        else:  # non-persistent, rebuilt at load: the 'default' RoPE of the module's own config
            c = model.get_submodule(name.rsplit(".", 1)[0]).config
            head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
            dim = int(head * (getattr(c, "partial_rotary_factor", None) or 1.0))
            theta = getattr(c, "rope_theta", None) or c.rope_parameters["rope_theta"]
        formula = 1.0 / (float(theta) ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        torch.testing.assert_close(buf.double(), formula, rtol=1e-6, atol=0, msg=name)
    adapter = get_family(family)
    with torch.no_grad():
        got, want = adapter.logits(model, _ids()), adapter.logits(ref, _ids())
    finite = torch.isfinite(got)
    if family == "mdlm":  # SUBS: the mask token's logit is -inf, every other one finite
        assert (got[..., MASK_ID["mdlm"]] == float("-inf")).all()
        finite[..., MASK_ID["mdlm"]] = True
    assert finite.all()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_is_bidirectional_through_the_adapter(ckpt, family):
    lm, adapter = _load(family, ckpt(family)), get_family(family)
    ids = _ids()
    other = ids.clone()
    other[:, -1] = (other[:, -1] + 1) % 30 + 5
    with torch.no_grad():
        a, b = adapter.logits(lm.model.eval(), ids), adapter.logits(lm.model, other)
    assert not torch.allclose(a[:, 1], b[:, 1])  # an early position sees the last token


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_targets_exist_in_the_published_class(ckpt, family):
    lm, adapter = _load(family, ckpt(family)), get_family(family)
    assert adapter.attention_targets(lm.model) == adapter.targets
    with pytest.raises(FamilyError, match="match no linear module"):
        from dlm_triage.families import check_targets

        check_targets(lm.model, ("o_proj_that_does_not_exist",), family=family)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_trains_end_to_end_through_train_run(ckpt, family, tmp_path):
    from dlm_triage.runlog import read_run
    from dlm_triage.train import train_run

    cfg = RunConfig(family=family, model_id=str(ckpt(family)), steps=3, batch_size=2, seq_len=16, rank=4,
                    device="cpu", dtype="float32", save_adapter=True, learning_rate=1e-3)
    res = train_run(cfg, tmp_path)
    assert res.status == "completed", res
    rec = read_run(res.run_dir)
    steps = rec.steps
    assert steps.height == 4
    for col in ("loss", "grad_norm", "max_grad_norm"):
        assert np.isfinite(steps[col].to_numpy()).all(), col
    assert (steps["grad_norm"].to_numpy() > 0).all()
    assert np.isfinite(np.array(steps["matrix_grad_norms"].to_list())).all()
    # top-1 at step 0 (real families' default cadence is every 5th step), from where the family reads it
    assert 0 < steps["top1_freq"][0] <= 1 and rec.manifest["top1_source"] == ("masked" if family == "mdlm" else "clean")
    assert rec.manifest["config"]["family"] == family and rec.manifest["status"] == "completed"
    assert math.isfinite(rec.manifest["final_loss"])
    assert (res.run_dir / "adapter").is_dir()


def test_llada_constructor_no_longer_switches_sdpa_kernels_for_the_process(ckpt):
    path = ckpt("llada")
    cuda = torch.backends.cuda
    before = cuda.mem_efficient_sdp_enabled()
    try:
        cuda.enable_mem_efficient_sdp(True)
        config, cls, _ = remote_code.load_class("llada", path, "AutoModel")
        cls(config)  # the published constructor, unguarded: it turns the kernel off process-wide
        assert not cuda.mem_efficient_sdp_enabled()
        cuda.enable_mem_efficient_sdp(True)
        _load("llada", path)  # through the adapter: restored
        assert cuda.mem_efficient_sdp_enabled()
    finally:
        cuda.enable_mem_efficient_sdp(before)


def test_llada2_none_mask_under_sdpa_equals_the_explicit_full_mask(ckpt):
    lm, adapter = _load("llada2", ckpt("llada2")), get_family("llada2")
    model = lm.model.eval()
    ids = _ids()
    assert model.config._attn_implementation == "sdpa"
    assert adapter.attention_mask(model, ids) is None  # keeps sdpa free to pick its flash kernel
    with torch.no_grad():
        none = model(input_ids=ids, use_cache=False).logits
        full = model(input_ids=ids, use_cache=False, attention_mask=torch.ones(2, 1, 12, 12)).logits
    torch.testing.assert_close(none, full, rtol=1e-5, atol=1e-5)


def test_missing_code_file_fails_before_training_naming_file_and_fix(ckpt, tmp_path):
    import shutil

    bad = tmp_path / "llada-no-config-code"
    shutil.copytree(ckpt("llada"), bad)
    (bad / "configuration_llada.py").unlink()
    with pytest.raises(FamilyError, match=r"family 'llada'.*lacks configuration_llada\.py.*copy the checkpoint"):
        _load("llada", bad)


def test_mdlm_ignores_timesteps_without_time_conditioning_and_never_predicts_the_mask(ckpt):
    lm, adapter = _load("mdlm", ckpt("mdlm")), get_family("mdlm")
    model = lm.model.eval()
    assert model.config.time_conditioning is False
    with pytest.raises(NotImplementedError):
        model.get_input_embeddings()  # a bare Parameter: the adapter's mask-id check reads config.vocab_size
    ids = _ids()
    with torch.no_grad():
        zero = adapter.logits(model, ids)
        half = adapter.logits(model, ids, timesteps=torch.full((2,), 0.5))
        # the mask row made the most likely token everywhere: SUBS must still keep top-1 off it
        model.backbone.output_layer.linear.bias[MASK_ID["mdlm"]] += 1e4
        forced = adapter.logits(model, ids)
    torch.testing.assert_close(zero, half)  # the published backbone zeroes sigma itself
    assert (forced.argmax(-1) != MASK_ID["mdlm"]).all()


def test_missing_flash_attn_fails_before_training_with_the_fix(ckpt, tmp_path):
    import importlib.util
    import shutil

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash_attn is installed here")
    bad = tmp_path / "mdlm-hub-imports"
    shutil.copytree(ckpt("mdlm"), bad)
    code = bad / "modeling_mdlm.py"
    # the hub's modeling_mdlm.py imports flash_attn at module level (the CPU copy used here does not)
    code.write_text("import flash_attn\nimport flash_attn.layers.rotary\n" + code.read_text())
    with pytest.raises(FamilyError, match=r"family 'mdlm'.*modeling_mdlm\.py.*\['flash_attn'\].*CUDA GPU"):
        _load("mdlm", bad)


def test_tokenizer_without_mask_token_and_no_default_fails_naming_the_fix(ckpt, tmp_path):
    import shutil

    from remote_families import save_tokenizer

    bad = tmp_path / "llada-moe-foreign-tokenizer"
    shutil.copytree(ckpt("llada_moe"), bad)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (bad / f).unlink(missing_ok=True)
    save_tokenizer("mdlm", bad)  # a tokenizer with neither a mask token nor '<|mask|>'
    with pytest.raises(FamilyError, match=r"family 'llada_moe'.*no mask token.*'<\|mask\|>'.*tokenizer\.json"):
        _load("llada_moe", bad)


def test_requested_target_the_published_class_lacks_fails_before_training(ckpt, tmp_path):
    from dlm_triage.train import train_run

    cfg = RunConfig(family="llada", model_id=str(ckpt("llada")), steps=2, batch_size=2, seq_len=16,
                    device="cpu", dtype="float32", target_modules=("q_proj", "o_proj"))
    with pytest.raises(FamilyError, match=r"family 'llada'.*\['o_proj'\].*LLaDAModelLM in modeling_llada\.py"):
        train_run(cfg, tmp_path)
    assert not any(tmp_path.rglob("manifest.json"))


def test_one_process_loads_llada_then_llada_moe_with_each_its_own_config_class(ckpt):
    # LLaDA's configuration_llada.py registers model_type 'llada' with AutoConfig; LLaDA-MoE's published config
    # uses the same model_type. A long-lived worker that trained LLaDA must still build LLaDA-MoE's own config.
    llada = _load("llada", ckpt("llada"))
    moe = _load("llada_moe", ckpt("llada_moe"))
    assert type(llada.model.config).__module__.endswith("configuration_llada")
    assert type(moe.model.config).__module__.endswith("configuration_lladamoe")
    assert moe.model.config.model_type == llada.model.config.model_type == "llada"


def test_cli_train_on_a_published_checkpoint_as_a_user_would(ckpt, tmp_path):
    import os
    import subprocess
    import sys

    path = ckpt("llada")
    env = {**os.environ, "DLM_TRIAGE_OUT": str(tmp_path / "out"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "cli", "train", "--set", "family=llada", "--set", f"model_id={path}",
           "--set", "steps=2", "--set", "batch_size=2", "--set", "seq_len=16", "--set", "device=cpu"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    manifests = list((tmp_path / "out").rglob("manifest.json"))
    assert len(manifests) == 1 and json.loads(manifests[0].read_text())["status"] == "completed"


@pytest.mark.slow
def test_a_sweep_shard_trains_every_family_one_after_another(ckpt, prefect_harness, tmp_path):
    # the sweep's unit of work: one shard process trains its configs in order (here every family's published
    # code in one process, so any process-wide state one family's code leaves behind meets the next family)
    from flows.shard import train_shard_flow

    families = [f for f in FAMILIES if remote_code_dir(f) is not None]
    cfgs = [RunConfig(family=f, model_id=str(ckpt(f)), steps=2, batch_size=2, seq_len=16, rank=4, device="cpu",
                      dtype="float32").to_dict() for f in families]
    records = train_shard_flow(cfgs, str(tmp_path / "runs"))
    assert [r["status"] for r in records] == ["completed"] * len(families), records


FIRST_IN_LAYER0 = {"llada": "blocks.0.attn_norm", "dream": "layers.0.input_layernorm",
                   "llada2": "layers.0.input_layernorm", "llada_moe": "layers.0.input_layernorm"}


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_checkpointing_on_the_published_class_recomputes_and_changes_no_number(ckpt, family, tmp_path):
    from dlm_triage import train

    def cfg(gc):
        return RunConfig(family=family, model_id=str(ckpt(family)), steps=1, batch_size=2, seq_len=16, rank=4,
                         device="cpu", dtype="float32", top1_every=10**6, gradient_checkpointing=gc)

    if family == "mdlm":  # the published MDLM has neither the HF API nor a mechanism of its own
        with pytest.raises(FamilyError, match=r"family 'mdlm'.*MDLM does not support.*gradient_checkpointing=false"):
            train.train_run(cfg(True), tmp_path)
        assert not any(tmp_path.rglob("manifest.json"))
        return
    if family == "llada":  # the published LLaDAModelLM refuses the HF API: the adapter drives its own
        # transformers 4.57 says 'gradient', 5.x 'activation'
        with pytest.raises(ValueError, match=r"LLaDAModelLM does not support (gradient|activation) checkpointing"):
            _load("llada", ckpt("llada")).model.gradient_checkpointing_enable()
    out = {}
    for gc in (False, True):
        r = train._setup(cfg(gc))
        try:
            assert r.checkpointing == (None if not gc else "llada_activation_checkpointing" if family == "llada"
                                       else "hf")
            block = next(m for n, m in r.model.named_modules() if n.endswith(FIRST_IN_LAYER0[family]))
            calls = []
            handle = block.register_forward_pre_hook(lambda *a: calls.append(1))
            row = train.train_step(r, 0)
            handle.remove()
            # minus the clean-batch top-1 forward at step 0 (no grad, so nothing to recompute)
            out[gc] = (len(calls) - 1, row["loss"], torch.cat([p.grad.flatten() for p in r.params]))
        finally:
            r.lease.release(r.model)
    assert out[False][0] == 1 and out[True][0] == 2  # layer 0 runs again in the backward, only when on
    assert out[True][1] == out[False][1]
    torch.testing.assert_close(out[True][2], out[False][2], rtol=1e-6, atol=0)


def _tiny_run(family, path, **kw):
    base = dict(family=family, model_id=str(path), steps=2, batch_size=2, seq_len=16, rank=4, device="cpu",
                dtype="float32", top1_every=1)
    return RunConfig(**{**base, **kw})


@pytest.mark.parametrize("family", FAMILIES)
def test_accumulated_micro_batches_give_the_big_batch_gradient_on_the_published_class(ckpt, family):
    # k=2 micro-batches of 2 against one batch of 4 (same mask draws): equal up to float32 reassociation
    from dlm_triage import train

    rows, grads = {}, {}
    for name, kw in (("big", dict(batch_size=4)), ("acc", dict(batch_size=2, grad_accum_steps=2))):
        r = train._setup(_tiny_run(family, ckpt(family), **kw))
        try:
            rows[name] = train.train_step(r, 0)
            grads[name] = torch.cat([p.grad.flatten() for p in r.params])
        finally:
            r.lease.release(r.model)
    assert float((grads["acc"] - grads["big"]).norm()) <= 1e-5 * float(grads["big"].norm())
    assert rows["acc"]["n_masked"] == rows["big"]["n_masked"]
    assert rows["acc"]["loss"] == pytest.approx(rows["big"]["loss"], rel=1e-6)
    assert rows["acc"]["top1_freq"] == pytest.approx(rows["big"]["top1_freq"])


@pytest.mark.parametrize("family", FAMILIES)
def test_a_run_on_the_resident_published_base_equals_the_same_run_on_a_fresh_load(ckpt, family, tmp_path):
    # PiSSA first: it rewrites the base's target weights, which the release must put back
    from safetensors.torch import load_file

    from dlm_triage import resident
    from dlm_triage.runlog import read_run
    from dlm_triage.train import train_run

    resident.clear()
    try:
        train_run(_tiny_run(family, ckpt(family), method="pissa", seed=1), tmp_path / "a")
        second = train_run(_tiny_run(family, ckpt(family), seed=2, save_adapter=True), tmp_path / "a")
        assert second.model_resident and resident.stats()["loads"] == 1
        resident.clear()
        alone = train_run(_tiny_run(family, ckpt(family), seed=2, save_adapter=True), tmp_path / "b")
        assert not alone.model_resident
    finally:
        resident.clear()
    a, b = read_run(second.run_dir), read_run(alone.run_dir)
    cols = [c for c in a.steps.columns if not c.endswith("_ms")]  # timings aside, bitwise
    assert a.steps.select(cols).equals(b.steps.select(cols))
    wa, wb = (load_file(str(r.run_dir / "adapter" / "adapter_model.safetensors")) for r in (second, alone))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llada", "dream"])
def test_the_sweep_trains_a_published_checkpoint_in_shard_processes(ckpt, family, prefect_harness, tmp_path):
    # the local sweep path: two configs, two shard subprocesses, each loading the checkpoint's own code
    from dlm_triage.params import SweepParams
    from dlm_triage.runlog import read_run
    from flows.sweep import sweep_flow

    params = SweepParams(families=[family], model_id=str(ckpt(family)), ranks=[4], mask_ratios=[0.3, 0.7], seeds=[1],
                         steps=2, batch_size=2, seq_len=16, device="cpu", runs_dir=tmp_path / "runs",
                         db=tmp_path / "none.duckdb", gpu_slots=2, extra={"dtype": "float32"})
    recs = sweep_flow(params)
    assert [r["status"] for r in recs] == ["completed"] * 2, recs
    for r in recs:
        rec = read_run(tmp_path / "runs" / r["run_id"])
        assert rec.manifest["config"]["family"] == family and rec.steps.height == 3
        assert np.isfinite(rec.steps["grad_norm"].to_numpy()).all()
