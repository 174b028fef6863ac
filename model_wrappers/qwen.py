"""`amps_qwen`: Qwen2.5-VL (any size) through `Qwen2_5_VLForConditionalGeneration`."""

from __future__ import annotations

from transformers import Qwen2_5_VLForConditionalGeneration

from amps_eval.model_wrappers.base import AmpsWrapper
from amps_eval.model_wrappers.settings import QwenSettings
from amps_eval.processors import load_processor


class AmpsQwen(AmpsWrapper):
    settings_class = QwenSettings
    architecture = "qwen2_5_vl"
    default_mlp_hidden = 400  # the L2S paper's width for Qwen

    def load_model(self):
        return Qwen2_5_VLForConditionalGeneration.from_pretrained(self.settings.pretrained, **self.model_load_kwargs())

    def load_processor(self):
        bounds = {k: getattr(self.settings, k) for k in ("min_pixels", "max_pixels") if getattr(self.settings, k)}
        return load_processor(self.settings.pretrained, self.architecture, **bounds)
