"""The lmms-eval models: one `AmpsWrapper` subclass per family of `amps_eval.families`.

``amps_eval.plugin.MODEL_CLASSES`` names them here (``AmpsQwen`` for ``amps_qwen``, ...); a new
family needs nothing in this package.
"""

from __future__ import annotations

from amps_eval.families import FAMILIES, FamilyAdapter
from amps_eval.model_wrappers.base import AmpsWrapper
from amps_eval.settings import settings_class


def _wrapper(family: FamilyAdapter) -> type[AmpsWrapper]:
    return type(family.wrapper_class_name, (AmpsWrapper,), {
        "family": family, "settings_class": settings_class(family), "__module__": __name__,
        "__doc__": f"`{family.lmms_model}`: {family.display} through `{family.model_class}`.",
    })


WRAPPERS: dict[str, type[AmpsWrapper]] = {f.lmms_model: _wrapper(f) for f in FAMILIES.values()}
globals().update({cls.__name__: cls for cls in WRAPPERS.values()})
__all__ = [cls.__name__ for cls in WRAPPERS.values()]
