"""The families whose checkpoints ship their own modeling code (trust_remote_code): LLaDA, LLaDA2, LLaDA-MoE,
Dream, MDLM. Each adapter loads through `RemoteCodeAdapter.load`: the checkpoint's files are checked, its classes
resolved from its own `auto_map` and patched through `dlm_triage.remote_code` (every shim named there, with the
transformers line that needs it). Base classes and the registry: `dlm_triage.families`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlm_triage import remote_code
from dlm_triage.families import FamilyAdapter, FamilyError, LoadedModel, _check_trusted, check_targets
from dlm_triage.remote_code import RemoteCodeError


class RemoteCodeAdapter(FamilyAdapter):
    """A checkpoint that ships its own modeling code: its files are checked, its class resolved and patched
    through `dlm_triage.remote_code` (each shim named there, with the transformers line that needs it)."""

    package_hints: dict[str, str] = {}  # fix for a module-level import of the published file that is missing

    def load(self, cfg: Any, device: torch.device | str, dtype: torch.dtype) -> LoadedModel:
        device = torch.device(device)
        if cfg.model_id or self.default_model_id:  # a model id is code to run: the allow-list (trust.py) first
            _check_trusted(self, cfg.model_id or self.default_model_id)
        model_id = self.model_id(cfg)
        try:
            local = Path(model_id).expanduser()
            if local.is_dir():  # before anything executes the checkpoint's code
                files = remote_code.check_code_files(self.name, local, self.auto_class)
                remote_code.check_packages(self.name, files, self.package_hints)
            # The config class comes from this checkpoint's own auto_map: AutoConfig would take a class that
            # another checkpoint's code registered for the same model_type in this process (LLaDA's
            # configuration_llada.py registers 'llada', which is also LLaDA-MoE's model_type).
            config, cls, applied = remote_code.load_class(self.name, model_id, self.auto_class)
            tokenizer = self.load_tokenizer(model_id, config=config)
            model = self._from_pretrained(cls, config, model_id, device, dtype, applied)
        except RemoteCodeError as e:
            raise FamilyError(str(e)) from e
        except ImportError as e:  # a hub id: transformers' own check of the downloaded file's imports
            missing = getattr(e, "name", None) or ""
            fix = self.package_hints.get(missing) or remote_code.INSTALL_HINT.get(missing) or "install it"
            raise FamilyError(f"family {self.name!r}: the checkpoint's code for {model_id!r} needs a package "
                              f"that is not installed ({e}). Fix: {fix}") from e
        except OSError as e:
            raise self._load_error(model_id, e) from e
        mask_id = self.mask_token_id(tokenizer)
        self.check_mask_id(model, mask_id, model_id)
        if getattr(cfg, "target_modules", None):  # before training: PEFT would only fail later, less clearly
            check_targets(model, tuple(cfg.target_modules), family=self.name)
        return LoadedModel(model, tokenizer, mask_id, family=self.name, model_id=model_id, dtype=dtype,
                           device=device, compat=tuple(model._dlm_triage_compat_applied))

    def load_tokenizer(self, model_id: str, config: Any = None) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model_id, trust_remote_code=True,
                                             **({"config": config} if config is not None else {}))

    def _from_pretrained(self, cls: type, config: Any, model_id: str, device: torch.device, dtype: torch.dtype,
                         applied: list[str]) -> nn.Module:
        kwargs: dict[str, Any] = {"dtype": dtype, "config": config}
        spread = device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1
        # one device: weights straight onto it, no full host copy first (16 GB for LLaDA-8B in bf16)
        kwargs["device_map"] = "auto" if spread else {"": device}
        with remote_code.process_state_guard():
            model = cls.from_pretrained(model_id, **kwargs)
        applied = applied + remote_code.after_load(self.name, model)
        if self.forward_extras.get("use_cache") is False:
            applied.append("use_cache_false")
        if self.name == "llada":
            applied.append("mem_efficient_sdp_restored")
        model._dlm_triage_compat_applied = tuple(applied)
        return model


class LLaDAAdapter(RemoteCodeAdapter):
    """LLaDA-8B: AutoModel + trust_remote_code; mask 126336; targets q,k,v_proj + attn_out (not o_proj: LLaDA
    has none); the LM head is also named `ff_out`, so never target 'ff_out' by suffix. Logits unshifted."""

    name = "llada"
    default_model_id = "GSAI-ML/LLaDA-8B-Instruct"
    auto_class = "AutoModel"
    fixed_mask_token_id = 126336
    mask_token = "<|mdm_mask|>"  # not the tokenizer's mask_token (it has none); pad = eos = 126081
    targets = ("q_proj", "k_proj", "v_proj", "attn_out")
    forward_extras = {"use_cache": False}

    def set_gradient_checkpointing(self, model: nn.Module, enable: bool) -> str | None:
        """The published LLaDAModelLM declares no HF checkpointing support (`gradient_checkpointing_enable`
        raises); its own activation checkpointing lives on the inner LLaDAModel (`model.model`):
        `set_activation_checkpointing(ActivationCheckpointingStrategy.whole_layer)`, which checkpoints each
        block with torch.utils.checkpoint(use_reentrant=False). Copies that add HF support are driven the same
        way (their HF hook calls the same method)."""
        inner = getattr(model, "model", None)
        if not hasattr(inner, "set_activation_checkpointing"):
            return super().set_gradient_checkpointing(model, enable)
        if not enable:
            inner.set_activation_checkpointing(None)
            return None
        import sys

        # The strategy enum lives in the checkpoint's configuration module (imported by the modeling module);
        # it is a str enum, so its value string compares equal where the enum cannot be found.
        modeling = sys.modules.get(type(inner).__module__)
        strategy_enum = getattr(modeling, "ActivationCheckpointingStrategy", None)
        inner.set_activation_checkpointing(strategy_enum.whole_layer if strategy_enum is not None else "whole_layer")
        return "llada_activation_checkpointing"


class LLaDA2Adapter(RemoteCodeAdapter):
    """LLaDA2.0/2.1-mini (MoE): AutoModelForCausalLM + trust_remote_code; mask 156895; fused attention
    `attention.query_key_value` + `attention.dense`; router and experts stay frozen (not targeted).

    Attention mask: None under sdpa (the default), an explicit all-ones 4D [B,1,L,L] otherwise. Measured on the
    published file (tiny checkpoint, transformers 4.57.6 and 5.23): under sdpa a None mask stays None (sdpa
    runs with is_causal=False, bidirectional) and gives the same logits as the all-ones 4D mask, while a tensor
    mask would keep sdpa off its flash kernel; under eager, None and 2D masks go through
    `_prepare_4d_causal_attention_mask` and come back causal, so the 4D mask (kept as is; eager adds
    (1 - mask) * min = 0) is needed there. A bool 4D mask would fail under eager (1.0 - bool)."""

    name = "llada2"
    default_model_id = "inclusionAI/LLaDA2.0-mini"
    auto_class = "AutoModelForCausalLM"
    fixed_mask_token_id = 156895
    mask_token = "<|mask|>"
    targets = ("attention.query_key_value", "attention.dense")
    forward_extras = {"use_cache": False}

    def attention_mask(self, model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor | None:
        if getattr(getattr(model, "config", None), "_attn_implementation", None) == "sdpa":
            return None
        b, length = input_ids.shape
        dtype = next(model.parameters()).dtype
        return torch.ones(b, 1, length, length, dtype=dtype, device=input_ids.device)


class LLaDAMoEAdapter(RemoteCodeAdapter):
    """LLaDA-MoE-7B-A1B: AutoModel + trust_remote_code; mask id: the tokenizer's mask token, else the id it
    gives '<|mask|>' (156895 in the published tokenizer); q,k,v,o_proj. The router
    `gate` is an nn.Linear, so 'all-linear' would wrap it: targets are always explicit."""

    name = "llada_moe"
    default_model_id = "inclusionAI/LLaDA-MoE-7B-A1B-Instruct"
    auto_class = "AutoModel"
    mask_token = "<|mask|>"  # 156895 in the published tokenizer, which may not declare it as its mask_token
    targets = ("q_proj", "k_proj", "v_proj", "o_proj")
    forward_extras = {"use_cache": False}


class DreamAdapter(RemoteCodeAdapter):
    """Dream-7B: AutoModel + trust_remote_code; mask 151666; q,k,v,o_proj; attention mask None (a 2D long mask
    raises inside the model); logits right-shifted (realigned here, position 0 protected)."""

    name = "dream"
    default_model_id = "Dream-org/Dream-v0-Base-7B"
    auto_class = "AutoModel"
    fixed_mask_token_id = 151666
    mask_token = "<|mask|>"
    targets = ("q_proj", "k_proj", "v_proj", "o_proj")
    shifted_logits = True
    forward_extras = {"use_cache": False}

    @staticmethod
    def bool_attention_mask(padding_mask: torch.Tensor) -> torch.Tensor:
        """[B, L] keep-mask (1 = real token) -> the bool 4D [B, 1, L, L] Dream accepts (True = attend)."""
        keep = padding_mask.to(torch.bool)
        return keep[:, None, None, :] & keep[:, None, :, None]


class MDLMAdapter(RemoteCodeAdapter):
    """MDLM-OWT: AutoModelForMaskedLM + trust_remote_code; forward(input_ids, timesteps); mask 50257; fused
    attn_qkv + attn_out; the CE is ours, on logits with MDLM's SUBS rule for the mask token applied.

    timesteps: zeros. With `time_conditioning: false` (the OWT checkpoint) the published backbone replaces
    sigma by zeros itself, so timesteps do not reach the logits at all; with it true they do, and `logits`
    takes `timesteps=` to pass them.

    SUBS: the mask token's logit is set to -inf (out of place, so autograd is untouched). The [MASK] row of
    the output layer is never a training target, so without this it keeps probability mass and top-1 at a
    masked position can land on the mask id itself. The model's `get_input_embeddings()` raises
    NotImplementedError (its embedding is a bare Parameter): `check_mask_id` then reads config.vocab_size."""

    name = "mdlm"
    default_model_id = "kuleshov-group/mdlm-owt"
    top1_source = "masked"
    auto_class = "AutoModelForMaskedLM"
    fixed_mask_token_id = 50257
    targets = ("attn_qkv", "attn_out")
    package_hints = {
        "flash_attn": "the published modeling_mdlm.py calls flash-attn's CUDA kernels (rotary embedding and "
                      "varlen attention) in its forward, so it runs only on a CUDA GPU: pip install flash-attn "
                      "there (a torch build with CUDA first); on CPU there is no way past it but a port of those "
                      "two kernels in the checkpoint's own modeling file",
        "einops": "pip install einops (the published modeling_mdlm.py imports it)",
    }

    def forward_kwargs(self, model: nn.Module, input_ids: torch.Tensor, timesteps: torch.Tensor | None = None):
        if timesteps is None:
            dtype = next(model.parameters()).dtype
            timesteps = torch.zeros(input_ids.shape[0], dtype=dtype, device=input_ids.device)
        return {"input_ids": input_ids, "timesteps": timesteps}

    def logits(self, model: nn.Module, input_ids: torch.Tensor, timesteps: torch.Tensor | None = None) -> torch.Tensor:
        out = model(**self.forward_kwargs(model, input_ids, timesteps))
        logits = out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, (tuple, list)) else out)
        if logits.dim() != 3 or logits.shape[:2] != input_ids.shape:
            raise FamilyError(f"family 'mdlm': logits of shape {tuple(logits.shape)} for input "
                              f"{tuple(input_ids.shape)}; expected [B, L, V]: check model_id")
        mask_index = torch.tensor([self.fixed_mask_token_id], device=logits.device)
        return logits.index_fill(-1, mask_index, float("-inf"))

    def load_tokenizer(self, model_id: str, config: Any = None) -> Any:
        # The MDLM checkpoint reuses GPT-2's tokenizer (mask id 50257 = its vocab size); a local directory may
        # hold its own tokenizer files.
        from transformers import AutoTokenizer

        try:
            return super().load_tokenizer(model_id, config=config)
        except (OSError, ValueError):
            return AutoTokenizer.from_pretrained("gpt2")
