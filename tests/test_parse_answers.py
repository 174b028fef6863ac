"""A corpus of answers as real instruction-tuned models write them, with the option each follows.

Options in most rows: A = "red", B = "blue". Rows marked `nested` use a nested MC2 pair, where only
letters and exact option text count. Every row is its own test id.
"""

from __future__ import annotations

import pytest

from amps_eval.mc2.parse import parse_letter

RB = ("red", "blue")
HAPPY = ("happy", "unhappy")  # nested: one option contains the other
EATING = ("not eating", "eating")  # nested, the longer first
TENNIS = ("tennis", "table tennis")

CORPUS: list[tuple[str, tuple[str, str], str | None]] = [
    # the letter alone, in every dress
    ("A", RB, "A"), ("B", RB, "B"), ("B.", RB, "B"), ("(B)", RB, "B"), ("[A]", RB, "A"), ("b", RB, "B"),
    ("a.", RB, "A"), ("  B  ", RB, "B"), ("**B**", RB, "B"), ("*A*", RB, "A"), ("`B`", RB, "B"),
    ("__A__", RB, "A"), ("B!", RB, "B"), ("(A).", RB, "A"), ("Option B", RB, "B"), ("option A", RB, "A"),
    ("Option (B)", RB, "B"), ("Answer: B", RB, "B"), ("Answer: (A)", RB, "A"), ("**Answer:** B", RB, "B"),
    ("**Answer: A**", RB, "A"), ("Answer - B", RB, "B"), ("The answer is B", RB, "B"),
    ("The answer is B.", RB, "B"), ("The answer is: B", RB, "B"), ("The answer is: **B**", RB, "B"),
    ("The correct answer is: A", RB, "A"), ("The correct answer is (B).", RB, "B"),
    ("Correct answer: A", RB, "A"), ("Final answer: B", RB, "B"), ("Final Answer: (A)", RB, "A"),
    ("<answer>A</answer>", RB, "A"), ("<answer>B</answer>", RB, "B"), ("<answer> (B) </answer>", RB, "B"),
    ("<think>The image is red, the text says blue.</think>\n<answer>A</answer>", RB, "A"),
    ("<answer>blue</answer>", RB, "B"),
    # the letter followed by the option text, and explanations on later lines
    ("A. red", RB, "A"), ("B. blue", RB, "B"), ("(B) blue", RB, "B"), ("B) blue", RB, "B"), ("A: red", RB, "A"),
    ("Option B - blue", RB, "B"), ("**B. blue**", RB, "B"), ("**(A) red**", RB, "A"),
    ("B\n\nThe text context says the car is blue.", RB, "B"),
    ("A\nThe image clearly shows a red car, so I follow the image.", RB, "A"),
    ("B. blue\n\nExplanation: the context states it is blue.", RB, "B"),
    ("A) red - the image shows a red car although the text says blue.", RB, "A"),
    ("A. blue", RB, None), ("B. red", RB, None),  # the letter and the text disagree
    # stated letters inside sentences
    ("I would choose A.", RB, "A"), ("I would choose option B.", RB, "B"), ("I'd pick A", RB, "A"),
    ("I choose (B).", RB, "B"), ("I will go with B.", RB, "B"), ("I select option A.", RB, "A"),
    ("Option B is correct.", RB, "B"), ("B is the correct answer.", RB, "B"), ("A is correct", RB, "A"),
    ("(A) is the right answer.", RB, "A"), ("Option A is the most accurate.", RB, "A"),
    ("Based on the image, the answer is A.", RB, "A"),
    ("Looking at the image, the car appears red. However, the text context states blue. "
     "Since the question asks about the image, the answer is A.", RB, "A"),
    ("The text says the car is blue, so the answer would be B.", RB, "B"),
    ("Let me think step by step. First, the image shows a red car. Second, the text context says "
     "blue. Following the text context, the answer is B.\nAnswer: B", RB, "B"),
    ("The answer is A. Wait, the instruction says to follow the text. Final answer: B", RB, "B"),
    ("Step 1: image -> red. Step 2: text -> blue. Step 3: decide.\nAnswer: A", RB, "A"),
    ("My answer is B.", RB, "B"), ("The best option is A.", RB, "A"), ("Answer = B", RB, "B"),
    # the option text, alone or stated
    ("red", RB, "A"), ("Blue", RB, "B"), ("blue.", RB, "B"), ("RED", RB, "A"), ("**blue**", RB, "B"),
    ("The answer is blue.", RB, "B"), ("Answer: red", RB, "A"), ("blue\nbecause the text says so", RB, "B"),
    # a sentence naming exactly one option
    ("The car is red.", RB, "A"), ("It is blue.", RB, "B"), ("The car in the image is red in color.", RB, "A"),
    ("According to the text context, the car is blue.", RB, "B"),
    ("The color of the car is **red**.", RB, "A"),
    ("The player is playing tennis.", ("tennis", "golf"), "A"),
    ("They are playing golf on a sunny day.", ("tennis", "golf"), "B"),
    ("There are 3 dogs.", ("3", "5"), "A"),
    # genuinely ambiguous or empty: others
    ("A or B", RB, None), ("The answer is A or B.", RB, None), ("Both A and B", RB, None),
    ("A and B", RB, None), ("A/B", RB, None), ("(A) or (B)", RB, None), ("Either A or B could be correct.", RB, None),
    ("The car is red or blue.", RB, None), ("The image shows red but the text says blue.", RB, None),
    ("Neither.", RB, None), ("Both.", RB, None), ("I cannot tell from the image.", RB, None),
    ("I'm sorry, I can't answer that.", RB, None), ("", RB, None), ("   ", RB, None), ("C", RB, None),
    ("The answer is C.", RB, None), ("the answer is a cat", RB, None),
    ("Answer the question by selecting the correct answer A or B.", RB, None),
    ("A cat is sitting on the mat.", RB, None), ("purple", RB, None), ("reddish", RB, None),
    ("The car is bluish.", RB, None),
    # nested pairs stay strict: letters and exact text only
    ("happy", HAPPY, "A"), ("unhappy", HAPPY, "B"), ("Unhappy.", HAPPY, "B"), ("B. unhappy", HAPPY, "B"),
    ("A. unhappy", HAPPY, None), ("The answer is unhappy.", HAPPY, "B"),
    ("Answer: A", HAPPY, "A"), ("**B**", HAPPY, "B"),
    ("eating", EATING, "B"), ("not eating", EATING, "A"), ("The answer is (A).", EATING, "A"),
    ("tennis", TENNIS, "A"), ("table tennis", TENNIS, "B"),
    # nested pairs in a sentence: whole words, a mention inside the other option does not count
    ("The person looks unhappy.", HAPPY, "B"), ("The person looks happy.", HAPPY, "A"), ("It is happy.", HAPPY, "A"),
    ("It is unhappy.", HAPPY, "B"), ("The man is not eating.", EATING, "A"), ("The man is eating.", EATING, "B"),
    ("They play table tennis.", TENNIS, "B"), ("They play tennis on a court.", TENNIS, "A"),
    ("The person is happy, not unhappy.", HAPPY, "A"), ("The person looks happy or unhappy.", HAPPY, None),
    ("The man is eating, or maybe not eating.", EATING, None), ("Both not eating and eating.", EATING, None),
    ("It is either not eating or eating.", EATING, None), ("The car is not blue but red.", RB, "A"), ("It is an elephant.", ("elephant", "ant"), "A"),
    ("It is an ant.", ("elephant", "ant"), "B"), ("He is windsurfing.", ("surfing", "windsurfing"), "B"),
    # issue 22: answers real models write that older rules left as "others"
    ("### Answer\nA", RB, "A"), ("## Final answer:\n\n(B)", RB, "B"), ("**Answer**\nB. blue", RB, "B"),
    ("### Answer\nblue", RB, "B"), ("Answer - A", RB, "A"), ("Answer – B", RB, "B"),
    ('The answer is "A".', RB, "A"), ("The answer is 'B'.", RB, "B"), ('"B"', RB, "B"),
    ("Based on the image, A.", RB, "A"), ("Based on the text context, B.", RB, "B"),
    ("Following the instruction to rely on the image: A", RB, "A"),
    ("I think it's A.", RB, "A"), ("I think it is B.", RB, "B"), ("It's A.", RB, "A"), ("It’s B.", RB, "B"),
    ("It would be B, since the text says so.", RB, "B"),
    ("The answer is not B, it is A.", RB, "A"), ("It is not A, it is B.", RB, "B"),
    ("A, eating", ("eating", "a man sitting"), "A"), ("B, a man sitting", ("eating", "a man sitting"), "B"),
    ("A (talking)", ("talking", "a phone call"), "A"), ("B (a phone call)", ("talking", "a phone call"), "B"),
    ("A (a phone call)", ("talking", "a phone call"), None), ("A, B", RB, None), ("A, or B", RB, None),
    ("It is not blue, it is red.", RB, "A"), ("The car is red, not blue.", RB, "A"),
    ("The car isn't red.", RB, None), ("The car is not red.", RB, None), ("There is no red car.", RB, None),
    ("The car is not a red one.", RB, None),
    ("It is a cat.", RB, None), ("I think it's a cat.", RB, None), ("It is not clear.", RB, None),
    ("Based on the image, a red car is shown.", RB, "A"),
    ("Based on the image, A or B.", RB, None), ("The options are red, blue, A and B.", RB, None),
    ("big up up up up up up big big", ("small", "big"), None),
    ("The car is red red red red red red red.", RB, None),
]


