"""Load the processor (tokenizer + image processor + chat template) of a checkpoint folder.

One function, :func:`load_processor`, serves a real hub checkpoint (``Qwen/Qwen2.5-VL-7B-Instruct``,
``llava-hf/llava-1.5-7b-hf``, ...) and the tiny test checkpoints of
:mod:`amps_eval.testing.tiny_models` alike, so that tests exercise the code path a real run takes.

Why not simply ``AutoProcessor.from_pretrained``
------------------------------------------------
* transformers 5.x's ``Qwen2_5_VLProcessor`` declares a ``video_processor`` in its ``__init__``, and
  ``ProcessorMixin`` insists on every declared sub-processor. ``Qwen2VLVideoProcessor`` needs
  torchvision, which cannot be installed next to a CPU torch here (and is an unnecessary, fragile
  dependency everywhere: MC2 has no videos). :class:`Qwen2_5_VLImageOnlyProcessor` is the same
  processor without the video slot.
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

from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, LlavaProcessor
from transformers.processing_utils import ProcessorMixin
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor

Arch = Literal["qwen2_5_vl", "llava"]
ARCHES: tuple[str, ...] = ("qwen2_5_vl", "llava")

# `model_type` in config.json -> our architecture name.
_MODEL_TYPE_TO_ARCH = {"qwen2_5_vl": "qwen2_5_vl", "llava": "llava"}


class Qwen2_5_VLImageOnlyProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without the video processor.

    transformers 5.x derives a processor's sub-processors from the parameter names of its
    ``__init__``; leaving ``video_processor`` out of the signature is what removes the slot (and the
    torchvision requirement). Everything image- and text-related (placeholder expansion from
    ``image_grid_thw``, ``mm_token_type_ids`` for the 3-D rope index, decoding) is inherited
    unchanged. Passing ``videos=`` is not supported.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # Same token bookkeeping as Qwen2_5_VLProcessor.__init__, which we cannot call because it
        # forwards a (required) video_processor argument to ProcessorMixin.
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = getattr(tokenizer, "image_token_id", None) or tokenizer.convert_tokens_to_ids(
            self.image_token
        )
        self.video_token_id = getattr(tokenizer, "video_token_id", None) or tokenizer.convert_tokens_to_ids(
            self.video_token
        )
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        # Saved folders name the stock class, so that `AutoProcessor` (with torchvision) can load them.
        output = super().to_dict()
        output["processor_class"] = Qwen2_5_VLProcessor.__name__
        return output


_PROCESSOR_CLASSES: dict[str, type[ProcessorMixin]] = {
    "qwen2_5_vl": Qwen2_5_VLImageOnlyProcessor,
    "llava": LlavaProcessor,
}


def load_processor(
    path: str | os.PathLike,
    arch: Arch,
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
    if arch not in _PROCESSOR_CLASSES:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHES}")
    path = os.fspath(path)
    cls = _PROCESSOR_CLASSES[arch]

    image_processor = AutoImageProcessor.from_pretrained(path, backend="pil", **image_kwargs)
    unknown = sorted(set(image_kwargs) - set(image_processor.valid_kwargs.__annotations__))
    if unknown:
        raise TypeError(f"{type(image_processor).__name__} does not accept {unknown}")
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side=padding_side)

    processor_dict, _ = cls.get_processor_dict(path)
    if processor_dict.get("chat_template") is None and getattr(tokenizer, "chat_template", None):
        processor_dict["chat_template"] = tokenizer.chat_template
    if arch == "llava":
        _fill_llava_args_from_model_config(path, processor_dict)

    processor = cls.from_args_and_dict([image_processor, tokenizer], processor_dict)
    if processor.chat_template is None:
        raise ValueError(f"no chat template found in {path} (chat_template.json/.jinja or tokenizer config)")
    return processor


def _fill_llava_args_from_model_config(path: str, processor_dict: dict[str, Any]) -> None:
    """Older LLaVA folders lack ``processor_config.json``; without ``patch_size`` the processor
    cannot expand ``<image>`` into one placeholder per visual token. Take it from config.json."""
    if processor_dict.get("patch_size") is not None:
        return
    config = AutoConfig.from_pretrained(path)
    processor_dict["patch_size"] = config.vision_config.patch_size
    processor_dict.setdefault("vision_feature_select_strategy", config.vision_feature_select_strategy)
    processor_dict.setdefault("num_additional_image_tokens", 1)  # CLIP's CLS token


def image_token_id(model_config: Any) -> int:
    """The id of the image placeholder token: ``input_ids == image_token_id(model.config)`` marks
    the positions whose embeddings the vision tower's features replace (both architectures)."""
    for name in ("image_token_id", "image_token_index"):
        value = getattr(model_config, name, None)
        if value is not None:
            return int(value)
    raise AttributeError(f"{type(model_config).__name__} has no image token id")


def arch_of(model_config: Any) -> str:
    """Our architecture name (``"qwen2_5_vl"`` or ``"llava"``) for a model config."""
    model_type = getattr(model_config, "model_type", None)
    try:
        return _MODEL_TYPE_TO_ARCH[model_type]
    except KeyError:
        raise ValueError(f"unsupported model_type {model_type!r}; expected one of {sorted(_MODEL_TYPE_TO_ARCH)}")
