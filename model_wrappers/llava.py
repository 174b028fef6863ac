"""`amps_llava`: LLaVA-1.5 in the llava-hf format through `LlavaForConditionalGeneration`."""

from __future__ import annotations

from transformers import LlavaForConditionalGeneration

from amps_eval.model_wrappers.base import AmpsWrapper
from amps_eval.processors import load_processor


class AmpsLlava(AmpsWrapper):
    architecture = "llava"

    def load_model(self):
        return LlavaForConditionalGeneration.from_pretrained(self.settings.pretrained, **self.model_load_kwargs())

    def load_processor(self):
        return load_processor(self.settings.pretrained, self.architecture)
