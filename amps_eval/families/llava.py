"""LLaVA-1.5 in the llava-hf format through ``LlavaForConditionalGeneration``: lmms-eval model ``amps_llava``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

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


def build_tiny_llava(
    out_dir: str | os.PathLike, seed: int = 0, extra_corpus: Sequence[str] = (), **overrides: Any
) -> Path:
    """Write a tiny ``LlavaForConditionalGeneration`` checkpoint (CLIP tower + Llama LM) to ``out_dir``.

    ``extra_corpus``: more text for the locally trained tokenizer (e.g. whole answer words).
    ``overrides``: text-config fields (``num_hidden_layers=6``), ``text_config={...}``,
    ``vision_config={...}`` (e.g. ``{"image_size": 84}``: the image gives (84/14)^2 = 36 tokens).
    """
    from transformers import GenerationConfig, LlavaConfig, LlavaForConditionalGeneration

    from amps_eval.tiny_models import (_CLIP_MEAN, _CLIP_STD, _LLAVA_TEXT_DEFAULTS, _LLAVA_VISION_DEFAULTS,
                                       LLAVA_CHAT_TEMPLATE, _build_model, _llava_tokenizer, _padded_vocab,
                                       _split_overrides, _write_json)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text, vision, _ = _split_overrides(overrides, _LLAVA_TEXT_DEFAULTS, ())
    vision = {**_LLAVA_VISION_DEFAULTS, **vision}

    tokenizer = _llava_tokenizer(extra_corpus)
    bos, eos, pad = (tokenizer.convert_tokens_to_ids(t) for t in ("<s>", "</s>", "<pad>"))
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    num_patches = (vision["image_size"] // vision["patch_size"]) ** 2

    config = LlavaConfig(
        text_config={
            "model_type": "llama",
            **text,
            "vocab_size": _padded_vocab(len(tokenizer)),
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": pad,
        },
        vision_config={"model_type": "clip_vision_model", **vision},
        image_token_index=image_token_id,
        image_seq_length=num_patches,  # "default" strategy drops CLS: one token per patch
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    model = _build_model(LlavaForConditionalGeneration, config, seed)
    model.generation_config = GenerationConfig(do_sample=False, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    model.save_pretrained(out_dir)

    tokenizer.save_pretrained(out_dir)
    # preprocessor_config.json and processor_config.json as llava-hf/llava-1.5-7b-hf ships them
    # (there 336 pixels): resize the short side, centre-crop a square.
    side = vision["image_size"]
    _write_json(
        out_dir / "preprocessor_config.json",
        {
            "crop_size": {"height": side, "width": side},
            "do_center_crop": True,
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": _CLIP_MEAN,
            "image_processor_type": "CLIPImageProcessor",
            "image_std": _CLIP_STD,
            "processor_class": "LlavaProcessor",
            "resample": 3,  # bicubic
            "rescale_factor": 1 / 255,
            "size": {"shortest_edge": side},
        },
    )
    _write_json(
        out_dir / "processor_config.json",
        {
            "image_token": "<image>",
            "num_additional_image_tokens": 1,  # CLIP's CLS token
            "patch_size": vision["patch_size"],
            "processor_class": "LlavaProcessor",
            "vision_feature_select_strategy": "default",
        },
    )
    _write_json(out_dir / "chat_template.json", {"chat_template": LLAVA_CHAT_TEMPLATE})
    return out_dir


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
    builder="amps_eval.families.llava:build_tiny_llava",
    default_mlp_hidden=100,
    wrapper_class_name="AmpsLlava",
    organism=OrganismSpec(
        folder="amps-organism-llava-1.5",
        vision_overrides=_organism_vision,
        # its CLIP tower learns relative positions and arrow directions more slowly than Qwen's
        settings_overrides=(("vision_pretrain_steps", 1200), ("steps", 1200)),
    ),
)
