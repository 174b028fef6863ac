"""The susceptibility analysis: flip / collapse points with censoring on hand-made sweeps whose answers
are known, Spearman and its bootstrap against independent computations, and the whole command on a
minimal hand-made results folder."""

from __future__ import annotations

import json
import math
import random
import statistics
from pathlib import Path

import numpy as np
import pytest

from amps_eval.correlation import average_ranks
from amps_eval.report.susceptibility import (
    EventPoint,
    MCSItem,
    Sweep,
    analyse,
    bootstrap_ci,
    first_event,
    leave_one_out_means,
    rank_keys,
    reliability,
    reliance_away,
    spearman,
    sweep_steps,
)


# --------------------------------------------------------------------------- independent oracles

def counting_ranks(values):
    """Average ranks by counting (O(n^2)): below + (equal + 1) / 2; no sorting involved."""
    return [sum(w < v for w in values) + (sum(w == v for w in values) + 1) / 2 for v in values]


def oracle_spearman(x, y):
    return statistics.correlation(counting_ranks(list(x)), counting_ranks(list(y)))


# --------------------------------------------------------------------------- event points

STEPS = {  # (strength, follows) in increasing alpha; target "vision"
    "flips_at_2": [(0.0, "text"), (1.0, "text"), (2.0, "vision"), (4.0, "vision")],
    "already": [(0.0, "vision"), (1.0, "vision"), (2.0, "others"), (4.0, "others")],
    "flips_then_unflips": [(0.0, "text"), (1.0, "vision"), (2.0, "text"), (4.0, "others")],
    "never": [(0.0, "text"), (1.0, "text"), (2.0, "text"), (4.0, "text")],
}


@pytest.mark.parametrize("name, flip, collapse", [
    ("flips_at_2", EventPoint(2.0, False), EventPoint(4.0, True)),
    ("already", EventPoint(0.0, False), EventPoint(2.0, False)),
    # the flip point is the FIRST strength that follows the target, even though it un-flips after
    ("flips_then_unflips", EventPoint(1.0, False), EventPoint(4.0, False)),
    ("never", EventPoint(4.0, True), EventPoint(4.0, True)),
])
def test_flip_and_collapse_points(name, flip, collapse):
    assert first_event(STEPS[name], "flip", "vision") == flip
    assert first_event(STEPS[name], "collapse", "vision") == collapse


def test_flip_toward_text_and_bad_input():
    assert first_event(STEPS["never"], "flip", "text") == EventPoint(0.0, False)
    with pytest.raises(ValueError):
        first_event([], "flip", "vision")
    with pytest.raises(ValueError):
        first_event(STEPS["never"], "unflip", "vision")


def records(follows: dict[int, str], shift: dict[int, float] | None = None, category="color"):
    return [{"mc2_id": i, "category": category, "target": "vision", "follows": f,
             **({"relative_shift": shift[i]} if shift else {})} for i, f in follows.items()]


def test_sweep_steps_use_the_effective_strength_when_every_steered_record_has_one():
    points = {0.0: records({1: "text", 2: "text"}),  # alpha 0: no diagnostics needed, strength 0
              1.0: records({1: "text", 2: "vision"}, {1: 0.05, 2: 0.10}),
              2.0: records({1: "vision", 2: "others"}, {1: 0.12, 2: 0.20})}
    steps, categories, scale, notes = sweep_steps(points)
    assert scale == "strength" and notes == [] and categories == {1: "color", 2: "color"}
    assert steps[1] == ((0.0, "text"), (0.05, "text"), (0.12, "vision"))
    assert first_event(steps[2], "flip", "vision") == EventPoint(0.10, False)
    assert first_event(steps[1], "collapse", "vision") == EventPoint(0.12, True)  # censored at ITS largest strength


def test_sweep_steps_fall_back_to_alpha_and_say_what_they_left_out():
    points = {0.0: records({1: "text", 2: "text", 3: "text"}), 2.0: records({1: "vision", 2: "text"}, {1: 0.1, 2: 0.1}),
              1.0: records({1: "text", 2: "vision"}), -1.0: records({1: "text", 2: "text"})}
    steps, _, scale, notes = sweep_steps(points)
    assert scale == "alpha"  # alpha 1 has no relative_shift
    assert steps[1] == ((0.0, "text"), (1.0, "text"), (2.0, "vision")) and 3 not in steps
    assert any("negative alphas -1" in n for n in notes) and any("1 item(s) not answered" in n for n in notes)


