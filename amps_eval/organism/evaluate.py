"""Measure an organism on held-out items through its lmms-eval wrapper (``amps_qwen`` / ``amps_llava``).

The held-out items are ``generate_synthetic_mc2(n_per_category, seed, image_size)`` with a seed the
training data did not use. Each item is asked in both option orders (task documents of
``TaskSpec(target, orders="both")``), under the three conditions of the design: no instruction
(``method=none``), the instruction toward the image and toward the text (``method=inst`` on the
``mc2_visual`` / ``mc2_text`` documents) in the wrappers' default placement (the MC2 authors':
``instruction_style=mc2_authors``), and once more in the ``appended`` placement that the steering fits
and ``amps-eval mcs`` use (``instruction_following_appended``). Answers are parsed with ``amps_eval.mc2.parse.follows``.

Why both orders: with ``orders="one"`` the image answer is option A for even ``mc2_id``; in the
synthetic set item ``i`` has category ``CATEGORIES[i % 8]``, so every item of a category has the
same order, and a per-category letter bias would pass for a modality preference.

The targets (:meth:`OrganismEvaluation.targets`): >= 95% of answers follow the instructed
modality (each instruction, in each placement); without instruction the vision share of the image-leaning categories
exceeds that of the text-leaning ones by >= 40 points; < 2% of all answers follow neither option.
A fourth number, ``image_reading``, checks that the image instruction is followed by reading the
image: on held-out *consistent* items (image and context show the same answer, see
``amps_eval.organism.design``) the share of answers picking the option the image shows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from amps_eval.mc2.prompt import DEFAULT_INSTRUCTION_STYLE
from amps_eval.mc2.schema import CATEGORIES

SPLIT = "test"
GEN_KWARGS = {"max_new_tokens": 64, "do_sample": False, "temperature": 0, "num_beams": 1}  # as the MC2 tasks

TARGET_INSTRUCTION = 0.95
TARGET_GAP = 0.40
TARGET_OTHERS = 0.02


@dataclass
class OrganismEvaluation:
    """Held-out results (shares in [0, 1])."""

    n_per_category: int
    seed: int
    image_size: int
    # instructed modality -> share of answers following it (all categories) / per category
    instruction_following: dict[str, float]
    instruction_following_by_category: dict[str, dict[str, float]]
    # the same with the instruction appended after the question (instruction_style=appended)
    instruction_following_appended: dict[str, float]
    # no instruction: share of answers following the image, per category
    vision_share_without_instruction: dict[str, float]
    image_leaning_vision_share: float
    text_leaning_vision_share: float
    preference_gap: float
    # answers following neither option: all conditions together / per condition
    others_rate: float
    others_by_condition: dict[str, float]
    # consistent items under the image instruction: share picking the option the image shows
    image_reading: float | None = None
    image_reading_by_category: dict[str, float] = field(default_factory=dict)
    n_answers: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def targets(self) -> dict[str, bool]:
        return {
            "instruction_vision>=0.95": self.instruction_following["vision"] >= TARGET_INSTRUCTION,
            "instruction_text>=0.95": self.instruction_following["text"] >= TARGET_INSTRUCTION,
            "appended_instruction_vision>=0.95": self.instruction_following_appended["vision"] >= TARGET_INSTRUCTION,
            "appended_instruction_text>=0.95": self.instruction_following_appended["text"] >= TARGET_INSTRUCTION,
            "preference_gap>=0.40": self.preference_gap >= TARGET_GAP,
            "others<0.02": self.others_rate < TARGET_OTHERS,
        }

    def all_targets_met(self) -> bool:
        return all(self.targets().values())

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if not samples:
            data.pop("samples")
        data["targets"] = self.targets()
        return data

    def table(self) -> str:
        """Per-category numbers as a plain-text table (percentages)."""
        from amps_eval.organism.design import PREFERENCE

        lines = [f"{'category':26s} {'lean':6s} {'inst->img':>9s} {'inst->txt':>9s} {'none:img':>9s} {'img-read':>9s}"]
        for c in CATEGORIES:
            by = self.instruction_following_by_category
            read = self.image_reading_by_category.get(c)
            lines.append(
                f"{c:26s} {PREFERENCE[c]:6s} {100 * by['vision'][c]:9.1f} {100 * by['text'][c]:9.1f} "
                f"{100 * self.vision_share_without_instruction[c]:9.1f} "
                f"{'' if read is None else f'{100 * read:9.1f}'}"
            )
        lines.append(
            f"instruction following: image {100 * self.instruction_following['vision']:.1f}%, "
            f"text {100 * self.instruction_following['text']:.1f}% (appended: image "
            f"{100 * self.instruction_following_appended['vision']:.1f}%, text "
            f"{100 * self.instruction_following_appended['text']:.1f}%); no instruction: image-leaning "
            f"{100 * self.image_leaning_vision_share:.1f}% vs text-leaning {100 * self.text_leaning_vision_share:.1f}% "
            f"vision (gap {100 * self.preference_gap:.1f} points); others {100 * self.others_rate:.2f}%"
            + ("" if self.image_reading is None else f"; image reading {100 * self.image_reading:.1f}%")
        )
        return "\n".join(lines)


def _doc_list(dataset) -> list[dict]:
    return [dataset[i] for i in range(len(dataset))]


def _requests(docs: list[dict], task: str) -> list[SimpleNamespace]:
    from amps_eval.mc2.prompt import doc_prompt

    def doc_to_visual(doc):
        return [doc["image"].convert("RGB")]

    return [SimpleNamespace(args=(doc_prompt(doc), dict(GEN_KWARGS), doc_to_visual, i, task, SPLIT)) for i, doc in enumerate(docs)]


def consistent_docs(n_per_category: int, seed: int, image_size: int) -> list[dict]:
    """Task documents of held-out consistent items (target vision; ``vision_letter`` is the letter
    of the option the image shows), both option orders."""
    from amps_eval.organism.design import Condition, consistent_example

    docs = []
    for index in range(n_per_category * len(CATEGORIES)):
        for shown_first in (True, False):
            example = consistent_example(index, seed, image_size, Condition("inst", "vision"), shown_first)
            docs.append(
                {
                    "mc2_id": index,
                    "category": example.category,
                    "context": example.context,
                    "question": example.question,
                    "option_a": example.option_a,
                    "option_b": example.option_b,
                    "vision_letter": example.answer,
                    "target": "vision",
                    "image": example.image(),
                }
            )
    return docs


def _share(values: list[str], wanted: str) -> float:
    return sum(v == wanted for v in values) / len(values) if values else float("nan")


def evaluate_organism(
    path: str | Path,
    n_per_category: int = 16,
    seed: int = 2,
    image_size: int = 84,
    batch_size: int = 16,
    image_reading: bool = True,
    keep_samples: bool = False,
    model: str = "amps_qwen",
) -> OrganismEvaluation:
    """Evaluate the organism at ``path`` on held-out synthetic items (see the module docstring)."""
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled

    from amps_eval.mc2.docs import TaskSpec, task_docs
    from amps_eval.mc2.parse import follows
    from amps_eval.mc2.synthetic import generate_synthetic_mc2
    from amps_eval.organism.architectures import architecture_of_model
    from amps_eval.organism.design import IMAGE_LEANING, TEXT_LEANING

    wrapper_class = architecture_of_model(model).load_wrapper_class()

    bars = is_progress_bar_enabled()
    disable_progress_bar()
    try:
        dataset = generate_synthetic_mc2(n_per_category, seed, image_size)
        task_dict = {
            "mc2_visual": {SPLIT: _doc_list(task_docs(dataset, TaskSpec("vision", orders="both")))},
            "mc2_text": {SPLIT: _doc_list(task_docs(dataset, TaskSpec("text", orders="both")))},
        }
    finally:
        if bars:
            enable_progress_bar()
    if image_reading:
        task_dict["consistent"] = {SPLIT: consistent_docs(n_per_category, seed, image_size)}

    # (condition name, method, task, instruction style): the wrappers' default style, then appended
    default, appended = DEFAULT_INSTRUCTION_STYLE, "appended"
    runs = [("none", "none", "mc2_visual", default), ("inst_vision", "inst", "mc2_visual", default),
            ("inst_text", "inst", "mc2_text", default), ("inst_vision_appended", "inst", "mc2_visual", appended),
            ("inst_text_appended", "inst", "mc2_text", appended)]
    if image_reading:
        runs.append(("consistent_inst_vision", "inst", "consistent", default))
    followed: dict[str, list[tuple[str, str]]] = {}  # condition -> [(category, followed)]
    samples = []
    wrappers: dict[tuple[str, str], Any] = {}
    for condition, method, task, style in runs:
        if (method, style) not in wrappers:
            wrapper = wrapper_class(pretrained=str(path), device="cpu", method=method, batch_size=batch_size,
                                    instruction_style=style)
            wrapper.task_dict = task_dict
            wrappers[(method, style)] = wrapper
        wrapper = wrappers[(method, style)]
        docs = task_dict[task][SPLIT]
        responses = wrapper.generate_until(_requests(docs, task))
        rows = []
        for doc, response in zip(docs, responses):
            rows.append((doc["category"], follows(response, doc)))
            if keep_samples:
                samples.append(
                    {"condition": condition, "mc2_id": doc["mc2_id"], "category": doc["category"],
                     "vision_letter": doc["vision_letter"], "response": response, "follows": rows[-1][1]}
                )
        followed[condition] = rows

    def by_category(condition: str, wanted: str) -> dict[str, float]:
        return {c: _share([f for cat, f in followed[condition] if cat == c], wanted) for c in CATEGORIES}

    none_vision = by_category("none", "vision")
    image_lean = sum(none_vision[c] for c in IMAGE_LEANING) / len(IMAGE_LEANING)
    text_lean = sum(none_vision[c] for c in TEXT_LEANING) / len(TEXT_LEANING)
    main = ("none", "inst_vision", "inst_text")
    all_main = [f for condition in main for _, f in followed[condition]]
    result = OrganismEvaluation(
        n_per_category=n_per_category,
        seed=seed,
        image_size=image_size,
        instruction_following={
            "vision": _share([f for _, f in followed["inst_vision"]], "vision"),
            "text": _share([f for _, f in followed["inst_text"]], "text"),
        },
        instruction_following_appended={
            "vision": _share([f for _, f in followed["inst_vision_appended"]], "vision"),
            "text": _share([f for _, f in followed["inst_text_appended"]], "text"),
        },
        instruction_following_by_category={
            "vision": by_category("inst_vision", "vision"),
            "text": by_category("inst_text", "text"),
        },
        vision_share_without_instruction=none_vision,
        image_leaning_vision_share=image_lean,
        text_leaning_vision_share=text_lean,
        preference_gap=image_lean - text_lean,
        others_rate=_share(all_main, "others"),
        others_by_condition={c: _share([f for _, f in followed[c]], "others") for c in followed},
        n_answers=len(all_main),
        samples=samples,
    )
    if image_reading:
        result.image_reading = _share([f for _, f in followed["consistent_inst_vision"]], "vision")
        result.image_reading_by_category = by_category("consistent_inst_vision", "vision")
    return result

