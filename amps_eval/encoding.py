"""Prompts to model inputs, for any family: the one encoder the lmms-eval wrappers, the fit, the MCS
and the organism training share, built from (family adapter, model, processor).

`PromptEncoder.encode_turns` renders conversations with the processor's chat template, encodes them
with left padding and marks each row's modality positions; `stop_token_ids` finds the tokens that
end an answer. `load_encoder` loads a checkpoint for the core commands (`amps-eval fit`, `amps-eval
mcs`): its family is checked first (`amps_eval.families.check_pretrained`), and no lmms-eval
wrapper (nor its Accelerator) is built.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import torch

from amps_eval.families import FamilyAdapter
from amps_eval.methods.prompts import Turn

from amps_eval.vocabulary import DTYPES  # the one definition, re-exported

__all__ = ["DTYPES", "Encoded", "PromptEncoder", "load_encoder", "model_load_kwargs", "resolve_device", "resolve_dtype"]


@dataclass
class Encoded:
    inputs: dict  # the processor's tensors, on the model's input device
    vision_mask: torch.Tensor  # [B, T] image-token positions
    text_mask: torch.Tensor  # [B, T] positions of the user's text
    prompt_digests: list[str] | None = None  # per row `PromptEncoder.prompt_digest` (the item cache's key)


class PromptEncoder:
    """Encodes conversations for ``model`` with ``processor`` (left padding), the family's way."""

    def __init__(self, family: FamilyAdapter, model: torch.nn.Module, processor: Any, name: str = "") -> None:
        self.family = family
        self.model = model
        self.processor = processor
        self.name = name or getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__

    @property
    def input_device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def stop_token_ids(self) -> list[int]:
        """The token ids that end an answer: the generation config's EOS ids, the tokenizer's EOS and
        the chat template's end-of-turn token (the special token the template writes right after an
        assistant turn, e.g. Qwen's ``<|im_end|>``; LLaVA-1.5's template writes none)."""
        tokenizer = self.processor.tokenizer
        config = getattr(self.model, "generation_config", None)
        eos = getattr(config, "eos_token_id", None)
        candidates = [*(eos if isinstance(eos, (list, tuple)) else [eos]), tokenizer.eos_token_id]
        marker = "AMPS_END_OF_TURN_PROBE"
        try:
            rendered = self.processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "text", "text": "?"}]},
                 {"role": "assistant", "content": [{"type": "text", "text": marker}]}],
                add_generation_prompt=False, tokenize=False)
            after = tokenizer(rendered.rsplit(marker, 1)[1], add_special_tokens=False)["input_ids"]
            if after and after[0] in set(tokenizer.all_special_ids):
                candidates.append(after[0])
        except (ValueError, IndexError, TypeError, KeyError):  # a template without assistant turns
            pass
        ids = list(dict.fromkeys(int(i) for i in candidates if i is not None))
        if not ids:
            raise RuntimeError(f"{self.name}: no EOS or end-of-turn token found; generation would "
                               "never stop before its token budget")
        return ids

    def processor_digest(self) -> str:
        """sha256 of the processor's image settings (``min_pixels``, sizes, normalisation, ...): what,
        besides the rendered text and the pixels, decides the model's inputs."""
        if getattr(self, "_processor_digest", None) is None:
            image_processor = getattr(self.processor, "image_processor", None)
            settings = image_processor.to_dict() if hasattr(image_processor, "to_dict") else {}
            text = json.dumps({"class": type(self.processor).__name__, "image": settings}, sort_keys=True, default=str)
            self._processor_digest = hashlib.sha256(text.encode()).hexdigest()
        return self._processor_digest

    def prompt_digest(self, turns: list[Turn]) -> str:
        """sha256 of what decides one prompt's model inputs: the processor's settings, the rendered
        chat prompt and each image's mode, size and pixels (`amps_eval.item_cache`'s MCS entries)."""
        digest = hashlib.sha256(self.processor_digest().encode())
        digest.update(self.render(turns).encode())
        for turn in turns:
            for image in turn.images:
                digest.update(f"\x00{image.mode}:{image.size}\x00".encode())
                digest.update(image.tobytes())
        return digest.hexdigest()

    def render(self, turns: list[Turn]) -> str:
        messages = [
            {
                "role": turn.role,
                "content": [{"type": "image"} for _ in turn.images] + [{"type": "text", "text": turn.text}],
            }
            for turn in turns
        ]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def encode_turns(self, conversations: list[list[Turn]]) -> Encoded:
        """Left-padded model inputs for a batch of conversations, with each row's modality masks.

        Every processor output but the offsets reaches the model (Gemma3 and PaliGemma need their
        ``token_type_ids``); images go one list per prompt. Vision positions are the image tokens.
        Text positions are the tokens of the last user turn's text (context, question, options and any
        instruction), not the chat template: found by character offsets in the very string the
        tokenizer received (after the processor's image-token expansion and any prefix it adds).
        """
        texts = [self.render(turns) for turns in conversations]
        images = [[image for turn in turns for image in turn.images] for turns in conversations]
        received: list = []
        processor = copy.copy(self.processor)  # this call's own tokenizer recorder, nothing shared changes
        processor.tokenizer = _Recorder(self.processor.tokenizer, received)
        inputs = processor(text=texts, images=images if any(images) else None, padding=True, return_tensors="pt",
                           return_offsets_mapping=True)
        offsets = inputs.pop("offset_mapping")
        inputs.pop("labels", None)
        strings = _received_strings(received, len(texts))
        attention = inputs["attention_mask"].bool()
        text_mask = torch.zeros_like(attention)
        for row, (string, turns) in enumerate(zip(strings, conversations)):
            user_text = next(t.text for t in reversed(turns) if t.role == "user")
            start = string.rfind(user_text)
            if start < 0:
                raise RuntimeError(f"the chat template dropped the user text of row {row}; cannot locate text tokens")
            lo, hi = start, start + len(user_text)
            begins, ends = offsets[row][:, 0], offsets[row][:, 1]
            text_mask[row] = attention[row] & (begins >= lo) & (ends <= hi) & (ends > begins)
        vision_mask = (inputs["input_ids"] == self.image_token_id) & attention
        text_mask &= ~vision_mask
        device = self.input_device
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        return Encoded(inputs, vision_mask.to(device), text_mask.to(device),
                       [self.prompt_digest(turns) for turns in conversations])

    @property
    def image_token_id(self) -> int:
        """The image placeholder token (`FamilyAdapter.image_token_id`: config, then processor)."""
        return self.family.image_token_id(self.model.config, self.processor)


