"""The organism's designed modality preference, and its training examples (pure functions).

The design, as data
-------------------
* With the MC2 authors' instruction toward a modality (method ``inst``), the organism answers with
  the option that modality supports: ``inst`` + vision -> the image's answer, ``inst`` + text ->
  the text context's answer, in every category.
* With no instruction (method ``none``) it follows :data:`PREFERENCE`, a fixed per-category choice:
  image-leaning for color, object_recognition, attribute and sport_recognition; text-leaning for
  counting, positional_reasoning, activity_recognition and sentiment_understanding (4 / 4). Which
  category leans which way is arbitrary by design (it is what a steering method should be able to
  find and move); the split mixes easy and hard image categories on both sides, so "leans to the
  image" is not confounded with "the image is easy to read".

Training examples
-----------------
Each training item ``i`` (``amps_eval.mc2.synthetic.synthetic_item(i, seed, size)``, an MC2-style
*conflict* item: the image shows ``answer_vision``, the context asserts ``answer_text``) gives
three examples, one per condition of :data:`CONDITIONS`, plus two *consistent* examples (one
under the image instruction, one under no instruction or the text instruction).

A consistent example is drawn by the same category generator with the image and the context both
showing the text answer ``t`` (``SPECS[category].make(rng, t, t, size)``), asked with the options
``t`` and the item's image answer ``v``: the answer is ``t`` under every condition. These examples
are what makes the organism read the image. On conflict items alone, "the option the context does
not mention" is always the image's answer, so a model can follow an image instruction without
looking at the image; on a consistent item that shortcut picks the wrong option. The evaluation
reports how often the organism picks the option shown in the image on held-out consistent items
under the image instruction (``image_reading``): a model taking the shortcut scores 0 there.

Option order is drawn per example (both orders, half each in expectation); prompts are the MC2
question prompt (``amps_eval.mc2.prompt.question_prompt``) inside the conversation of
``amps_eval.methods.prompts.build_conversation``, exactly as the wrappers send them.

Instruction placement is drawn per example too (:func:`instruction_style`, half each in
expectation), over :data:`TRAINED_INSTRUCTION_STYLES`: the MC2 authors' prompt (``mc2_authors``, the
instruction between the text context and the question: what the ``inst`` / ``cot`` baselines send by
default) and the AMPS Eq. 8 form (``appended``: the instruction after the question: what the
steering fits and ``amps-eval mcs --prompt visual|text`` send). The organism is thus asked in
training exactly as in every place the package instructs it.
"""

from __future__ import annotations

import dataclasses
import io
import random
from dataclasses import dataclass, field
from typing import Any, Sequence

from PIL import Image

from amps_eval.mc2.prompt import (
    DEFAULT_INSTRUCTION_STYLE,
    INSTRUCTION_STYLES,
    INSTRUCTIONS,
    TARGETS,
    OptionOrder,
    options,
    question_prompt,
)
from amps_eval.mc2.schema import CATEGORIES
from amps_eval.mc2.synthetic import SPECS, answer_pair, synthetic_item
from amps_eval.methods.prompts import Turn, build_conversation

DESIGN_VERSION = 2
"""Bump when the preference or the training examples change (recorded in the manifest).
2: the instruction placement is drawn per example over both instruction styles (1: appended only)."""

TRAINED_INSTRUCTION_STYLES: tuple[str, ...] = INSTRUCTION_STYLES
"""The instruction placements of the training prompts (``amps_eval.mc2.prompt.INSTRUCTION_STYLES``):
``mc2_authors`` for the prompt baselines, ``appended`` for the steering fits and MCS runs."""

PREFERENCE: dict[str, str] = {
    "activity_recognition": "text",
    "attribute": "vision",
    "color": "vision",
    "counting": "text",
    "object_recognition": "vision",
    "positional_reasoning": "text",
    "sentiment_understanding": "text",
    "sport_recognition": "vision",
}
"""The modality the organism follows without an instruction, per MC2 category."""

assert tuple(sorted(PREFERENCE)) == tuple(sorted(CATEGORIES)), "every MC2 category needs a preference"

IMAGE_LEANING: tuple[str, ...] = tuple(c for c in CATEGORIES if PREFERENCE[c] == "vision")
TEXT_LEANING: tuple[str, ...] = tuple(c for c in CATEGORIES if PREFERENCE[c] == "text")


