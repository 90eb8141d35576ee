"""Family adapters: how each masked-diffusion LM family is loaded, masked, targeted and read out.

Facts per family come from its public model card and modeling files. Each adapter gives:

- `load(cfg, device, dtype) -> LoadedModel(model, tokenizer, mask_token_id, ...)`: the right Auto class with
  `trust_remote_code` where the checkpoint ships its own code; the tiny family builds/loads the local model.
- `mask_token_id(tokenizer)`: LLaDA 126336, LLaDA2 156895, Dream 151666, MDLM 50257 (fixed by the checkpoints);
  tiny / LLaDA-MoE / generic MLM: the tokenizer's mask token; AR: see `ARAdapter`.
- `attention_targets(model)`: explicit attention modules (the paper adapts attention only), checked against the
  model: a target that matches no module raises (PEFT would silently skip it).
- `logits(model, input_ids)`: [B, L, V] aligned so logits[:, i] predicts token i. Never passes labels and never
  reads a model-computed loss. Dream (and the AR controls) predict token i at position i-1: the logits are
  realigned as cat([l[:, :1], l[:, :-1]]) (Dream's own generation code does the same); position 0 then has no
  real prediction, so `protected_positions` returns it and the trainer must never mask it (pass it as
  `protect=` to `objective.mask_tokens`) and may exclude it from monitors.
- attention masks: batches are packed (no padding), so every family attends everywhere: None for most;
  Dream must get None or a bool 4D [B,1,L,L]; LLaDA2 gets None under sdpa and an explicit all-ones 4D mask
  under eager, where its modeling file turns None and 2D masks causal (see `families_remote.LLaDA2Adapter`).
- the remote-code families (LLaDA, LLaDA2, LLaDA-MoE, Dream, MDLM) live in `families_remote.py`, their
  compat shims for transformers 4.57 / 5.x in `remote_code.py`; DiffusionGemma in `families_diffusion_gemma.py`.
- `top1_source`: 'clean' (top-1 frequency read from an extra forward on the clean batch) for LLaDA-style, tiny,
  Dream and AR; 'masked' (read from the training logits at masked positions) for MDLM and generic MLMs, whose
  prediction on a clean token is the token itself.

One module, over 400 lines: the `FamilyAdapter` contract with its documented defaults, the local families that need
no remote code, and the registry; the remote-code and DiffusionGemma families have their own modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlm_triage.targets import linear_module_names, module_matches


class FamilyError(ValueError):
    """A family/model mismatch; the message names the value and the fix."""


@dataclass(frozen=True)
class LoadedModel:
    model: nn.Module
    tokenizer: Any
    mask_token_id: int
    family: str = ""
    model_id: str = ""
    dtype: torch.dtype = torch.float32
    device: torch.device = torch.device("cpu")
    compat: tuple[str, ...] = ()  # remote-code shims applied at load (dlm_triage.remote_code.SHIMS)


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> cuda if available, else mps if available, else cpu; explicit values are checked."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FamilyError(f"device={device!r} but CUDA is not available here: use device='auto' or 'cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise FamilyError(f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s): pick a lower index")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise FamilyError(f"device={device!r} but MPS is not available here: use device='auto' or 'cpu'")
    return dev


def resolve_dtype(dtype: str, device: torch.device | str) -> torch.dtype:
    """'auto' -> bfloat16 on CUDA with bf16 support, float32 otherwise; names map to torch dtypes."""
    device = torch.device(device)
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise FamilyError(f"dtype={dtype!r} is not known: use 'auto' or one of {list(table)}")
    if table[dtype] == torch.float16 and device.type == "cpu":
        raise FamilyError("dtype='float16' on CPU is unsupported for training: use 'float32' or 'auto'")
    return table[dtype]


def check_targets(model: nn.Module, targets: tuple[str, ...], *, family: str) -> tuple[str, ...]:
    """Raise when a target matches no Linear-like module (PEFT would skip it silently); return the targets."""
    names = linear_module_names(model)
    missing = [t for t in targets if not any(module_matches(n, t) for n in names)]
    if missing:
        examples = sorted({n.rsplit(".", 1)[-1] for n in names})[:30]
        raise FamilyError(
            f"family {family!r}: target module(s) {missing} match no linear module of this model "
            f"({model_source(model)}; its linear module names end in {examples}); check the family or pass "
            "target_modules explicitly"
        )
    return targets


def model_source(model: nn.Module) -> str:
    """'ClassName in file.py': where a model's class is defined (a remote checkpoint's own modeling file)."""
    import inspect

    cls = type(model)
    try:
        return f"{cls.__name__} in {Path(inspect.getfile(cls)).name}"
    except (TypeError, OSError):
        return cls.__name__


def _check_trusted(adapter: "FamilyAdapter", model_id: str) -> None:
    from dlm_triage.trust import KNOWN_REMOTE_CODE_IDS, UntrustedModelError, check_trusted

    known = KNOWN_REMOTE_CODE_IDS | {a.default_model_id for a in _REGISTRY.values() if a.default_model_id}
    try:
        check_trusted(adapter.name, model_id, known)
    except UntrustedModelError as e:
        raise FamilyError(str(e)) from None


class FamilyAdapter:
    """Base adapter: AutoModel-style loading, fixed or tokenizer mask id, unshifted logits, no attention mask."""

    name: str = ""
    default_model_id: str | None = None
    top1_source: str = "clean"
    auto_class: str = "AutoModel"
    trust_remote_code: bool = True
    fixed_mask_token_id: int | None = None
    targets: tuple[str, ...] = ()
    shifted_logits: bool = False  # True: logit at i-1 predicts token i (Dream, AR)
    forward_extras: dict[str, Any] = {}  # constant keyword arguments of every training forward

    # -- ids and targets ---------------------------------------------------------------------------
    mask_token: str | None = None  # the published mask token's string, where the family has one

    def _vocab_id(self, tokenizer: Any, token: str) -> int | None:
        """The id the tokenizer gives `token` as one whole token, None when it does not know it."""
        try:
            tid = tokenizer.convert_tokens_to_ids(token)
        except (KeyError, ValueError, TypeError, AttributeError):
            return None
        unk = getattr(tokenizer, "unk_token_id", None)
        return tid if isinstance(tid, int) and tid != unk else None

    def mask_token_id(self, tokenizer: Any) -> int:
        if self.fixed_mask_token_id is not None:
            known = self._vocab_id(tokenizer, self.mask_token) if self.mask_token else None
            if known is not None and known != self.fixed_mask_token_id:
                raise FamilyError(
                    f"family {self.name!r}: the tokenizer maps {self.mask_token!r} to {known}, but this family's "
                    f"checkpoints were trained with mask id {self.fixed_mask_token_id}; the tokenizer belongs to "
                    "another model: use the checkpoint's own tokenizer files, or set family accordingly")
            return self.fixed_mask_token_id
        tid = getattr(tokenizer, "mask_token_id", None)
        if isinstance(tid, int):
            return tid
        named = self._vocab_id(tokenizer, self.mask_token) if self.mask_token else None
        if named is not None:
            return named
        raise FamilyError(
            f"family {self.name!r}: the tokenizer has no mask token"
            + (f" and does not know {self.mask_token!r}" if self.mask_token else "")
            + "; use the checkpoint's own tokenizer files (tokenizer.json / tokenizer_config.json) or one with "
            "a mask token (tokenizer.mask_token), or the 'ar' family, which picks a fallback"
        )

    def attention_targets(self, model: nn.Module) -> tuple[str, ...]:
        return check_targets(model, self.targets, family=self.name)

    def training_loss(self, model: nn.Module, x0: torch.Tensor, generator: torch.Generator | None,
                      cfg: Any) -> Any:
        """A family with its own corruption and loss (DiffusionGemma) returns its objective's output record
        (`dlm_triage.diffusion_gemma.ObjectiveOutput`); None: the trainer's masked-diffusion objective."""
        return None

    def protected_positions(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """Bool [L] of positions never to mask (None: none). Dream/AR: position 0 (no prediction after the shift)."""
        if not self.shifted_logits:
            return None
        protect = torch.zeros(input_ids.shape[-1], dtype=torch.bool, device=input_ids.device)
        protect[0] = True
        return protect

    # -- forward -------------------------------------------------------------------------------------
    def attention_mask(self, model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor | None:
        """Packed batches attend everywhere; None unless the family needs an explicit mask."""
        return None

    def forward_kwargs(self, model: nn.Module, input_ids: torch.Tensor) -> dict[str, Any]:
        kw: dict[str, Any] = {"input_ids": input_ids, **self.forward_extras}
        mask = self.attention_mask(model, input_ids)
        if mask is not None:
            kw["attention_mask"] = mask
        return kw

    def logits(self, model: nn.Module, input_ids: torch.Tensor, **overrides: Any) -> torch.Tensor:
        """`overrides` replace forward kwargs (an objective's own 4D attention mask and position ids)."""
        out = model(**{**self.forward_kwargs(model, input_ids), **overrides})
        logits = out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, (tuple, list)) else out)
        if logits.dim() != 3 or logits.shape[:2] != input_ids.shape:
            raise FamilyError(
                f"family {self.name!r}: the model returned logits of shape {tuple(logits.shape)} for input "
                f"{tuple(input_ids.shape)}; expected [B, L, V]: check that the family matches the model"
            )
        if self.shifted_logits:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits

    # -- memory ----------------------------------------------------------------------------------------
    def load_options(self, cfg: Any) -> tuple:
        """Whatever else in `cfg` changes what `load` returns (beyond family, model_id, dtype and device): part
        of the resident-model cache key (dlm_triage.resident). None here."""
        return ()

    def set_gradient_checkpointing(self, model: nn.Module, enable: bool) -> str | None:
        """Turn activation checkpointing on or off on the BASE model (before the adapter wraps it); returns the
        mechanism used ('hf') or None when turned off. Non-reentrant (use_reentrant=False): it needs no input
        that requires grad, so gradients reach the adapters through a frozen embedding; the input hook HF adds
        for PEFT is registered anyway where the model exposes its input embedding, and removed on off. A model
        without HF support raises, naming the family and the fix."""
        has_hooks = bool(getattr(model, "_require_grads_hooks", None)) or hasattr(model, "_require_grads_hook")
        supported = bool(getattr(model, "supports_gradient_checkpointing", False))
        # transformers 5.x names it activation_checkpointing_*; 4.57 only has gradient_checkpointing_*
        # (a deprecated alias in 5.x that warns)
        if not enable:
            if supported:
                off = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
                off()
            if has_hooks:
                model.disable_input_require_grads()
            return None
        if not supported:
            raise FamilyError(
                f"family {self.name!r}: {type(model).__name__} does not support gradient checkpointing through "
                "the HF API and the family has no mechanism of its own: set gradient_checkpointing=false "
                "(and lower batch_size, raising grad_accum_steps to keep the effective batch)"
            )
        on = getattr(model, "activation_checkpointing_enable", None)
        if on is not None:
            on(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if not (getattr(model, "_require_grads_hooks", None) or hasattr(model, "_require_grads_hook")):
            try:  # 5.x registered it already; a second call would leak the first hooks
                model.enable_input_require_grads()
            except (NotImplementedError, AttributeError):  # no get_input_embeddings (MDLM): not needed, see above
                pass
        return "hf"

    # -- loading ---------------------------------------------------------------------------------------
    def model_id(self, cfg: Any, *, check: bool = True) -> str:
        """The checkpoint to load: cfg.model_id or the family default. `check`: a hub id that is not cached while
        the hub is out of reach fails here in about a second (hub.check_model_available), not after ~50 s of
        download retries inside transformers."""
        mid = cfg.model_id or self.default_model_id
        if not mid:
            raise FamilyError(f"family {self.name!r} has no default model: set model_id to a hub id or local path")
        if check:
            from dlm_triage.hub import check_model_available

            check_model_available(mid)
        return mid

    def load_tokenizer(self, model_id: str) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model_id, trust_remote_code=self.trust_remote_code)

    def load_model(self, model_id: str, device: torch.device, dtype: torch.dtype) -> nn.Module:
        import transformers

        auto = getattr(transformers, self.auto_class)
        kwargs: dict[str, Any] = {"dtype": dtype}
        if self.trust_remote_code:
            kwargs["trust_remote_code"] = True
        # Several GPUs: let accelerate spread a large model (device_map='auto'). One device: weights are
        # materialised straight onto it (device_map={"": device}); a load to CPU then .to(device) would hold a
        # full CPU copy first (16 GB of host memory for LLaDA-8B in bf16).
        spread = device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1
        kwargs["device_map"] = "auto" if spread else {"": device}
        return auto.from_pretrained(model_id, **kwargs)

    def load(self, cfg: Any, device: torch.device | str, dtype: torch.dtype) -> LoadedModel:
        device = torch.device(device)
        if self.trust_remote_code and (cfg.model_id or self.default_model_id):
            _check_trusted(self, cfg.model_id or self.default_model_id)  # before any download or code runs
        model_id = self.model_id(cfg)
        try:
            tokenizer = self.load_tokenizer(model_id)
            model = self.load_model(model_id, device, dtype)
        except OSError as e:
            raise self._load_error(model_id, e) from e
        mask_id = self.mask_token_id(tokenizer)
        self.check_mask_id(model, mask_id, model_id)
        return LoadedModel(model, tokenizer, mask_id, family=self.name, model_id=model_id, dtype=dtype,
                           device=device)

    def _load_error(self, model_id: str, e: OSError) -> FamilyError:
        return FamilyError(
            f"family {self.name!r}: cannot load model_id={model_id!r} ({e}); give a local directory with the "
            "checkpoint (config.json, weights, tokenizer, and its modeling code for trust_remote_code) "
            "or make the hub reachable"
        )

    def check_mask_id(self, model: nn.Module, mask_id: int, model_id: str) -> None:
        try:
            emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        except NotImplementedError:  # MDLM's embedding is a bare Parameter: fall back to config.vocab_size
            emb = None
        n = getattr(emb, "num_embeddings", None) if emb is not None else None
        if n is None:
            n = getattr(getattr(model, "config", None), "vocab_size", None)
        if isinstance(n, int) and not 0 <= mask_id < n:
            raise FamilyError(
                f"family {self.name!r}: mask token id {mask_id} is outside the vocabulary of {model_id!r} "
                f"(size {n}); the checkpoint does not belong to this family: set family accordingly"
            )


