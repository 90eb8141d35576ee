"""The embedded tiny family: a small bidirectional masked-diffusion LM that builds offline in about a minute.

Recipe: a character-level tokenizer ([PAD]=0, [MASK]=1, [UNK]=2, then a fixed
character set), `LlamaForCausalLM(LlamaConfig(hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
tie_word_embeddings=True, use_cache=False))` with `config.is_causal = False` (bidirectional under sdpa and
eager; the flag survives save/from_pretrained), pretrained locally with the masked-diffusion objective:
per sequence t ~ U(t_min, 1), each token masked with probability t, CE on masked positions averaged per masked
token (paper Eq. 1). The corpus is generated in code (templated sentences, counting, addition): no download.

The fine-tuning task (`tiny_finetune_texts`) is related but shifted: subtraction and comparisons instead of
addition, new sentence templates over the same words, so the pretrained model starts well above its
pretraining loss and LoRA has something to learn (and a large lr can blow it up).

The AR control (`kind='ar'`, family `tiny_ar`, paper 4.3): the same Llama shape and tokenizer with causal
attention, pretrained on the same corpus with next-token CE, so the fine-tuning compares architectures under one
masked CE (the AR family realigns its logits: `families.ARAdapter`).

`ensure_tiny_model` builds into a temporary directory next to the target, writes `recipe.json` last, and
renames the directory into place under a file lock, so concurrent callers build once and never see half a model.

One module, over 400 lines: the tiny family's recipe (tokenizer, corpus, model, pretraining) and its cache are one
unit, whose recipe key must change when any part of it changes; `ensure_built` (the locked, atomic cache entry)
is shared with tiny_diffusion_gemma.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

import torch

RECIPE_VERSION = 1
DEFAULT_PRETRAIN_STEPS = 600  # ~53 s on one idle CPU core (88 ms/step); masked CE ~1.9 nats vs uniform 4.43
TOKENIZER_FILENAME = "tiny_tokenizer.json"
RECIPE_FILENAME = "recipe.json"
KINDS = ("dlm", "ar")
"""'dlm': bidirectional, masked-diffusion pretraining (the tiny family); 'ar': causal, next-token pretraining (the
tiny_ar control)."""

PAD, MASK, UNK = "[PAD]", "[MASK]", "[UNK]"
SPECIALS = (PAD, MASK, UNK)
CHARS = (
    " abcdefghijklmnopqrstuvwxyz"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "0123456789"
    ".,;:!?'\"-+*/=<>()\n"
)

# Model and pretraining recipe: every value here enters the cache key.
MODEL_KWARGS = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=512,
    tie_word_embeddings=True,
    use_cache=False,
    rms_norm_eps=1e-5,
)
PRETRAIN = dict(batch_size=32, seq_len=32, lr=3e-3, warmup=50, weight_decay=0.01, t_min=0.05, seed=1234,
                clip=1.0)


class CharTokenizer:
    """Character-level tokenizer with [PAD]=0, [MASK]=1, [UNK]=2; unknown characters map to [UNK].

    `encode(text, add_special_tokens=False)` / `decode(ids)` mirror the Hugging Face call shapes that
    `dlm_triage.data` uses; `save_pretrained(dir)` / `from_pretrained(dir)` round-trip through a JSON vocab.
    """

    def __init__(self, chars: str = CHARS):
        if len(set(chars)) != len(chars):
            raise ValueError("chars has duplicates: give each character once")
        self.chars = chars
        self.itos = list(SPECIALS) + list(chars)
        self.stoi = {c: i for i, c in enumerate(self.itos)}
        self.pad_token_id, self.mask_token_id, self.unk_token_id = 0, 1, 2
        self.pad_token, self.mask_token, self.unk_token = PAD, MASK, UNK
        self.eos_token_id = None
        self.sep_token_id = None

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        unk = self.unk_token_id
        return [self.stoi.get(c, unk) if c not in SPECIALS else unk for c in text]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.itos):
                raise ValueError(f"token id {i} is outside the vocabulary [0, {len(self.itos)}): decode ids from this tokenizer")
            if i < len(SPECIALS) and skip_special_tokens:
                continue
            out.append(self.itos[i])
        return "".join(out)

    def __call__(self, text: str, **_: object) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text)}

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        payload = {"type": "dlm_triage.tiny.CharTokenizer", "version": 1, "specials": list(SPECIALS),
                   "chars": self.chars}
        (d / TOKENIZER_FILENAME).write_text(json.dumps(payload, ensure_ascii=False, indent=1), encoding="utf-8")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "CharTokenizer":
        path = Path(directory) / TOKENIZER_FILENAME
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no tiny tokenizer there; point at a directory built by ensure_tiny_model()"
            )
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload.get("specials") != list(SPECIALS):
            raise ValueError(f"{path}: specials {payload.get('specials')} differ from {list(SPECIALS)}; rebuild the tiny model")
        return cls(payload["chars"])


# -- synthetic corpora ---------------------------------------------------------------------------------

_ADJ = ("red", "blue", "green", "small", "big", "old", "new", "quick", "slow", "happy", "sad", "dark")
_NOUN = ("cat", "dog", "bird", "fish", "fox", "cow", "horse", "mouse", "frog", "bear", "duck", "goat")
_PLACE = ("mat", "box", "tree", "house", "river", "hill", "road", "barn", "field", "lake")
_VERB = ("sees", "likes", "chases", "finds", "helps", "follows", "calls", "meets")
_NAMES = ("ann", "bob", "cara", "dan", "eve", "finn", "gus", "hana")


def _pretrain_sentence(rng: random.Random) -> str:
    k = rng.randrange(5)
    if k == 0:
        return f"the {rng.choice(_ADJ)} {rng.choice(_NOUN)} {rng.choice(_VERB)} the {rng.choice(_NOUN)}."
    if k == 1:
        return f"the {rng.choice(_NOUN)} sat on the {rng.choice(_PLACE)}."
    if k == 2:
        a, b = rng.randrange(50), rng.randrange(50)
        return f"{a}+{b}={a + b}."
    if k == 3:
        s = rng.randrange(90)
        return " ".join(str(s + i) for i in range(rng.randrange(3, 7))) + "."
    return f"{rng.choice(_NAMES)} has {rng.randrange(2, 10)} {rng.choice(_NOUN)}s."


def _finetune_sentence(rng: random.Random) -> str:
    k = rng.randrange(4)
    if k == 0:
        a, b = rng.randrange(50), rng.randrange(50)
        a, b = max(a, b), min(a, b)
        return f"{a}-{b}={a - b}."
    if k == 1:
        a, b = rng.randrange(100), rng.randrange(100)
        rel = "<" if a < b else (">" if a > b else "=")
        return f"{a}{rel}{b}."
    if k == 2:
        return f"is the {rng.choice(_NOUN)} {rng.choice(_ADJ)}? yes, it is {rng.choice(_ADJ)}."
    return f"{rng.choice(_NAMES)} gave the {rng.choice(_NOUN)} to {rng.choice(_NAMES)}."


def tiny_pretrain_texts(n: int, seed: int = 0) -> list[str]:
    """n sentences of the pretraining distribution (deterministic in seed)."""
    rng = random.Random(f"pretrain-{seed}")
    return [_pretrain_sentence(rng) for _ in range(n)]


def tiny_finetune_texts(n: int, seed: int = 0) -> list[str]:
    """n sentences of the shifted fine-tuning task (subtraction, comparisons, new templates; deterministic)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} is invalid: ask for at least one text")
    rng = random.Random(f"finetune-{seed}")
    return [_finetune_sentence(rng) for _ in range(n)]


