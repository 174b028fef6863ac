"""Mistral3 (Mistral-Small-3.1, ``model_type`` ``mistral3``), served by `amps_auto`: one hook differs.

Its processor, ``PixtralProcessor``, is declared for torchvision in transformers 5.24 and its module
imports the torchvision image processor at import time, for a helper that only counts tokens; what
it does to a prompt (replace each ``[IMG]`` with rows of ``[IMG]`` tokens, one per merged patch,
each row closed by ``[IMG_BREAK]`` and the last by ``[IMG_END]``) needs no torchvision. Where the
stock class imports (torchvision installed) it is used; otherwise `PixtralPilProcessor`, the same
expansion written out here, beside the PIL image processor (``PixtralImageProcessorPil``) that
`amps_eval.processors` always loads. The model's own forward checks that the image tokens match its
image features, and `tests/test_auto_families.py` checks the expansion.
"""

from __future__ import annotations

import functools
import os

from amps_eval.families.base import FamilyAdapter


@functools.cache
def pixtral_processor_class() -> type:
    """transformers' ``PixtralProcessor`` where its module imports, else `PixtralPilProcessor`."""
    try:
        from transformers.models.pixtral.processing_pixtral import PixtralProcessor

        return PixtralProcessor
    except ImportError:  # its module imports the torchvision image processor
        return _pil_processor_class()


@functools.cache
def _pil_processor_class() -> type:
    from transformers.processing_utils import ProcessorMixin

    class PixtralPilProcessor(ProcessorMixin):
        """``PixtralProcessor``'s prompt expansion (transformers 5.24) without its module's torchvision import."""

        text_kwargs = {"return_tensors": "pt"}
        images_kwargs = {"return_tensors": "pt"}

        def __init__(self, image_processor=None, tokenizer=None, patch_size: int = 16, spatial_merge_size: int = 1,
                     chat_template=None, image_token="[IMG]", image_break_token="[IMG_BREAK]",
                     image_end_token="[IMG_END]", **kwargs):
            super().__init__(image_processor, tokenizer, chat_template=chat_template)
            self.patch_size, self.spatial_merge_size = patch_size, spatial_merge_size
            self.image_token, self.image_break_token, self.image_end_token = image_token, image_break_token, image_end_token
            self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)

        @property
        def image_token_ids(self) -> list[int]:
            return self.tokenizer.convert_tokens_to_ids([self.image_token, self.image_break_token, self.image_end_token])

        def _process_images(self, images, **images_kwargs):
            images_kwargs["patch_size"] = self.patch_size * self.spatial_merge_size
            return super()._process_images(images, **images_kwargs)

        def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
            merged = self.patch_size * self.spatial_merge_size
            height, width = image_inputs["image_sizes"][image_idx]
            rows = [self.image_token * (int(width) // merged) + self.image_break_token] * (int(height) // merged)
            return "".join(rows)[: -len(self.image_break_token)] + self.image_end_token

        @property
        def model_input_names(self):
            return self.tokenizer.model_input_names + self.image_processor.model_input_names + ["image_sizes"]

        def to_dict(self):
            return {**super().to_dict(), "processor_class": "PixtralProcessor"}  # what the hub's folders name

    return PixtralPilProcessor


class Mistral3Hooks(FamilyAdapter):
    def processor_class(self, path: str | os.PathLike) -> type:
        return pixtral_processor_class()


HOOKS = Mistral3Hooks(name="mistral3", display="Mistral3", lmms_model="amps_auto", model_types=("mistral3",))