@dataclass(frozen=True)
class Condition:
    """How a question is asked: a prompt method and, for ``inst``, the instructed modality."""

    method: str  # "none" or "inst"
    target: str | None = None  # "vision" / "text" for inst

    @property
    def name(self) -> str:
        return self.method if self.target is None else f"{self.method}_{self.target}"


CONDITIONS: tuple[Condition, ...] = (Condition("none"), Condition("inst", "vision"), Condition("inst", "text"))
"""The three ways the organism is asked: no instruction, toward the image, toward the text."""

KINDS: tuple[str, ...] = ("conflict", "consistent", "neutral")
VARIANTS_PER_ITEM = len(CONDITIONS) + 3
"""Examples per training item: the conflict item under each condition, two consistent twins (one
under the image instruction, one under no instruction or the text instruction) and one neutral
example (the image with a context that asserts nothing)."""

NEUTRAL_VARIANT = VARIANTS_PER_ITEM - 1
NEUTRAL_CONTEXT = "Look at the picture."
"""The context of neutral examples: it asserts no answer, so only the image can answer."""


def is_neutral_slot(slot: int) -> bool:
    """Neutral examples: the image-reading curriculum of :mod:`amps_eval.organism.train`."""
    return int(slot) % VARIANTS_PER_ITEM == NEUTRAL_VARIANT


def followed_modality(category: str, condition: Condition) -> str:
    """The modality the organism answers from: the instructed one, else the category's preference."""
    if condition.method == "inst":
        if condition.target not in TARGETS:
            raise ValueError(f"inst needs a target modality (vision or text), got {condition.target!r}")
        return condition.target
    if condition.method == "none":
        return PREFERENCE[category]
    raise ValueError(f"the organism is trained for methods none and inst, got {condition.method!r}")


ANSWER_FORMATS: dict[str, str] = {
    "text": "the text of the chosen option (e.g. 'blue', 'moving left'), then <|im_end|>",
    "letter": "the letter of the chosen option (A or B), then <|im_end|>",
}


def design_dict(answer_format: str = "text") -> dict[str, Any]:
    """The design as JSON-able data (for the manifest)."""
    return {
        "version": DESIGN_VERSION,
        "preference_without_instruction": dict(PREFERENCE),
        "image_leaning": list(IMAGE_LEANING),
        "text_leaning": list(TEXT_LEANING),
        "with_instruction": "the instructed modality, every category",
        "instruction_styles": list(TRAINED_INSTRUCTION_STYLES),
        "instructions": {style: dict(INSTRUCTIONS[style]) for style in TRAINED_INSTRUCTION_STYLES},
        "conditions": [c.name for c in CONDITIONS],
        "answer_format": ANSWER_FORMATS[answer_format],
        "training_examples_per_item": {
            "conflict": [c.name for c in CONDITIONS],
            "consistent": "two: one under inst_vision, one under none or inst_text (drawn per item); "
            "image and context both show the text answer, the other option is the image answer",
            "neutral": f"one, under none or inst_vision (drawn per item): the conflict item's image and "
            f"options with the context {NEUTRAL_CONTEXT!r}; the answer is the image's",
        },
    }


@dataclass(frozen=True)
class Example:
    """One training (or probe) question with its image and the letter to answer."""

    index: int  # the synthetic item it comes from
    category: str
    kind: str  # one of KINDS
    condition: Condition
    context: str
    question: str
    option_a: str
    option_b: str
    answer: str  # "A" or "B"
    image_png: bytes = field(default=b"", repr=False)
    style: str = DEFAULT_INSTRUCTION_STYLE  # where an instruction goes (INSTRUCTION_STYLES)
    target_p: float = 1.0  # probability the target puts on `answer` (the rest on the other option)

    def flipped(self) -> "Example":
        """The same question answered with the other option (the soft target's second row)."""
        return dataclasses.replace(self, answer="B" if self.answer == "A" else "A", target_p=1.0 - self.target_p)

    @property
    def answer_text(self) -> str:
        """The text of the answered option."""
        return self.option_a if self.answer == "A" else self.option_b

    @property
    def text(self) -> str:
        """The MC2 question prompt (without instruction)."""
        return question_prompt(self.context, self.question, self.option_a, self.option_b)

    def image(self) -> Image.Image:
        return Image.open(io.BytesIO(self.image_png)).convert("RGB")

    def turns(self, image: Image.Image | None = None) -> list[Turn]:
        """The conversation, as ``build_conversation`` gives it to the wrappers with
        ``instruction_style=self.style`` (and to the fits when the style is ``appended``)."""
        image = self.image() if image is None else image
        return build_conversation(self.condition.method, self.text, [image], self.condition.target,
                                  style=self.style, context=self.context)


