"""Fine-tuning data -> deterministic token batches [batch_size, seq_len].

Sources (`cfg.dataset`):
- 'tiny-shifted': `tiny.tiny_finetune_texts(TINY_SHIFTED_N_TEXTS, seed=0)`, the embedded shifted task (fixed
  content; cfg.seed only changes the order);
- a path to a UTF-8 file: '.jsonl' (one JSON object per line with a string field "text") or any other
  extension read as plain text (documents separated by blank lines).

Documents are tokenised without special tokens, joined with a separator (the tokenizer's EOS or SEP token when
it has one, else the encoding of "\n"), and cut into non-overlapping windows of cfg.seq_len tokens (packing:
no padding, so no attention mask is needed). The window order is a fresh permutation per epoch, drawn from
torch.Generator(seed = cfg.seed * 1_000_003 + epoch); batch t holds windows [t*b, (t+1)*b) of the
concatenated epochs, so `batches.batch(t)` is random access and identical across processes and restarts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import torch

TINY_SHIFTED = "tiny-shifted"
TINY_SHIFTED_N_TEXTS = 4000


class DataError(ValueError):
    """A dataset that cannot be read or is too small; the message names the path, the reason and the fix."""


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
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"dataset {str(path)!r}: not UTF-8 ({e}); re-encode the file as UTF-8") from e
    if path.suffix.lower() == ".jsonl":
        texts = []
        for n, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"dataset {str(path)!r} line {n}: invalid JSON ({e.msg}); "
                                'write one object per line such as {"text": "..."}') from e
            text = obj.get("text") if isinstance(obj, dict) else None
            if not isinstance(text, str):
                raise DataError(f"dataset {str(path)!r} line {n}: no string field \"text\"; "
                                'write one object per line such as {"text": "..."}')
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


class FinetuneBatches:
    """Deterministic, endless batches of packed windows: iterate, or call `batch(step)`.

    Built from a RunConfig (dataset, seq_len, batch_size, seed) and the model's tokenizer.
    """

    def __init__(self, cfg: Any, tokenizer: Any, *, texts: list[str] | None = None):
        self.seq_len = int(cfg.seq_len)
        self.batch_size = int(cfg.batch_size)
        self.seed = int(cfg.seed)
        self.dataset = cfg.dataset
        stream = tokenize_stream(texts if texts is not None else load_texts(cfg.dataset), tokenizer)
        self.n_tokens = int(stream.numel())
        n_windows = self.n_tokens // self.seq_len
        if n_windows < 1:
            raise DataError(
                f"dataset {self.dataset!r}: {self.n_tokens} tokens, fewer than seq_len={self.seq_len}; "
                "give more text or lower seq_len"
            )
        self.windows = stream[: n_windows * self.seq_len].view(n_windows, self.seq_len)
        self._perms: dict[int, torch.Tensor] = {}

    @property
    def n_windows(self) -> int:
        return int(self.windows.shape[0])

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % (2**63 - 1))
            self._perms[epoch] = torch.randperm(self.n_windows, generator=g)
        return self._perms[epoch]

    def window_ids(self, step: int) -> list[int]:
        """Indices (into `windows`) of the windows batch `step` holds: what a run trained on, for held-out splits."""
        if step < 0:
            raise ValueError(f"step={step} is negative: steps start at 0")
        n = self.n_windows
        idx = []
        for j in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, pos = divmod(j, n)
            idx.append(int(self._perm(epoch)[pos]))
        return idx

    def batch(self, step: int) -> torch.Tensor:
        """LongTensor [batch_size, seq_len] for training step `step` (0-based)."""
        return self.windows[self.window_ids(step)].clone()

    def __iter__(self) -> Iterator[torch.Tensor]:
        step = 0
        while True:
            yield self.batch(step)
            step += 1


def make_batches(cfg: Any, tokenizer: Any) -> FinetuneBatches:
    """The batch source of a run: `make_batches(cfg, tokenizer).batch(t)` or iterate."""
    return FinetuneBatches(cfg, tokenizer)
