"""The prompt baselines of the AMPS paper's tables, as conversations (pure).

* ``none``: the MC2 question alone (the paper's "MLLM-only").
* ``inst``: the question with the instruction toward the target modality; the paper's "Inst Design".
  By default (``instruction_style="mc2_authors"``) it is the MC2 authors' prompt with an
  instruction, verbatim: their wording (``amps_eval.mc2.prompt.MC2_AUTHORS_INSTRUCTIONS``) between
  the text context and the question. ``instruction_style="appended"`` appends the instruction
  (``APPENDED_INSTRUCTIONS``) on a new line after the whole question instead, as AMPS Eq. 8
  writes [I, T, P] (see ``amps_eval.mc2.prompt.instructed_prompt``).
* ``cot``: the ``inst`` prompt (same style), then on a new line a request to reason step by step and
  end with "Answer: A" or "Answer: B" (the answer parser takes the last such statement); the
  paper's "CoT prompting".
* ``fewshot``: ``k`` worked examples from *other* items, each an earlier user turn (its image and
  question) answered with the letter of the option that follows the target modality; the paper's
  "Few shot".

Steering methods use the plain ``none`` conversation. The steering fits and ``amps-eval mcs`` build
their contrast prompts [I, T, P_v] / [I, T, P_t] with ``inst`` in the ``appended`` style
(``amps_eval.fit_data``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from amps_eval.mc2.prompt import DEFAULT_INSTRUCTION_STYLE, TARGETS, check_instruction_style, instructed_prompt
from amps_eval.methods.registry import PROMPT_METHODS  # ("none", "inst", "cot", "fewshot")

COT_INSTRUCTION = (
    "Think step by step: first say what the image shows, then what the text context says, then "
    'decide. End with a last line of the form "Answer: A" or "Answer: B".'
)


@dataclass(frozen=True)
class Turn:
    """One chat turn: its images come before its text, as in the MC2 authors' prompt."""

    role: str
    text: str
    images: tuple = field(default=(), repr=False)


@dataclass(frozen=True)
class Example:
    """A worked few-shot example: a question prompt, its images and the answer to give."""

    text: str
    images: tuple
    answer: str


def build_conversation(
    method: str,
    text: str,
    images: Sequence,
    target: str | None,
    examples: Sequence[Example] = (),
    *,
    style: str = DEFAULT_INSTRUCTION_STYLE,
    context: str | None = None,
) -> list[Turn]:
    """The turns sent to the model for one request under a prompt method.

    ``text`` is the MC2 question prompt (``amps_eval.mc2.prompt.doc_prompt``). ``style`` places the
    instruction of ``inst`` and ``cot`` (one of ``INSTRUCTION_STYLES``); ``mc2_authors`` needs the
    document's ``context`` to find the line after which the instruction goes."""
    if method not in PROMPT_METHODS:
        raise ValueError(f"unknown prompt method {method!r}; expected one of {PROMPT_METHODS}")
    check_instruction_style(style)
    if method != "none" and target not in TARGETS:
        raise ValueError(
            f"method={method} needs the target modality of the task (vision or text), got {target!r}: "
            "it only works with the MC2 tasks (mc2_visual*, mc2_text*)"
        )
    question = Turn("user", text, tuple(images))
    if method == "none":
        return [question]
    if method == "inst":
        return [Turn("user", instructed_prompt(text, context, target, style), tuple(images))]
    if method == "cot":
        return [Turn("user", f"{instructed_prompt(text, context, target, style)}\n{COT_INSTRUCTION}", tuple(images))]
    if not examples:
        raise ValueError("method=fewshot needs at least one example (fewshot_k >= 1 and other items in the task)")
    turns: list[Turn] = []
    for example in examples:
        turns.append(Turn("user", example.text, tuple(example.images)))
        turns.append(Turn("assistant", example.answer))
    return [*turns, question]


def choose_examples(
    mc2_ids: Sequence[int], categories: Sequence[str], mc2_id: int, category: str, k: int, seed: int
) -> list[int]:
    """Row indices of ``k`` few-shot examples for one item: other items, same category first.

    Deterministic in (seed, mc2_id), so every process of a multi-GPU run and every rerun picks the
    same examples. An item is never its own example (rows of the same item, e.g. its other option
    order, are excluded too).
    """
    import random

    rng = random.Random(f"{seed}:{mc2_id}")
    same = [i for i, (m, c) in enumerate(zip(mc2_ids, categories)) if m != mc2_id and c == category]
    other = [i for i, (m, c) in enumerate(zip(mc2_ids, categories)) if m != mc2_id and c != category]
    chosen = rng.sample(same, min(k, len(same)))
    if len(chosen) < k:
        chosen += rng.sample(other, min(k - len(chosen), len(other)))
    return chosen
