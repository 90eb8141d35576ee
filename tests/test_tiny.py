"""tiny.py: tokenizer round trip, deterministic corpora, the cached build (atomic, locked, deterministic),
bidirectional attention, and a pretrained model that beats the uniform baseline."""

from __future__ import annotations

import json
import math
import threading

import pytest
import torch

from dlm_triage import tiny
from dlm_triage.tiny import CharTokenizer, ensure_tiny_model, load_tiny, read_recipe


def test_tokenizer_round_trips_through_a_directory(tmp_path):
    tok = CharTokenizer()
    text = "is the cat red? yes, it is 12-3=9.\nann"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert (tok.pad_token_id, tok.mask_token_id, tok.unk_token_id) == (0, 1, 2)
    tok.save_pretrained(tmp_path)
    again = CharTokenizer.from_pretrained(tmp_path)
    assert again.itos == tok.itos and again.encode(text) == ids
    assert tok.encode("é") == [tok.unk_token_id]
    assert tok.decode([1, 0], skip_special_tokens=True) == ""
    with pytest.raises(FileNotFoundError, match="ensure_tiny_model"):
        CharTokenizer.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


def test_corpora_are_deterministic_and_shifted():
    assert tiny.tiny_finetune_texts(50, seed=3) == tiny.tiny_finetune_texts(50, seed=3)
    assert tiny.tiny_finetune_texts(50, seed=3) != tiny.tiny_finetune_texts(50, seed=4)
    pre, fine = set(tiny.tiny_pretrain_texts(500)), set(tiny.tiny_finetune_texts(500))
    assert not pre & fine  # disjoint sentences: a different distribution over the same characters
    tok = CharTokenizer()
    assert all(tok.unk_token_id not in tok.encode(t) for t in list(pre) + list(fine))
    with pytest.raises(ValueError, match="at least one"):
        tiny.tiny_finetune_texts(0)


def test_built_dir_holds_model_tokenizer_and_recipe(tiny_model_dir):
    for name in ("config.json", tiny.TOKENIZER_FILENAME, tiny.RECIPE_FILENAME):
        assert (tiny_model_dir / name).is_file()
    meta = read_recipe(tiny_model_dir)
    assert tiny_model_dir.name == meta["key"] == tiny.recipe_key(meta["recipe"]["pretrain_steps"])
    assert json.loads((tiny_model_dir / "config.json").read_text())["is_causal"] is False
    assert tiny.recipe_key(10) != tiny.recipe_key(11)


def test_pretraining_beats_uniform(tiny_model_dir):
    stats = read_recipe(tiny_model_dir)["stats"]
    # Even the test fixture's short pretraining (40 steps) must be clearly below ln(V) = 4.43 nats.
    assert stats["eval_masked_ce_pretrain"] < stats["uniform_ce"] - 0.8
    # The fine-tuning task is shifted: the pretrained model does worse on it than on its own distribution.
    assert stats["eval_masked_ce_finetune"] > stats["eval_masked_ce_pretrain"]


def test_model_is_bidirectional(tiny_model_dir):
    model, tok = load_tiny(tiny_model_dir)
    ids = torch.tensor([tok.encode("the cat sat on the mat. 3+4=7.")])
    other = ids.clone()
    other[0, -1] = tok.encode("9")[0]  # change the LAST token
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, model(input_ids=other).logits
    assert (a[0, 0] - b[0, 0]).abs().max() > 1e-4  # ... and the FIRST position's logits change


def test_reuse_does_not_rebuild(tiny_model_dir):
    before = (tiny_model_dir / tiny.RECIPE_FILENAME).stat().st_mtime_ns
    calls = []
    again = ensure_tiny_model(tiny_model_dir.parent, pretrain_steps=read_recipe(tiny_model_dir)["recipe"]["pretrain_steps"],
                              progress=lambda s, n: calls.append(s))
    assert again == tiny_model_dir and not calls
    assert (tiny_model_dir / tiny.RECIPE_FILENAME).stat().st_mtime_ns == before


def test_build_is_deterministic_and_leaves_callers_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = ensure_tiny_model(tmp_path / "a", pretrain_steps=2)
    assert torch.equal(torch.rand(1), expected_next)
    b = ensure_tiny_model(tmp_path / "b", pretrain_steps=2)
    ma, _ = load_tiny(a)
    mb, _ = load_tiny(b)
    for (na, pa), (nb, pb) in zip(ma.state_dict().items(), mb.state_dict().items()):
        assert na == nb and torch.equal(pa, pb), na


def test_failed_build_leaves_nothing_and_incomplete_dir_is_rebuilt(tmp_path):
    def boom(step, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ensure_tiny_model(tmp_path, pretrain_steps=2, progress=boom)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    # A directory without recipe.json (e.g. copied half-way) is incomplete: it is rebuilt, not trusted.
    key = tiny.recipe_key(2)
    (tmp_path / key).mkdir()
    (tmp_path / key / "junk").write_text("x")
    out = ensure_tiny_model(tmp_path, pretrain_steps=2)
    assert (out / tiny.RECIPE_FILENAME).is_file() and not (out / "junk").exists()


def test_concurrent_callers_build_once(tmp_path):
    builds, results = [], []

    def progress(step, total):
        if step == 1:
            builds.append(threading.get_ident())

    def worker():
        results.append(ensure_tiny_model(tmp_path, pretrain_steps=2, progress=progress))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and len(set(results)) == 1


def test_invalid_steps_and_unwritable_cache(tmp_path):
    with pytest.raises(ValueError, match="pretrain_steps"):
        ensure_tiny_model(tmp_path, pretrain_steps=-1)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match="DLM_TRIAGE_CACHE"):
        ensure_tiny_model(blocker / "sub", pretrain_steps=1)


def test_default_pretraining_is_sized_for_about_a_minute():
    # 88 ms/step measured on one core (batch 32 x 32): the default must stay within the ~90 s budget.
    assert tiny.DEFAULT_PRETRAIN_STEPS * 0.088 <= 90
    assert math.isclose(math.log(CharTokenizer().vocab_size), 4.4308, abs_tol=1e-3)
