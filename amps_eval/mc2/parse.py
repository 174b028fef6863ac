"""Which option an MC2 answer follows (pure).

Real instruction-tuned models answer in many shapes ("B", "**B**", "The correct answer is: A",
"<answer>A</answer>", "B) blue\\n\\nThe image shows...", "I would choose A.", "### Answer\\nA",
"It's A.", "The car is blue."). The rules, strictest evidence first (docs/mc2.md, "Parsing traps"):

0. clean-up: the content of the last ``<answer>...</answer>`` tag if there is one; markdown emphasis,
   code marks (``*``, ``_``, `````) and heading marks (``#``) removed; a first line that is only a
   label ("Answer", "Final answer:") is dropped, so the answer below it is the first line;
1. a letter that opens the answer: the first line is the letter alone ("B", "b.", "(B)", "[B]",
   "\"B\"", "Option B", "Answer: B", "Answer - B") or the letter followed by punctuation and text
   ("B. blue", "(B) blue", "B) blue", "B: blue", "Option B - blue", and, upper case only, "B, blue"
   and "B (blue)"). Later lines (an explanation) are not read. If the text after the letter is
   exactly the *other* option, the answer contradicts itself: "others"; if it is the other letter
   ("A, B"), it names both: "others";
2. a letter the answer states ("The answer is B", "The answer is \"B\"", "The correct answer is: A",
   "Final answer: (B)", "I would choose A", "Option B is correct", "B is the right answer", "It's
   B.", "I think it is A.", a clause of its own at the end of a line: "Based on the image, A."); the
   *last* statement wins, so reasoning that discusses both options before concluding parses to its
   conclusion ("The answer is not B, it is A." is A). Only upper case letters count here ("the
   answer is a cat", "it is a cat" name no option), and a statement naming both letters ("A or B",
   "A and B", "A/B", "A, B") counts for neither;
3. the exact text of one option, as the whole answer or its first line, or after "the answer is"
   (case, surrounding spaces, quotes and final punctuation ignored);
4. a sentence that names exactly one option's full text as whole words ("The car is blue.", "It is
   happy." against happy / unhappy, "The man is not eating." against eating / not eating). A mention
   inside the other option's text does not count ("tennis" in "table tennis"), nor does a negated
   one ("not red", "isn't red", "no red", up to three words after the negation within a clause and
   before a "but", "and" or "or"): "The car is not red." names no option, "It is not blue, it is red." names red.
   Not a sentence: a run of option words alone ("blue blue blue") or any text with a loop (a word
   or a group of up to three words repeated three times in a row, "big up up up ... big big"):
   that is a collapsed generation;
5. anything else is ``None`` ("others"): no answer, "both", "neither", "I cannot tell".
Substring matching is never used.
"""

from __future__ import annotations

import re

_TAG = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.IGNORECASE | re.DOTALL)
_MARKUP = re.compile(r"[*`]+|(?<!\w)_+|_+(?!\w)")
_HEADING = re.compile(r"^[ \t]*#{1,6}[ \t]*", re.MULTILINE)
_LABEL_LINE = re.compile(r"^\s*(?:the\s+)?(?:final\s+|correct\s+)?answer\s*[:\-–—]?\s*$", re.IGNORECASE)
_OPEN = "[\\(\\[\"'“‘]"  # what may stand before a letter: ( [ or a quote
_CLOSE = "[\\)\\]\"'”’]"  # and after it
_PREFIX = r"(?:(?:the\s+)?(?:final\s+|correct\s+)?(?:answer|option|choice)\s*(?:is)?\s*[:=\-–—]?\s*)?"
_ALONE = re.compile(rf"^\s*{_PREFIX}{_OPEN}?\s*([AaBb])\s*{_CLOSE}?\s*[.:!]?\s*$", re.IGNORECASE)
_LEAD = re.compile(
    r"^\s*(?:(?:option|choice)\s*)?(?:\(\s*([AB])\s*\)|\[\s*([AB])\s*\]|([AB])\s*[.:)\-–]"
    r"|(?-i:([AB]))(?:\s*,|\s+(?=\()))\s*(.*)$",
    re.IGNORECASE,
)
_BOTH_LETTERS = r"\s*(?:or|and|/|,|&)\s*[\(\[]?\s*[AB]\b"
_NAMES_BOTH = re.compile(r"(?:or|and|/|&)\s*[\(\[]?\s*[AB]\b")
_OTHER_LETTER = re.compile(r"[\(\[]?\s*[AB]\b(?![\w'])")
_STATED = [
    # "answer is B", "answer: (B)", "answer is "B"", "Answer - B", "correct option is B", "answer would be B"
    re.compile(
        r"(?i:answer|option|choice)\s*(?i:is|would\s+be|should\s+be|will\s+be|=|:|-|–|—)\s*:?\s*"
        rf"(?i:option\s*|choice\s*)?{_OPEN}?\s*([AB])\b\s*{_CLOSE}?(?![\w'])"
    ),
    # "I would choose A", "I'd pick option B", "I select (A)", "go with B"
    re.compile(
        r"(?i:choose|chose|pick|select|go\s+with|opt\s+for)\s+(?i:option\s*|choice\s*|answer\s*)?"
        rf"{_OPEN}?\s*([AB])\b\s*{_CLOSE}?(?![\w'])"
    ),
    # "Option B is correct", "B is the right answer", "(A) is correct"
    re.compile(
        r"(?<![\w'])(?i:option\s*|choice\s*|answer\s*)?[\(\[]?([AB])[\)\]]?\s+(?i:is)\s+"
        r"(?i:the\s+)?(?i:correct|right|best|most\s+accurate|accurate)\b"
    ),
    # "It's A.", "I think it is B", "it would be (A)": the letter ends the clause
    re.compile(
        r"(?<![\w'])(?i:it|that)(?:['’](?i:s)|\s+(?i:is|would\s+be|should\s+be|must\s+be))\s+(?i:option\s*)?"
        rf"{_OPEN}?([AB]){_CLOSE}?(?=[ \t]*(?:[.!,;:\n]|$))"
    ),
    # "Based on the image, A.": a clause of its own that ends a line
    re.compile(rf"[,;:][ \t]*{_OPEN}?([AB]){_CLOSE}?[ \t]*[.!]?[ \t]*$", re.MULTILINE),
]
_AFTER_STATEMENT = re.compile(r"(?i:answer|option|choice)\s*(?i:is|:|-|–|—)\s*:?\s*(.+)$")
_TRAILING = " \t\n.!?;:,\"'“”‘’()[]"
_CLAUSE_ENDS = re.compile(r"[.!?;,:\"“”()\[\]]")
_NEGATIONS = frozenset({"not", "no", "never", "nor", "neither", "without", "t"})  # "t": isn't -> isn t
_NEGATION_REACH = 3  # words after a negation that it negates (within a clause, up to a "but", "and", "or")
_BOUNDARY = "|"
_SCOPE_ENDS = frozenset({_BOUNDARY, "but", "and", "or"})


