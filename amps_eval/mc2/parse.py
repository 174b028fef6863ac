"""Which option an MC2 answer follows (pure).

Order of evidence, strictest first (docs/mc2.md, "Parsing traps"):

1. an option letter: the whole answer is a letter ("B", "B.", "(B)", "B) ..." , "B. <text>"), or
   the answer states it ("Answer: B", "The answer is B", "answer is (B)"): the *last* such
   statement wins, so chain-of-thought text that discusses both options before concluding parses
   to its conclusion;
2. the exact text of one option (case, surrounding spaces and final punctuation ignored);
3. anything else is ``None`` ("others"). Substring matching is never used: in 53 MC2 items one
   answer contains the other ("happy" / "unhappy", "eating" / "not eating").
"""

from __future__ import annotations

import re

_LETTER_ONLY = re.compile(r"^\s*[\(\[]?\s*([AB])\s*[\)\]]?\s*[.:)]?\s*$")
_LETTER_LEAD = re.compile(r"^\s*[\(\[]?([AB])[\)\].:]\s+\S")
_LETTER_NAMED = re.compile(r"^\s*(?i:option|answer|choice)\s*[\(\[]?([AB])[\)\]]?\s*[.:]?\s*$")
# Only letters in upper case count: "the answer is a cat" names no option.
_LETTER_STATED = re.compile(
    r"(?i:answer|option|choice)\s*(?i:is|:)\s*(?i:option\s*)?[\(\[]?\s*([AB])\b\s*[\)\]]?(?![\w'])"
)
_TRAILING = " \t\n.!?;:,\"'"


def _normalise(text: str) -> str:
    return " ".join(text.strip().strip(_TRAILING).lower().split())


def parse_letter(response: str, option_a: str, option_b: str) -> str | None:
    """"A", "B" or None for a model response to an A/B question."""
    if not isinstance(response, str):
        return None
    match = _LETTER_ONLY.match(response) or _LETTER_NAMED.match(response) or _LETTER_LEAD.match(response)
    if match:
        letter = match.group(1)
        rest = response[match.end() - 1 :] if match.re is _LETTER_LEAD else ""
        # "A. <text>" must not name the other option's text.
        other = option_b if letter == "A" else option_a
        if rest and _normalise(rest) == _normalise(other) and _normalise(option_a) != _normalise(option_b):
            return None
        return letter
    stated = _LETTER_STATED.findall(response)
    if stated:
        return stated[-1].upper()
    answer = _normalise(response)
    a, b = _normalise(option_a), _normalise(option_b)
    if a == b:
        return None
    if answer == a:
        return "A"
    if answer == b:
        return "B"
    return None


def follows(response: str, doc: dict) -> str:
    """"vision", "text" or "others": which modality a response to a task document follows."""
    letter = parse_letter(response, doc["option_a"], doc["option_b"])
    if letter is None:
        return "others"
    return "vision" if letter == doc["vision_letter"] else "text"
