"""Qwen2.5-VL (any size) through ``Qwen2_5_VLForConditionalGeneration``: lmms-eval model ``amps_qwen``."""

from __future__ import annotations

from typing import Any

from amps_eval.families.base import FamilyAdapter, OrganismSpec, mrope_position_ids


class Qwen2_5_VLAdapter(FamilyAdapter):
    def processor_class(self) -> type:
        from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor

        from amps_eval.families.no_video import image_only

        return image_only(Qwen2_5_VLProcessor)

    def prompt_position_ids(self, model: Any, inputs: dict[str, Any]):
        return mrope_position_ids(model, inputs, ("second_per_grid_ts",))


def _organism_vision(s: Any) -> dict[str, Any]:
    return {
        "hidden_size": s.vision_hidden_size,
        "intermediate_size": s.vision_intermediate_size,
        "depth": s.vision_depth,
        "num_heads": s.vision_num_heads,
        "fullatt_block_indexes": [s.vision_depth - 1],
    }


FAMILY = Qwen2_5_VLAdapter(
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
