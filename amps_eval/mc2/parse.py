"""Which option an MC2 answer follows (pure).

Real instruction-tuned models answer in many shapes ("B", "**B**", "The correct answer is: A",
"<answer>A</answer>", "B) blue\\n\\nThe image shows...", "I would choose A.", "The car is blue.").
The rules, strictest evidence first (docs/mc2.md, "Parsing traps"):

0. clean-up: the content of the last ``<answer>...</answer>`` tag if there is one; markdown emphasis
   and code marks (``*``, ``_``, `````) removed;
1. a letter that opens the answer: the first line is the letter alone ("B", "b.", "(B)", "[B]",
   "Option B", "Answer: B") or the letter followed by punctuation and text ("B. blue", "(B) blue",
   "B) blue", "B: blue", "Option B - blue"). Later lines (an explanation) are not read. If the text
   after the letter is exactly the *other* option, the answer contradicts itself: "others";
2. a letter the answer states ("The answer is B", "The correct answer is: A", "Final answer: (B)",
   "I would choose A", "Option B is correct", "B is the right answer"); the *last* statement wins,
   so reasoning that discusses both options before concluding parses to its conclusion. Only upper
   case letters count here ("the answer is a cat" names no option), and a statement naming both
   letters ("A or B", "A and B", "A/B") counts for neither;
3. the exact text of one option, as the whole answer or its first line, or after "the answer is"
   (case, surrounding spaces and final punctuation ignored);
4. a sentence that names exactly one option's full text as whole words ("The car is blue."); a run
   of option words alone ("blue blue blue", a degenerate generation) is not a sentence. Not for
   the 53 MC2 items whose options are nested ("happy" / "unhappy", "eating" / "not eating"): there
   only rules 1-3 apply, and when a sentence names both options it is "others";
5. anything else is ``None`` ("others"): no answer, "both", "neither", "I cannot tell".
Substring matching is never used.
"""

from __future__ import annotations

import re

_TAG = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.IGNORECASE | re.DOTALL)
_MARKUP = re.compile(r"[*`]+|(?<!\w)_+|_+(?!\w)")
_PREFIX = r"(?:(?:the\s+)?(?:final\s+|correct\s+)?(?:answer|option|choice)\s*(?:is)?\s*[:=]?\s*)?"
_ALONE = re.compile(rf"^\s*{_PREFIX}[\(\[]?\s*([AaBb])\s*[\)\]]?\s*[.:!]?\s*$", re.IGNORECASE)
_LEAD = re.compile(
    r"^\s*(?:(?:option|choice)\s*)?(?:\(\s*([AB])\s*\)|\[\s*([AB])\s*\]|([AB])\s*[.:)\-–])\s*(.*)$", re.IGNORECASE
)
_BOTH_LETTERS = r"\s*(?:or|and|/|,|&)\s*[\(\[]?\s*[AB]\b"
_NAMES_BOTH = re.compile(r"(?:or|and|/|&)\s*[\(\[]?\s*[AB]\b")
_STATED = [
    # "answer is B", "answer: (B)", "correct option is B", "final answer: B", "answer would be B"
    re.compile(
        r"(?i:answer|option|choice)\s*(?i:is|would\s+be|should\s+be|will\s+be|=|:)\s*:?\s*"
        r"(?i:option\s*|choice\s*)?[\(\[]?\s*([AB])\b\s*[\)\]]?(?![\w'])"
    ),
    # "I would choose A", "I'd pick option B", "I select (A)", "go with B"
    re.compile(
        r"(?i:choose|chose|pick|select|go\s+with|opt\s+for)\s+(?i:option\s*|choice\s*|answer\s*)?"
        r"[\(\[]?\s*([AB])\b\s*[\)\]]?(?![\w'])"
    ),
    # "Option B is correct", "B is the right answer", "(A) is correct"
    re.compile(
        r"(?<![\w'])(?i:option\s*|choice\s*|answer\s*)?[\(\[]?([AB])[\)\]]?\s+(?i:is)\s+"
        r"(?i:the\s+)?(?i:correct|right|best|most\s+accurate|accurate)\b"
    ),
]
_AFTER_STATEMENT = re.compile(r"(?i:answer|option|choice)\s*(?i:is|:)\s*:?\s*(.+)$")
_TRAILING = " \t\n.!?;:,\"'"
_SENTENCE_ENDS = re.compile(r"[.!?;,:\"'()\[\]]")