def _normalise(text: str) -> str:
    return " ".join(text.strip().strip(_TRAILING).lower().split())


def _clean(response: str) -> str:
    tags = _TAG.findall(response)
    text = _HEADING.sub("", _MARKUP.sub("", tags[-1] if tags else response)).strip()
    lines = text.splitlines()
    if len(lines) > 1 and _LABEL_LINE.match(lines[0]):  # "### Answer\nA", "**Final answer:**\nB"
        text = "\n".join(lines[1:]).strip()
    return text


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
        letter = next(group for group in lead.groups()[:4] if group).upper()
        rest = lead.group(5)
        if _NAMES_BOTH.match(rest) or _OTHER_LETTER.match(rest):  # "(A) or (B)", "A, B"
            return None
        return None if _contradicts(letter, rest, option_a, option_b) else letter
    return False


def _stated_letter(text: str) -> str | None:
    """Rule 2: the last stated letter whose statement does not name both letters."""
    found: list[tuple[int, str]] = []
    for pattern in _STATED:
        for match in pattern.finditer(text):
            tail = text[match.end(1) :]
            head = text[: match.start(1)]
            if re.match(r"\s*[\)\]]?" + _BOTH_LETTERS, tail) or re.search(
                r"\b[AB]\b\s*[\)\]]?\s*(?:or|and|/|&|,)\s*[\(\[]?$", head
            ):
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


def _tokens(text: str) -> list[str]:
    """Lower-case words, with `_BOUNDARY` where a clause ends (punctuation)."""
    marked = _CLAUSE_ENDS.sub(f" {_BOUNDARY} ", text.lower().replace("'", " "))
    out: list[str] = []
    for token in marked.split():
        if token != _BOUNDARY or (out and out[-1] != _BOUNDARY):
            out.append(token)
    while out and out[-1] == _BOUNDARY:
        out.pop()
    return out


def _has_loop(tokens: list[str]) -> bool:
    """A word or a group of up to three words repeated three times in a row: a collapsed generation."""
    words = [t for t in tokens if t != _BOUNDARY]
    for size in (1, 2, 3):
        for start in range(len(words) - 3 * size + 1):
            group = words[start : start + size]
            if words[start + size : start + 2 * size] == group and words[start + 2 * size : start + 3 * size] == group:
                return True
    return False


def _spans(tokens: list[str], option: list[str]) -> list[tuple[int, int]]:
    n = len(option)
    return [(i, i + n) for i in range(len(tokens) - n + 1) if tokens[i : i + n] == option]


def _negated(tokens: list[str], start: int) -> bool:
    for token in reversed(tokens[max(0, start - _NEGATION_REACH) : start]):
        if token in _SCOPE_ENDS:
            return False
        if token in _NEGATIONS or token.endswith("n’t"):
            return True
    return False


def _counted(tokens: list[str], option: list[str], other: list[str]) -> bool:
    """Whether ``option`` is named: a mention that is neither inside a mention of ``other`` nor negated."""
    others = _spans(tokens, other)
    for start, end in _spans(tokens, option):
        inside = any(o_start <= start and end <= o_end and (o_start, o_end) != (start, end) for o_start, o_end in others)
        if not inside and not _negated(tokens, start):
            return True
    return False


def _mentioned_option(text: str, a: str, b: str) -> str | None:
    """Rule 4: exactly one option's full text is named as whole words in a sentence (not in a run of
    option words alone, "big big big", nor in a loop, "big up up up": both are collapse)."""
    tokens, a_tokens, b_tokens = _tokens(text), _tokens(a), _tokens(b)
    if not a_tokens or not b_tokens or a_tokens == b_tokens:
        return None
    words = set(tokens) - {_BOUNDARY}
    if not words - set(a_tokens) - set(b_tokens) or _has_loop(tokens):
        return None
    has_a, has_b = _counted(tokens, a_tokens, b_tokens), _counted(tokens, b_tokens, a_tokens)
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
