"""The lmms-eval models, one `AmpsWrapper` subclass per lmms-eval name, declared explicitly.

``amps_auto`` serves any image-text-to-text checkpoint through the generic adapter; ``amps_qwen``,
``amps_llava`` and ``amps_qwen2`` are the same generic path restricted to one family (its
``model_type``, organism and L2S width). ``amps_eval.plugin.MODEL_CLASSES`` names these classes.
"""

from __future__ import annotations

from amps_eval.families import FAMILIES
from amps_eval.model_wrappers.base import AmpsWrapper
from amps_eval.settings import settings_class

__all__ = ["WRAPPERS", "AmpsAuto", "AmpsLlava", "AmpsQwen", "AmpsQwen2"]


class AmpsAuto(AmpsWrapper):
    """`amps_auto`: any image-text-to-text model transformers loads (docs/models.md)."""

    family = FAMILIES["auto"]
    settings_class = settings_class(family)


class AmpsQwen(AmpsWrapper):
    """`amps_qwen`: Qwen2.5-VL through `Qwen2_5_VLForConditionalGeneration`."""

    family = FAMILIES["qwen2_5_vl"]
    settings_class = settings_class(family)


class AmpsLlava(AmpsWrapper):
    """`amps_llava`: LLaVA-1.5 (llava-hf format) through `LlavaForConditionalGeneration`."""

    family = FAMILIES["llava"]
    settings_class = settings_class(family)


class AmpsQwen2(AmpsWrapper):
    """`amps_qwen2`: Qwen2-VL through `Qwen2VLForConditionalGeneration`."""

    family = FAMILIES["qwen2_vl"]
    settings_class = settings_class(family)


WRAPPERS: dict[str, type[AmpsWrapper]] = {cls.family.lmms_model: cls for cls in (AmpsQwen, AmpsLlava, AmpsQwen2, AmpsAuto)}
