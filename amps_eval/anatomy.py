"""What amps-eval needs to know about a loaded vision-language model, by generic rules that hold for
any image-text-to-text model transformers 5.x loads (measured on tiny models of 19 architectures).

* decoder layers: ``model.get_decoder()``, then down to its ``layers`` list;
* hidden size: the text config's ``hidden_size``;
* image token id: the config's ``image_token_id`` / ``image_token_index`` (sub-configs too), then
  the processor's;
* positions of a prompt for a pass against a cache: the model's own ``get_rope_index`` (called with
  the inputs its signature names) where it has one, else ``cumsum(attention_mask) - 1`` (what
  ``generate`` does); always passed explicitly;
* K/V support (`kv_refusal`): the MCS perturbs every layer's self-attention keys and values over the
  whole prompt, so a layer without them (linear attention, convolution), image K/V held by
  cross-attention, or a sliding/chunked window shorter than the prompt makes it inapplicable.

These functions read the model only; a family that differs overrides the matching hook of its
`amps_eval.families.FamilyAdapter`, which calls them by default. torch is imported lazily (the
family registry imports this module while lmms-eval starts).
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["KVSupportError", "check_kv_support", "decoder_layers", "hidden_size", "image_token_id", "kv_refusal",
           "position_ids", "text_config"]

_TOKEN_ID_NAMES = ("image_token_id", "image_token_index")


class KVSupportError(NotImplementedError):
    """The MCS cannot run on this model: a layer holds no self-attention K/V over the whole prompt."""


def text_config(config: Any) -> Any:
    """The language model's config of a composite config (the config itself otherwise)."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def decoder_layers(model: Any):
    """The decoder layers (an ``nn.ModuleList``) of the language model inside ``model``:
    ``get_decoder()``, then down to its ``layers`` (Idefics3's decoder is a wrapper holding the text
    model, Llama4's the causal LM holding ``model.layers``)."""
    from torch import nn

    tried = []
    start = model.get_decoder() if hasattr(model, "get_decoder") else model
    queue = [start]
    for _ in range(4):  # get_decoder() -> (text_model | model) -> layers, at most a few steps down
        found = []
        for obj in queue:
            layers = getattr(obj, "layers", None)
            if isinstance(layers, nn.ModuleList) and len(layers) > 0:
                return layers
            tried.append(type(obj).__name__)
            for name in ("text_model", "language_model", "model", "decoder"):
                child = getattr(obj, name, None)
                if isinstance(child, nn.Module) and child is not obj:
                    found.append(child)
        queue = found
    raise AttributeError(f"cannot find the decoder layers of {type(model).__name__}: no non-empty `layers` "
                         f"ModuleList under get_decoder() (looked in {', '.join(dict.fromkeys(tried))}); give its "
                         "family a `decoder_layers` hook (amps_eval/families/)")


def hidden_size(model: Any) -> int:
    """Hidden size of the language model (the text config of a composite MLLM config)."""
    size = getattr(text_config(getattr(model, "config", None)), "hidden_size", None)
    if not isinstance(size, int):
        raise AttributeError(f"{type(model).__name__} has no text-config hidden_size")
    return size


def _configs(config: Any):
    yield config
    for name in ("text_config", "vision_config"):
        sub = getattr(config, name, None)
        if sub is not None and sub is not config:
            yield sub


def image_token_id(config: Any, processor: Any = None) -> int:
    """The id of the image placeholder token: the config's ``image_token_id`` / ``image_token_index``
    (its sub-configs too), then the processor's ``image_token_id`` (the processor's attribute alone is
    wrong for Gemma3: it names the start-of-image marker, hence the config first)."""
    for cfg in _configs(config):
        for name in _TOKEN_ID_NAMES:
            value = getattr(cfg, name, None)
            if isinstance(value, int) and not isinstance(value, bool):
                return int(value)
    value = getattr(processor, "image_token_id", None) if processor is not None else None
    if isinstance(value, int):
        return int(value)
    raise AttributeError(f"{type(config).__name__} names no image token id (image_token_id / image_token_index, in "
                         "it or its sub-configs) and the processor none either")


def _rope_owner(model: Any):
    for obj in (model, getattr(model, "model", None)):
        if obj is not None and callable(getattr(obj, "get_rope_index", None)):
            return obj
    return None


