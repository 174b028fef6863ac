"""A model organism: a small Qwen2.5-VL trained from scratch to have a known modality preference.

* :mod:`amps_eval.organism.design` - which categories lean to the image or the text, and the
  training examples (pure functions);
* :mod:`amps_eval.organism.train` - :func:`build_organism` trains and saves one (hub layout);
* :mod:`amps_eval.organism.evaluate` - measures it on held-out items through the ``amps_qwen``
  wrapper.

:func:`organism_path` is the folder of the organism shipped with the package, so tests and demos
load it like any checkpoint (``AmpsQwen(pretrained=organism_path(), ...)``) without training.
"""

from __future__ import annotations

from pathlib import Path

ORGANISM_NAME = "amps-organism-qwen2.5-vl"
"""The shipped organism's folder name, which reports and leaderboards show as its model name."""
WEIGHTS_DIR = Path(__file__).resolve().parent / ORGANISM_NAME


def organism_path() -> Path:
    """The shipped organism's folder (hub layout: config, weights, tokenizer, processor files)."""
    if not (WEIGHTS_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"no organism is shipped at {WEIGHTS_DIR}; build one with `amps-eval build-organism --out {WEIGHTS_DIR}`"
        )
    return WEIGHTS_DIR
