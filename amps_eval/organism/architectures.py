"""The architectures an organism can have: Qwen2.5-VL and LLaVA-1.5, as a small validated table.

Each entry names what differs between the two: the checkpoint builder (``amps_eval.testing.
tiny_models``, which writes the real config, tokenizer, image processor and chat template), the
model class, the processor kind, the lmms-eval wrapper, the shipped folder, and how the organism's
sizes map onto the config. Everything else (design, training, evaluation) is shared code.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class OrganismArchitecture:
    name: str  # the processor kind of amps_eval.processors ("qwen2_5_vl", "llava")
    lmms_model: str  # the lmms-eval model name of its wrapper
    folder: str  # the shipped organism's folder name (reports show it as the model name)
    model_class: str  # transformers class name
    wrapper: str  # "module:Class" of the wrapper
    builder: str  # name of the amps_eval.testing.tiny_models builder
    vision_overrides: Callable[[Any], dict[str, Any]]  # OrganismSettings -> the builder's vision_config
    image_overrides: Callable[[Any], dict[str, Any]]  # OrganismSettings -> other builder arguments
    settings_overrides: tuple[tuple[str, Any], ...] = ()  # its organism's defaults that differ

    def load_model_class(self) -> type:
        return getattr(importlib.import_module("transformers"), self.model_class)

    def load_wrapper_class(self) -> type:
        module, name = self.wrapper.split(":")
        return getattr(importlib.import_module(module), name)

    def build_checkpoint(self, out_dir: Path, settings: Any, extra_corpus: list[str]) -> Path:
        """The untrained checkpoint folder (hub layout) for ``settings``."""
        from amps_eval.testing import tiny_models

        build = getattr(tiny_models, self.builder)
        overrides = {
            "hidden_size": settings.hidden_size,
            "intermediate_size": settings.intermediate_size,
            "num_hidden_layers": settings.num_hidden_layers,
            "num_attention_heads": settings.num_attention_heads,
            "num_key_value_heads": settings.num_key_value_heads,
            "vision_config": self.vision_overrides(settings),
            **self.image_overrides(settings),
        }
        return build(out_dir, seed=settings.seed, extra_corpus=extra_corpus, **overrides)


def _qwen_vision(s: Any) -> dict[str, Any]:
    return {
        "hidden_size": s.vision_hidden_size,
        "intermediate_size": s.vision_intermediate_size,
        "depth": s.vision_depth,
        "num_heads": s.vision_num_heads,
        "fullatt_block_indexes": [s.vision_depth - 1],
    }


def _llava_vision(s: Any) -> dict[str, Any]:
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


ARCHITECTURES: dict[str, OrganismArchitecture] = {
    "qwen2_5_vl": OrganismArchitecture(
        name="qwen2_5_vl", lmms_model="amps_qwen", folder="amps-organism-qwen2.5-vl",
        model_class="Qwen2_5_VLForConditionalGeneration", wrapper="amps_eval.model_wrappers.qwen:AmpsQwen",
        builder="build_tiny_qwen", vision_overrides=_qwen_vision,
        image_overrides=lambda s: {"min_pixels": s.pixels * s.pixels, "max_pixels": s.pixels * s.pixels},
    ),
    "llava": OrganismArchitecture(
        name="llava", lmms_model="amps_llava", folder="amps-organism-llava-1.5",
        model_class="LlavaForConditionalGeneration", wrapper="amps_eval.model_wrappers.llava:AmpsLlava",
        builder="build_tiny_llava", vision_overrides=_llava_vision, image_overrides=lambda s: {},
        # its CLIP tower learns relative positions and arrow directions more slowly than Qwen's
        settings_overrides=(("vision_pretrain_steps", 1200), ("steps", 1200)),
    ),
}


def architecture(name: str) -> OrganismArchitecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown organism architecture {name!r}; expected one of {tuple(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def architecture_of_model(lmms_model: str) -> OrganismArchitecture:
    """The organism architecture served by an lmms-eval model name (amps_qwen / amps_llava)."""
    for arch in ARCHITECTURES.values():
        if arch.lmms_model == lmms_model:
            return arch
    raise ValueError(f"no organism for model {lmms_model!r}; organisms exist for "
                     f"{tuple(a.lmms_model for a in ARCHITECTURES.values())}")
