"""The Qwen-VL processors without their video processor (imported lazily: it pulls in transformers).

transformers 5.x's ``Qwen2VLProcessor`` and ``Qwen2_5_VLProcessor`` declare a ``video_processor`` in
their ``__init__``, and ``ProcessorMixin`` insists on every declared sub-processor.
``Qwen2VLVideoProcessor`` needs torchvision, which cannot be installed next to a CPU torch here (and
is an unnecessary, fragile dependency everywhere: MC2 has no videos). `image_only` returns the same
processor class without the video slot.
"""

from __future__ import annotations

import functools
from typing import Any

from transformers.processing_utils import ProcessorMixin


@functools.cache
def image_only(base: type[ProcessorMixin]) -> type[ProcessorMixin]:
    """``base`` (a Qwen-VL processor class) without the video processor.

    transformers 5.x derives a processor's sub-processors from the parameter names of its
    ``__init__``; leaving ``video_processor`` out of the signature is what removes the slot (and the
    torchvision requirement). Everything image- and text-related (placeholder expansion from
    ``image_grid_thw``, ``mm_token_type_ids`` for the 3-D rope index, decoding) is inherited
    unchanged. Passing ``videos=`` is not supported.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # Same token bookkeeping as the base __init__, which we cannot call because it forwards a
        # (required) video_processor argument to ProcessorMixin.
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
        output = super(cls, self).to_dict()
        output["processor_class"] = base.__name__
        return output

    name = base.__name__.replace("Processor", "ImageOnlyProcessor")
    cls = type(name, (base,), {"__init__": __init__, "to_dict": to_dict, "__module__": __name__,
                               "__doc__": f"``{base.__name__}`` without the video processor (see `image_only`)."})
    return cls
