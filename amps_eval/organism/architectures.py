"""The architectures an organism can have: one per model family that declares an organism.

What differs between them (the checkpoint builder, the model class, the processor kind, the
lmms-eval wrapper, the shipped folder, how the organism's sizes map onto the config) is declared by
the family's adapter (`amps_eval.families`, its ``organism`` field); this module is the view of
the registry the organism code reads. Everything else (design, training, evaluation) is shared code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amps_eval.families import FAMILIES, FamilyAdapter


@dataclass(frozen=True)
class OrganismArchitecture:
    family: FamilyAdapter

    @property
    def name(self) -> str:  # the family name, also the processor kind of amps_eval.processors
        return self.family.name

    @property
    def lmms_model(self) -> str:
        return self.family.lmms_model

    @property
    def folder(self) -> str:
        return self.family.organism.folder

    @property
    def model_class(self) -> str:
        return self.family.model_class

    @property
    def settings_overrides(self) -> tuple[tuple[str, Any], ...]:
        return self.family.organism.settings_overrides

    def load_model_class(self) -> type:
        return self.family.load_model_class()

    def load_wrapper_class(self) -> type:
        """The lmms-eval wrapper class registered for the family (`amps_eval.plugin.MODEL_CLASSES`)."""
        from amps_eval.plugin import wrapper_class

        return wrapper_class(self.lmms_model)

    def build_checkpoint(self, out_dir: Path, settings: Any, extra_corpus: list[str]) -> Path:
        """The untrained checkpoint folder (hub layout) for ``settings``."""
        spec = self.family.organism
        overrides = {
            "hidden_size": settings.hidden_size,
            "intermediate_size": settings.intermediate_size,
            "num_hidden_layers": settings.num_hidden_layers,
            "num_attention_heads": settings.num_attention_heads,
            "num_key_value_heads": settings.num_key_value_heads,
            "vision_config": spec.vision_overrides(settings),
            **spec.image_overrides(settings),
        }
        return self.family.build_tiny(out_dir, seed=settings.seed, extra_corpus=extra_corpus, **overrides)


ARCHITECTURES: dict[str, OrganismArchitecture] = {
    name: OrganismArchitecture(f) for name, f in FAMILIES.items() if f.organism is not None
}


def architecture(name: str) -> OrganismArchitecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown organism architecture {name!r}; expected one of {tuple(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def architecture_of_model(lmms_model: str) -> OrganismArchitecture:
    """The organism architecture served by an lmms-eval model name (amps_qwen / amps_llava)."""
    for arch in ARCHITECTURES.values():
        if arch.lmms_model == lmms_model:
            return arch
    raise ValueError(f"no organism for model {lmms_model!r}; organisms exist for "
                     f"{tuple(a.lmms_model for a in ARCHITECTURES.values())}")
