"""Tiny random checkpoints of the vision-language families ``amps_auto`` serves with no family file,
built offline (tokenizer trained here, random weights) in the hub layout, for the tests of the
generic adapter (`tests/test_auto_families.py`).

One shared builder, :func:`build_tiny_vlm`, writes any of them: a byte-level BPE tokenizer trained on
the local corpus (`amps_eval.tiny_models.corpus`) with the family's special tokens, a generic chat
template that writes the family's image marker, the family's PIL image processor at a tiny size, the
family's processor (saved by ``save_pretrained``), and the config of the family's model class with a
2-layer text model and a 1-layer vision tower. What differs per family is one small `TinySpec`
(`SPECS`): sub-configs, special tokens and image-processor sizes, no code.

Qwen2.5-VL, Qwen2-VL and LLaVA-1.5 keep their hub-faithful builders (`amps_eval.tiny_models`,
`amps_eval.families.qwen2_vl`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

__all__ = ["SPECS", "TinySpec", "build_tiny_vlm"]

HIDDEN = 64
TEXT = {"hidden_size": HIDDEN, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 4096}
SIGLIP = {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
          "num_attention_heads": 2, "image_size": 28, "patch_size": 14}
CLIP = {**SIGLIP, "model_type": "clip_vision_model", "projection_dim": 32}
QWEN_TOKENS = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>", "vision_start_token": "<|vision_start|>",
               "vision_end_token": "<|vision_end|>"}


@dataclass(frozen=True)
class TinySpec:
    """What one family's tiny checkpoint needs besides the shared pieces."""

    image_mark: str  # what the chat template writes for an image (the processor expands it)
    tokens: dict[str, str]  # named special tokens (tokenizer attributes: image_token, boi_token, ...)
    vision: dict[str, Any]  # the vision sub-config
    image_processor: dict[str, Any] = field(default_factory=dict)  # PIL image-processor arguments
    processor: dict[str, Any] = field(default_factory=dict)  # processor arguments
    config: dict[str, Any] = field(default_factory=dict)  # top-level config fields
    text: dict[str, Any] = field(default_factory=dict)  # text-config fields beyond `TEXT`
    token_ids: dict[str, str] = field(default_factory=dict)  # config field -> token name whose id it takes
    text_token_ids: dict[str, str] = field(default_factory=dict)  # same, in the text config


_LLAVA_IDS = {"image_token_index": "image_token"}
_PINPOINTS = [[28, 28], [28, 56], [56, 28]]

