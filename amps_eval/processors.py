"""Load the processor (tokenizer + image processor + chat template) of a checkpoint folder, for any
vision-language model transformers 5.x knows, without its video / audio sub-processors.

One function, :func:`load_processor`, serves a real hub checkpoint (``Qwen/Qwen2.5-VL-7B-Instruct``,
``llava-hf/llava-1.5-7b-hf``, ``google/gemma-3-4b-it``, ...) and the tiny test checkpoints alike, so
that tests exercise the code path a real run takes. It knows no family: the processor class is the
one ``AutoProcessor`` picks for the folder's ``config.model_type`` (a family adapter may name
another, `amps_eval.families.FamilyAdapter.processor_class`).

Why not simply ``AutoProcessor.from_pretrained``
------------------------------------------------
* Many processors declare a ``video_processor`` (Qwen2/2.5/3-VL, LLaVA-OneVision, InternVL, SmolVLM)
  or an audio one in their ``__init__``, and ``ProcessorMixin`` insists on every declared
  sub-processor. In transformers 5.x every video processor needs torchvision, an unnecessary and
  fragile dependency here (MC2 has no videos). :func:`without_media_slots` returns the same
  processor class without those slots, generically (`tests/test_generic_adapter.py` loads it for
  every tested family).
* With torchvision installed, ``AutoImageProcessor`` picks the torchvision backend; without it, the
  PIL backend. The two resize differently at the pixel level, so the same checkpoint would give
  slightly different answers depending on what happens to be installed. We always ask for the PIL
  backend (``backend="pil"``). An image processor that exists only for torchvision is refused with
  the optional extra that installs it (``pip install 'amps-eval[torchvision]'``).
* Batched generation needs left padding ("last prompt token" is then index -1 in every row); the
  padding side is set here for every architecture instead of relying on each checkpoint's file.

Files read (the same ones ``ProcessorMixin.from_pretrained`` reads): ``processor_config.json`` or
``preprocessor_config.json`` (image processor), the tokenizer files, ``processor_config.json``
(processor arguments) and ``chat_template.json`` / ``chat_template.jinja`` (falling back to a
template stored in the tokenizer config).
"""

from __future__ import annotations

import functools
import inspect
import os
from typing import Any, Callable, Literal

from transformers.processing_utils import ProcessorMixin

__all__ = ["MEDIA_SLOTS", "TORCHVISION_EXTRA", "auto_processor_class", "load_processor", "without_media_slots"]

MEDIA_SLOTS = ("video_processor", "audio_processor", "feature_extractor", "audio_tokenizer")
"""Sub-processors amps-eval never uses (MC2 has images and text only)."""

TORCHVISION_EXTRA = "pip install 'amps-eval[torchvision]'"


def auto_processor_class(path: str | os.PathLike) -> type[ProcessorMixin]:
    """The processor class ``AutoProcessor`` would build for the checkpoint ``path`` (by its
    ``config.model_type``; ``processor_class`` of its processor files first)."""
    from transformers import AutoConfig
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    path = os.fspath(path)
    config = AutoConfig.from_pretrained(path)
    name = None
    try:
        saved, _ = ProcessorMixin.get_processor_dict(path)
        name = saved.get("processor_class")
    except (OSError, ValueError):
        pass
    names = [n.replace("ImageOnlyProcessor", "Processor") for n in (name,) if isinstance(n, str)]
    names.append(PROCESSOR_MAPPING_NAMES.get(config.model_type))
    for candidate in names:
        cls = _processor_class(candidate) if candidate else None
        if isinstance(cls, type) and issubclass(cls, ProcessorMixin):
            return cls
    raise ValueError(f"{path}: transformers registers no processor for model_type {config.model_type!r}; "
                     "is it an image-text-to-text checkpoint?")


def _processor_class(name: str) -> type | None:
    """The processor class called ``name``; a placeholder of a missing backend is refused with the
    optional extra to install."""
    from transformers.models.auto.processing_auto import processor_class_from_name

    cls = processor_class_from_name(name)
    if type(cls).__name__ == "DummyObject":  # transformers' placeholder for a missing optional backend
        cls = _defining_module_class(name) or cls
    if type(cls).__name__ == "DummyObject":
        raise ImportError(f"{name} needs torchvision in this transformers: {TORCHVISION_EXTRA}")
    return cls


def _defining_module_class(name: str) -> type | None:
    """The processor class ``name`` from the module that defines it. transformers' top-level lazy
    import hands out a placeholder when an optional backend of the class's declaration is missing;
    the class itself, imported from its own module, works or fails at use with the real reason. A
    module that itself imports torchvision (PixtralProcessor's, in 5.24) is skipped: Mistral3's family
    hook (`amps_eval.families.mistral3`) builds its processor."""
    import importlib

    from transformers.models.auto.configuration_auto import model_type_to_module_name
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    for model_type, names in PROCESSOR_MAPPING_NAMES.items():
        if name in ((names,) if isinstance(names, str) else tuple(names or ())):
            module = model_type_to_module_name(model_type)
            try:
                found = getattr(importlib.import_module(f"transformers.models.{module}.processing_{module}"), name, None)
            except ImportError:
                continue
            if isinstance(found, type) and type(found).__name__ != "DummyObject":
                return found
    return None


class _DropMediaSlots(ProcessorMixin):
    """Sits between a processor class and ``ProcessorMixin`` (see `without_media_slots`): drops the
    media sub-processors (given as None by the processor's own ``__init__``) before ``ProcessorMixin``
    checks its arguments."""

    _full_attributes: tuple[str, ...] = ()

    def __init__(self, *args, **kwargs):
        named = dict(zip(self._full_attributes, args))
        named.update(kwargs)
        for slot in MEDIA_SLOTS:
            named.pop(slot, None)
        ProcessorMixin.__init__(self, **named)


