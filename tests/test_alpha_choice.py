"""Alpha chosen on items the number is not scored on: hand-made sweeps with known answers."""

from __future__ import annotations

import re

from collections import Counter

import pytest

from amps_eval.report.alpha_choice import AlphaRule, halves, held_out_choice

CATS = ("color", "counting", "sport_recognition")


def record(mc2_id, follows, category="color", target="vision"):
    return {"mc2_id": mc2_id, "category": category, "target": target, "order": "vision_first", "follows": follows}


def sweep(answers):
    """answers: alpha -> {mc2_id: follows}; categories cycle over CATS by id."""
    return {alpha: [record(i, f, CATS[i % 3]) for i, f in by_item.items()] for alpha, by_item in answers.items()}


def test_the_halves_are_stratified_and_depend_on_the_ids_only():
    records = [record(i, "vision", CATS[i % 3]) for i in range(30)]
    split = halves(records)
    assert split == halves(list(reversed(records)))
    for category in CATS:
        sizes = Counter(split[str(i)] for i in range(30) if CATS[i % 3] == category)
        assert abs(sizes[0] - sizes[1]) <= 1


def test_each_half_is_scored_at_the_alpha_chosen_on_the_other_half():
    ids = range(40)
    split = halves(record(i, "vision", CATS[i % 3]) for i in ids)
    # alpha 1 is right on half 0 only, alpha 2 on half 1 only: each half must get the other's favourite
    answers = {
        1.0: {i: ("vision" if split[str(i)] == 0 else "text") for i in ids},
        2.0: {i: ("vision" if split[str(i)] == 1 else "text") for i in ids},
    }
    choice = held_out_choice(sweep(answers))
    assert choice.alphas == (2.0, 1.0)
    assert all(r["follows"] == "text" for r in choice.records)  # every item scored where it fails
    assert sorted(int(r["mc2_id"]) for r in choice.records) == list(ids)


def test_alpha_zero_is_never_chosen_and_collapse_caps_the_choice():
    ids = range(40)
    answers = {
        0.0: {i: "vision" for i in ids},  # the unsteered model is best, but it is not steering
        1.0: {i: ("vision" if i % 4 == 0 else "text") for i in ids},  # 25% target, no collapse
        2.0: {i: ("vision" if i % 4 else "others") for i in ids},  # 75% target, 25% collapse
    }
    choice = held_out_choice(sweep(answers))
    assert choice.alphas == (1.0, 1.0)
    assert held_out_choice(sweep(answers), AlphaRule(max_collapse=0.3)).alphas == (2.0, 2.0)


def test_when_every_alpha_collapses_the_least_collapsing_is_chosen():
    ids = range(20)
    answers = {1.0: {i: ("others" if i % 2 else "vision") for i in ids}, 2.0: {i: "others" for i in ids}}
    assert held_out_choice(sweep(answers)).alphas == (1.0, 1.0)


def test_a_choice_among_alphas_that_all_score_the_same_says_so():
    ids = range(8)
    same = {a: {i: ("vision" if i < 4 else "text") for i in ids} for a in (0.5, 1.0, 2.0)}
    choice = held_out_choice(sweep(same))
    assert choice.tied == (True, True) and choice.alphas == (0.5, 0.5)
    assert "no real choice" in choice.describe()
    from amps_eval.report.tables import short_choice

    assert short_choice(choice.describe()) == ("α tiedᵇ", "ᵇ")
    different = {**same, 2.0: {i: "vision" for i in ids}}
    choice = held_out_choice(sweep(different))
    assert choice.tied == (False, False) and "no real choice" not in choice.describe()
    assert short_choice(choice.describe()) == ("α 2ᵃ", "ᵃ")


def test_too_few_items_or_no_steered_alpha_is_an_error():
    with pytest.raises(ValueError, match="two items"):
        held_out_choice({1.0: [record(0, "vision")], 2.0: [record(0, "text")]})
    with pytest.raises(ValueError, match="non-zero alpha"):
        held_out_choice({0.0: [record(0, "vision"), record(1, "vision")]})


def test_the_report_rows_of_a_sweep_say_their_alpha_was_chosen_on_held_out_items(capsys):
    from pathlib import Path

    from amps_eval.cli import main

    runs = Path(__file__).resolve().parents[1] / "results" / "demo" / "runs" / "amps_qwen"
    assert main(["report", str(runs), "--table", "1"]) == 0
    honest = capsys.readouterr().out
    tables = honest.split("## At matched strength")[0]
    steered = [line for line in tables.splitlines() if line.startswith(("| L2S", "| AMPS", "| Mean steering"))]
    assert steered and all(re.search(r"\(α ([\d.]+( / [\d.]+)?ᵃ|tiedᵇ|[\d./]+(; [\d./]+)+ᵃᶜ), s=", line) for line in steered), steered
    assert all(len(line.split("|")[1].strip()) <= 48 for line in steered)  # short labels, the rest in a footnote
    assert "ᵃ α chosen on held-out halves" in tables and '"α 2 / 4": the first half at alpha 2' in tables
    assert "(α=0" not in honest
    assert main(["report", str(runs), "--table", "1", "--alpha-choice", "optimistic"]) == 0
    optimistic = capsys.readouterr().out
    assert "held-out" not in optimistic.split("## Rows and alphas")[0] and "optimistic" in optimistic


def test_categories_of_one_item_still_fill_both_halves():
    records = [record(i, "vision", f"cat{i}") for i in range(8)]  # a tiny study: one item per category
    split = halves(records)
    assert sorted(Counter(split.values()).values()) == [4, 4]
    assert split == halves(list(reversed(records)))  # a function of the ids and categories only