def _cumsum_positions(attention_mask):
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 0)


def position_ids(model: Any, inputs: dict[str, Any]):
    """Position ids of a left-padded prompt for a pass against a cache: the model's ``get_rope_index``
    (3-D mrope positions [3, B, T] of Qwen2/2.5/3-VL) called with the inputs its signature names,
    else ``cumsum(attention_mask) - 1`` [B, T] as ``generate`` computes them."""
    import torch

    input_ids = inputs["input_ids"]
    attention_mask = inputs.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    owner = _rope_owner(model)
    if owner is None:
        return _cumsum_positions(attention_mask)
    params = inspect.signature(owner.get_rope_index).parameters
    if "image_grid_thw" in params and all(inputs.get(k) is None for k in ("image_grid_thw", "video_grid_thw")):
        # a text-only prompt: the three rope axes advance together, as for a 1-D rope
        return _cumsum_positions(attention_mask).clamp_min(0).unsqueeze(0).expand(3, -1, -1).contiguous()
    kwargs = {k: inputs.get(k) for k in params if k not in ("self", "input_ids", "attention_mask") and k in inputs}
    if "mm_token_type_ids" in params and inputs.get("mm_token_type_ids") is None:
        kwargs["mm_token_type_ids"] = _modality_types(model.config, input_ids)
    if "attention_mask" in params:
        kwargs["attention_mask"] = attention_mask
    pos = owner.get_rope_index(input_ids, **kwargs)
    return pos[0] if isinstance(pos, tuple) else pos


def _modality_types(config: Any, input_ids):
    """``mm_token_type_ids`` (1 image, 2 video) from the config's token ids, for inputs without them."""
    import torch

    mm = torch.zeros_like(input_ids, dtype=torch.int)
    for name, kind in (("image_token_id", 1), ("video_token_id", 2)):
        tid = getattr(config, name, None)
        if tid is not None:
            mm = mm.masked_fill(input_ids == tid, kind)
    return mm


_NO_KV = ("linear_attention", "mamba", "conv", "short_conv", "gated_delta", "ssm", "recurrent")


def kv_refusal(model: Any, prompt_length: int | None = None) -> str | None:
    """Why the MCS cannot run on ``model`` (a message naming the layer and its type), or None.

    Read from the config before any compute: the text config's ``layer_types`` (hybrid models:
    linear-attention or convolution layers hold no K/V), cross-attention layers (Mllama: the image
    K/V live there), and sliding / chunked windows shorter than ``prompt_length`` (the cut cache is
    then not the whole prompt; a window covering the prompt is exact, so it is checked per prompt).
    """
    config = getattr(model, "config", None)
    text = text_config(config)
    cross = getattr(text, "cross_attention_layers", None)
    if cross:
        return (f"{type(model).__name__}: layer {list(cross)[0]} is a cross-attention layer (the image's K/V live "
                "there, not in the self-attention cache over the prompt): the MCS does not apply to it; "
                "steering (mean, l2s) still works")
    layer_types = list(getattr(text, "layer_types", None) or ())
    for i, kind in enumerate(layer_types):
        if any(tag in str(kind) for tag in _NO_KV):
            return (f"{type(model).__name__}: layer {i} is a {kind!r} layer, which holds no self-attention K/V: "
                    "the MCS (perturbing every layer's K/V) does not apply to this hybrid model; steering "
                    "(mean, l2s) still works")
    if prompt_length is not None:
        windows = {"sliding_attention": getattr(text, "sliding_window", None),
                   "chunked_attention": getattr(text, "attention_chunk_size", None)}
        for i, kind in enumerate(layer_types):
            window = windows.get(str(kind))
            if window is not None and int(window) < int(prompt_length):
                return (f"{type(model).__name__}: layer {i} is a {kind!r} layer with a window of {window} tokens, "
                        f"shorter than the prompt ({prompt_length} tokens): its cache does not hold the whole "
                        "prompt, so the MCS is not exact; use shorter prompts or fewer image tokens")
    return None


def check_kv_support(model: Any, prompt_length: int | None = None) -> None:
    """Raise `KVSupportError` with `kv_refusal`'s message when the MCS cannot run on ``model``."""
    reason = kv_refusal(model, prompt_length)
    if reason is not None:
        raise KVSupportError(reason)
