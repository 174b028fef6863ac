"""SmolVLM / SmolVLM2 (``model_type`` ``smolvlm``), served by `amps_auto`: one hook differs.

``SmolVLMProcessor.apply_chat_template`` (transformers 5.24) reads ``self.video_processor.num_frames``
and ``.fps`` to set video defaults on every call, video or not; amps-eval builds the processor without
its video processor (`amps_eval.processors.without_media_slots`: every video processor needs
torchvision). Its processor here renders the template through ``ProcessorMixin.apply_chat_template``,
which is what SmolVLM's override calls after setting those defaults: the same string for image-and-text
conversations (MC2 has no videos)."""

from __future__ import annotations

import functools
import os

from amps_eval.families.base import FamilyAdapter


@functools.cache
def _without_video_defaults(base: type) -> type:
    from transformers.processing_utils import ProcessorMixin

    return type(base.__name__, (base,), {"apply_chat_template": ProcessorMixin.apply_chat_template,
                                         "__module__": __name__, "__doc__": base.__doc__})


class SmolVLMHooks(FamilyAdapter):
    def processor_class(self, path: str | os.PathLike) -> type:
        from amps_eval.processors import auto_processor_class, without_media_slots

        return _without_video_defaults(without_media_slots(auto_processor_class(path)))


HOOKS = SmolVLMHooks(name="smolvlm", display="SmolVLM", lmms_model="amps_auto", model_types=("smolvlm",))
