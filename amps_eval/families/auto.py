"""Any image-text-to-text checkpoint transformers loads, through the generic rules alone: lmms-eval
model ``amps_auto`` (docs/models.md lists the families it is tested on). The few model types whose
processor differs get their family file's hooks (``type_hooks``)."""

from __future__ import annotations

from amps_eval.families import llama4, mistral3, smolvlm
from amps_eval.families.base import FamilyAdapter

FAMILY = FamilyAdapter(
    name="auto",
    display="any image-text-to-text model",
    lmms_model="amps_auto",
    model_types=(),  # any model_type transformers registers as image-text-to-text
    image_kwargs=("min_pixels", "max_pixels"),  # refused with a clear error by processors that lack them
    wrapper_class_name="AmpsAuto",
    type_hooks={hooks.model_types[0]: hooks for hooks in (llama4.HOOKS, mistral3.HOOKS, smolvlm.HOOKS)},
)
