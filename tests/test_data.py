"""data.py: deterministic packed batches from the tiny shifted task and from text/JSONL files; clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from dlm_triage.config import RunConfig
from dlm_triage.data import TINY_SHIFTED_N_TEXTS, DataError, FinetuneBatches, load_texts, make_batches
from dlm_triage.tiny import CharTokenizer, tiny_finetune_texts
from tiny_families import save_fast_tokenizer

TOK = CharTokenizer()


def _cfg(**kw):
    kw.setdefault("batch_size", 4)
    kw.setdefault("seq_len", 16)
    return RunConfig(**kw)


def test_tiny_shifted_batches_shape_and_content():
    b = make_batches(_cfg(), TOK)
    x = b.batch(0)
    assert x.dtype == torch.long and x.shape == (4, 16)
    assert int(x.max()) < TOK.vocab_size and TOK.unk_token_id not in x
    assert TOK.mask_token_id not in x and TOK.pad_token_id not in x  # packed: no padding, no mask token
    text = "\n".join(tiny_finetune_texts(TINY_SHIFTED_N_TEXTS))
    assert all(TOK.decode(row) in text for row in x)  # every window is a slice of the shifted corpus


def test_batches_are_deterministic_by_seed_and_random_access():
    a, b, c = make_batches(_cfg(seed=1), TOK), make_batches(_cfg(seed=1), TOK), make_batches(_cfg(seed=2), TOK)
    for t in (0, 1, 57):
        assert torch.equal(a.batch(t), b.batch(t))
    assert not torch.equal(a.batch(0), c.batch(0))
    it = iter(b)
    first = [next(it) for _ in range(3)]
    assert all(torch.equal(first[t], a.batch(t)) for t in range(3))


def test_epochs_cover_every_window_once(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text("abcdefgh" * 5, encoding="utf-8")  # 40 chars -> 5 windows of 8
    b = FinetuneBatches(_cfg(dataset=str(path), seq_len=8, batch_size=5), TOK)
    assert b.n_windows == 5
    rows = sorted(tuple(r.tolist()) for r in b.batch(0))
    assert rows == sorted(tuple(w.tolist()) for w in b.windows)  # one epoch = a permutation of all windows
    # batch size larger than the data: wraps into the next epoch's permutation
    big = FinetuneBatches(_cfg(dataset=str(path), seq_len=8, batch_size=7), TOK)
    assert big.batch(3).shape == (7, 8)


def test_text_and_jsonl_files_with_a_hf_tokenizer(tmp_path):
    hf = save_fast_tokenizer(tmp_path / "tok")
    txt = tmp_path / "docs.txt"
    txt.write_text("first doc 1+1=2.\n\nsecond doc is here.\n", encoding="utf-8")
    jl = tmp_path / "docs.jsonl"
    jl.write_text("\n".join(json.dumps({"text": t}) for t in ["first doc 1+1=2.", "second doc is here."]) + "\n\n",
                  encoding="utf-8")
    assert load_texts(str(txt)) == load_texts(str(jl)) == ["first doc 1+1=2.", "second doc is here."]
    a = make_batches(_cfg(dataset=str(txt), seq_len=8, batch_size=2), hf).batch(0)
    b = make_batches(_cfg(dataset=str(jl), seq_len=8, batch_size=2), hf).batch(0)
    assert torch.equal(a, b) and a.shape == (2, 8)
    # documents are joined by the tokenizer's EOS token
    stream = make_batches(_cfg(dataset=str(txt), seq_len=2, batch_size=1), hf).windows.flatten()
    assert hf.eos_token_id in stream.tolist()


@pytest.mark.parametrize(
    "content, suffix, match",
    [
        ("", ".txt", "empty"),
        ("\n \n\n", ".txt", "empty"),
        ('{"text": "ok"}\nnot json\n', ".jsonl", "line 2: invalid JSON"),
        ('{"body": "x"}\n', ".jsonl", r'line 1: no string field "text"'),
        (b"\xff\xfe\x00bad", ".txt", "not UTF-8"),
    ],
)
def test_bad_files_name_path_reason_and_fix(tmp_path, content, suffix, match):
    path = tmp_path / f"data{suffix}"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    with pytest.raises(DataError, match=match) as e:
        make_batches(_cfg(dataset=str(path)), TOK)
    assert str(path) in str(e.value)


def test_missing_directory_and_too_short(tmp_path):
    with pytest.raises(DataError, match="no such file.*tiny-shifted"):
        make_batches(_cfg(dataset=str(tmp_path / "nope.txt")), TOK)
    with pytest.raises(DataError, match="not a regular file"):
        make_batches(_cfg(dataset=str(tmp_path)), TOK)
    short = tmp_path / "short.txt"
    short.write_text("abc", encoding="utf-8")
    with pytest.raises(DataError, match="lower seq_len"):
        make_batches(_cfg(dataset=str(short), seq_len=16), TOK)
    with pytest.raises(ValueError, match="negative"):
        make_batches(_cfg(), TOK).batch(-1)