class _Recorder:
    """A tokenizer that records the text it is called with (`PromptEncoder.encode_turns`)."""

    def __init__(self, tokenizer: Any, calls: list) -> None:
        self._tokenizer, self._calls = tokenizer, calls

    def __call__(self, text=None, *args, **kwargs):
        self._calls.append(text)
        return self._tokenizer(text, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


def _received_strings(calls: list, rows: int) -> list[str]:
    """The per-row strings of the tokenizer call that encoded the batch (the last with ``rows`` texts)."""
    for text in reversed(calls):
        texts = [text] if isinstance(text, str) else list(text or [])
        if len(texts) == rows and all(isinstance(t, str) for t in texts):
            return texts
    raise RuntimeError("the processor did not call its tokenizer with the batch's texts; cannot locate text tokens")


def resolve_device(device: str | None) -> torch.device:
    """``device`` or, if None, cuda when a GPU is visible, else cpu; a cuda device without a GPU is refused."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device} was asked for but no GPU is visible; pass device=cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on a GPU, float32 on the CPU."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {DTYPES}")
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" else "float32"
    return getattr(torch, dtype)


def model_load_kwargs(torch_dtype: torch.dtype, device: torch.device, attn_implementation: str | None = None,
                      device_map: str | None = None) -> dict:
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    kwargs["device_map"] = "auto" if device_map == "auto" else str(device)
    return kwargs


class LoadedModel(PromptEncoder):
    """A checkpoint loaded for the core commands: its encoder plus where and how it runs."""

    def __init__(self, family: FamilyAdapter, model, processor, pretrained: str, device: torch.device,
                 torch_dtype: torch.dtype) -> None:
        super().__init__(family, model, processor, name=pretrained)
        self.pretrained = pretrained
        self.device = device
        self.torch_dtype = torch_dtype


def load_encoder(model: str, pretrained: str | os.PathLike, device: str | None = None, dtype: str = "auto",
                 **image_kwargs: Any) -> LoadedModel:
    """Load the checkpoint ``pretrained`` of the family served by the lmms-eval model ``model``
    (refused by family before any weights load), in eval mode, with its left-padding processor."""
    from amps_eval.families import check_pretrained

    family = check_pretrained(pretrained, model)
    where = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, where)
    processor = family.load_processor(str(pretrained), **image_kwargs)  # refused before the weights load
    loaded = family.load_model(str(pretrained), **model_load_kwargs(torch_dtype, where))
    loaded.eval()
    processor.tokenizer.padding_side = "left"
    return LoadedModel(family, loaded, processor, str(pretrained), where, torch_dtype)