def _sample_rows(rng: random.Random, sentence: Callable[[random.Random], str], batch: int, seq_len: int) -> list[str]:
    rows = []
    for _ in range(batch):
        first = sentence(rng)
        text = first[rng.randrange(len(first)):]  # random start offset, so position 0 is not always a sentence start
        while len(text) < seq_len:
            text += " " + sentence(rng)
        rows.append(text[:seq_len])
    return rows


# -- model --------------------------------------------------------------------------------------------

def build_tiny_config(vocab_size: int, *, causal: bool = False, **overrides):
    from transformers import LlamaConfig

    kw = dict(MODEL_KWARGS)
    kw.update(overrides)
    cfg = LlamaConfig(vocab_size=vocab_size, pad_token_id=0, bos_token_id=None, eos_token_id=None, **kw)
    cfg.is_causal = causal  # False: bidirectional attention (kept through save/from_pretrained)
    return cfg


def build_tiny_model(vocab_size: int, seed: int = 0, *, causal: bool = False, **overrides):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(build_tiny_config(vocab_size, causal=causal, **overrides))


def full_attention_mask(model, input_ids: torch.Tensor) -> torch.Tensor | None:
    """None on transformers 5 (config.is_causal=False is honoured). transformers 4.x Llama ignores that flag
    and builds a causal mask from a None/2D mask, but keeps a ready 4D mask as is: an additive zeros
    [B, 1, L, L] there gives full attention under sdpa and eager alike (one L x L buffer per forward)."""
    from dlm_triage.remote_code import TRANSFORMERS_5

    if TRANSFORMERS_5:
        return None
    b, length = input_ids.shape
    return torch.zeros(b, 1, length, length, dtype=next(model.parameters()).dtype, device=input_ids.device)


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not a tiny model kind: use one of {list(KINDS)}")
    return kind