# --------------------------------------------------------------------------- ranks, rho, bootstrap

def test_average_ranks_match_counting_on_ties_1d_and_2d():
    rng = random.Random(1)
    rows = [[rng.choice([0.0, 0.5, 1.0, 2.0, math.inf]) for _ in range(17)] for _ in range(6)]
    assert average_ranks(np.array(rows[0])).tolist() == counting_ranks(rows[0])
    assert average_ranks(np.array(rows)).tolist() == [counting_ranks(r) for r in rows]


def test_spearman_matches_pearson_of_counted_ranks():
    rng = random.Random(2)
    for _ in range(20):
        n = rng.randint(3, 40)
        x = [rng.random() for _ in range(n)]
        y = [rng.choice([0, 1, 2, 4, math.inf]) for _ in range(n)]  # heavy ties, censored as inf
        if len(set(y)) < 2:
            continue
        assert spearman(x, y) == pytest.approx(oracle_spearman(x, y), abs=1e-12)
    assert spearman([1, 2, 3], [5, 5, 5]) is None and spearman([1, 2], [1, 2]) is None
    assert spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)


def test_censored_points_rank_as_ties_at_the_top():
    points = [EventPoint(0.3, False), EventPoint(4.0, True), EventPoint(0.1, False), EventPoint(2.0, True)]
    keys = rank_keys(points)
    assert counting_ranks(keys) == [2, 3.5, 1, 3.5]  # the two censored share the top ranks, whatever their value


def test_bootstrap_interval_equals_a_loop_over_the_same_resamples():
    rng = random.Random(3)
    x = [rng.random() for _ in range(25)]
    y = [v + rng.gauss(0, 0.3) for v in x]
    resamples = np.random.default_rng(7).integers(0, 25, size=(400, 25))
    got = bootstrap_ci(x, y, resamples=resamples)
    rhos = []
    for row in resamples:
        xs, ys = [x[i] for i in row], [y[i] for i in row]
        if len(set(xs)) > 1 and len(set(ys)) > 1:
            rhos.append(oracle_spearman(xs, ys))
    low, high = np.quantile(rhos, [0.025, 0.975])
    assert got.used == len(rhos) and got.low == pytest.approx(low) and got.high == pytest.approx(high)
    assert got.low < spearman(x, y) < got.high


def test_bootstrap_is_seeded_and_redraws_shrink_nothing_without_noise():
    x, y = list(range(30)), [v % 7 for v in range(30)]
    assert bootstrap_ci(x, y, seed=5) == bootstrap_ci(x, y, seed=5)
    same = np.tile(np.arange(30), (50, 1))
    fixed = bootstrap_ci(x, y, resamples=same, x_stderr=[0.0] * 30, clip=None)  # zero noise: rho every time
    assert fixed.low == pytest.approx(spearman(x, y)) and fixed.high == pytest.approx(spearman(x, y))


def test_category_predictors_and_reliability():
    assert leave_one_out_means([1, 2, 3, 10], ["a", "a", "a", "b"]) == [2.5, 2.0, 1.5, None]
    values, se = [0.1, 0.5, 0.9], [0.1, 0.1, 0.1]
    assert reliability(values, se) == pytest.approx(1 - 0.01 / statistics.variance(values))
    assert reliability(values, [0.1, None, 0.1]) is None


def test_reliance_away_follows_the_steering_convention():
    torch = pytest.importorskip("torch")
    from amps_eval.steering.scaling import reliance_away as reference

    for target in ("vision", "text"):
        assert reliance_away(0.2, target) == pytest.approx(float(reference(torch.tensor(0.2), target)))


