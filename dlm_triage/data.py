"""Fine-tuning data -> deterministic token batches [batch_size, seq_len], with the positions a step may corrupt.

Sources (`cfg.dataset`):
- 'tiny-shifted': `tiny.tiny_finetune_texts(TINY_SHIFTED_N_TEXTS, seed=0)`, the embedded shifted task (fixed
  content; cfg.seed only changes the order);
- 'tiny-instruct': the embedded instruction set `dlm_triage/data/tiny_instruct.jsonl` (written for this
  project, short prompts and answers in the tiny tokenizer's alphabet);
- a path to a UTF-8 file: '.jsonl' with one JSON object per line, either plain text ({"text": ...}) or SFT
  ({"prompt": ..., "response": ...} or {"messages": [{"role", "content"}, ...]} ending with the assistant
  turn), or any other extension read as plain text (documents separated by blank lines).

Plain text, `cfg.packing` (default): documents are tokenised without special tokens, joined with a separator
(the tokenizer's EOS or SEP token when it has one, else the encoding of "\n"), and cut into non-overlapping
windows of cfg.seq_len tokens (no padding, so no attention mask is needed); every position may be masked.
`packing=False`: one document per row, truncated to seq_len or padded with EOS (the padding is masked and
predicted, as for SFT).

SFT (LLaDA's recipe, GUIDELINES.md 'SFT'): the example is rendered with the tokenizer's chat template when it
has one (`cfg.chat_template`), else as prompt + "\n" + response; the response is followed by EOS and padded
with EOS to seq_len (tokenizers without EOS, e.g. the tiny char tokenizer, pad with their pad token). The
prompt is never masked and carries no loss; the response and its EOS padding may be masked and are predicted.
A response cut at seq_len is counted (`stats`, written to the manifest); a prompt that leaves no room for the
response is an error naming file:line.

Order: a fresh permutation of the rows per epoch, drawn from torch.Generator(seed = cfg.seed * 1_000_003 +
epoch); batch t holds rows [t*b, (t+1)*b) of the concatenated epochs, so `batches.batch(t)` is random access
and identical across processes and restarts. Rows are selected with a LongTensor index (no per-row Python ints).
"""

from __future__ import annotations

import json
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

TINY_SHIFTED = "tiny-shifted"
TINY_SHIFTED_N_TEXTS = 4000
TINY_INSTRUCT = "tiny-instruct"
TINY_INSTRUCT_PATH = Path(__file__).parent / "data" / "tiny_instruct.jsonl"
SFT_FORMAT_HELP = ('write one object per line: {"prompt": "...", "response": "..."}, or {"messages": '
                   '[{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}')


class DataError(ValueError):
    """A dataset that cannot be read or is too small; the message names the path, the reason and the fix."""


def _read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"dataset {str(path)!r}: not UTF-8 ({e}); re-encode the file as UTF-8") from e


