"""MC2 prompts and option order (pure functions, no model code).

The question prompt follows the MC2 authors (docs/mc2.md, "The authors' prompt"):

    Text context: <context>
    <question>
    A. <option 1>
    B. <option 2>
    Answer the question by selecting the correct answer A or B.

with the image before the text in the user turn.

Instructions. The prompt baselines ``inst`` and ``cot`` add an instruction toward the target modality
in one of two :data:`INSTRUCTION_STYLES` (:func:`instructed_prompt`):

* ``mc2_authors`` (the default of the wrappers): the MC2 authors' wording
  (:data:`MC2_AUTHORS_INSTRUCTIONS`, each with its trailing space) placed as in their script, between
  the text context and the question::

      Text context: <context>
      <instruction, which ends with a space>
      <question>
      A. ...

* ``appended``: the instruction (:data:`APPENDED_INSTRUCTIONS`) on a new line after the whole
  question prompt, as AMPS Eq. 8 writes [I, T, P]. The steering fits and ``amps-eval mcs`` build their
  contrast prompts [I, T, P_v] / [I, T, P_t] this way (``amps_eval.fit_data.FIT_INSTRUCTION_STYLE``).

Option order. The authors ask every item twice with the options swapped; how they combine the two
answers is unpublished. amps-eval asks each item once by default (``orders="one"``) and puts the
image-supported answer first for exactly the items with an even ``mc2_id``: deterministic, half of
the items each way, and independent of the run. ``orders="both"`` asks both orders and an item
counts for a modality only when both answers follow it (see ``amps_eval.mc2.metrics``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from amps_eval.vocabulary import TARGETS

Target = Literal["vision", "text"]
ORDER_MODES: tuple[str, ...] = ("one", "both")
ANSWER_INSTRUCTION = "Answer the question by selecting the correct answer A or B."

INSTRUCTION_STYLES: tuple[str, ...] = ("mc2_authors", "appended")
DEFAULT_INSTRUCTION_STYLE = "mc2_authors"

# The MC2 authors' instructions, verbatim from their script (docs/mc2.md, "The authors'
# instructions"): toward the image, and their `template1` toward the text. Both end with a space.
MC2_AUTHORS_INSTRUCTIONS: dict[str, str] = {
    "vision": (
        "In case there is an inconsistency between the text context and the image content, "
        "you should follow the image content rather than the text context. "
    ),
    "text": (
        "In case there is an inconsistency between the Text Context and the input image content, "
        "you must rely on the text context rather than the input image content. "
    ),
}

# The instructions appended after the question prompt (style "appended"; the P_v / P_t of the
# steering fits and of `amps-eval mcs`). No trailing space; the text one says "the text context and
# the image content" where the authors' template1 says "the Text Context and the input image content".
APPENDED_INSTRUCTIONS: dict[str, str] = {
    "vision": (
        "In case there is an inconsistency between the text context and the image content, "
        "you should follow the image content rather than the text context."
    ),
    "text": (
        "In case there is an inconsistency between the text context and the image content, "
        "you must rely on the text context rather than the input image content."
    ),
}

INSTRUCTIONS: dict[str, dict[str, str]] = {"mc2_authors": MC2_AUTHORS_INSTRUCTIONS, "appended": APPENDED_INSTRUCTIONS}


def check_instruction_style(style: str) -> str:
    """``style`` if it is one of :data:`INSTRUCTION_STYLES`, else a ValueError naming them."""
    if style not in INSTRUCTION_STYLES:
        raise ValueError(f"unknown instruction_style={style!r}; valid instruction styles: {', '.join(INSTRUCTION_STYLES)}")
    return style


def instruction(target: str, style: str = DEFAULT_INSTRUCTION_STYLE) -> str:
    """The instruction toward ``target`` (vision or text) in an instruction style."""
    check_instruction_style(style)
    if target not in TARGETS:
        raise ValueError(f"unknown target modality {target!r}; expected one of {TARGETS}")
    return INSTRUCTIONS[style][target]


def instructed_prompt(text: str, context: str | None, target: str, style: str = DEFAULT_INSTRUCTION_STYLE) -> str:
    """The question prompt ``text`` with the instruction toward ``target``, placed as ``style`` says.

    ``mc2_authors`` inserts the instruction after the line ``Text context: <context>``, so ``text``
    must begin with that line (as :func:`question_prompt` writes it); ``appended`` adds it on a new
    line after ``text`` (``context`` is not needed)."""
    words = instruction(target, style)
    if style == "appended":
        return f"{text}\n{words}"
    head = f"Text context: {context}\n"
    if context is None or not text.startswith(head):
        raise ValueError(
            "instruction_style=mc2_authors puts the instruction after the prompt's 'Text context: <context>' line, "
            "but the prompt does not begin with the document's context line (is it an MC2 task document?); "
            "use instruction_style=appended for other prompts"
        )
    return f"{head}{words}\n{text[len(head):]}"


@dataclass(frozen=True)
class OptionOrder:
    """Which answer is printed as option A and which as option B."""

    vision_first: bool

    @property
    def vision_letter(self) -> str:
        return "A" if self.vision_first else "B"

    @property
    def text_letter(self) -> str:
        return "B" if self.vision_first else "A"

    @property
    def name(self) -> str:
        return "vision_first" if self.vision_first else "text_first"


def default_order(mc2_id: int) -> OptionOrder:
    """The single order asked with ``orders="one"``: image answer first for even ids."""
    return OptionOrder(vision_first=int(mc2_id) % 2 == 0)


def orders_for(mc2_id: int, mode: str) -> list[OptionOrder]:
    """The option orders asked for one item under an order mode."""
    if mode == "one":
        return [default_order(mc2_id)]
    if mode == "both":
        return [OptionOrder(vision_first=True), OptionOrder(vision_first=False)]
    raise ValueError(f"unknown option-order mode {mode!r}; expected one of {ORDER_MODES}")


def options(answer_vision: str, answer_text: str, order: OptionOrder) -> tuple[str, str]:
    """(option A, option B) for an item under an order."""
    return (answer_vision, answer_text) if order.vision_first else (answer_text, answer_vision)


def question_prompt(context: str, question: str, option_a: str, option_b: str) -> str:
    """The MC2 authors' prompt text (the image goes before it in the user turn)."""
    return f"Text context: {context}\n{question}\nA. {option_a}\nB. {option_b}\n{ANSWER_INSTRUCTION}"


def doc_prompt(doc: dict) -> str:
    """`question_prompt` for a task document (which carries its option order)."""
    return question_prompt(doc["context"], doc["question"], doc["option_a"], doc["option_b"])


def answer_letter(doc: dict, modality: str) -> str:
    """The option letter that follows ``modality`` in a task document."""
    if modality not in TARGETS:
        raise ValueError(f"unknown modality {modality!r}; expected one of {TARGETS}")
    return doc["vision_letter"] if modality == "vision" else ("B" if doc["vision_letter"] == "A" else "A")
