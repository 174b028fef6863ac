"""Load the processor (tokenizer + image processor + chat template) of a checkpoint folder.

One function, :func:`load_processor`, serves a real hub checkpoint (``Qwen/Qwen2.5-VL-7B-Instruct``,
``llava-hf/llava-1.5-7b-hf``, ...) and the tiny test checkpoints of
:mod:`amps_eval.tiny_models` alike, so that tests exercise the code path a real run takes.

Why not simply ``AutoProcessor.from_pretrained``
------------------------------------------------
* transformers 5.x's ``Qwen2_5_VLProcessor`` declares a ``video_processor`` in its ``__init__``, and
  ``ProcessorMixin`` insists on every declared sub-processor. ``Qwen2VLVideoProcessor`` needs
  torchvision, which cannot be installed next to a CPU torch here (and is an unnecessary, fragile
  dependency everywhere: MC2 has no videos). The Qwen families' adapters use the same processor
  without the video slot (:func:`amps_eval.families.no_video.image_only`).
* With torchvision installed, ``AutoImageProcessor`` picks the torchvision backend
  (``Qwen2VLImageProcessor`` / ``CLIPImageProcessor``); without it, the PIL backend
  (``Qwen2VLImageProcessorPil`` / ``CLIPImageProcessorPil``). The two resize differently at the
  pixel level, so the same checkpoint would give slightly different pixel values, and possibly
  different answers, depending on what happens to be installed. We always ask for the PIL backend
  (``backend="pil"``), so behaviour is identical with and without torchvision.
* Batched generation needs left padding ("last prompt token" is then index -1 in every row, see
  docs/lmms-eval.md, "Padding side"); Qwen2.5-VL's tokenizer config does not set it (the default is
  right), so the padding side is set here, for every architecture, instead of relying on each
  checkpoint's file.

Files read (the same ones ``ProcessorMixin.from_pretrained`` reads)
-------------------------------------------------------------------
* image processor: ``processor_config.json`` (nested ``image_processor`` entry, as transformers 5.x
  saves it) or else ``preprocessor_config.json`` (what the hub repositories ship);
* tokenizer: ``tokenizer.json`` / ``tokenizer_config.json`` (and the rest ``AutoTokenizer`` reads);
* processor arguments: ``processor_config.json`` (LLaVA: ``patch_size``,
  ``vision_feature_select_strategy``, ``num_additional_image_tokens``, ``image_token``);
* chat template: ``chat_template.json`` (legacy, hub repositories) or ``chat_template.jinja``
  (transformers 5.x), falling back to a template stored in the tokenizer config.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from transformers import AutoImageProcessor, AutoTokenizer
from transformers.processing_utils import ProcessorMixin

from amps_eval.families import FAMILIES, by_model_type, family


ARCHES: tuple[str, ...] = tuple(FAMILIES)


def load_processor(
    path: str | os.PathLike,
    arch: str,
    *,
    padding_side: Literal["left", "right"] = "left",
    **image_kwargs: Any,
) -> ProcessorMixin:
    """Load the processor of the checkpoint folder ``path`` for architecture ``arch``.

    ``image_kwargs`` override the saved image-processor settings, e.g. ``min_pixels`` /
    ``max_pixels`` for Qwen2.5-VL (bounds on the resized image area; the number of image tokens is
    ``(h/14) * (w/14) / 4`` after resizing both sides to multiples of 28 within those bounds).
    Unknown keys raise ``TypeError`` rather than being silently ignored.

    The image processor is always the PIL backend (same pixels with or without torchvision), and
    the tokenizer pads on ``padding_side`` (default left, for batched generation).
    """
    if arch not in FAMILIES:
        raise ValueError(f"unknown arch {arch!r}; expected one of {tuple(FAMILIES)}")
    path = os.fspath(path)
    adapter = family(arch)
    cls = adapter.processor_class()

    image_processor = AutoImageProcessor.from_pretrained(path, backend="pil", **image_kwargs)
    unknown = sorted(set(image_kwargs) - set(image_processor.valid_kwargs.__annotations__))
    if unknown:
        raise TypeError(f"{type(image_processor).__name__} does not accept {unknown}")
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side=padding_side)

    processor_dict, _ = cls.get_processor_dict(path)
    if processor_dict.get("chat_template") is None and getattr(tokenizer, "chat_template", None):
        processor_dict["chat_template"] = tokenizer.chat_template
    adapter.fill_processor_dict(path, processor_dict)

    processor = cls.from_args_and_dict([image_processor, tokenizer], processor_dict)
    if processor.chat_template is None:
        raise ValueError(f"no chat template found in {path} (chat_template.json/.jinja or tokenizer config)")
    return processor


def image_token_id(model_config: Any) -> int:
    """The id of the image placeholder token: ``input_ids == image_token_id(model.config)`` marks
    the positions whose embeddings the vision tower's features replace (both architectures)."""
    found = by_model_type(getattr(model_config, "model_type", None))
    if found is None:
        raise AttributeError(f"{type(model_config).__name__} is of no family amps-eval knows; no image token id")
    return found.image_token_id(model_config)


def arch_of(model_config: Any) -> str:
    """Our architecture (family) name (``"qwen2_5_vl"``, ``"llava"``, ...) for a model config."""
    model_type = getattr(model_config, "model_type", None)
    found = by_model_type(model_type)
    if found is None:
        raise ValueError(f"unsupported model_type {model_type!r}; expected one of "
                         f"{sorted(t for f in FAMILIES.values() for t in f.model_types)}")
    return found.name