def recipe(pretrain_steps: int, kind: str = "dlm") -> dict:
    r = {
        "recipe_version": RECIPE_VERSION,
        "pretrain_steps": pretrain_steps,
        "model": MODEL_KWARGS,
        "pretrain": PRETRAIN,
        "chars": CHARS,
    }
    if _check_kind(kind) != "dlm":  # the dlm recipe (and so its cache key) stays as it was
        r["kind"] = kind
    return r


def recipe_key(pretrain_steps: int, kind: str = "dlm") -> str:
    blob = json.dumps(recipe(pretrain_steps, kind), sort_keys=True).encode()
    return f"tiny-{kind}-v{RECIPE_VERSION}-s{pretrain_steps}-{hashlib.sha256(blob).hexdigest()[:10]}"


def next_token_ce_eval(model, tok: CharTokenizer, *, n_batches: int = 4, seed: int = 99,
                       finetune: bool = False) -> float:
    """Mean next-token CE (nats per token) of a causal tiny model on held-out rows (the AR control's eval)."""
    import torch.nn.functional as F

    rng = random.Random(f"eval-{seed}")
    sentence = _finetune_sentence if finetune else _pretrain_sentence
    device = next(model.parameters()).device
    losses = []
    with torch.no_grad():
        for _ in range(n_batches):
            ids = torch.tensor([tok.encode(r) for r in _sample_rows(rng, sentence, PRETRAIN["batch_size"],
                                                                     PRETRAIN["seq_len"])], device=device)
            logits = model(input_ids=ids).logits
            losses.append(float(F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())))
    return sum(losses) / len(losses)


def masked_ce_eval(model, tok: CharTokenizer, *, n_batches: int = 4, seed: int = 99, finetune: bool = False,
                   t: float | None = None) -> float:
    """Mean masked CE (nats per masked token) on held-out rows of the pretraining (or fine-tuning) distribution."""
    from dlm_triage.objective import mask_tokens, masked_diffusion_loss

    rng = random.Random(f"eval-{seed}")
    gen = torch.Generator().manual_seed(seed)
    sentence = _finetune_sentence if finetune else _pretrain_sentence
    device = next(model.parameters()).device
    losses = []
    with torch.no_grad():
        for _ in range(n_batches):
            rows = _sample_rows(rng, sentence, PRETRAIN["batch_size"], PRETRAIN["seq_len"])
            ids = torch.tensor([tok.encode(r) for r in rows], device=device)
            ratio = t if t is not None else (PRETRAIN["t_min"] + (1 - PRETRAIN["t_min"]) *
                                              torch.rand(ids.shape[0], generator=gen))
            noisy, mask = mask_tokens(ids, ratio, tok.mask_token_id, gen)
            logits = model(input_ids=noisy, attention_mask=full_attention_mask(model, noisy)).logits
            losses.append(float(masked_diffusion_loss(logits, ids, mask)))
    return sum(losses) / len(losses)


