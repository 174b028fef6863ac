"""Qwen2.5-VL (any size) through ``Qwen2_5_VLForConditionalGeneration``: lmms-eval model ``amps_qwen``.

No hook differs from the generic adapter (processor without its video slot, 3-D mrope positions from
the model's ``get_rope_index``): the file names the lmms-eval model, the L2S width and the organism."""

from __future__ import annotations

from typing import Any

from amps_eval.families.base import FamilyAdapter, OrganismSpec


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
    builder="amps_eval.tiny_models:build_tiny_qwen",
    default_mlp_hidden=400,  # the L2S paper's width for Qwen
    image_kwargs=("min_pixels", "max_pixels"),
    wrapper_class_name="AmpsQwen",
    organism=OrganismSpec(
        folder="amps-organism-qwen2.5-vl",
        vision_overrides=_organism_vision,
        image_overrides=lambda s: {"min_pixels": s.pixels * s.pixels, "max_pixels": s.pixels * s.pixels},
    ),
)