def test_analyse_on_a_sweep_whose_answers_are_known():
    # six items, two categories; toward the image: the less an item relies on the text (1 - r_v), the
    # earlier it flips: rho(mcs, flip) = +1 exactly, censored item 5 at the top
    r_v = {0: 0.9, 1: 0.8, 2: 0.7, 3: 0.4, 4: 0.3, 5: 0.1}
    flips = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4}  # index of the first alpha at which the item follows vision
    alphas = (0.0, 1.0, 2.0, 3.0, 4.0)
    steps = {i: tuple((a, "vision" if i in flips and k >= flips[i] else "text") for k, a in enumerate(alphas))
             for i in r_v}
    cats = {i: "color" if i < 3 else "counting" for i in r_v}
    sweep = Sweep("org", "org", "mean", "vision", "", alphas, "alpha", steps, cats)
    mcs = {i: MCSItem(i, cats[i], v, 0.01) for i, v in r_v.items()}
    result = analyse(sweep, mcs, draws=200)
    flip = result.rows["flip"][0]
    assert result.event_points["flip"][5] == EventPoint(4.0, True)
    assert (flip.n, flip.at_start, flip.observed) == (6, 1, 5)
    assert flip.correlations["mcs"].rho == pytest.approx(1.0)
    expected_cat = oracle_spearman(leave_one_out_means([0, 1, 2, 3, 4, 4], [cats[i] for i in range(6)]),
                                   [0, 1, 2, 3, 4, math.inf])
    assert flip.correlations["category"].rho == pytest.approx(expected_cat)
    assert [r.scope for r in result.rows["flip"]] == ["all", "color", "counting"]
    assert result.rows["collapse"][0].correlations["mcs"].rho is None  # nothing collapses: every point censored


# --------------------------------------------------------------------------- end to end

def write_run(folder: Path, stamp: str, alpha: float, follows: dict[int, str], cats: dict[int, str],
              diagnostics: Path | None = None, shifts: dict[int, float] | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    task = "mc2_visual"
    recs = [{"mc2_id": i, "category": cats[i], "target": "vision", "order": "vision_first", "follows": f,
             "score": int(f == "vision")} for i, f in follows.items()]
    (folder / f"{stamp}_samples_{task}.jsonl").write_text(
        "".join(json.dumps({"doc_id": n, "target_acc": r}) + "\n" for n, r in enumerate(recs)))
    model_args = f"pretrained=org/tiny,method=mean,alpha={alpha:g},steering=s.safetensors"
    if diagnostics is not None:
        model_args += f",diagnostics={diagnostics}"
        diagnostics.mkdir(parents=True, exist_ok=True)
        header = {"settings": {"pretrained": "org/tiny", "method": "mean", "alpha": alpha,
                               "steering": "s.safetensors", "diagnostics": str(diagnostics)}}
        lines = [header] + [{"task": task, "doc_id": n, "mc2_id": i, "relative_shift": shifts[i]}
                            for n, i in enumerate(follows)]
        (diagnostics / f"amps_diagnostics_{stamp}_abcd_rank0.jsonl").write_text(
            "".join(json.dumps(x) + "\n" for x in lines))
    results = {"results": {task: {"target_acc,none": sum(r["score"] for r in recs) / len(recs)}},
               "config": {"model": "amps_qwen", "model_args": model_args}, "date": stamp,
               "n-samples": {task: {"original": len(recs), "effective": len(recs)}}}
    (folder / f"{stamp}_results.json").write_text(json.dumps(results))


def write_mcs(path: Path, r_v: dict[int, float], cats: dict[int, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"mc2_id": i, "category": cats[i], "prompt": "none", "c_v": 1.0, "c_t": 1.0,
                                        "r_v": v, "r_v_stderr": 0.01}) + "\n" for i, v in r_v.items()))
    Path(str(path) + ".meta.json").write_text(json.dumps({"model": "amps_qwen", "pretrained": "org/tiny"}))


# eight items: the flip order follows 1 - r_v except items 6 and 7, which never flip (censored)
R_V = {0: 0.95, 1: 0.9, 2: 0.8, 3: 0.7, 4: 0.6, 5: 0.5, 6: 0.2, 7: 0.1}
CATS = {i: ("color", "counting")[i % 2] for i in R_V}
FLIP_AT = {0: 0.0, 1: 1.0, 2: 1.0, 3: 2.0, 4: 2.0, 5: 4.0}  # alpha of the first answer following the image
COLLAPSE_AT = {3: 4.0, 0: 2.0}


def follows_at(alpha: float) -> dict[int, str]:
    out = {}
    for i in R_V:
        if i in COLLAPSE_AT and alpha >= COLLAPSE_AT[i]:
            out[i] = "others"
        elif i in FLIP_AT and alpha >= FLIP_AT[i]:
            out[i] = "vision"
        else:
            out[i] = "text"
    return out