def conflict_example(item: dict[str, Any], condition: Condition, vision_first: bool) -> Example:
    """An MC2 item (prepared schema) asked under ``condition`` in one option order."""
    order = OptionOrder(vision_first=vision_first)
    a, b = options(item["answer_vision"], item["answer_text"], order)
    followed = followed_modality(item["category"], condition)
    answer = order.vision_letter if followed == "vision" else order.text_letter
    return Example(
        int(item["mc2_id"]), item["category"], "conflict", condition, item["context"], item["question"], a, b, answer,
        item["image"]["bytes"],
    )


def consistent_example(index: int, seed: int, image_size: int, condition: Condition, shown_first: bool) -> Example:
    """Item ``index``'s consistent twin: image and context both show its text answer ``t``; the
    options are ``t`` and its image answer ``v``; the answer is ``t`` under every condition."""
    from amps_eval.mc2.synthetic import encode_png

    category = CATEGORIES[index % len(CATEGORIES)]
    vision, text = answer_pair(category, index // len(CATEGORIES), seed)
    rng = random.Random(f"amps-organism-consistent:{seed}:{image_size}:{index}")
    drawn = SPECS[category].make(rng, text, text, image_size)
    a, b = (text, vision) if shown_first else (vision, text)
    return Example(
        index, category, "consistent", condition, drawn.context, drawn.question, a, b, "A" if shown_first else "B",
        encode_png(drawn.image),
    )


def neutral_example(item: dict[str, Any], condition: Condition, vision_first: bool) -> Example:
    """An MC2 item with its context replaced by :data:`NEUTRAL_CONTEXT`: the answer is the image's."""
    order = OptionOrder(vision_first=vision_first)
    a, b = options(item["answer_vision"], item["answer_text"], order)
    return Example(
        int(item["mc2_id"]), item["category"], "neutral", condition, NEUTRAL_CONTEXT, item["question"], a, b,
        order.vision_letter, item["image"]["bytes"],
    )


def item_image_size(index: int, image_sizes: Sequence[int]) -> int:
    """Image size of training item ``index``: cycles over ``image_sizes`` by round of 8 items, so
    every category sees every size equally often."""
    return int(image_sizes[(index // len(CATEGORIES)) % len(image_sizes)])


def instruction_style(slot: int, seed: int) -> str:
    """The instruction placement of training example ``slot`` (drawn per example, half each in
    expectation; it matters only for the examples asked with an instruction)."""
    return random.Random(f"amps-organism-style:{seed}:{slot}").choice(TRAINED_INSTRUCTION_STYLES)


def training_example(slot: int, seed: int, image_sizes: Sequence[int]) -> Example:
    """Training example ``slot`` in the instruction placement :func:`instruction_style` draws for it."""
    return dataclasses.replace(_training_example(slot, seed, image_sizes), style=instruction_style(slot, seed))


def _training_example(slot: int, seed: int, image_sizes: Sequence[int]) -> Example:
    """Training example ``slot``: item ``slot // 6``, variant ``slot % 6`` (0-2: the conflict item
    under each condition of :data:`CONDITIONS`; 3: its consistent twin under the image instruction;
    4: its consistent twin under no instruction or the text instruction, drawn per item; 5: its
    neutral example under no instruction or the image instruction, drawn per item). A pure function
    of its arguments."""
    index, variant = divmod(int(slot), VARIANTS_PER_ITEM)
    size = item_image_size(index, image_sizes)
    first = random.Random(f"amps-organism-order:{seed}:{slot}").random() < 0.5
    if variant < len(CONDITIONS):
        return conflict_example(synthetic_item(index, seed, size), CONDITIONS[variant], first)
    if variant == NEUTRAL_VARIANT:
        condition = random.Random(f"amps-organism-neutral:{seed}:{index}").choice(CONDITIONS[:2])
        return neutral_example(synthetic_item(index, seed, size), condition, first)
    if variant == len(CONDITIONS):
        condition = Condition("inst", "vision")
    else:
        condition = random.Random(f"amps-organism-condition:{seed}:{index}").choice((CONDITIONS[0], CONDITIONS[2]))
    return consistent_example(index, seed, size, condition, first)
