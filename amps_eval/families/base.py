"""What a model family is to amps-eval: one generic `FamilyAdapter`, which serves any
image-text-to-text checkpoint transformers loads (`amps_auto`), and the rare family file that
overrides one of its hooks.

The adapter answers every question about a model: how to load it and its processor, the image
token, the decoder layers and hidden size, the positions of a pass against a cache and whether the
MCS applies (K/V support). The model-level answers follow the generic rules of `amps_eval.anatomy`;
the rest of the code (wrappers, steering, MCS, fit, the study, the report) asks the adapter
(`amps_eval.families.adapter_for` for a loaded model), never the rules directly nor a family name.

Hooks a family may override (each defaults to the generic rule):
* ``processor_class(path)``: the processor to build (default: the one ``AutoProcessor`` picks,
  without video / audio slots);
* ``fill_processor_dict(path, processor_dict)``: complete the processor arguments of old folders;
* ``image_token_id(config, processor)``: the image placeholder token;
* ``patch_model(model)``: fix a model after loading, on that instance (Llama 4's forward bug, or a
  ``get_rope_index`` for its positions, which `amps_eval.anatomy.position_ids` then uses).

A family file for a model type that `amps_auto` serves registers its adapter in the generic one's
``type_hooks`` (`amps_eval.families.auto`); `for_model_type` / `for_checkpoint` pick it by the
checkpoint's ``config.model_type``. The model-level hooks (each defaults to `amps_eval.anatomy`'s rule):
* ``decoder_layers(model)``: the layers a steering hook or a capture attaches to (and the fit's
  ``num_layers``);
* ``hidden_size(model)``: their width;
* ``prompt_position_ids(model, inputs)``: the positions of a prompt for a pass against a cache;
* ``kv_refusal(model, prompt_length)``: why the MCS cannot run on the model, or None.
The steering, fit, extraction and MCS code ask the loaded model's adapter for them
(`amps_eval.families.adapter_for`), so an override takes effect everywhere.

This module and the family modules stay import-light (no torch, no transformers at import):
`amps_eval.plugin` reads the registry while lmms-eval loads its entry points.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from amps_eval import anatomy


class WrongFamilyError(ValueError):
    """A checkpoint belongs to another family than the model asked for (or to none we know)."""


@dataclass(frozen=True)
class OrganismSpec:
    """How an organism of this family is built from `OrganismSettings` (see amps_eval.organism)."""

    folder: str  # the shipped organism's folder name (reports show it as the model name)
    vision_overrides: Callable[[Any], dict[str, Any]]  # OrganismSettings -> the builder's vision_config
    image_overrides: Callable[[Any], dict[str, Any]] = lambda s: {}  # OrganismSettings -> other builder arguments
    settings_overrides: tuple[tuple[str, Any], ...] = ()  # its organism's defaults that differ


DEFAULT_MLP_HIDDEN = 100
"""L2S's MLP width where no family names one (the L2S paper's width for LLaVA; docs/models.md)."""

QWEN_MLP_HIDDEN = 400
QWEN_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
"""The Qwen-VL model types, which get the L2S paper's width for Qwen (400) under any lmms-eval name."""


