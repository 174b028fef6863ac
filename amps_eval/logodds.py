"""The parse-free preference measure ``image_logodds`` (pure functions).

``image_logodds`` of one item = log p(image option) - log p(text option) at the first answer
position, under the prompt and steering of the generated answer. What "the option" is depends on
how the model answers, so both ways of naming an option are candidates:

* **letters** - the option letters ("A" / "B"), each one token, at the first generated position
  (real models asked for a letter);
* **option texts** - the options' answer texts tokenized as the model would write them at the start
  of its answer ("blue" / "red", "moving left" / "moving right"): compared at the first token where
  the two answers differ, given their shared prefix ("moving"), at the generated position of that
  token, provided the model did generate that shared prefix (the shipped organisms, which answer
  with the option's text).

The measure uses the candidate pair that carries more probability at its position (the way the
model answers this item) and records which (``image_logodds_kind``: ``letter`` or ``text``). No
candidate: no value (None), never a made-up number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

LETTER = "letter"
TEXT = "text"


def first_difference(a: Sequence[int], b: Sequence[int]) -> int:
    """Index of the first token where ``a`` and ``b`` differ (``a`` != ``b`` required; a sequence
    that is a prefix of the other differs at its end, where the caller supplies an end token)."""
    for k, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return k
    if len(a) == len(b):
        raise ValueError(f"the two answers tokenize identically ({list(a)}): they cannot be told apart")
    return min(len(a), len(b))


@dataclass(frozen=True)
class CandidatePair:
    """Two competing first tokens at one generation step (image option's, text option's)."""

    kind: str  # LETTER or TEXT
    step: int  # the generation step (0 = the first answer token) where they compete
    prefix: tuple[int, ...]  # tokens that must have been generated before ``step``
    image_token: int
    text_token: int


def text_pair(image_ids: Sequence[int], text_ids: Sequence[int], end_token: int) -> CandidatePair:
    """The option-text candidates: the first differing token of the two answers (each followed by
    ``end_token``)."""
    a, b = [*image_ids, end_token], [*text_ids, end_token]
    k = first_difference(a, b)
    return CandidatePair(TEXT, k, tuple(a[:k]), a[k], b[k])


def letter_pair(image_letter_token: int, text_letter_token: int) -> CandidatePair:
    return CandidatePair(LETTER, 0, (), image_letter_token, text_letter_token)


def logodds_from_steps(
    pairs: Sequence[CandidatePair],
    generated: Sequence[int],
    log_probs_at: Callable[[int, int], float],
) -> tuple[float | None, str | None]:
    """``(image_logodds, kind)`` from one answer's generation.

    ``generated``: the generated token ids; ``log_probs_at(step, token)``: the log-probability of
    ``token`` at generation ``step`` (log-softmax of that step's scores; a step beyond the generated
    ones must not be asked for). A pair counts only where its prefix was generated. Among those, the
    pair with more probability mass (p(image) + p(text)) at its step gives the value."""
    best: tuple[float, float, str] | None = None
    for pair in pairs:
        if pair.step >= len(generated) or tuple(generated[: pair.step]) != pair.prefix:
            continue
        li, lt = log_probs_at(pair.step, pair.image_token), log_probs_at(pair.step, pair.text_token)
        mass = math.exp(li) + math.exp(lt)
        if best is None or mass > best[0]:
            best = (mass, li - lt, pair.kind)
    if best is None:
        return None, None
    return best[1], best[2]


def candidate_pairs(doc: dict, tokenize: Callable[[str], list[int]], end_token: int) -> list[CandidatePair]:
    """The candidate pairs of an MC2 task document (``vision_letter``, ``answer_vision``,
    ``answer_text``): the letters, when each is one token, and the option texts. ``tokenize``:
    text -> token ids as the model would write them at the start of its answer (no special tokens).
    A document of another task gives no pair."""
    if not all(key in doc for key in ("vision_letter", "answer_vision", "answer_text")):
        return []
    image_letter = doc["vision_letter"]
    text_letter = "B" if image_letter == "A" else "A"
    pairs = []
    image_ids, text_ids = tokenize(image_letter), tokenize(text_letter)
    if len(image_ids) == 1 and len(text_ids) == 1 and image_ids != text_ids:
        pairs.append(letter_pair(image_ids[0], text_ids[0]))
    image_ids, text_ids = tokenize(doc["answer_vision"]), tokenize(doc["answer_text"])
    if image_ids != text_ids:
        pairs.append(text_pair(image_ids, text_ids, end_token))
    return pairs


class ScoredAnswer(str):
    """A generated answer (a ``str``, what lmms-eval expects from ``generate_until``) that carries
    its ``image_logodds`` and ``image_logodds_kind`` to the task's ``process_results``: the value
    travels with the answer of its own (task, doc_id) request, through lmms-eval's ordering,
    filters and multi-process gathering, with no state kept anywhere. An answer that lost them (a
    response cache hit, reasoning tags stripped) reads as None."""

    image_logodds: float | None
    image_logodds_kind: str | None

    def __new__(cls, text: str, image_logodds: float | None = None, image_logodds_kind: str | None = None):
        answer = super().__new__(cls, text)
        answer.image_logodds = image_logodds
        answer.image_logodds_kind = image_logodds_kind
        return answer

    def __reduce__(self):  # pickles (multi-process gathering) with its values
        return (ScoredAnswer, (str(self), self.image_logodds, self.image_logodds_kind))

    def strip(self, chars: str | None = None) -> "ScoredAnswer":
        """``str.strip`` keeping the values: lmms-eval 0.7.3's ``ConfigurableTask.process_results``
        strips every generated answer before the task's own function sees it."""
        return ScoredAnswer(str.strip(self, chars), self.image_logodds, self.image_logodds_kind)


def answer_logodds(answer: object) -> tuple[float | None, str | None]:
    """``(image_logodds, kind)`` carried by a generated answer (None, None for a plain string)."""
    return getattr(answer, "image_logodds", None), getattr(answer, "image_logodds_kind", None)