def _jsonl_values(raw: str, where: Callable[[int], str], fix: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) of each non-blank line of a JSONL text; a line that does not parse is a
    DataError '<where(n)>: invalid JSON (<reason>); <fix>'."""
    for n, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where(n)}: invalid JSON ({e.msg}); {fix}") from e


def load_texts(dataset: str) -> list[str]:
    """The documents of `dataset` ('tiny-shifted' or a text/JSONL path)."""
    if dataset == TINY_SHIFTED:
        from dlm_triage.tiny import tiny_finetune_texts

        return tiny_finetune_texts(TINY_SHIFTED_N_TEXTS, seed=0)
    path = Path(dataset).expanduser()
    if not path.exists():
        raise DataError(f"dataset {str(path)!r}: no such file; use 'tiny-shifted' or a path to a UTF-8 .txt/.jsonl file")
    if not path.is_file():
        raise DataError(f"dataset {str(path)!r}: not a regular file; point at one .txt or .jsonl file")
    raw = _read_utf8(path)
    if path.suffix.lower() == ".jsonl":
        texts = []
        fix = 'write one object per line such as {"text": "..."}'
        for n, obj in _jsonl_values(raw, lambda n: f"dataset {str(path)!r} line {n}", fix):
            text = obj.get("text") if isinstance(obj, dict) else None
            if not isinstance(text, str):
                raise DataError(f"dataset {str(path)!r} line {n}: no string field \"text\"; {fix}")
            if text.strip():
                texts.append(text)
    else:
        texts = [block.strip() for block in raw.split("\n\n") if block.strip()]
    if not texts:
        raise DataError(f"dataset {str(path)!r}: empty (no non-blank text); add text to it or use 'tiny-shifted'")
    return texts


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _separator(tokenizer: Any) -> list[int]:
    for attr in ("eos_token_id", "sep_token_id"):
        tid = getattr(tokenizer, attr, None)
        if isinstance(tid, int):
            return [tid]
    return _encode(tokenizer, "\n")


def tokenize_stream(texts: list[str], tokenizer: Any) -> torch.Tensor:
    """All documents tokenised and joined with the separator: a 1-D LongTensor."""
    sep = _separator(tokenizer)
    ids: list[int] = []
    for i, text in enumerate(texts):
        if i:
            ids.extend(sep)
        ids.extend(_encode(tokenizer, text))
    return torch.tensor(ids, dtype=torch.long)


@dataclass(frozen=True)
class SFTExample:
    """One prompt/response pair: `messages` (role/content dicts, the last one the assistant's answer) and
    where it came from (`where`: 'file:line')."""

    messages: tuple[dict[str, str], ...]
    where: str


def _resolve_path(dataset: str) -> Path:
    return TINY_INSTRUCT_PATH if dataset == TINY_INSTRUCT else Path(dataset).expanduser()


def is_sft_dataset(dataset: str) -> bool:
    """True when `dataset` is a JSONL file of SFT rows (its first non-blank row has "prompt", "response" or
    "messages"; any other row is read as plain text, whose loader names a missing "text")."""
    if dataset == TINY_SHIFTED:
        return False
    path = _resolve_path(dataset)
    if path.suffix.lower() != ".jsonl" or not path.is_file():
        return False
    try:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    obj = json.loads(line)
                    return isinstance(obj, dict) and bool({"prompt", "response", "messages"} & set(obj))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False  # load_texts reports it with the line number
    return False


def _message_list(obj: dict, where: str) -> tuple[dict[str, str], ...]:
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or len(msgs) < 2:
            raise DataError(f"{where}: field \"messages\" must be a list of >= 2 turns (a prompt and the answer); "
                            + SFT_FORMAT_HELP)
        out = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise DataError(f"{where}: messages[{i}] has no string \"role\" and \"content\"; " + SFT_FORMAT_HELP)
            out.append({"role": m["role"], "content": m["content"]})
        if out[-1]["role"] != "assistant":
            raise DataError(f"{where}: the last message has role {out[-1]['role']!r}: the answer to train on must "
                            "be the last turn, with role 'assistant'")
        return tuple(out)
    for field in ("prompt", "response"):
        if field not in obj:
            raise DataError(f"{where}: field \"{field}\" missing; " + SFT_FORMAT_HELP)
        if not isinstance(obj[field], str):
            raise DataError(f"{where}: field \"{field}\" is {type(obj[field]).__name__}, not a string; "
                            + SFT_FORMAT_HELP)
    return ({"role": "user", "content": obj["prompt"]}, {"role": "assistant", "content": obj["response"]})


def load_sft_examples(dataset: str) -> list[SFTExample]:
    """The prompt/response examples of an SFT JSONL file ('tiny-instruct' or a path); errors name file:line."""
    path = _resolve_path(dataset)
    if not path.is_file():
        raise DataError(f"dataset {str(path)!r}: no such file; give an SFT .jsonl file or 'tiny-instruct'")
    examples = []
    for n, obj in _jsonl_values(_read_utf8(path), lambda n: f"{path}:{n}", SFT_FORMAT_HELP):
        where = f"{path}:{n}"
        if not isinstance(obj, dict):
            raise DataError(f"{where}: a JSON {type(obj).__name__}, not an object; " + SFT_FORMAT_HELP)
        if "text" in obj:
            raise DataError(f"{where}: a plain-text row (\"text\") in an SFT file; keep one format per file")
        examples.append(SFTExample(_message_list(obj, where), where))
    if not examples:
        raise DataError(f"dataset {str(path)!r}: no examples; add rows or use 'tiny-instruct'")
    return examples


def pad_token_for_sft(tokenizer: Any) -> int:
    """EOS (LLaDA pads responses with EOS); a tokenizer without one pads with its pad token."""
    for attr in ("eos_token_id", "pad_token_id"):
        tid = getattr(tokenizer, attr, None)
        if isinstance(tid, int):
            return tid
    raise DataError("the tokenizer has neither an EOS nor a pad token: SFT responses are padded with EOS; use a "
                    "tokenizer with an eos_token")


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None)) and hasattr(tokenizer, "apply_chat_template")


def render_example(ex: SFTExample, tokenizer: Any, use_template: bool) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of one example, tokenised separately so the prompt boundary is exact."""
    msgs = [dict(m) for m in ex.messages]
    if use_template:
        prompt_str = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
        full_str = tokenizer.apply_chat_template(msgs, tokenize=False)
        if not full_str.startswith(prompt_str):
            raise DataError(f"{ex.where}: the chat template renders the conversation without the prompt as its "
                            "prefix, so the prompt/response boundary is unknown; set chat_template='none'")
        return _encode(tokenizer, prompt_str), _encode(tokenizer, full_str[len(prompt_str):])
    prompt_str = "\n".join(m["content"] for m in msgs[:-1]) + "\n"
    return _encode(tokenizer, prompt_str), _encode(tokenizer, msgs[-1]["content"])


class _Rows:
    """Deterministic, endless batches over a fixed set of rows (`rows` [N, L], `maskable` [N, L] bool)."""

    rows: torch.Tensor
    maskable_rows: torch.Tensor | None  # None: every position

    def _init_order(self, cfg: Any) -> None:
        self.seq_len = int(cfg.seq_len)
        self.batch_size = int(cfg.batch_size)
        self.seed = int(cfg.seed)
        self.dataset = cfg.dataset
        self._perms: dict[int, torch.Tensor] = {}

    @property
    def n_windows(self) -> int:
        return int(self.rows.shape[0])

    @property
    def windows(self) -> torch.Tensor:
        """The rows [N, seq_len] (packed text: its windows)."""
        return self.rows

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % (2**63 - 1))
            self._perms[epoch] = torch.randperm(self.n_windows, generator=g)
        return self._perms[epoch]

    def _index(self, step: int) -> torch.Tensor:
        if step < 0:
            raise ValueError(f"step={step} is negative: steps start at 0")
        n = self.n_windows
        first, last = step * self.batch_size, (step + 1) * self.batch_size
        parts = []
        for epoch in range(first // n, (last - 1) // n + 1):
            lo, hi = max(first, epoch * n) - epoch * n, min(last, (epoch + 1) * n) - epoch * n
            parts.append(self._perm(epoch)[lo:hi])
        return torch.cat(parts)

    def window_ids(self, step: int) -> list[int]:
        """Indices (into `windows`) of the rows batch `step` holds: what a run trained on, for held-out splits."""
        return self._index(step).tolist()

    def batch(self, step: int) -> torch.Tensor:
        """LongTensor [batch_size, seq_len] for training step `step` (0-based)."""
        return self.rows[self._index(step)].clone()

    def train_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [b, L], maskable bool [b, L]) of step `step`: the positions the objective may corrupt."""
        idx = self._index(step)
        ids = self.rows[idx].clone()
        if self.maskable_rows is None:
            return ids, torch.ones_like(ids, dtype=torch.bool)
        return ids, self.maskable_rows[idx].clone()

    def __iter__(self) -> Iterator[torch.Tensor]:
        step = 0
        while True:
            yield self.batch(step)
            step += 1


class FinetuneBatches(_Rows):
    """Packed plain text (every position maskable); or, with cfg.packing False, one document per EOS-padded row.

    Built from a RunConfig (dataset, seq_len, batch_size, seed, packing) and the model's tokenizer.
    """

    def __init__(self, cfg: Any, tokenizer: Any, *, texts: list[str] | None = None):
        self._init_order(cfg)
        texts = texts if texts is not None else load_texts(cfg.dataset)
        self.maskable_rows = None
        if not getattr(cfg, "packing", True):
            self._init_unpacked(texts, tokenizer)
            return
        stream = tokenize_stream(texts, tokenizer)
        self.n_tokens = int(stream.numel())
        n_windows = self.n_tokens // self.seq_len
        if n_windows < 1:
            raise DataError(
                f"dataset {self.dataset!r}: {self.n_tokens} tokens, fewer than seq_len={self.seq_len}; "
                "give more text or lower seq_len"
            )
        self.rows = stream[: n_windows * self.seq_len].view(n_windows, self.seq_len)
        self.stats = {"format": "packed", "n_documents": len(texts), "n_rows": n_windows,
                      "n_tokens": self.n_tokens, "n_tokens_dropped": self.n_tokens - n_windows * self.seq_len}

    def _init_unpacked(self, texts: list[str], tokenizer: Any) -> None:
        pad = pad_token_for_sft(tokenizer)
        rows, n_trunc, dropped = [], 0, 0
        for text in texts:
            ids = _encode(tokenizer, text)
            if len(ids) > self.seq_len:
                n_trunc += 1
                dropped += len(ids) - self.seq_len
            ids = ids[: self.seq_len]
            rows.append(ids + [pad] * (self.seq_len - len(ids)))
        self.rows = torch.tensor(rows, dtype=torch.long)
        self.n_tokens = int(self.rows.numel())
        self.stats = {"format": "unpacked", "n_documents": len(texts), "n_rows": len(rows), "pad_token_id": pad,
                      "n_truncated": n_trunc, "n_tokens_dropped": dropped}

class SFTBatches(_Rows):
    """Prompt/response rows: [prompt | response | EOS | EOS padding] of length seq_len; maskable = after the
    prompt. `stats` counts the examples, the truncated responses and the dropped response tokens."""

    def __init__(self, cfg: Any, tokenizer: Any, *, examples: list[SFTExample] | None = None):
        self._init_order(cfg)
        examples = examples if examples is not None else load_sft_examples(cfg.dataset)
        mode = getattr(cfg, "chat_template", "auto")
        templated = has_chat_template(tokenizer)
        if mode == "require" and not templated:
            raise DataError(
                f"chat_template='require' but the tokenizer ({type(tokenizer).__name__}) has no chat template: "
                "use a tokenizer with one (an -Instruct checkpoint), or chat_template='auto' / 'none' (prompt + "
                "newline + response)"
            )
        use_template = templated and mode != "none"
        pad = pad_token_for_sft(tokenizer)
        rows, prompt_lens, n_trunc, dropped = [], [], 0, 0
        for ex in examples:
            p_ids, r_ids = render_example(ex, tokenizer, use_template)
            r_ids = r_ids + [pad]
            if len(p_ids) >= self.seq_len:
                raise DataError(
                    f"{ex.where}: the prompt is {len(p_ids)} tokens, seq_len={self.seq_len}: nothing of the "
                    "response would remain; raise seq_len or shorten the prompt"
                )
            room = self.seq_len - len(p_ids)
            if len(r_ids) > room:
                n_trunc += 1
                dropped += len(r_ids) - room
                r_ids = r_ids[:room]
            row = p_ids + r_ids
            rows.append(row + [pad] * (self.seq_len - len(row)))
            prompt_lens.append(len(p_ids))
        self.rows = torch.tensor(rows, dtype=torch.long)
        self.prompt_lengths = torch.tensor(prompt_lens, dtype=torch.long)
        self.maskable_rows = torch.arange(self.seq_len)[None, :] >= self.prompt_lengths[:, None]
        self.n_tokens = int(self.rows.numel())
        self.stats = {"format": "sft", "chat_template": use_template, "n_examples": len(examples),
                      "n_rows": len(rows), "pad_token_id": pad, "n_truncated": n_trunc,
                      "n_tokens_dropped": dropped}


def make_batches(cfg: Any, tokenizer: Any) -> _Rows:
    """The batch source of a run: `make_batches(cfg, tokenizer).batch(t)` / `.train_batch(t)`, or iterate."""
    if is_sft_dataset(cfg.dataset):
        return SFTBatches(cfg, tokenizer)
    if cfg.dataset == TINY_INSTRUCT:
        raise DataError(f"the embedded set {TINY_INSTRUCT_PATH} is missing from this install: reinstall dlm-triage")
    return FinetuneBatches(cfg, tokenizer)