class TinyAdapter(FamilyAdapter):
    """The embedded tiny bidirectional Llama (dlm_triage.tiny); model_id None -> the cached pretrained model."""

    name = "tiny"
    default_model_id = None
    top1_source = "clean"
    targets = ("q_proj", "k_proj", "v_proj", "o_proj")

    def mask_token_id(self, tokenizer: Any) -> int:
        return int(tokenizer.mask_token_id)

    def attention_mask(self, model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor | None:
        from dlm_triage.tiny import full_attention_mask

        return full_attention_mask(model, input_ids)  # None on transformers 5; see there for 4.x

    def model_id(self, cfg: Any, *, check: bool = True) -> str:
        from dlm_triage.tiny import ensure_tiny_model

        return str(Path(cfg.model_id).expanduser() if cfg.model_id else ensure_tiny_model())

    def load(self, cfg: Any, device: torch.device | str, dtype: torch.dtype) -> LoadedModel:
        from dlm_triage.tiny import load_tiny

        device = torch.device(device)
        path = Path(self.model_id(cfg))
        model, tok = load_tiny(path, device=device, dtype=dtype)
        return LoadedModel(model, tok, self.mask_token_id(tok), family=self.name, model_id=str(path),
                           dtype=dtype, device=device)


# BERT-like encoders: attention targets by model_type (explicit; unknown types raise with the fix).
_MLM_TARGETS = {
    "bert": ("query", "key", "value", "attention.output.dense"),
    "roberta": ("query", "key", "value", "attention.output.dense"),
    "xlm-roberta": ("query", "key", "value", "attention.output.dense"),
    "camembert": ("query", "key", "value", "attention.output.dense"),
    "electra": ("query", "key", "value", "attention.output.dense"),
    "distilbert": ("q_lin", "k_lin", "v_lin", "out_lin"),
    "modernbert": ("Wqkv", "Wo"),
}

# Causal LMs for the AR controls (paper 4.3).
_AR_TARGETS = {
    "gpt_neox": ("query_key_value", "attention.dense"),
    "gpt2": ("c_attn", "attn.c_proj"),
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "qwen3": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mistral": ("q_proj", "k_proj", "v_proj", "o_proj"),
}


def _targets_by_model_type(model: nn.Module, table: dict[str, tuple[str, ...]], family: str) -> tuple[str, ...]:
    mt = getattr(getattr(model, "config", None), "model_type", None)
    if mt not in table:
        raise FamilyError(
            f"family {family!r}: model_type={mt!r} has no known attention targets (known: {sorted(table)}); "
            "pass target_modules explicitly"
        )
    return check_targets(model, table[mt], family=family)


class GenericMLMAdapter(FamilyAdapter):
    """BERT/RoBERTa-style masked LMs: AutoModelForMaskedLM; mask id from the tokenizer; targets by model_type;
    top-1 read at masked positions (an MLM copies clean tokens)."""

    name = "generic_mlm"
    default_model_id = "FacebookAI/roberta-base"
    top1_source = "masked"
    auto_class = "AutoModelForMaskedLM"
    trust_remote_code = False

    def attention_targets(self, model: nn.Module) -> tuple[str, ...]:
        return _targets_by_model_type(model, _MLM_TARGETS, self.name)


class ARAdapter(FamilyAdapter):
    """Autoregressive controls (Pythia/GPT-NeoX, Qwen, Llama): AutoModelForCausalLM under the same random-mask CE.

    The causal head predicts token i at position i-1, so logits are realigned like Dream's (position 0 protected):
    the model predicts each masked token from the (partly masked) left context, with its pretrained head.
    Mask id: the tokenizer's mask token, else its pad, else unk, else eos token. The embeddings are never resized
    (no new token), so the base weights stay exactly the checkpoint's."""

    name = "ar"
    default_model_id = "EleutherAI/pythia-160m"
    auto_class = "AutoModelForCausalLM"
    trust_remote_code = False
    shifted_logits = True

    def mask_token_id(self, tokenizer: Any) -> int:
        for attr in ("mask_token_id", "pad_token_id", "unk_token_id", "eos_token_id"):
            tid = getattr(tokenizer, attr, None)
            if isinstance(tid, int):
                return tid
        raise FamilyError("family 'ar': the tokenizer has no mask, pad, unk or eos token; add a mask token to it")

    def attention_targets(self, model: nn.Module) -> tuple[str, ...]:
        return _targets_by_model_type(model, _AR_TARGETS, self.name)


class TinyARAdapter(ARAdapter):
    """The embedded AR control (paper 4.3): the tiny family's Llama shape and tokenizer with causal attention,
    pretrained locally with next-token CE (`dlm_triage.tiny`, kind 'ar'); fine-tuned under the same masked CE as
    the tiny family through ARAdapter's realigned logits. model_id None -> the cached pretrained model."""

    name = "tiny_ar"
    default_model_id = None
    targets = ("q_proj", "k_proj", "v_proj", "o_proj")

    def attention_targets(self, model: nn.Module) -> tuple[str, ...]:
        return check_targets(model, self.targets, family=self.name)

    def model_id(self, cfg: Any, *, check: bool = True) -> str:
        from dlm_triage.tiny import ensure_tiny_model

        return str(Path(cfg.model_id).expanduser() if cfg.model_id else ensure_tiny_model(kind="ar"))

    def load(self, cfg: Any, device: torch.device | str, dtype: torch.dtype) -> LoadedModel:
        from dlm_triage.tiny import load_tiny

        device = torch.device(device)
        path = Path(self.model_id(cfg))
        model, tok = load_tiny(path, device=device, dtype=dtype, causal=True)
        return LoadedModel(model, tok, self.mask_token_id(tok), family=self.name, model_id=str(path),
                           dtype=dtype, device=device)


_REGISTRY: dict[str, FamilyAdapter] = {
    a.name: a
    for a in (TinyAdapter(), GenericMLMAdapter(), ARAdapter(), TinyARAdapter())
}


# Families in their own module (module, class): they import the base classes above, so they are imported on
# first use, not here (an import cycle otherwise).
_MODULE_FAMILIES = {
    "diffusion_gemma": ("dlm_triage.families_diffusion_gemma", "DiffusionGemmaAdapter"),
    "tiny_gemma": ("dlm_triage.families_diffusion_gemma", "TinyGemmaAdapter"),
    # the checkpoints that ship their own modeling code (compat shims: dlm_triage/remote_code.py)
    "llada": ("dlm_triage.families_remote", "LLaDAAdapter"),
    "llada2": ("dlm_triage.families_remote", "LLaDA2Adapter"),
    "llada_moe": ("dlm_triage.families_remote", "LLaDAMoEAdapter"),
    "dream": ("dlm_triage.families_remote", "DreamAdapter"),
    "mdlm": ("dlm_triage.families_remote", "MDLMAdapter"),
}


def get_family(name: str) -> FamilyAdapter:
    """The adapter of family `name` (one of config.FAMILIES)."""
    if name not in _REGISTRY and name in _MODULE_FAMILIES:
        import importlib

        module, cls = _MODULE_FAMILIES[name]
        _REGISTRY[name] = getattr(importlib.import_module(module), cls)()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise FamilyError(f"family={name!r} is not known: use one of {sorted({*_REGISTRY, *_MODULE_FAMILIES})}") from None