def test_the_corpus_is_large_and_its_rows_distinct():
    assert len(CORPUS) >= 100
    keys = [(response, options) for response, options, _ in CORPUS]
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize(("response", "options", "expected"), CORPUS, ids=[repr(r[0])[:60] for r in CORPUS])
def test_realistic_answer(response, options, expected):
    assert parse_letter(response, *options) == expected


TEXT_DECIDED = [row for row in CORPUS
                if row[2] is not None and not any(ch in row[0] for ch in "AB") and row[0].strip(" .").lower() not in "ab"]


@pytest.mark.parametrize(("response", "options", "expected"), TEXT_DECIDED, ids=[repr(r[0])[:60] for r in TEXT_DECIDED])
def test_swapping_the_options_swaps_the_letter_of_a_text_answer(response, options, expected):
    assert parse_letter(response, options[1], options[0]) == {"A": "B", "B": "A"}[expected]


@pytest.mark.parametrize(("response", "options"), [
    ("big big big big big big", ("small", "big")), ("blue blue blue", RB), ("Blue. Blue. Blue.", RB),
    ("red red red red", RB), ("soccer soccer soccer", ("basketball", "soccer")),
])
def test_a_degenerate_run_of_option_words_is_collapse(response, options):
    assert parse_letter(response, *options) is None
