"""The prompt baselines of the AMPS paper's tables, as conversations (pure).

* ``none``: the MC2 question alone (the paper's "MLLM-only").
* ``inst``: the question, then the MC2 authors' instruction toward the target modality
  (``amps_eval.mc2.prompt.MODALITY_INSTRUCTIONS``); the paper's "Inst Design".
* ``cot``: the instruction, then a request to reason step by step and end with "Answer: A" or
  "Answer: B" (the answer parser takes the last such statement); the paper's "CoT prompting".
* ``fewshot``: ``k`` worked examples from *other* items, each an earlier user turn (its image and
  question) answered with the letter of the option that follows the target modality; the paper's
  "Few shot".

Steering methods use the plain ``none`` conversation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from amps_eval.mc2.prompt import MODALITY_INSTRUCTIONS

PROMPT_METHODS = ("none", "inst", "cot", "fewshot")

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
    method: str, text: str, images: Sequence, target: str | None, examples: Sequence[Example] = ()
) -> list[Turn]:
    """The turns sent to the model for one request under a prompt method."""
    if method not in PROMPT_METHODS:
        raise ValueError(f"unknown prompt method {method!r}; expected one of {PROMPT_METHODS}")
    if method != "none" and target not in MODALITY_INSTRUCTIONS:
        raise ValueError(
            f"method={method} needs the target modality of the task (vision or text), got {target!r}: "
            "it only works with the MC2 tasks (mc2_visual*, mc2_text*)"
        )
    question = Turn("user", text, tuple(images))
    if method == "none":
        return [question]
    if method == "inst":
        return [Turn("user", f"{text}\n{MODALITY_INSTRUCTIONS[target]}", tuple(images))]
    if method == "cot":
        return [Turn("user", f"{text}\n{MODALITY_INSTRUCTIONS[target]}\n{COT_INSTRUCTION}", tuple(images))]
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
