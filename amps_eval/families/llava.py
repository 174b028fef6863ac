"""LLaVA-1.5 in the llava-hf format through ``LlavaForConditionalGeneration``: lmms-eval model ``amps_llava``."""

from __future__ import annotations

from typing import Any

from amps_eval.families.base import FamilyAdapter, OrganismSpec


class LlavaAdapter(FamilyAdapter):
    def fill_processor_dict(self, path: str, processor_dict: dict[str, Any]) -> None:
        """Older LLaVA folders lack ``processor_config.json``; without ``patch_size`` the processor
        cannot expand ``<image>`` into one placeholder per visual token. Take it from config.json."""
        if processor_dict.get("patch_size") is not None:
            return
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path)
        processor_dict["patch_size"] = config.vision_config.patch_size
        processor_dict.setdefault("vision_feature_select_strategy", config.vision_feature_select_strategy)
        processor_dict.setdefault("num_additional_image_tokens", 1)  # CLIP's CLS token


def _organism_vision(s: Any) -> dict[str, Any]:
    # LLaVA reads the second-to-last CLIP layer (vision_feature_layer=-2), as llava-1.5 does: the
    # tower has one layer more than the organism uses.
    return {
        "hidden_size": s.vision_hidden_size,
        "intermediate_size": s.vision_intermediate_size,
        "num_hidden_layers": s.vision_depth + 1,
        "num_attention_heads": s.vision_num_heads,
        "projection_dim": s.vision_hidden_size,
        "image_size": s.pixels,
    }


FAMILY = LlavaAdapter(
    name="llava",
    display="LLaVA",
    lmms_model="amps_llava",
    model_types=("llava",),
    model_class="LlavaForConditionalGeneration",
    builder="amps_eval.tiny_models:build_tiny_llava",
    default_mlp_hidden=100,
    wrapper_class_name="AmpsLlava",
    organism=OrganismSpec(
        folder="amps-organism-llava-1.5",
        vision_overrides=_organism_vision,
        # its CLIP tower learns relative positions and arrow directions more slowly than Qwen's
        settings_overrides=(("vision_pretrain_steps", 1200), ("steps", 1200)),
    ),
)