SPECS: dict[str, TinySpec] = {
    "llava_next": TinySpec(
        "<image>", {"image_token": "<image>"}, CLIP,
        image_processor={"size": {"shortest_edge": 28}, "crop_size": {"height": 28, "width": 28},
                         "image_grid_pinpoints": _PINPOINTS},
        processor={"patch_size": 14, "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1},
        config={"image_grid_pinpoints": _PINPOINTS, "vision_feature_select_strategy": "default",
                "vision_feature_layer": -1}, token_ids=_LLAVA_IDS),
    "llava_onevision": TinySpec(
        "<image>", {"image_token": "<image>", "video_token": "<video>"}, SIGLIP,
        image_processor={"size": {"height": 28, "width": 28}, "image_grid_pinpoints": _PINPOINTS},
        processor={"num_image_tokens": 4, "vision_feature_select_strategy": "full"},
        config={"image_grid_pinpoints": _PINPOINTS, "vision_feature_select_strategy": "full",
                "vision_feature_layer": -1, "vision_aspect_ratio": "anyres_max_9"},
        token_ids={"image_token_index": "image_token", "video_token_index": "video_token"}),
    "qwen3_vl": TinySpec(
        "<|vision_start|><|image_pad|><|vision_end|>", QWEN_TOKENS,
        {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": HIDDEN,
         "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 64,
         "deepstack_visual_indexes": [0]},
        image_processor={"patch_size": 16, "merge_size": 2, "temporal_patch_size": 2,
                         "size": {"shortest_edge": 32 * 32, "longest_edge": 64 * 64}},
        text={"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                                  "mrope_interleaved": True}},
        token_ids={"image_token_id": "image_token", "video_token_id": "video_token",
                   "vision_start_token_id": "vision_start_token", "vision_end_token_id": "vision_end_token"}),
    "gemma3": TinySpec(
        "<start_of_image>", {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                             "eoi_token": "<end_of_image>"},
        {**SIGLIP, "image_size": 56},
        image_processor={"size": {"height": 56, "width": 56}},
        processor={"image_seq_length": 4},
        config={"mm_tokens_per_image": 4},
        text={"sliding_window": 512, "query_pre_attn_scalar": 16,
              "layer_types": ["sliding_attention", "full_attention"]},
        token_ids={"image_token_index": "image_token", "boi_token_index": "boi_token", "eoi_token_index": "eoi_token"}),
    "paligemma": TinySpec(
        "", {"image_token": "<image>"}, {**SIGLIP, "projection_dim": HIDDEN},
        image_processor={"size": {"height": 28, "width": 28}, "image_seq_length": 4},
        config={"projection_dim": HIDDEN}, text={"model_type": "gemma"},
        token_ids={"image_token_index": "image_token"}),
    "idefics3": TinySpec(
        "<image>", {"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
                    "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"},
        {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
         "image_size": 56, "patch_size": 14},
        image_processor={"size": {"longest_edge": 56}, "max_image_size": {"longest_edge": 56},
                         "do_image_splitting": False},
        processor={"image_seq_len": 4}, config={"scale_factor": 2},
        text={"model_type": "llama"}, token_ids={"image_token_id": "image_token"}),
    "internvl": TinySpec(
        "<IMG_CONTEXT>", {"context_image_token": "<IMG_CONTEXT>", "start_image_token": "<img>",
                          "end_image_token": "</img>", "video_token": "<video>"},
        {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
         "image_size": [28, 28], "patch_size": [14, 14]},
        image_processor={"size": {"height": 28, "width": 28}, "crop_to_patches": False},
        processor={"image_seq_length": 1}, config={"downsample_ratio": 0.5, "vision_feature_layer": -1},
        text={"model_type": "qwen2"}, token_ids={"image_token_id": "context_image_token"}),
    "mistral3": TinySpec(
        "[IMG]", {"image_token": "[IMG]", "image_break_token": "[IMG_BREAK]", "image_end_token": "[IMG_END]"},
        {"model_type": "pixtral", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
         "num_attention_heads": 2, "head_dim": 16, "image_size": 56, "patch_size": 14},
        image_processor={"size": {"longest_edge": 56}, "patch_size": 14},
        processor={"patch_size": 14, "spatial_merge_size": 2},
        config={"spatial_merge_size": 2, "vision_feature_layer": -1},
        text={"model_type": "mistral"}, token_ids={"image_token_index": "image_token"}),
    "llama4": TinySpec(  # its image processor is torchvision-only in 5.24 (see build_tiny_vlm)
        "<|image|>", {"image_token": "<|image|>", "patch_token": "<|patch|>", "start_of_image_token": "<|image_start|>",
                      "end_of_image_token": "<|image_end|>", "tile_x_separator_token": "<|tile_x_separator|>",
                      "tile_y_separator_token": "<|tile_y_separator|>"},
        {"hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
         "image_size": 28, "patch_size": 14, "vision_output_dim": 32, "projector_input_dim": 32,
         "projector_output_dim": 32, "pixel_shuffle_ratio": 0.5},
        image_processor={"size": {"height": 28, "width": 28}, "max_patches": 1},
        processor={"patch_size": 14, "pixel_shuffle_ratio": 0.5},
        text={"intermediate_size_mlp": 128, "num_local_experts": 1, "moe_layers": [], "attention_chunk_size": 8192,
              "no_rope_layers": [1, 1]},
        token_ids={"image_token_index": "patch_token", "boi_token_index": "start_of_image_token",
                   "eoi_token_index": "end_of_image_token"}),
}
SPECS["smolvlm"] = TinySpec(**{**SPECS["idefics3"].__dict__, "tokens": {**SPECS["idefics3"].tokens,
                                                                        "video_token": "<video>"}})

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}IMAGE_MARK"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""A generic ChatML template; ``IMAGE_MARK`` becomes the family's image marker."""

_BASE_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<bos>")


def _tokenizer(spec: TinySpec, extra_corpus: Sequence[str]):
    """Byte-level BPE trained on the local corpus, with ChatML and the family's named special tokens."""
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    from amps_eval.tiny_models import _BPE_VOCAB_SIZE, _train_bpe

    vocab, merges = _train_bpe(Qwen2Tokenizer().backend_tokenizer, _BPE_VOCAB_SIZE, special_tokens=[],
                               extra_corpus=extra_corpus, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    vocab = dict(vocab)
    named = dict(spec.tokens)
    for token in (*_BASE_TOKENS, *named.values()):
        vocab.setdefault(token, len(vocab))
    return Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token="<bos>", eos_token="<|im_end|>",
                          pad_token="<|endoftext|>", errors="replace", extra_special_tokens=named,
                          model_max_length=32768)


def build_tiny_vlm(model_type: str, out_dir: str | os.PathLike, seed: int = 0, extra_corpus: Sequence[str] = (),
                   **text_overrides: Any) -> Path:
    """Write a tiny random checkpoint of ``model_type`` (a key of `SPECS`) to ``out_dir``, hub layout."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, GenerationConfig
    from transformers.models.auto.image_processing_auto import (IMAGE_PROCESSOR_MAPPING_NAMES,
                                                                get_image_processor_class_from_name)

    from amps_eval.families import GENERIC
    from amps_eval.processors import without_media_slots
    from amps_eval.tiny_models import _padded_vocab

    if model_type not in SPECS:
        raise ValueError(f"no tiny spec for model_type {model_type!r}; known: {sorted(SPECS)}")
    spec = SPECS[model_type]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(spec, extra_corpus)
    tokenizer.padding_side = "left"
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in spec.tokens.items()}
    bos, eos, pad = (tokenizer.convert_tokens_to_ids(t) for t in ("<bos>", "<|im_end|>", "<|endoftext|>"))

    text = {**TEXT, **spec.text, **text_overrides, "vocab_size": _padded_vocab(len(tokenizer)), "bos_token_id": bos,
            "eos_token_id": eos, "pad_token_id": pad}
    text.update({k: ids[v] for k, v in spec.text_token_ids.items()})
    config = AutoConfig.for_model(model_type, text_config=text, vision_config=dict(spec.vision), **spec.config,
                                  **{k: ids[v] for k, v in spec.token_ids.items()}, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config).eval()
    model.generation_config = GenerationConfig(do_sample=False, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    model.save_pretrained(out_dir)

    # the processor class amps_auto builds for this folder (its family's hook where one differs)
    processor_class = without_media_slots(GENERIC.for_model_type(model_type).processor_class(out_dir))
    template = CHAT_TEMPLATE.replace("IMAGE_MARK", spec.image_mark)
    backends = IMAGE_PROCESSOR_MAPPING_NAMES[model_type]
    if "pil" not in backends:  # a torchvision-only image processor (Llama4): its files as the hub has them
        _write_processor_files(out_dir, tokenizer, template, {"image_processor_type": backends["torchvision"],
                                                              **spec.image_processor},
                               {"processor_class": processor_class.__name__, **spec.processor})
        return out_dir
    image_processor = get_image_processor_class_from_name(backends["pil"])(**spec.image_processor)
    processor = processor_class(image_processor=image_processor, tokenizer=tokenizer, chat_template=template,
                                **spec.processor)
    processor.save_pretrained(out_dir)
    return out_dir


def _write_processor_files(out_dir: Path, tokenizer, template: str, image_processor: dict, processor: dict) -> None:
    """The processor's files without building it (its image processor needs a backend not installed)."""
    import json

    tokenizer.save_pretrained(out_dir)
    (out_dir / "preprocessor_config.json").write_text(json.dumps(image_processor, indent=2))
    (out_dir / "processor_config.json").write_text(json.dumps(processor, indent=2))
    (out_dir / "chat_template.jinja").write_text(template)
