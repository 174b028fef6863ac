"""The model families amps-eval knows, by name, lmms-eval model name and ``config.model_type``.

``amps_auto`` (`amps_eval.families.auto`) serves any image-text-to-text checkpoint through the
generic rules; ``amps_qwen``, ``amps_llava`` and ``amps_qwen2`` are the same generic adapter
restricted to one ``model_type`` (with the organism and L2S width of their family). A family file
exists only for a model that differs, overriding a hook of `FamilyAdapter` (see docs/models.md,
"Adding a family"): ``mistral3``, ``smolvlm`` and ``llama4`` define ``HOOKS``, which ``amps_auto``
uses for their ``model_type`` (`amps_eval.families.auto`); a family with its own lmms-eval name
defines ``FAMILY``, imported below.
Import-light (no torch / transformers): `amps_eval.plugin` reads it while lmms-eval starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from amps_eval.families.base import FamilyAdapter, OrganismSpec, WrongFamilyError

__all__ = ["FAMILIES", "GENERIC", "FamilyAdapter", "OrganismSpec", "WrongFamilyError", "adapter_for", "by_lmms_model",
           "by_model_type", "check_pretrained", "family", "family_of_model", "lmms_models"]

from amps_eval.families import auto, llava, qwen2_5_vl, qwen2_vl  # noqa: E402  (explicit registration)

FAMILIES: dict[str, FamilyAdapter] = {f.name: f for f in (qwen2_5_vl.FAMILY, llava.FAMILY, qwen2_vl.FAMILY, auto.FAMILY)}

GENERIC = auto.FAMILY
"""The adapter of any model (``amps_auto``)."""


def family(name: str) -> FamilyAdapter:
    """The family called ``name`` (``qwen2_5_vl``, ``llava``, ...)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; expected one of {tuple(FAMILIES)}")
    return FAMILIES[name]


def lmms_models() -> tuple[str, ...]:
    """The lmms-eval model names of all families (amps_qwen, amps_llava, ...)."""
    return tuple(f.lmms_model for f in FAMILIES.values())


def by_lmms_model(model: str) -> FamilyAdapter:
    """The family served by the lmms-eval model ``model``."""
    for f in FAMILIES.values():
        if f.lmms_model == model:
            return f
    raise ValueError(f"unknown model {model!r}; valid models: {', '.join(lmms_models())}")


def by_model_type(model_type: str | None) -> FamilyAdapter | None:
    """The named family accepting ``config.model_type == model_type``, or None (``amps_auto`` serves it)."""
    for f in FAMILIES.values():
        if f.model_types and model_type in f.model_types:
            return f
    return None


def family_of_model(model: Any) -> FamilyAdapter:
    """The adapter of a loaded model: its named family (by ``config.model_type``), else the generic one."""
    return by_model_type(getattr(getattr(model, "config", None), "model_type", None)) or GENERIC


def adapter_for(model: Any) -> FamilyAdapter:
    """The adapter that answers the anatomy questions about a loaded model (decoder layers, hidden
    size, positions against a cache, K/V support): the family file registered for its
    ``config.model_type`` (a named family, or a ``type_hooks`` entry of `amps_auto`), else the
    generic adapter. The steering hooks, the fit, the extraction and the MCS all ask it."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return family_of_model(model).for_model_type(model_type)


def _looks_local(pretrained: str) -> bool:
    """A path rather than a hub id ("org/name"): absolute, relative with ./ ../ ~, or deeper than org/name."""
    p = pretrained.strip()
    return (os.path.isabs(p) or p.startswith((".", "~")) or p.endswith(("/", os.sep)) or p.count("/") > 1
            or os.sep != "/" and os.sep in p)


def check_pretrained(pretrained: str | os.PathLike, model: str) -> FamilyAdapter:
    """Refuse, before any weights load, a checkpoint that is not of the family of the lmms-eval model
    ``model`` (read from its ``config.json``) or a local path that does not exist. Returns the family."""
    from transformers import AutoConfig

    wanted = by_lmms_model(model)
    name = str(pretrained)
    path = Path(name).expanduser()
    if not path.exists() and _looks_local(name):
        raise FileNotFoundError(f"pretrained={name}: the checkpoint folder does not exist")
    if path.is_dir() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"pretrained={name}: the folder has no config.json; is it a checkpoint folder?")
    try:
        config = AutoConfig.from_pretrained(str(path) if path.exists() else name)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the model config (config.json) of pretrained={name}: {error}") from error
    model_type = getattr(config, "model_type", None)
    if not wanted.model_types:
        wanted.load_model_class(config)  # refuses a model_type that is not image-text-to-text
        return wanted
    if model_type in wanted.model_types:
        return wanted
    other = by_model_type(model_type)
    if other is not None:
        raise WrongFamilyError(f"pretrained={name} is a {other.display} checkpoint (model_type {model_type}), not "
                               f"{wanted.display}: use --model {other.lmms_model}")
    raise WrongFamilyError(f"pretrained={name} has model_type {model_type!r}, which {model} does not serve "
                           f"({model} serves {', '.join(wanted.model_types)}): use --model {GENERIC.lmms_model}, "
                           "which serves any image-text-to-text model")
