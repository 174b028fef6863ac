"""Answer parsing on the real MC2 option pairs, option order, and scoring."""

import json
import math
from pathlib import Path

import pytest

from amps_eval.mc2 import metrics
from amps_eval.mc2.parse import follows, parse_letter
from amps_eval.mc2.prompt import default_order, options, orders_for, question_prompt

MC2_FILE = Path(__file__).resolve().parents[2] / "shared" / "mc2" / "evaluate_final.json"


@pytest.fixture(scope="module")
def mc2_records():
    if not MC2_FILE.exists():
        pytest.skip(f"the MC2 question file is not at {MC2_FILE}")
    return json.loads(MC2_FILE.read_text())


def _doc(vision, text, vision_first=True, target="vision", mc2_id=0):
    order = orders_for(0, "both")[0 if vision_first else 1]
    a, b = options(vision, text, order)
    return {"option_a": a, "option_b": b, "vision_letter": order.vision_letter, "target": target,
            "mc2_id": mc2_id, "category": "color", "order": order.name}


def test_substring_pairs_exist_and_parse_exactly(mc2_records):
    pairs = [(r["answer_vision"], r["answer_text"]) for r in mc2_records]
    nested = [(v, t) for v, t in pairs if v.lower() in t.lower() or t.lower() in v.lower()]
    assert len(nested) == 53  # docs/mc2.md, "Parsing traps"
    for vision, text in nested:
        for vision_first in (True, False):
            doc = _doc(vision, text, vision_first)
            assert follows(vision, doc) == "vision", (vision, text)
            assert follows(text, doc) == "text", (vision, text)
            assert follows(f"{text}.", doc) == "text"
            # whole words, never substrings: the shorter option inside the longer one does not count
            assert follows(f"It is {text}", doc) == "text", (vision, text)
            assert follows(f"It is {vision}.", doc) == "vision", (vision, text)
            assert follows(f"It is {vision} or {text}.", doc) == "others", (vision, text)


def test_every_real_pair_parses_letters_and_texts(mc2_records):
    for record in mc2_records:
        vision, text = record["answer_vision"], record["answer_text"]
        for vision_first in (True, False):
            doc = _doc(vision, text, vision_first)
            v, t = doc["vision_letter"], "B" if doc["vision_letter"] == "A" else "A"
            for template in ("{}", "{}.", "({})", "Answer: {}", "The answer is {}", "{}. " + vision):
                assert follows(template.format(v), doc) == "vision"
            assert follows(f"Answer: {t}", doc) == "text"
            assert follows(vision.upper(), doc) == "vision"
            assert follows(text, doc) == "text"


@pytest.mark.parametrize(
    "response, expected",
    [
        ("B", "B"), (" (A) ", "A"), ("Option B", "B"), ("answer: A", "A"),
        ("Let me think. The image shows red. The text says blue.\nAnswer: A", "A"),
        ("The answer is A. Final answer: B", "B"),  # the last statement wins
        ("the answer is a cat", None),  # lower-case "a" is an article, not an option
        ("Answer the question by selecting the correct answer A or B.", None),  # an echoed prompt
        ("A. blue", None),  # letter A but the text of option B: contradictory
        ("", None), ("I cannot tell.", None), ("C", None), (None, None),
    ],
)
def test_parse_letter_cases(response, expected):
    assert parse_letter(response, "red", "blue") == expected


def test_default_order_is_half_and_deterministic():
    firsts = [default_order(i).vision_first for i in range(250)]
    assert sum(firsts) == 125
    assert firsts == [default_order(i).vision_first for i in range(250)]
    assert [o.name for o in orders_for(7, "both")] == ["vision_first", "text_first"]
    with pytest.raises(ValueError, match="option-order mode"):
        orders_for(1, "three")


def test_question_prompt_is_the_authors():
    assert question_prompt("ctx", "Q?", "x", "y") == (
        "Text context: ctx\nQ?\nA. x\nB. y\nAnswer the question by selecting the correct answer A or B."
    )


def _records(decisions, target="vision", metric="target_acc"):
    out = []
    for mc2_id, order, followed in decisions:
        doc = {"mc2_id": mc2_id, "category": "color", "target": target, "order": order}
        out.append(metrics.answer_record(doc, followed, metric))
    return out


def test_score_one_order():
    recs = _records([(0, "vision_first", "vision"), (1, "text_first", "text"), (2, "vision_first", "others"),
                     (3, "text_first", "vision")])
    s = metrics.score(recs)
    assert (s.n_items, s.vision, s.text, s.others) == (4, 0.5, 0.25, 0.25)
    assert s.target_acc == 0.5 and s.vision_ratio == pytest.approx(2 / 3)
    assert [r["score"] for r in recs] == [1, 0, 0, 1]


def test_score_both_orders_needs_agreement():
    recs = _records([(0, "vision_first", "vision"), (0, "text_first", "vision"),
                     (1, "vision_first", "vision"), (1, "text_first", "text")], target="text")
    s = metrics.score(recs)
    assert (s.n_items, s.vision, s.text, s.others) == (2, 0.5, 0.0, 0.5)
    assert s.target_acc == 0.0


def test_score_edge_cases():
    with pytest.raises(ValueError, match="no MC2 answers"):
        metrics.score([])
    mixed = _records([(0, "vision_first", "vision")]) + _records([(1, "vision_first", "vision")], target="text")
    with pytest.raises(ValueError, match="different targets"):
        metrics.score(mixed)
    collapsed = metrics.score(_records([(0, "vision_first", "others")]))
    assert math.isnan(collapsed.vision_ratio) and collapsed.others == 1.0
    with pytest.raises(ValueError, match="follows must be"):
        metrics.answer_record({"mc2_id": 0, "category": "c", "target": "vision", "order": "x"}, "image", "target_acc")


STATING = ["{L}", "{L}. {T}", "({L}) {T}", "{L}, {T}", "{L} ({T})", "### Answer\n{L}", "Answer - {L}",
           'The answer is "{L}".', "Based on the image, {L}.", "I think it's {L}.", "It's {L}.",
           "The answer is not {O}, it is {L}.", "It is {T}.", "The answer is {T}.", "{T}", "**{L}. {T}**",
           "Answer: {L}\nBecause the image shows {T}.", "The correct answer is ({L}) {T}."]
SILENT = ["I cannot tell.", "Both {T} and {OT}.", "{L} or {O}", "It is either {T} or {OT}.", "{T} {T} {T} {T}",
          "{T} up up up up {T} {T}", "The answer is not {L}.", "It is a photo."]


def test_answers_in_real_shapes_over_every_real_pair(mc2_records):
    """Issue 22's shapes over all MC2 option pairs, both orders, both letters: every answer that
    states one gets its letter, none gets a wrong one, and no answer-less one gets a letter."""
    pairs = sorted({(r["answer_vision"], r["answer_text"]) for r in mc2_records})
    wrong, silent_letters = [], []
    for first, second in pairs:
        for a, b in ((first, second), (second, first)):
            for letter, text, other, other_text in (("A", a, "B", b), ("B", b, "A", a)):
                fill = {"L": letter, "T": text, "O": other, "OT": other_text}
                wrong += [(t, a, b) for t in STATING if parse_letter(t.format(**fill), a, b) != letter]
                silent_letters += [(t, a, b) for t in SILENT if parse_letter(t.format(**fill), a, b) is not None]
    assert wrong == [] and silent_letters == []
