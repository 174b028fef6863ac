"""Model organisms: small Qwen2.5-VL and LLaVA-1.5 models trained from scratch to have a known
modality preference.

* :mod:`amps_eval.organism.design` - which categories lean to the image or the text, and the
  training examples (pure functions);
* :mod:`amps_eval.organism.architectures` - what differs between the Qwen2.5-VL and LLaVA organisms;
* :mod:`amps_eval.organism.vision_pretrain` and :mod:`amps_eval.organism.train` -
  :func:`~amps_eval.organism.train.build_organism` trains and saves one (hub layout);
* :mod:`amps_eval.organism.evaluate` - measures it on held-out items through its lmms-eval wrapper.

:func:`organism_path` is the folder of an organism shipped with the package, so tests and demos
load it like any checkpoint (``AmpsQwen(pretrained=organism_path(), ...)``) without training.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def organism_path(model: str = "amps_qwen") -> Path:
    """The shipped organism of the lmms-eval model ``model`` (amps_qwen or amps_llava): its folder,
    in hub layout (config, weights, tokenizer, processor files, ``organism_manifest.json``)."""
    from amps_eval.families import by_lmms_model, lmms_models
    from amps_eval.organism.architectures import architecture_of_model

    if model in lmms_models() and by_lmms_model(model).organism is None:
        raise FileNotFoundError(f"no organism is defined for {model} ({by_lmms_model(model).display}): its family "
                                "adapter declares none")
    arch = architecture_of_model(model)
    folder = PACKAGE_DIR / arch.folder
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"no {arch.name} organism is shipped at {folder}; build one with "
            f"`amps-eval build-organism --architecture {arch.name} --out {folder}`"
        )
    return folder