def pretrain_lr(step: int, lr: float, warmup: int, total_steps: int) -> float:
    """The local models' pretraining schedule: linear warmup over `warmup` steps, cosine decay to 10 % of `lr`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = (step - warmup) / max(1, total_steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def pretrain_loop(params: list[torch.nn.Parameter], p: dict, pretrain_steps: int, tok: CharTokenizer,
                  batch_loss: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
                  progress: Callable[[int, int], None] | None = None) -> tuple[list[float], float]:
    """The local models' pretraining loop: `pretrain_steps` AdamW updates of `params` on batches of the
    pretraining corpus (rows drawn from a seeded `random.Random`), with the `pretrain_lr` schedule and gradient
    clipping at p['clip']. `batch_loss(ids, gen)` is the model's objective on a [batch, seq] id tensor, drawing
    its randomness from the loop's seeded generator. `p`: the recipe's PRETRAIN settings. Returns (the loss of
    every step, seconds spent)."""
    rng = random.Random(f"pretrain-batches-{p['seed']}")
    gen = torch.Generator().manual_seed(p["seed"])
    opt = torch.optim.AdamW(params, lr=p["lr"], weight_decay=p["weight_decay"], betas=(0.9, 0.98))
    t0 = time.perf_counter()
    losses = []
    for step in range(pretrain_steps):
        rows = _sample_rows(rng, _pretrain_sentence, p["batch_size"], p["seq_len"])
        ids = torch.tensor([tok.encode(r) for r in rows])
        loss = batch_loss(ids, gen)
        for g in opt.param_groups:
            g["lr"] = pretrain_lr(step, p["lr"], p["warmup"], pretrain_steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, p["clip"])
        opt.step()
        losses.append(loss.item())  # a host sync per step: the CPU-only pretraining loses nothing by it
        if progress is not None:
            progress(step + 1, pretrain_steps)
    return losses, time.perf_counter() - t0


def pretrain_tiny(out_dir: Path, pretrain_steps: int, progress: Callable[[int, int], None] | None = None,
                  kind: str = "dlm") -> dict:
    """Build and pretrain the tiny model on CPU (deterministic), save model + tokenizer to out_dir. Returns stats.
    kind 'dlm': masked-diffusion CE on a bidirectional model; 'ar': next-token CE on a causal one (same rows,
    optimiser and schedule)."""
    import torch.nn.functional as F

    from dlm_triage.objective import mask_tokens, masked_diffusion_loss

    causal = _check_kind(kind) == "ar"
    p = PRETRAIN
    tok = CharTokenizer()
    model = build_tiny_model(tok.vocab_size, seed=p["seed"], causal=causal)
    model.train()

    def batch_loss(ids: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if causal:
            logits = model(input_ids=ids).logits
            return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        t = p["t_min"] + (1 - p["t_min"]) * torch.rand(ids.shape[0], generator=gen)
        noisy, mask = mask_tokens(ids, t, tok.mask_token_id, gen)
        return masked_diffusion_loss(model(input_ids=noisy, attention_mask=full_attention_mask(model, noisy)).logits,
                                     ids, mask)

    losses, train_s = pretrain_loop(list(model.parameters()), p, pretrain_steps, tok, batch_loss, progress)
    model.eval()
    stats = {
        "pretrain_wall_s": round(train_s, 2),
        "ms_per_step": round(1000 * train_s / max(1, pretrain_steps), 1),
        "final_train_loss_avg20": sum(losses[-20:]) / len(losses[-20:]) if losses else None,
        "uniform_ce": math.log(tok.vocab_size),
    }
    if causal:
        stats["eval_next_token_ce_pretrain"] = next_token_ce_eval(model, tok)
        stats["eval_next_token_ce_finetune"] = next_token_ce_eval(model, tok, finetune=True)
    else:
        stats["eval_masked_ce_pretrain"] = masked_ce_eval(model, tok)
        stats["eval_masked_ce_finetune"] = masked_ce_eval(model, tok, finetune=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return stats


@contextlib.contextmanager
def _file_lock(path: Path):
    """Exclusive advisory lock (fcntl on POSIX; on other systems, an O_EXCL lock file polled every 0.5 s)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        fcntl = None
    if fcntl is not None:
        with open(path, "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return
    while True:  # pragma: no cover
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            time.sleep(0.5)
    try:
        yield
    finally:
        os.close(fd)
        os.unlink(path)


def ensure_tiny_model(
    cache_dir: Path | None = None,
    *,
    pretrain_steps: int = DEFAULT_PRETRAIN_STEPS,
    progress: Callable[[int, int], None] | None = None,
    kind: str = "dlm",
) -> Path:
    """Return the directory of the pretrained tiny model (HF format + tiny tokenizer), building it once.
    `kind`: 'dlm' (the tiny family) or 'ar' (the tiny_ar control), see KINDS.

    cache_dir defaults to `dlm_triage.paths.cache_root() / "models"`; the model lives in
    `cache_dir / recipe_key(pretrain_steps)`. A directory counts as built when it holds `recipe.json`
    (written last). `progress(step, total)` is called during pretraining.
    """
    if not isinstance(pretrain_steps, int) or isinstance(pretrain_steps, bool) or pretrain_steps < 0:
        raise ValueError(f"pretrain_steps={pretrain_steps!r} is invalid: use an integer >= 0")
    return ensure_built(cache_dir, recipe_key(pretrain_steps, kind), recipe(pretrain_steps, kind),
                        lambda tmp: pretrain_tiny(tmp, pretrain_steps, progress, kind), seed=PRETRAIN["seed"])


def ensure_built(cache_dir: Path | None, key: str, recipe_meta: dict, build: Callable[[Path], dict], *,
                 seed: int) -> Path:
    """`cache_dir / key`, built once by `build(tmp_dir) -> stats` (a locally pretrained model of any kind).

    The directory counts as built when it holds `recipe.json` (written last, with `recipe_meta` and the stats);
    the build runs in a temporary directory next to it under a file lock and is renamed into place, so
    concurrent callers build once and never see half a model. cache_dir None: `paths.cache_root() / "models"`.
    """
    if cache_dir is None:
        from dlm_triage.paths import cache_root

        cache_dir = cache_root() / "models"
    cache_dir = Path(cache_dir).expanduser()
    target = cache_dir / key
    if (target / RECIPE_FILENAME).is_file():
        return target
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create the tiny-model cache {cache_dir} ({e}): set DLM_TRIAGE_CACHE to a writable "
                      "directory or pass cache_dir=") from e
    with _file_lock(cache_dir / f"{key}.lock"):
        if (target / RECIPE_FILENAME).is_file():  # another process built it while we waited
            return target
        if target.exists():  # a leftover without recipe.json: incomplete, rebuild
            shutil.rmtree(target)
        # Build deterministically: own RNG state, restored afterwards so callers' seeds are unaffected.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=cache_dir))
            try:
                stats = build(tmp)
                meta = {"key": key, "recipe": recipe_meta, "stats": stats,
                        "torch": torch.__version__, "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                with open(tmp / RECIPE_FILENAME, "w", encoding="utf-8") as fh:
                    json.dump(meta, fh, indent=1, sort_keys=True)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.rename(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    return target


def _build_kind(kind: str, steps: int | None = None) -> str:
    """Build (or find) the default local model of `kind` ('dlm', 'ar' or 'gemma') in the default cache; `steps`:
    its pretraining steps (None: the recipe's)."""
    kw = {} if steps is None else {"pretrain_steps": steps}
    if kind == "gemma":
        from dlm_triage.tiny_diffusion_gemma import ensure_tiny_diffusion_gemma

        return str(ensure_tiny_diffusion_gemma(**kw))
    return str(ensure_tiny_model(kind=kind, **kw))


def _build_kind_in_worker(kind: str, steps: int | None, threads: int) -> str:
    torch.set_num_threads(threads)
    return _build_kind(kind, steps)


def is_built(kind: str, steps: int | None = None) -> bool:
    """Whether the default local model of `kind` is already in the default cache (a no-op to ensure)."""
    from dlm_triage.paths import cache_root

    if kind == "gemma":
        from dlm_triage import tiny_diffusion_gemma as g

        key = g.recipe_key(g.PRETRAIN_STEPS if steps is None else steps)
    else:
        key = recipe_key(DEFAULT_PRETRAIN_STEPS if steps is None else steps, kind)
    return (cache_root() / "models" / key / RECIPE_FILENAME).is_file()


def ensure_local_models(kinds: Iterable[str], *, workers: int | None = None,
                        pretrain_steps: dict[str, int] | None = None) -> dict[str, str]:
    """The default local models of `kinds` ({kind: directory}), building the missing ones at once: one spawned
    process each, up to `workers` (default: CPU cores) with cores / workers torch threads apiece. Pretraining a
    tiny model is mostly per-op overhead on one core, so two cores build two models in about the time of one; a
    single missing model is built in this process (no spawn). `pretrain_steps`: {kind: steps} (default: the
    recipes')."""
    kinds = list(dict.fromkeys(kinds))
    steps = dict(pretrain_steps or {})
    missing = [k for k in kinds if not is_built(k, steps.get(k))]
    workers = max(1, min(len(missing), workers or os.cpu_count() or 1))
    if len(missing) > 1 and workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for f in [pool.submit(_build_kind_in_worker, k, steps.get(k), threads) for k in missing]:
                f.result()  # a failed build raises here, with its own message
    return {k: _build_kind(k, steps.get(k)) for k in kinds}


def load_tiny(model_dir: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, *,
              causal: bool = False):
    """Load (model, tokenizer) from a directory made by `ensure_tiny_model` (or any saved tiny model); `causal`:
    the AR control's model (kind 'ar'), whose attention must be causal."""
    from transformers import LlamaForCausalLM

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json; pass a directory built by ensure_tiny_model() "
                                "or model_id=None for the default tiny model")
    # straight onto the device (no host copy first: this loader also serves Llama-shaped models of ~1B)
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=dtype, device_map={"": torch.device(device)})
    if bool(getattr(model.config, "is_causal", True)) != causal:
        has, kind = ("causal", "dlm") if not causal else ("bidirectional", "ar")
        raise ValueError(f"{model_dir}: config.is_causal says this model's attention is {has}, the wrong kind here; "
                         f"use the family of that kind, or rebuild with ensure_tiny_model(kind={kind!r})")
    return model, CharTokenizer.from_pretrained(model_dir)


def read_recipe(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / RECIPE_FILENAME).read_text(encoding="utf-8"))