@functools.cache
def without_media_slots(base: type[ProcessorMixin]) -> type[ProcessorMixin]:
    """``base`` without its video / audio sub-processors (`MEDIA_SLOTS`), or ``base`` itself when it
    declares none.

    transformers 5.x derives a processor's sub-processors from the parameter names of its
    ``__init__``: the returned subclass's ``__init__`` has the same parameters less the media slots,
    passes None for them to ``base.__init__`` (which keeps its own token bookkeeping), and
    `_DropMediaSlots` removes them before ``ProcessorMixin`` sees them. Everything image- and
    text-related is inherited unchanged; passing ``videos=`` is not supported.
    """
    params = inspect.signature(base.__init__).parameters
    dropped = [name for name in params if name in MEDIA_SLOTS]
    if not dropped:
        return base
    kept = [p for name, p in params.items() if name not in MEDIA_SLOTS]
    # ProcessorMixin.from_args_and_dict reads __init__.__code__.co_varnames: the subclass's __init__
    # must name its parameters for real, hence a generated function (no annotations, same defaults).
    defaults = {p.name: p.default for p in kept if p.default is not inspect.Parameter.empty}
    parts, call = [], []
    star = False
    for p in kept:
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            parts.append(f"**{p.name}")
            call.append(f"**{p.name}")
            continue
        if p.kind is inspect.Parameter.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        parts.append(f"{p.name}=_defaults[{p.name!r}]" if p.name in defaults else p.name)
        if p.name != "self":
            call.append(f"{p.name}={p.name}")
    call += [f"{name}=None" for name in dropped]
    source = f"def __init__({', '.join(parts)}):\n    _base.__init__(self, {', '.join(call)})\n"
    namespace: dict[str, Any] = {"_defaults": defaults, "_base": base}
    exec(compile(source, f"<{base.__name__} without media slots>", "exec"), namespace)  # noqa: S102

    def to_dict(self) -> dict[str, Any]:
        # Saved folders name the stock class, so that `AutoProcessor` (with torchvision) loads them.
        output = super(cls, self).to_dict()
        output["processor_class"] = base.__name__
        return output

    name = base.__name__.replace("Processor", "ImageOnlyProcessor")
    full = tuple(base.get_attributes())
    cls = type(name, (base, _DropMediaSlots), {
        "__init__": namespace["__init__"], "to_dict": to_dict, "__module__": __name__, "_full_attributes": full,
        "__doc__": f"``{base.__name__}`` without its {', '.join(dropped)} (see `without_media_slots`)."})
    return cls


def _image_processor(path: str, image_kwargs: dict[str, Any]):
    from transformers import AutoImageProcessor

    try:
        image_processor = AutoImageProcessor.from_pretrained(path, backend="pil", **image_kwargs)
    except (ImportError, ValueError) as error:
        if "torchvision" in str(error).lower():
            raise ImportError(f"the image processor of {path} needs torchvision (it has no PIL backend in this "
                              f"transformers): {TORCHVISION_EXTRA}") from error
        raise
    if type(image_processor).__name__.startswith("Dummy"):
        raise ImportError(f"the image processor of {path} needs torchvision: {TORCHVISION_EXTRA}")
    valid = getattr(getattr(image_processor, "valid_kwargs", None), "__annotations__", None)
    unknown = sorted(set(image_kwargs) - set(valid or image_kwargs))
    if unknown:
        raise TypeError(f"{type(image_processor).__name__} does not accept {unknown}")
    return image_processor


def load_processor(
    path: str | os.PathLike,
    processor_class: type[ProcessorMixin] | None = None,
    *,
    padding_side: Literal["left", "right"] = "left",
    fill_processor_dict: Callable[[str, dict[str, Any]], None] | None = None,
    **image_kwargs: Any,
) -> ProcessorMixin:
    """Load the processor of the checkpoint folder ``path``.

    ``processor_class``: the processor to build (default: `auto_processor_class`); its media slots are
    dropped (`without_media_slots`). ``fill_processor_dict(path, processor_dict)``: a family's way to
    complete the processor arguments read from the folder. ``image_kwargs`` override the saved
    image-processor settings, e.g. ``min_pixels`` / ``max_pixels`` for Qwen2.5-VL; unknown keys raise
    ``TypeError`` rather than being silently ignored. The image processor is always the PIL backend
    and the tokenizer pads on ``padding_side`` (default left, for batched generation).
    """
    from transformers import AutoTokenizer

    path = os.fspath(path)
    cls = without_media_slots(processor_class or auto_processor_class(path))
    attributes = cls.get_attributes()
    unknown_slots = [a for a in attributes if a not in ("image_processor", "tokenizer")]
    if unknown_slots:
        raise ValueError(f"{cls.__name__} needs sub-processors amps-eval does not load: {unknown_slots}")
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side=padding_side)
    processor_dict, _ = cls.get_processor_dict(path)
    for slot in MEDIA_SLOTS:
        processor_dict.pop(slot, None)
    if processor_dict.get("chat_template") is None and getattr(tokenizer, "chat_template", None):
        processor_dict["chat_template"] = tokenizer.chat_template
    if fill_processor_dict is not None:
        fill_processor_dict(path, processor_dict)
    parts = {"tokenizer": tokenizer}
    if "image_processor" in attributes:
        parts["image_processor"] = _image_processor(path, image_kwargs)
    elif image_kwargs:
        raise TypeError(f"{cls.__name__} has no image processor to take {sorted(image_kwargs)}")
    processor = cls.from_args_and_dict([parts[a] for a in attributes], processor_dict)
    if processor.chat_template is None:
        raise ValueError(f"no chat template found in {path} (chat_template.json/.jinja or tokenizer config)")
    return processor
