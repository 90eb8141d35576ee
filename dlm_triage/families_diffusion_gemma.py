"""The `diffusion_gemma` family: google/diffusiongemma-26B-A4B-it through transformers' native classes.

Loading: `AutoModelForImageTextToText` (the Auto class transformers maps `diffusion_gemma` to) ->
`DiffusionGemmaForBlockDiffusion`, no trust_remote_code (the code ships in transformers >= 5.x); the class is
checked after loading. Tokenizer: AutoTokenizer (GemmaTokenizer), or the tiny family's character tokenizer for a
directory built by `dlm_triage.tiny_diffusion_gemma`. No mask token: the corruption is uniform noise
(`dlm_triage.diffusion_gemma`), so `mask_token_id` is NO_MASK_TOKEN and the trainer runs the family's own
objective (`training_loss`).

One stack, two modes. The checkpoint ties every weight of the encoder's text layers to the decoder's
(`DiffusionGemmaModel._tied_weights_keys`): one Gemma stack run causally, then bidirectionally. peft would wrap
the two copies of a tied Linear separately, giving the encoder and the decoder different adapters (a fine-tune
the tied checkpoint cannot hold; PiSSA would even rewrite the shared base weight twice). So `load` makes every
tied Linear of the encoder's text layers a view of the decoder's module (`share_encoder_linears`): the encoder
calls whatever the decoder's module is at call time, plain or adapter-wrapped, and the module is registered once
(under the decoder). An untied checkpoint is left as it is.

Targets (attention only, the paper's setting): q_proj, k_proj, v_proj, o_proj of the decoder's self-attention,
named per layer (`decoder.layers.N.self_attn.q_proj`), because bare suffixes also match the vision tower's
`ClippableLinear` wrappers (which peft cannot wrap). Full-attention layers have no v_proj (Gemma 4's
attention_k_eq_v: values are the keys). The MoE router, the experts, the MLPs, the self-conditioning block and
the vision tower stay frozen.

Monitors: top-1 is read on the training logits at the supervised canvas positions (`top1_source='canvas'`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlm_triage import diffusion_gemma as objective
from dlm_triage.families import FamilyAdapter, FamilyError, LoadedModel, check_targets

NO_MASK_TOKEN = -1
"""DiffusionGemma has no mask token (uniform-noise corruption); the LoadedModel carries this sentinel."""

_ATTENTION_LINEAR = re.compile(r"(?:^|\.)(?:decoder|language_model)\.layers\.\d+\.self_attn\.[qkvo]_proj$")
_ALIAS_CLASSES: dict[tuple[type, tuple[str, ...]], type] = {}


def _alias_class(cls: type, names: tuple[str, ...]) -> type:
    """A subclass of `cls` whose attributes `names` read the module of the same name on `self._dlm_shared_with`."""
    key = (cls, names)
    if key not in _ALIAS_CLASSES:
        def view(name: str) -> property:
            return property(lambda self: getattr(self.__dict__["_dlm_shared_with"], name),
                            doc=f"the decoder's {name} (shared stack)")

        _ALIAS_CLASSES[key] = type(f"Shared{cls.__name__}", (cls,), {n: view(n) for n in names})
    return _ALIAS_CLASSES[key]


def share_encoder_linears(model: nn.Module) -> int:
    """Make each Linear of the encoder's text layers that is tied to the decoder's a view of the decoder's module;
    returns how many were shared (0 for an untied checkpoint). Idempotent."""
    enc_layers = model.model.encoder.language_model.layers
    dec_layers = model.model.decoder.layers
    shared = 0
    for enc_layer, dec_layer in zip(enc_layers, dec_layers):
        by_parent: dict[str, list[str]] = {}
        for name, mod in enc_layer.named_modules():
            if not isinstance(mod, nn.Linear):
                continue
            twin = dec_layer.get_submodule(name)
            if twin.weight is not mod.weight:  # untied: two real copies, nothing to share
                continue
            parent, _, attr = name.rpartition(".")
            by_parent.setdefault(parent, []).append(attr)
        for parent, attrs in by_parent.items():
            enc_parent = enc_layer.get_submodule(parent) if parent else enc_layer
            dec_parent = dec_layer.get_submodule(parent) if parent else dec_layer
            for attr in attrs:
                del enc_parent._modules[attr]  # registered once, under the decoder
            # plain __dict__ entry (not a submodule): named_modules/state_dict/.to() see the decoder's copy only
            object.__setattr__(enc_parent, "_dlm_shared_with", dec_parent)
            enc_parent.__class__ = _alias_class(type(enc_parent), tuple(sorted(attrs)))
            shared += len(attrs)
    return shared


class DiffusionGemmaAdapter(FamilyAdapter):
    """DiffusionGemma (block diffusion, MoE, uniform noise); see the module docstring."""

    name = "diffusion_gemma"
    default_model_id = "google/diffusiongemma-26B-A4B-it"
    top1_source = "canvas"
    auto_class = "AutoModelForImageTextToText"
    trust_remote_code = False

    def mask_token_id(self, tokenizer: Any) -> int:
        return NO_MASK_TOKEN

    def check_mask_id(self, model: nn.Module, mask_id: int, model_id: str) -> None:
        return None  # no mask token to check

    def attention_targets(self, model: nn.Module) -> tuple[str, ...]:
        # The shortest suffix naming one module ('decoder.layers.0.self_attn.q_proj'); an untied checkpoint
        # also lists the encoder's ('language_model.layers.0...'), which then have weights of their own.
        targets = [n[match.start():].lstrip(".") for n, m in model.named_modules()
                   if isinstance(m, nn.Linear) and (match := _ATTENTION_LINEAR.search(n))]
        if not targets:
            raise FamilyError(
                f"family {self.name!r}: {type(model).__name__} has no decoder self-attention q/k/v/o_proj: "
                "model_id is not a DiffusionGemmaForBlockDiffusion checkpoint; set family accordingly")
        return check_targets(model, tuple(dict.fromkeys(targets)), family=self.name)

    def load_tokenizer(self, model_id: str) -> Any:
        from dlm_triage.tiny import TOKENIZER_FILENAME, CharTokenizer

        if (Path(model_id).expanduser() / TOKENIZER_FILENAME).is_file():  # built by tiny_diffusion_gemma
            return CharTokenizer.from_pretrained(Path(model_id).expanduser())
        return super().load_tokenizer(model_id)

    def load_model(self, model_id: str, device: torch.device, dtype: torch.dtype) -> nn.Module:
        try:
            from transformers import DiffusionGemmaForBlockDiffusion
        except ImportError as e:  # transformers 4.x has no DiffusionGemma
            import transformers

            raise FamilyError(
                f"family {self.name!r} needs transformers' DiffusionGemma (transformers 5.23 has it), but "
                f"transformers {transformers.__version__} is installed: upgrade transformers") from e
        model = super().load_model(model_id, device, dtype)
        if not isinstance(model, DiffusionGemmaForBlockDiffusion):
            raise FamilyError(
                f"family {self.name!r}: {model_id!r} loaded as {type(model).__name__}, not "
                "DiffusionGemmaForBlockDiffusion: set the family that matches the checkpoint")
        share_encoder_linears(model)
        return model

    def logits(self, model: nn.Module, input_ids: torch.Tensor, *, clean_ids: torch.Tensor | None = None,
               supervised: torch.Tensor | None = None) -> torch.Tensor:
        """Canvas logits [B, L, V] (logits[:, i] predicts token i) of the canvas `input_ids` given the clean
        sequence `clean_ids` in the encoder (default: the canvas itself); one pass, no self-conditioning."""
        clean = input_ids if clean_ids is None else clean_ids
        sup = torch.ones_like(input_ids, dtype=torch.bool) if supervised is None else supervised
        block_size, _, _ = objective.geometry(model)
        logits, _ = objective.canvas_forward(model, clean, input_ids, objective.canvas_block_ids(sup, block_size))
        return logits

    def training_loss(self, model: nn.Module, x0: torch.Tensor, generator: torch.Generator | None,
                      cfg: Any = None) -> objective.ObjectiveOutput:
        """The family's own objective on a batch of packed text (every position supervised)."""
        return objective.training_loss(model, x0, generator)


class TinyGemmaAdapter(DiffusionGemmaAdapter):
    """The embedded tiny DiffusionGemma (transformers' own classes, `dlm_triage.tiny_diffusion_gemma`), pretrained
    locally with the family's own objective; model_id None -> the cached pretrained model."""

    name = "tiny_gemma"
    default_model_id = None

    def model_id(self, cfg: Any, *, check: bool = True) -> str:
        from dlm_triage.tiny_diffusion_gemma import ensure_tiny_diffusion_gemma

        return str(Path(cfg.model_id).expanduser() if cfg.model_id else ensure_tiny_diffusion_gemma())
