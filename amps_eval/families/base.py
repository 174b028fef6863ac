"""What a model family is to amps-eval: one `FamilyAdapter` per family (Qwen2.5-VL, LLaVA-1.5, ...).

Everything that differs between families lives in its adapter (one file in this package): the
lmms-eval model name, the ``config.model_type`` values it accepts, the transformers model class, how
its processor is built, the image token, the decoder layers and hidden size, the position ids of a
pass against a cache, the L2S MLP width, the tiny test-model builder and the organism's settings.
The rest of the code (wrappers, steering, MCS, fit, the study, the report) asks the adapter.

This module and the family modules must stay import-light (no torch, no transformers at import):
`amps_eval.plugin` reads the registry while lmms-eval loads its entry points.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


class WrongFamilyError(ValueError):
    """A checkpoint belongs to another family than the model asked for (or to none we know)."""


@dataclass(frozen=True)
class OrganismSpec:
    """How an organism of this family is built from `OrganismSettings` (see amps_eval.organism)."""

    folder: str  # the shipped organism's folder name (reports show it as the model name)
    vision_overrides: Callable[[Any], dict[str, Any]]  # OrganismSettings -> the builder's vision_config
    image_overrides: Callable[[Any], dict[str, Any]] = lambda s: {}  # OrganismSettings -> other builder arguments
    settings_overrides: tuple[tuple[str, Any], ...] = ()  # its organism's defaults that differ


@dataclass(frozen=True)
class FamilyAdapter:
    """One model family. Subclass it to override a hook (processor arguments, position ids, layers)."""

    name: str  # the family's name, also the processor kind of amps_eval.processors ("qwen2_5_vl")
    display: str  # for messages: "Qwen2.5-VL"
    lmms_model: str  # the lmms-eval model name of its wrapper ("amps_qwen")
    model_types: tuple[str, ...]  # accepted config.model_type values
    model_class: str  # transformers class name
    builder: str  # "module:function" writing a tiny checkpoint folder (tests, the offline demo)
    default_mlp_hidden: int = 100  # L2S's hidden width for this family (amps-eval fit --hidden)
    image_kwargs: tuple[str, ...] = ()  # image-processor bounds a run may set (model args of the wrapper)
    layers_path: str | None = None  # attribute path of the decoder ModuleList when the generic lookup misses it
    wrapper_class_name: str = ""  # the lmms-eval wrapper's class name (amps_eval.model_wrappers)
    organism: OrganismSpec | None = None
    extra: dict = field(default_factory=dict, compare=False)

    # --- classes ------------------------------------------------------------------------------
    def load_model_class(self) -> type:
        return getattr(importlib.import_module("transformers"), self.model_class)

    def processor_class(self) -> type:
        """The processor class `amps_eval.processors.load_processor` builds."""
        raise NotImplementedError

    def fill_processor_dict(self, path: str, processor_dict: dict[str, Any]) -> None:
        """Complete the processor arguments read from ``path`` (default: nothing to add)."""

    def load_model(self, pretrained: str | os.PathLike, **kwargs: Any):
        return self.load_model_class().from_pretrained(pretrained, **kwargs)

    def load_processor(self, pretrained: str | os.PathLike, **image_kwargs: Any):
        from amps_eval.processors import load_processor

        return load_processor(pretrained, self.name, **image_kwargs)

    # --- model structure ----------------------------------------------------------------------
    def image_token_id(self, config: Any) -> int:
        for name in ("image_token_id", "image_token_index"):
            value = getattr(config, name, None)
            if value is not None:
                return int(value)
        raise AttributeError(f"{type(config).__name__} has no image token id")

    def prompt_position_ids(self, model: Any, inputs: dict[str, Any]):
        """Position ids of a left-padded prompt for a pass against a cache: [B, T] (``generate``'s
        ``cumsum(attention_mask) - 1``); mrope families override it with their 3-D positions."""
        import torch

        input_ids = inputs["input_ids"]
        attention_mask = inputs.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        pos = attention_mask.long().cumsum(-1) - 1
        return pos.masked_fill(attention_mask == 0, 0)

    # --- tiny checkpoints ---------------------------------------------------------------------
    def build_tiny(self, out_dir: str | os.PathLike, seed: int = 0, extra_corpus=(), **overrides: Any) -> Path:
        module, name = self.builder.split(":")
        return getattr(importlib.import_module(module), name)(out_dir, seed=seed, extra_corpus=extra_corpus, **overrides)


def mrope_position_ids(model: Any, inputs: dict[str, Any], rope_kwargs: tuple[str, ...] = ()):
    """3-D (temporal, height, width) rope positions [3, B, T] of a left-padded prompt from the
    model's ``get_rope_index`` (Qwen2-VL, Qwen2.5-VL); ``rope_kwargs``: the further input keys the
    family's ``get_rope_index`` takes (Qwen2.5-VL: ``second_per_grid_ts``)."""
    import torch

    input_ids = inputs["input_ids"]
    attention_mask = inputs.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    cfg = model.config
    mm = inputs.get("mm_token_type_ids")
    if mm is None:
        mm = torch.zeros_like(input_ids, dtype=torch.int)
        for tok, kind in (("image_token_id", 1), ("video_token_id", 2)):
            tid = getattr(cfg, tok, None)
            if tid is not None:
                mm = mm.masked_fill(input_ids == tid, kind)
    image_grid_thw = inputs.get("image_grid_thw")
    video_grid_thw = inputs.get("video_grid_thw")
    if image_grid_thw is None and video_grid_thw is None:
        pos = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        return pos.unsqueeze(0).expand(3, -1, -1).contiguous()
    inner = getattr(model, "model", model)
    pos, _ = inner.get_rope_index(
        input_ids,
        mm_token_type_ids=mm,
        image_grid_thw=image_grid_thw,
        video_grid_thw=video_grid_thw,
        attention_mask=attention_mask,
        **{k: inputs.get(k) for k in rope_kwargs},
    )
    return pos