@pytest.mark.parametrize("with_strength", [False, True])
def test_write_susceptibility_end_to_end(tmp_path, with_strength):
    from amps_eval.report.susceptibility_report import susceptibility, write_susceptibility

    runs, mcs = tmp_path / "runs", tmp_path / "mcs"
    for k, alpha in enumerate((0.0, 1.0, 2.0, 4.0)):
        shifts = {i: alpha * (0.1 + 0.01 * i) for i in R_V}
        write_run(runs / f"alpha_{alpha:g}", f"2026010{k + 1}_000000", alpha, follows_at(alpha), CATS,
                  tmp_path / "diag" / f"a{k}" if with_strength else None, shifts)
    write_mcs(mcs / "amps_qwen_none.jsonl", R_V, CATS)
    (mcs / "amps_qwen_visual.jsonl").write_text(json.dumps({"mc2_id": 0, "category": "color", "prompt": "visual",
                                                            "r_v": 0.0}) + "\n")  # another prompt: not read

    analyses, notes = susceptibility(runs, [mcs], draws=200)
    assert len(analyses) == 1, notes
    a = analyses[0]
    assert a.sweep.scale == ("strength" if with_strength else "alpha")
    flip_points = a.event_points["flip"]
    scale = (lambda i, alpha: alpha * (0.1 + 0.01 * i)) if with_strength else (lambda i, alpha: alpha)
    for i in R_V:
        if i in FLIP_AT:
            assert flip_points[i] == EventPoint(pytest.approx(scale(i, FLIP_AT[i])), False)
        else:
            assert flip_points[i] == EventPoint(pytest.approx(scale(i, 4.0)), True)
    collapse = a.event_points["collapse"]
    assert collapse[0] == EventPoint(pytest.approx(scale(0, 2.0)), False) and collapse[5].censored
    reliance = [1 - R_V[i] for i in sorted(R_V)]
    expected = oracle_spearman(reliance, rank_keys([flip_points[i] for i in sorted(R_V)]))
    assert a.rows["flip"][0].correlations["mcs"].rho == pytest.approx(expected)

    written = write_susceptibility(runs, mcs, tmp_path / "out", draws=200)
    assert [p.name for p in written] == ["susceptibility.md", "susceptibility_tiny.png", "susceptibility_tiny.pdf"]
    assert all(p.stat().st_size > 0 for p in written)
    text = written[0].read_text()
    row = next(line for line in text.splitlines()
               if line.startswith("| tiny | Mean steering (steering s.safetensors) | vision | flip |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4] == a.sweep.scale and cells[5:9] == ["8", "1", "6", "2"]
    assert cells[9].startswith(f"{expected:+.2f}")
    paragraphs = text.split("\n\n")
    assert paragraphs[1].startswith("**Answer.** Over the 1 (sweep, target) pairs") and "flip point" in paragraphs[1]

    from matplotlib.collections import PathCollection

    from amps_eval.report.susceptibility_report import figure

    fig = figure(analyses, "tiny")
    ax = next(ax for ax in fig.axes if ax.collections)
    rho = a.rows["collapse"][0].correlations["mcs"]
    assert "ρ(item MCS, collapse point) = " in ax.get_title() and f"{rho.rho:+.2f}" in ax.get_title()
    drawn = [c for c in ax.collections if isinstance(c, PathCollection) and len(c.get_offsets())]
    open_ys = [y for c in drawn if len(c.get_facecolor()) == 0 for _, y in c.get_offsets()]
    filled_ys = [y for c in drawn if len(c.get_facecolor()) for _, y in c.get_offsets()]
    assert len(open_ys) == sum(p.censored for p in collapse.values())
    assert min(open_ys) > max(filled_ys)  # censored items apart, above every observed collapse point
    if with_strength:  # in a band of their own, not at their largest strength (which differs between items)
        top = max(filled_ys)
        assert 1.08 * top <= min(open_ys) and max(open_ys) <= 1.24 * top
        censoring = {round(scale(i, 4.0), 6) for i, p in collapse.items() if p.censored}
        assert not censoring & {round(float(y), 6) for y in open_ys}


def test_cli_and_a_folder_without_sweeps(tmp_path):
    from amps_eval.cli import main

    runs = tmp_path / "runs"
    write_run(runs, "20260101_000000", 1.0, follows_at(1.0), CATS)  # one alpha: not a sweep
    assert main(["report", str(runs), "--mcs", str(tmp_path), "--susceptibility", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "susceptibility.md").read_text()
    assert "No sweep with a matching MCS was found." in text and "no sweep under" in text
