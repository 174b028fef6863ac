"""Graded synthetic MC2 items: each item's text context carries a certainty cue that sets a known
probability ``planted_p_vision`` of following the image (pure functions, and the folder writer).

The cue is the **certainty wording of the text context**: the context's claim is prefixed by one of
:data:`CERTAINTY_CUES` (7 levels, from "It is certain that" to "Nobody is sure, but maybe"), drawn
uniformly per item (seeded, independent of the answers, the drawing and the option order). The
planted probability of following the image is

    logit(p) = CATEGORY_BASE[category] + CUE_STEP * (level - 3)

with ``CUE_STEP = 0.85`` and category bases from +0.8 (color) to -0.8 (positional_reasoning): ``p``
spans about 0.15-0.35 .. 0.87-0.97 within every category (0.03-0.97 overall) and the category means
differ. The graded organisms (:mod:`amps_eval.organism.graded`) are trained to follow it; a graded
data folder (:func:`write_graded_mc2`) is the synthetic set of :mod:`amps_eval.mc2.synthetic` with
the hedged contexts and two extra columns, ``cue_level`` and ``planted_p_vision`` (the prepared
schema's checks accept extra columns; the tasks ignore them).
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

from amps_eval.mc2.schema import CATEGORIES
from amps_eval.mc2.synthetic import SPECS, synthetic_item

GRADED_VERSION = 1
"""Bump when the cue, the planted p or the graded examples change (recorded in manifests)."""

CERTAINTY_CUES: tuple[str, ...] = (
    "It is certain that",
    "Everybody agrees that",
    "It is clear that",
    "It seems that",
    "Perhaps",
    "It is a guess that",
    "Nobody is sure, but maybe",
)
"""The context's certainty wording, from most certain (level 0: the organism mostly follows the
text) to least certain (level 6: it mostly follows the image)."""

CUE_STEP = 0.85
"""logit(p) per level of :data:`CERTAINTY_CUES`."""

CATEGORY_BASE: dict[str, float] = {
    "color": 0.8,
    "sport_recognition": 0.6,
    "object_recognition": 0.35,
    "attribute": 0.1,
    "counting": -0.1,
    "sentiment_understanding": -0.35,
    "activity_recognition": -0.6,
    "positional_reasoning": -0.8,
}
"""logit(p) at the middle level, per category (its sign follows the fixed organisms' preference)."""

assert tuple(sorted(CATEGORY_BASE)) == tuple(sorted(CATEGORIES)), "every MC2 category needs a base"

MIDDLE_LEVEL = (len(CERTAINTY_CUES) - 1) // 2


def _check_cues() -> None:
    words = {w for spec in SPECS.values() for answer in spec.answers for w in answer.split()}
    for cue in CERTAINTY_CUES:
        clash = [w for w in words if w in cue.lower()]
        if clash:
            raise AssertionError(f"the cue {cue!r} contains the answer word(s) {clash}")


_check_cues()


def planted_logit(category: str, level: int) -> float:
    """logit of the planted probability of following the image."""
    if category not in CATEGORY_BASE:
        raise ValueError(f"unknown MC2 category {category!r}; expected one of {CATEGORIES}")
    if not 0 <= int(level) < len(CERTAINTY_CUES):
        raise ValueError(f"cue level must be in 0..{len(CERTAINTY_CUES) - 1}, got {level}")
    return CATEGORY_BASE[category] + CUE_STEP * (int(level) - MIDDLE_LEVEL)


def planted_p(category: str, level: int) -> float:
    """The planted probability that the organism follows the image (``planted_p_vision``)."""
    return 1.0 / (1.0 + math.exp(-planted_logit(category, level)))


def category_mean_p(category: str) -> float:
    """Mean planted p of a category (levels are uniform)."""
    return sum(planted_p(category, k) for k in range(len(CERTAINTY_CUES))) / len(CERTAINTY_CUES)


def cue_level(index: int, seed: int) -> int:
    """The cue level of graded item ``index`` (uniform, seeded, independent of everything else)."""
    return random.Random(f"amps-graded-cue:{seed}:{index}").randrange(len(CERTAINTY_CUES))


def hedge(context: str, level: int) -> str:
    """``context`` with its first claim prefixed by the cue of ``level``."""
    return f"{CERTAINTY_CUES[level]} {context[0].lower()}{context[1:]}"


def graded_item(index: int, seed: int = 0, image_size: int = 224) -> dict[str, Any]:
    """Synthetic item ``index`` (:func:`amps_eval.mc2.synthetic.synthetic_item`) with its context
    hedged by a drawn cue, and its ``cue_level`` and ``planted_p_vision``. A pure function."""
    item = synthetic_item(index, seed, image_size)
    level = cue_level(index, seed)
    item["context"] = hedge(item["context"], level)
    item["cue_level"] = level
    item["planted_p_vision"] = planted_p(item["category"], level)
    return item


GRADED_COLUMNS: tuple[str, ...] = ("cue_level", "planted_p_vision")
"""The columns a graded folder has beyond the prepared schema."""


def generate_graded_mc2(n_per_category: int = 16, seed: int = 0, image_size: int = 224):
    """The graded synthetic set as a `datasets.Dataset` (prepared schema + :data:`GRADED_COLUMNS`)."""
    import datasets

    from amps_eval.mc2.schema import PREPARED_COLUMNS, prepared_features

    if n_per_category < 1:
        raise ValueError(f"n_per_category must be >= 1, got {n_per_category}")
    rows = [graded_item(i, seed, image_size) for i in range(n_per_category * len(CATEGORIES))]
    features = prepared_features()
    features["cue_level"] = datasets.Value("int64")
    features["planted_p_vision"] = datasets.Value("float64")
    columns = {name: [row[name] for row in rows] for name in (*PREPARED_COLUMNS, *GRADED_COLUMNS)}
    return datasets.Dataset.from_dict(columns, features=features, split=datasets.Split.TEST)


def write_graded_mc2(out: Path, n_per_category: int = 16, seed: int = 0, image_size: int = 224, progress: bool = True):
    """Write the graded set in the prepare_mc2 folder format (manifest source ``synthetic_graded``);
    returns a `PrepareReport`."""
    from amps_eval.mc2.prepare import PrepareReport, base_manifest, check_output_dir, datasets_progress, write_prepared_dir
    from amps_eval.mc2.synthetic import SYNTHETIC_VERSION

    out = Path(out)
    check_output_dir(out)
    dataset = generate_graded_mc2(n_per_category, seed, image_size)
    per_category = {name: n_per_category for name in CATEGORIES}
    manifest = base_manifest("synthetic_graded", len(dataset), per_category, 0)
    manifest.update({"seed": seed, "n_per_category": n_per_category, "n": len(dataset), "image_size": image_size,
                     "synthetic_version": SYNTHETIC_VERSION, "graded_version": GRADED_VERSION,
                     "graded": design_summary()})
    with datasets_progress(progress):
        write_prepared_dir(dataset, out, manifest)
    return PrepareReport(out=out, n_items=len(dataset), per_category=per_category, manifest=manifest)


def design_summary() -> dict[str, Any]:
    """The cue and planted p as JSON-able data (data manifests, organism manifests)."""
    return {
        "graded_version": GRADED_VERSION,
        "cue": "certainty wording prefixed to the text context",
        "certainty_cues": list(CERTAINTY_CUES),
        "planted_logit": f"CATEGORY_BASE[category] + {CUE_STEP} * (level - {MIDDLE_LEVEL})",
        "category_base": dict(CATEGORY_BASE),
        "category_mean_p": {c: round(category_mean_p(c), 4) for c in CATEGORIES},
        "p_range_by_category": {
            c: [round(planted_p(c, 0), 4), round(planted_p(c, len(CERTAINTY_CUES) - 1), 4)] for c in CATEGORIES
        },
    }


def planted_p_of(folder: Path) -> dict[int, float]:
    """mc2_id -> planted_p_vision of a graded data folder; a clear error for a folder without it."""
    import datasets

    folder = Path(folder)
    dataset = datasets.load_from_disk(str(folder))["test"]
    if "planted_p_vision" not in dataset.column_names:
        raise ValueError(f"{folder} has no planted_p_vision column: it is not a graded data folder; write one with "
                         "`amps-eval validate` or amps_eval.mc2.graded.write_graded_mc2")
    table = dataset.select_columns(["mc2_id", "planted_p_vision"]).to_dict()
    return {int(i): float(p) for i, p in zip(table["mc2_id"], table["planted_p_vision"])}
