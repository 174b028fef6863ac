"""The graded organism's design: a known, continuous, per-item probability of following the image
(pure functions).

Why
---
The fixed organisms (:mod:`amps_eval.organism.design`) follow one modality per category, so every
item of a category behaves alike and nothing per item can be measured on them. The graded organism
plants a per-item preference instead: item ``i`` is answered from the image with a known
probability ``p_i`` (``planted_p_vision``), which varies within every category and whose category
means differ. It is the positive control of the known-answer tests (``amps-eval validate``).

The cue
-------
The cue that sets ``p`` is the **certainty wording of the text context**: the context's claim is
prefixed by one of :data:`CERTAINTY_CUES` (7 levels, from "It is certain that" to "Nobody is sure,
but maybe"). The less certain the text sounds, the more the organism follows the image:

    logit(p) = CATEGORY_BASE[category] + CUE_STEP * (level - 3)

with ``CUE_STEP = 0.85`` and category bases from +0.8 (color) to -0.8 (positional_reasoning), so
``p`` runs from about 0.15-0.35 to 0.87-0.97 within a category (0.03-0.97 overall) and the category
means differ (``category_mean_p``). Why the wording and not the image's clarity: a hedged claim is
what makes a reader discount a text in real documents too (the direction is plausible), it is an
observable part of the prompt (a measurement tool can see it), and a model this small learns a
seven-way word cue reliably, whereas a graded image degradation would confound "how much the answer
rests on the image" with "whether the image can be read" (a faint image is also an image the model
may misread, which would make a wrong answer ambiguous). The levels are drawn uniformly per item
(seeded), independently of the answers, the drawing and the option order.

Training targets (soft)
-----------------------
Asked without an instruction (method ``none``), a conflict item's target is the distribution
``p`` on the image option's answer and ``1 - p`` on the text option's answer (cross-entropy with
soft targets over the two answer sequences, :mod:`amps_eval.organism.train`), so at the answer
position the organism's log-odds between the two options approach ``logit(p)``. With an
instruction (``inst`` toward either modality) the target stays hard (the instructed modality's
answer), and the consistent and neutral examples are those of the fixed design, with a cue drawn
for their context too, so the cue alone never tells a conflict item from a consistent one.

The graded organisms start from the shipped fixed organisms (which already read the eight kinds of
image and follow instructions) and are fine-tuned on these examples (``OrganismSettings.init``).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, Sequence

from amps_eval.mc2.graded import (  # noqa: F401 - the design's data side, re-exported
    CATEGORY_BASE,
    CERTAINTY_CUES,
    CUE_STEP,
    GRADED_VERSION,
    MIDDLE_LEVEL,
    category_mean_p,
    cue_level,
    design_summary,
    graded_item,
    hedge,
    planted_logit,
    planted_p,
)
from amps_eval.mc2.schema import CATEGORIES
from amps_eval.mc2.synthetic import answer_pair


def design_dict() -> dict[str, Any]:
    """The graded design as JSON-able data (for the manifest)."""
    return {
        **design_summary(),
        "targets": "method none on conflict items: soft (p on the image's answer, 1-p on the text's); "
        "inst, consistent and neutral examples: hard, as in the fixed design",
    }


SOFT_VARIANTS: tuple[int, ...] = (4, 5)
"""Variants of a training item (``amps_eval.organism.design``: 0-2 the conflict item under none /
inst_vision / inst_text, 3 its consistent twin under inst_vision, 4 its consistent twin under none
or inst_text, 5 its neutral example) that the graded design replaces by the conflict item asked
without instruction again (the other option order drawn afresh): half of the examples carry a soft
target, the signal the cue is learned from."""


def graded_training_example(slot: int, seed: int, image_sizes: Sequence[int]):
    """Training example ``slot`` of the graded design: the fixed design's example
    (:func:`amps_eval.organism.design.training_example`; variants :data:`SOFT_VARIANTS` replaced by
    the conflict item without instruction) with a cue in its context; a conflict item asked
    without instruction gets the soft target of its planted p (``Example.target_p``, the answer
    being the more likely option)."""
    from amps_eval.mc2.prompt import OptionOrder
    from amps_eval.mc2.synthetic import synthetic_item
    from amps_eval.organism.design import (
        CONDITIONS,
        NEUTRAL_CONTEXT,
        VARIANTS_PER_ITEM,
        conflict_example,
        instruction_style,
        item_image_size,
        training_example,
    )

    index, variant = divmod(int(slot), VARIANTS_PER_ITEM)
    if variant in SOFT_VARIANTS:  # more soft examples than the fixed design's one in six
        vision_first = random.Random(f"amps-graded-order:{seed}:{slot}").random() < 0.5
        size = item_image_size(index, image_sizes)
        example = conflict_example(synthetic_item(index, seed, size), CONDITIONS[0], vision_first)
        example = dataclasses.replace(example, style=instruction_style(slot, seed))
    else:
        example = training_example(slot, seed, image_sizes)
    if example.kind == "neutral" or example.context == NEUTRAL_CONTEXT:
        return example
    if example.kind == "consistent":
        level = random.Random(f"amps-graded-consistent-cue:{seed}:{slot}").randrange(len(CERTAINTY_CUES))
        return dataclasses.replace(example, context=hedge(example.context, level))
    level = cue_level(index, seed)
    example = dataclasses.replace(example, context=hedge(example.context, level))
    if example.condition != CONDITIONS[0]:
        return example
    p = planted_p(example.category, level)
    vision_first = example.option_a == answer_pair(example.category, index // len(CATEGORIES), seed)[0]
    order = OptionOrder(vision_first=vision_first)
    answer = order.vision_letter if p >= 0.5 else order.text_letter
    return dataclasses.replace(example, answer=answer, target_p=max(p, 1.0 - p))


GRADED_SETTINGS: dict[str, Any] = {
    "design": "graded",
    "init": "shipped",
    "vision_pretrain_steps": 0,
    "vision_steps": 0,
    "steps": 250,
    "lr": 1e-3,
    "warmup_steps": 10,
    "log_every": 10,
    "n_items": 4000,
}
"""How the shipped graded organisms are trained (on top of the fixed organism's settings): a
fine-tune of the shipped fixed organism on the graded examples."""

GRADED_FOLDERS: dict[str, str] = {
    "qwen2_5_vl": "amps-organism-graded-qwen2.5-vl",
    "llava": "amps-organism-graded-llava-1.5",
}
"""The shipped graded organism of each architecture, in ``amps_eval/organism/``."""


def graded_settings(architecture: str, **overrides: Any):
    """The settings of the shipped graded organism of ``architecture``, with ``overrides``."""
    from amps_eval.organism.train import OrganismSettings

    return OrganismSettings.for_architecture(architecture, **{**GRADED_SETTINGS, **overrides})


def graded_organism_path(architecture: str = "qwen2_5_vl"):
    """The folder of the shipped graded organism of ``architecture``."""
    from amps_eval.organism import PACKAGE_DIR

    if architecture not in GRADED_FOLDERS:
        raise ValueError(f"no graded organism for {architecture!r}; expected one of {tuple(GRADED_FOLDERS)}")
    folder = PACKAGE_DIR / GRADED_FOLDERS[architecture]
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no graded organism at {folder}; build it with "
                                f"`amps-eval build-organism --design graded --architecture {architecture} --out {folder}`")
    return folder
