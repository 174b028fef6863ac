"""Qwen2.5-VL (any size) through ``Qwen2_5_VLForConditionalGeneration``: lmms-eval model ``amps_qwen``.

No hook differs from the generic adapter (processor without its video slot, 3-D mrope positions from
the model's ``get_rope_index``): the file names the lmms-eval model, the L2S width and the organism."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from amps_eval.families.base import FamilyAdapter, OrganismSpec


def build_tiny_qwen(
    out_dir: str | os.PathLike, seed: int = 0, extra_corpus: Sequence[str] = (), **overrides: Any
) -> Path:
    """Write a tiny ``Qwen2_5_VLForConditionalGeneration`` checkpoint to ``out_dir``.

    ``extra_corpus``: more text for the locally trained tokenizer (e.g. whole answer words).

    ``overrides``: text-config fields (``num_hidden_layers=6``), ``text_config={...}``,
    ``vision_config={...}``, and ``min_pixels`` / ``max_pixels`` for the image processor.
    """
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from amps_eval.tiny_models import _QWEN_VISION_DEFAULTS, build_tiny_qwen_family

    return build_tiny_qwen_family(out_dir, seed, extra_corpus, overrides, config_class=Qwen2_5_VLConfig,
                                  model_class=Qwen2_5_VLForConditionalGeneration, vision_defaults=_QWEN_VISION_DEFAULTS,
                                  vision_out_key="out_hidden_size", processor_class="Qwen2_5_VLProcessor")


def _organism_vision(s: Any) -> dict[str, Any]:
    return {
        "hidden_size": s.vision_hidden_size,
        "intermediate_size": s.vision_intermediate_size,
        "depth": s.vision_depth,
        "num_heads": s.vision_num_heads,
        "fullatt_block_indexes": [s.vision_depth - 1],
    }


FAMILY = FamilyAdapter(
    name="qwen2_5_vl",
    display="Qwen2.5-VL",
    lmms_model="amps_qwen",
    model_types=("qwen2_5_vl",),
    model_class="Qwen2_5_VLForConditionalGeneration",
    builder="amps_eval.families.qwen2_5_vl:build_tiny_qwen",
    default_mlp_hidden=400,  # the L2S paper's width for Qwen
    image_kwargs=("min_pixels", "max_pixels"),
    wrapper_class_name="AmpsQwen",
    organism=OrganismSpec(
        folder="amps-organism-qwen2.5-vl",
        vision_overrides=_organism_vision,
        image_overrides=lambda s: {"min_pixels": s.pixels * s.pixels, "max_pixels": s.pixels * s.pixels},
    ),
)
