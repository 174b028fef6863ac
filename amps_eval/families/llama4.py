"""Llama 4 (``model_type`` ``llama4``), served by `amps_auto`: one hook differs, and it needs torchvision.

* ``Llama4ForConditionalGeneration.forward`` (transformers 5.24) ends by reading ``image_outputs``
  from its language model's output, which has none: every forward returning a dict (the default)
  raises ``AttributeError``. `Llama4Hooks.patch_model` makes the loaded model's language model return
  ``image_outputs=None`` (what the field holds for any forward: the class never sets it), on that
  instance only.
* Its image processor exists only for torchvision in 5.24 (no PIL backend): loading the processor
  is refused with the optional extra to install (`amps_eval.processors`), so an image prompt cannot
  be encoded without ``pip install 'amps-eval[torchvision]'``.
"""

from __future__ import annotations

from typing import Any

from amps_eval.families.base import FamilyAdapter


def _with_image_outputs(forward):
    def patched(*args, **kwargs):
        out = forward(*args, **kwargs)
        if isinstance(out, dict) and "image_outputs" not in out and not hasattr(out, "image_outputs"):
            object.__setattr__(out, "image_outputs", None)
        return out

    patched.amps_eval_patched = True
    return patched


class Llama4Hooks(FamilyAdapter):
    def patch_model(self, model: Any) -> None:
        language_model = getattr(model, "language_model", None)
        if language_model is not None and not getattr(language_model.forward, "amps_eval_patched", False):
            language_model.forward = _with_image_outputs(language_model.forward)


HOOKS = Llama4Hooks(name="llama4", display="Llama 4", lmms_model="amps_auto", model_types=("llama4",))