@dataclass(frozen=True)
class FamilyAdapter:
    """One model family, or (``model_types == ()``) any model: `amps_auto`. Subclass it to override a hook."""

    name: str  # the family's name ("qwen2_5_vl", "auto")
    display: str  # for messages: "Qwen2.5-VL"
    lmms_model: str  # the lmms-eval model name of its wrapper ("amps_qwen")
    model_types: tuple[str, ...] = ()  # accepted config.model_type values; () accepts any
    model_class: str | None = None  # transformers class name; None: the class transformers registers
    builder: str | None = None  # "module:function" writing a tiny checkpoint folder (tests, the offline demo)
    default_mlp_hidden: int = DEFAULT_MLP_HIDDEN  # L2S's hidden width (amps-eval fit --hidden)
    image_kwargs: tuple[str, ...] = ()  # image-processor bounds a run may set (model args of the wrapper)
    wrapper_class_name: str = ""  # the lmms-eval wrapper's class name (amps_eval.model_wrappers.registered)
    organism: OrganismSpec | None = None
    # model_type -> the family file whose hooks serve a checkpoint of that type (`amps_auto`'s Mistral3, SmolVLM)
    type_hooks: dict[str, "FamilyAdapter"] = field(default_factory=dict, compare=False)
    extra: dict = field(default_factory=dict, compare=False)

    def for_model_type(self, model_type: str | None) -> "FamilyAdapter":
        """The adapter whose hooks serve a checkpoint of ``model_type``: the family file registered for
        it in ``type_hooks``, else this adapter."""
        return self.type_hooks.get(model_type, self) if model_type else self

    def for_checkpoint(self, path: str | os.PathLike) -> "FamilyAdapter":
        """`for_model_type` of the checkpoint ``path`` (its config is read only when some type has hooks)."""
        if not self.type_hooks:
            return self
        from transformers import AutoConfig

        return self.for_model_type(getattr(AutoConfig.from_pretrained(os.fspath(path)), "model_type", None))

    def mlp_hidden(self, model_type: str | None) -> int:
        """L2S's MLP width for a checkpoint of ``model_type``: the family's ``default_mlp_hidden``; for
        `amps_auto`, 400 for the Qwen-VL types (the L2S paper's width for Qwen) and 100 otherwise."""
        if self.model_types:
            return self.default_mlp_hidden
        return QWEN_MLP_HIDDEN if model_type in QWEN_MODEL_TYPES else DEFAULT_MLP_HIDDEN

    def accepts(self, model_type: str | None) -> bool:
        return not self.model_types or model_type in self.model_types

    # --- loading ------------------------------------------------------------------------------
    def load_model_class(self, config: Any = None) -> type:
        """The transformers class: ``model_class`` when the family names one, else the class
        transformers registers for ``config`` as an image-text-to-text model."""
        transformers = importlib.import_module("transformers")
        if self.model_class:
            return getattr(transformers, self.model_class)
        if config is None:
            raise ValueError(f"{self.display}: the model class follows the checkpoint's config; pass it")
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

        name = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.get(config.model_type)
        if name and hasattr(transformers, name):
            return getattr(transformers, name)
        raise WrongFamilyError(f"model_type {config.model_type!r} is not an image-text-to-text model transformers "
                               "registers (AutoModelForImageTextToText); amps-eval cannot run it")

    def load_model(self, pretrained: str | os.PathLike, **kwargs: Any):
        """The checkpoint's model (``trust_remote_code`` refused: only code transformers ships runs)."""
        if kwargs.pop("trust_remote_code", False):
            raise ValueError("trust_remote_code is refused: amps-eval runs only models whose code transformers "
                             "ships")
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(pretrained)
        model = self.load_model_class(config).from_pretrained(pretrained, **kwargs)
        self.for_model_type(config.model_type).patch_model(model)
        return model

    def patch_model(self, model: Any) -> None:
        """Fix a loaded model where transformers' own code does not serve amps-eval (default: nothing)."""

    def processor_class(self, path: str | os.PathLike) -> type:
        """The processor class to build (its media slots are dropped by `amps_eval.processors`)."""
        from amps_eval.processors import auto_processor_class

        return auto_processor_class(path)

    def fill_processor_dict(self, path: str, processor_dict: dict[str, Any]) -> None:
        """Complete the processor arguments read from ``path`` (default: nothing to add)."""

    def load_processor(self, pretrained: str | os.PathLike, **image_kwargs: Any):
        from amps_eval.processors import load_processor

        hooks = self.for_checkpoint(pretrained)
        return load_processor(pretrained, hooks.processor_class(pretrained),
                              fill_processor_dict=hooks.fill_processor_dict, **image_kwargs)

    # --- model structure (the generic rules of amps_eval.anatomy) -----------------------------
    # Each method first hands the question to the family file registered for the model's type
    # (``type_hooks``), so an override takes effect whichever adapter is asked; the steering, fit and
    # MCS code ask `amps_eval.families.adapter_for(model)`, never `amps_eval.anatomy` directly.
    def _hooks_for(self, model: Any) -> "FamilyAdapter":
        return self.for_model_type(getattr(getattr(model, "config", None), "model_type", None))

    def image_token_id(self, config: Any, processor: Any = None) -> int:
        hooks = self.for_model_type(getattr(config, "model_type", None))
        if hooks is not self:
            return hooks.image_token_id(config, processor)
        return anatomy.image_token_id(config, processor)

    def decoder_layers(self, model: Any):
        """The decoder layers (an ``nn.ModuleList``) that steering hooks and captures attach to."""
        hooks = self._hooks_for(model)
        return hooks.decoder_layers(model) if hooks is not self else anatomy.decoder_layers(model)

    def hidden_size(self, model: Any) -> int:
        """The width of those layers' outputs (steering vectors, L2S inputs)."""
        hooks = self._hooks_for(model)
        return hooks.hidden_size(model) if hooks is not self else anatomy.hidden_size(model)

    def prompt_position_ids(self, model: Any, inputs: dict[str, Any]):
        """Position ids of a left-padded prompt for a pass against a cache (the MCS, shared prefixes)."""
        hooks = self._hooks_for(model)
        return hooks.prompt_position_ids(model, inputs) if hooks is not self else anatomy.position_ids(model, inputs)

    def kv_refusal(self, model: Any, prompt_length: int | None = None) -> str | None:
        """Why the MCS cannot run on ``model`` (prompts of ``prompt_length`` tokens), or None."""
        hooks = self._hooks_for(model)
        return hooks.kv_refusal(model, prompt_length) if hooks is not self else anatomy.kv_refusal(model, prompt_length)

    def check_kv_support(self, model: Any, prompt_length: int | None = None) -> None:
        """Raise `amps_eval.anatomy.KVSupportError` with `kv_refusal`'s message (not a hook: override
        ``kv_refusal``)."""
        reason = self.kv_refusal(model, prompt_length)
        if reason is not None:
            raise anatomy.KVSupportError(reason)

    # --- tiny checkpoints ---------------------------------------------------------------------
    def build_tiny(self, out_dir: str | os.PathLike, seed: int = 0, extra_corpus=(), **overrides: Any) -> Path:
        if not self.builder:
            raise ValueError(f"{self.display} has no tiny test-model builder")
        module, name = self.builder.split(":")
        return getattr(importlib.import_module(module), name)(out_dir, seed=seed, extra_corpus=extra_corpus, **overrides)