def _normalise(text: str) -> str:
    return " ".join(text.strip().strip(_TRAILING).lower().split())


def _clean(response: str) -> str:
    tags = _TAG.findall(response)
    text = tags[-1] if tags else response
    return _MARKUP.sub("", text).strip()


def _first_line(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip()), "")


def _contradicts(letter: str, rest: str, option_a: str, option_b: str) -> bool:
    """"A. <text of B>": the letter and the text disagree."""
    other = option_b if letter == "A" else option_a
    rest_norm = _normalise(_first_line(rest))
    return bool(rest_norm) and rest_norm == _normalise(other) and _normalise(option_a) != _normalise(option_b)


def _opening_letter(text: str, option_a: str, option_b: str) -> str | None | bool:
    """Rule 1: the letter that opens the answer, None if it contradicts itself, False if no letter."""
    line = _first_line(text)
    alone = _ALONE.match(line)
    if alone:
        return alone.group(1).upper()
    lead = _LEAD.match(line)
    if lead:
        letter = next(group for group in lead.groups()[:3] if group).upper()
        if _NAMES_BOTH.match(lead.group(4)):  # "(A) or (B)"
            return None
        return None if _contradicts(letter, lead.group(4), option_a, option_b) else letter
    return False


def _stated_letter(text: str) -> str | None:
    """Rule 2: the last stated letter whose statement does not name both letters."""
    found: list[tuple[int, str]] = []
    for pattern in _STATED:
        for match in pattern.finditer(text):
            tail = text[match.end(1) :]
            head = text[: match.start(1)]
            if re.match(r"\s*[\)\]]?" + _BOTH_LETTERS, tail) or re.search(r"\b[AB]\b\s*[\)\]]?\s*(?:or|and|/|&)\s*[\(\[]?$", head):
                continue
            found.append((match.start(1), match.group(1)))
    return max(found)[1] if found else None


def _option_text(text: str, a: str, b: str) -> str | None:
    """Rule 3: the whole answer, its first line, or what follows "the answer is", equals one option."""
    candidates = [_normalise(text), _normalise(_first_line(text))]
    after = _AFTER_STATEMENT.search(_first_line(text))
    if after:
        candidates.append(_normalise(after.group(1)))
    for candidate in candidates:
        if candidate == a:
            return "A"
        if candidate == b:
            return "B"
    return None


def _words(text: str) -> str:
    return f" {' '.join(_SENTENCE_ENDS.sub(' ', text.lower()).split())} "


def _mentioned_option(text: str, a: str, b: str) -> str | None:
    """Rule 4: exactly one option's full text appears as whole words in a sentence (not for nested
    options; and not in a run of option words alone, "big big big", which is collapse)."""
    if a in b or b in a:
        return None
    words = _words(text)
    if not set(words.split()) - set(_words(a).split()) - set(_words(b).split()):
        return None
    has_a, has_b = f" {_words(a).strip()} " in words, f" {_words(b).strip()} " in words
    if has_a != has_b:
        return "A" if has_a else "B"
    return None


def parse_letter(response: str, option_a: str, option_b: str) -> str | None:
    """"A", "B" or None for a model response to an A/B question."""
    if not isinstance(response, str):
        return None
    text = _clean(response)
    if not text:
        return None
    opening = _opening_letter(text, option_a, option_b)
    if opening is not False:
        return opening
    stated = _stated_letter(text)
    if stated:
        return stated
    a, b = _normalise(option_a), _normalise(option_b)
    if not a or not b or a == b:
        return None
    return _option_text(text, a, b) or _mentioned_option(text, a, b)


def follows(response: str, doc: dict) -> str:
    """"vision", "text" or "others": which modality a response to a task document follows."""
    letter = parse_letter(response, doc["option_a"], doc["option_b"])
    if letter is None:
        return "others"
    return "vision" if letter == doc["vision_letter"] else "text"
