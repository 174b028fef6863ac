"""Qwen2-VL (any size) through ``Qwen2VLForConditionalGeneration``: lmms-eval model ``amps_qwen2``.

The L2S paper's model (the AMPS paper prints a "Qwen2VL-7B" row in its Table 1). Same processor
layout, chat template and 3-D rope positions as Qwen2.5-VL, except that its ``get_rope_index`` has
no ``second_per_grid_ts`` (no absolute time for videos) and its vision tower is the older one
(``embed_dim`` / ``mlp_ratio``, no window attention).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from amps_eval.families.base import FamilyAdapter

# the tiny test model's vision tower (``vision_config`` of Qwen2VLConfig)
TINY_VISION = {"depth": 2, "embed_dim": 32, "mlp_ratio": 2, "num_heads": 2, "patch_size": 14, "spatial_merge_size": 2,
               "temporal_patch_size": 2}


def build_tiny_qwen2_vl(out_dir: str | os.PathLike, seed: int = 0, extra_corpus: Sequence[str] = (),
                        **overrides: Any) -> Path:
    """A tiny ``Qwen2VLForConditionalGeneration`` checkpoint in the layout of ``Qwen/Qwen2-VL-7B-Instruct``
    (see `amps_eval.tiny_models.build_tiny_qwen_family`)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from amps_eval.tiny_models import build_tiny_qwen_family

    return build_tiny_qwen_family(out_dir, seed, extra_corpus, overrides, config_class=Qwen2VLConfig,
                                  model_class=Qwen2VLForConditionalGeneration, vision_defaults=TINY_VISION,
                                  vision_out_key="hidden_size", processor_class="Qwen2VLProcessor")


FAMILY = FamilyAdapter(
    name="qwen2_vl",
    display="Qwen2-VL",
    lmms_model="amps_qwen2",
    model_types=("qwen2_vl",),
    model_class="Qwen2VLForConditionalGeneration",
    builder="amps_eval.families.qwen2_vl:build_tiny_qwen2_vl",
    default_mlp_hidden=400,  # the L2S paper's width for Qwen2-VL
    image_kwargs=("min_pixels", "max_pixels"),
    wrapper_class_name="AmpsQwen2",
)
