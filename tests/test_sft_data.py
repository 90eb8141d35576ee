"""SFT data: prompt/response and chat rows, rendering with and without a chat template, EOS padding, the
maskable positions, truncation counts, the embedded instruction set, and errors naming file:line."""

from __future__ import annotations

import json

import pytest
import torch

from dlm_triage.config import RunConfig
from dlm_triage.data import (
    TINY_INSTRUCT,
    TINY_INSTRUCT_PATH,
    DataError,
    FinetuneBatches,
    SFTBatches,
    load_sft_examples,
    make_batches,
)
from dlm_triage.tiny import CharTokenizer
from tiny_families import save_fast_tokenizer

TOK = CharTokenizer()


def _cfg(path, **kw):
    kw.setdefault("batch_size", 2)
    kw.setdefault("seq_len", 16)
    return RunConfig(dataset=str(path), **kw)


def _jsonl(tmp_path, rows, name="sft.jsonl"):
    p = tmp_path / name
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return p


def test_prompt_response_rows_without_template_hand_checked(tmp_path):
    p = _jsonl(tmp_path, [{"prompt": "ab", "response": "cd"}, {"prompt": "xyz?", "response": "ok."}])
    b = make_batches(_cfg(p, seq_len=10), TOK)
    assert isinstance(b, SFTBatches)
    pad = TOK.pad_token_id  # the char tokenizer has no EOS: its pad token plays that role
    row0 = TOK.encode("ab\ncd") + [pad] * 5
    row1 = TOK.encode("xyz?\nok.") + [pad] * 2
    assert b.rows.tolist() == [row0, row1]
    assert b.prompt_lengths.tolist() == [3, 5]  # "ab\n", "xyz?\n"
    assert b.maskable_rows[0].tolist() == [False] * 3 + [True] * 7  # response + its padding
    assert b.stats == {"format": "sft", "chat_template": False, "n_examples": 2, "n_rows": 2, "pad_token_id": pad,
                       "n_truncated": 0, "n_tokens_dropped": 0}
    ids, maskable = b.train_batch(0)
    assert ids.shape == maskable.shape == (2, 10) and maskable.dtype == torch.bool


def test_hf_tokenizer_pads_with_eos_and_renders_its_chat_template(tmp_path):
    tok = save_fast_tokenizer(tmp_path / "tok")
    eos = tok.eos_token_id
    p = _jsonl(tmp_path, [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}])
    plain = make_batches(_cfg(p, seq_len=12, chat_template="none"), tok)
    assert plain.rows[0].tolist() == tok.encode("hi\nyo", add_special_tokens=False) + [eos] * 7
    tok.chat_template = ("{% for m in messages %}<{{ m['role'][0] }}>{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<a>{% endif %}")
    b = make_batches(_cfg(p, seq_len=16), tok)
    assert b.stats["chat_template"] is True
    prompt = tok.encode("<u>hi<a>", add_special_tokens=False)
    assert b.prompt_lengths.tolist() == [len(prompt)]
    assert b.rows[0].tolist() == prompt + tok.encode("yo", add_special_tokens=False) + [eos] * (16 - len(prompt) - 2)


def test_truncation_is_counted_and_a_prompt_without_room_is_an_error(tmp_path):
    p = _jsonl(tmp_path, [{"prompt": "abc", "response": "0123456789"}, {"prompt": "a", "response": "b"}])
    b = make_batches(_cfg(p, seq_len=8), TOK)
    # row 0: "abc\n" (4) + 11 response tokens (10 + the end token) -> 4 fit, 7 dropped
    assert b.stats["n_truncated"] == 1 and b.stats["n_tokens_dropped"] == 7
    assert b.rows[0].tolist() == TOK.encode("abc\n0123")
    long = _jsonl(tmp_path, [{"prompt": "a", "response": "b"}, {"prompt": "x" * 20, "response": "y"}], "long.jsonl")
    with pytest.raises(DataError, match=r"long\.jsonl:2: the prompt is 21 tokens, seq_len=8: nothing of the "
                                        r"response would remain; raise seq_len"):
        make_batches(_cfg(long, seq_len=8), TOK)


@pytest.mark.parametrize(
    "row, match",
    [
        ({"prompt": "a"}, r':1: field "response" missing'),
        ({"response": "a"}, r':1: field "prompt" missing'),
        ({"prompt": "a", "response": 3}, r':1: field "response" is int, not a string'),
        ({"messages": [{"role": "user", "content": "a"}]}, r':1: field "messages" must be a list of >= 2 turns'),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
         r":1: the last message has role 'user'"),
        ({"messages": [{"role": "user"}, {"role": "assistant", "content": "b"}]},
         r':1: messages\[0\] has no string "role" and "content"'),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, row, match):
    p = _jsonl(tmp_path, [row])
    with pytest.raises(DataError, match=match) as e:
        make_batches(_cfg(p), TOK)
    assert str(p) in str(e.value)


def test_bad_row_further_down_names_its_line(tmp_path):
    p = _jsonl(tmp_path, [{"prompt": "a", "response": "b"}, "", {"prompt": "a", "answer": "b"}])
    with pytest.raises(DataError, match=r'sft\.jsonl:3: field "response" missing'):
        load_sft_examples(str(p))


def test_chat_template_required_from_a_tokenizer_without_one(tmp_path):
    p = _jsonl(tmp_path, [{"prompt": "a", "response": "b"}])
    with pytest.raises(DataError, match="chat_template='require' but the tokenizer .* has no chat template"):
        make_batches(_cfg(p, chat_template="require"), TOK)


def test_embedded_instruction_set(tmp_path):
    examples = load_sft_examples(TINY_INSTRUCT)
    assert len(examples) >= 100 and TINY_INSTRUCT_PATH.is_file()
    assert any(len(e.messages) > 2 for e in examples)  # multi-turn rows too
    b = make_batches(RunConfig(dataset=TINY_INSTRUCT, seq_len=48, batch_size=4), TOK)
    assert b.stats["n_truncated"] == 0 and TOK.unk_token_id not in b.rows  # written in the tiny alphabet
    assert (b.rows[:, -1] == TOK.pad_token_id).all()


def test_unpacked_plain_text_rows_are_eos_padded(tmp_path):
    p = tmp_path / "docs.txt"
    p.write_text("abc\n\nabcdefghijkl\n", encoding="utf-8")
    b = FinetuneBatches(_cfg(p, seq_len=8, packing=False), TOK)
    assert b.rows.tolist() == [TOK.encode("abc") + [TOK.pad_token_id] * 5, TOK.encode("abcdefgh")]
    assert b.stats["n_truncated"] == 1 and b.stats["n_tokens_dropped"] == 4
    ids, maskable = b.train_batch(0)
    assert maskable.all()
