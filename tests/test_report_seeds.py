"""Tables 1-3 and the leaderboard with several training seeds of a trained method: each steered cell
is the mean over the seeds (alpha chosen on held-out halves per seed) with the seeds' spread beside
the item-level error, checked against an independent computation on hand-made results folders;
and the steering file a missing run's command names does not depend on run dates."""

from __future__ import annotations

import csv
import io
import json
import math
import random
from pathlib import Path

import pytest

from amps_eval.report.alpha_choice import halves
from amps_eval.report.build import ReportOptions, build_report
from amps_eval.report.cells import COLUMNS, TOTAL
from amps_eval.report.commands import steering_of
from amps_eval.report.runs import discover
from amps_eval.report.seeds import seed_numbers, seed_order, training_seed
from amps_eval.report.select import build_index, seed_alphas
from report_helpers import table_rows

N = 8
CATS = ("color", "counting")
MODEL = "org/seedy-vl"


def write_run(folder: Path, stamp: str, args: dict, follows: list[str], logodds: list[float] | None = None,
              target: str = "vision") -> Path:
    """One lmms-eval run of mc2_visual (or mc2_text): results and samples files; item i is in
    category CATS[i % 2] and its answer follows ``follows[i]``."""
    task = "mc2_visual" if target == "vision" else "mc2_text"
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i, f in enumerate(follows):
        r = {"mc2_id": i, "category": CATS[i % 2], "target": target, "order": "vision_first", "follows": f,
             "score": int(f == target)}
        if logodds is not None:
            r["image_logodds"] = logodds[i]
        records.append(r)
    (folder / f"{stamp}_samples_{task}.jsonl").write_text(
        "".join(json.dumps({"doc_id": n, "target_acc": r}) + "\n" for n, r in enumerate(records)))
    n = len(records)
    metrics = {"target_acc,none": sum(r["score"] for r in records) / n,
               "others_rate,none": sum(r["follows"] == "others" for r in records) / n}
    path = folder / f"{stamp}_results.json"
    path.write_text(json.dumps({
        "results": {task: metrics},
        "config": {"model": "amps_qwen", "model_args": ",".join(f"{k}={v}" for k, v in args.items())},
        "date": stamp, "n-samples": {task: {"original": n, "effective": n}}}))
    return path


def steering_name(seed: int) -> str:
    return "steer/org_l2s.safetensors" if seed == 0 else f"steer/org_l2s_seed{seed}.safetensors"


# Per seed, per alpha: what each item follows. Alpha 2 of seed 0 and alpha 1 of seeds 1, 2 are all
# text (share 0), so every choosing half picks the other alpha whatever the split.
V, T = "vision", "text"
SEEDS = {0: {1: [V] * 6 + [T] * 2, 2: [T] * 8},            # share 0.75 at alpha 1
         1: {1: [T] * 8, 2: [V] * 4 + [T] * 4},            # share 0.5 at alpha 2
         2: {1: [V] * 7 + [T], 2: [T] * 8}}                # share 0.875 at alpha 1


def logodds(seed: int) -> list[float]:
    return [i - 3 + seed for i in range(N)]


def make_seeded(root: Path, stamps: dict[int, str] | None = None) -> Path:
    """MLLM-only and an L2S sweep (alphas 1, 2) per training seed; ``stamps``: the day of each seed's runs."""
    stamps = stamps or {0: "20260101", 1: "20260102", 2: "20260103"}
    write_run(root / "none", "20260101_070000", {"pretrained": MODEL, "method": "none"}, [T] * 4 + [V] * 4)
    for seed, sweep in SEEDS.items():
        for n, (alpha, follows) in enumerate(sweep.items()):
            write_run(root / f"sweep_l2s_seed{seed}" / f"alpha_{alpha}", f"{stamps[seed]}_08000{n}",
                      {"pretrained": MODEL, "method": "l2s", "steering": steering_name(seed), "alpha": alpha},
                      follows, logodds(seed))
    return root


def test_training_seed_is_read_from_the_steering_file_name():
    assert training_seed("a/b/org_l2s.safetensors") == 0
    assert training_seed("a/b/org_l2s_seed2.safetensors") == 2
    assert training_seed("org_amps_beta0_seed11.safetensors") == 11
    assert training_seed("sha256:0123456789ab") == 0
    names = ["b/x_seed10.safetensors", "a/x_seed2.safetensors", "c/x.safetensors"]
    assert sorted(names, key=seed_order) == ["c/x.safetensors", "a/x_seed2.safetensors", "b/x_seed10.safetensors"]


def test_table_cells_are_seed_means_with_the_spread_against_a_hand_computation(tmp_path):
    root = make_seeded(tmp_path / "runs")
    text = build_report(ReportOptions(root, tables=("1",), stderr=True)).text
    rows = table_rows(text, "target: vision")
    label = next(k for k in rows if k.startswith("L2S"))
    assert label == "L2S (α 1; 2; 1ᵃᶜ)"
    # items 0-3 follow the image in every seed, 4-5 in seeds 0 and 2, 6 in seed 2, 7 never
    item_means = [1, 1, 1, 1, 2 / 3, 2 / 3, 1 / 3, 0]
    p = sum(item_means) / N
    se = math.sqrt(sum((x - p) ** 2 for x in item_means) / N / N)
    assert p == pytest.approx((0.75 + 0.5 + 0.875) / 3)
    total = rows[label][-1]
    assert total == f"{100 * p:.1f} ± {100 * se:.1f} (seeds 50.0-87.5)"
    # color = even items: seeds' shares 3/4, 2/4, 4/4
    color = rows[label][COLUMNS.index("color")]
    assert color.startswith(f"{100 * 0.75:.1f} ± ") and color.endswith("(seeds 50.0-100.0)")
    # the unsteered row is one run: no seed spread
    assert "seeds" not in rows["MLLM-only"][-1]
    assert "ᶜ mean over training seeds" in text
    # log-odds: the items' seed means are i - 2, averaged 1.5, s.e. sqrt(var(0..7) / 8)
    index = build_report(ReportOptions(root, tables=("1",))).tables[0].blocks[0].rows
    l2s = next(r for r in index if r.method == "l2s").cells[TOTAL]
    assert l2s.logodds == pytest.approx(1.5)
    assert l2s.logodds_stderr == pytest.approx(math.sqrt(6.0 / N))
    assert l2s.n_seeds == 3 and l2s.seed_range == (0.5, 0.875)


def test_the_csv_has_the_seed_spread(tmp_path):
    root = make_seeded(tmp_path / "runs")
    text = build_report(ReportOptions(root, tables=("1",), format="csv")).text
    got = next(r for r in csv.DictReader(io.StringIO(text))
               if r["method"] == "l2s" and r["column"] == "Total" and r["target"] == "vision")
    assert got["n_seeds"] == "3" and float(got["seed_low"]) == pytest.approx(50.0)
    assert float(got["seed_high"]) == pytest.approx(87.5)


def _independent(per_seed: dict[int, dict[float, list[str]]], target: str = "vision") -> tuple[float, float, tuple]:
    """Mean share, item-level s.e. and seed range, recomputed from the rule's words: per seed, each
    half scored at the alpha (non-zero) with the best share among those with collapse <= 5 % on
    the other half (ties: smaller |alpha|; none allowed: least collapse)."""
    ids = range(len(next(iter(per_seed[0].values()))))
    split = halves({"mc2_id": i, "category": CATS[i % 2]} for i in ids)
    members = [[i for i in ids if split[str(i)] == k] for k in (0, 1)]
    chosen_values = []
    for sweep in per_seed.values():
        values = {}
        for k in (0, 1):
            other = members[1 - k]
            stats = []
            for alpha, follows in sweep.items():
                if alpha == 0:
                    continue
                share = sum(follows[i] == target for i in other) / len(other)
                collapse = sum(follows[i] == "others" for i in other) / len(other)
                stats.append((alpha, share, collapse))
            allowed = [s for s in stats if s[2] <= 0.05]
            pick = (min(allowed, key=lambda s: (-s[1], abs(s[0]))) if allowed
                    else min(stats, key=lambda s: (s[2], abs(s[0]))))[0]
            values.update({i: float(sweep[pick][i] == target) for i in members[k]})
        chosen_values.append(values)
    item = [sum(v[i] for v in chosen_values) / len(chosen_values) for i in ids]
    p = sum(item) / len(item)
    se = math.sqrt(sum((x - p) ** 2 for x in item) / len(item) / len(item))
    shares = [sum(v.values()) / len(v) for v in chosen_values]
    return p, se, (min(shares), max(shares))


def test_random_sweeps_match_an_independent_computation(tmp_path):
    rng = random.Random(7)
    n = 24
    per_seed = {seed: {a: [rng.choice([V, V, T, "others"] if a > 1 else [V, T, T]) for _ in range(n)]
                       for a in (0.0, 1.0, 2.0, 4.0)} for seed in range(3)}
    root = tmp_path / "runs"
    for seed, sweep in per_seed.items():
        for k, (alpha, follows) in enumerate(sweep.items()):
            write_run(root / f"s{seed}" / f"a{alpha:g}", f"2026010{seed + 1}_0800{k:02d}",
                      {"pretrained": MODEL, "method": "amps", "steering": f"org_amps{'' if not seed else f'_seed{seed}'}"
                       ".safetensors", "alpha": f"{alpha:g}"}, follows)
    runs, problems = discover(root)
    index = build_index(runs, problems)
    variant = index.choose(MODEL, "amps", "vision", "one")
    cell = index.cells[(variant, "vision")][TOTAL]
    p, se, spread = _independent(per_seed)
    assert cell.target_acc == pytest.approx(p) and cell.stderr == pytest.approx(se)
    assert cell.seed_range == pytest.approx(spread) and cell.n_seeds == 3
    assert len(seed_alphas(dict(variant.settings)["alpha_choice"])) == 3


def test_seed_numbers_of_one_seed_are_the_binomial_numbers_of_one_run():
    records = [{"mc2_id": i, "category": "color", "target": "text", "follows": f}
               for i, f in enumerate([T, T, V, "others", T])]
    got = seed_numbers([records])
    assert got["share"] == pytest.approx(0.6) and got["collapse"] == pytest.approx(0.2)
    assert got["stderr"] == pytest.approx(math.sqrt(0.6 * 0.4 / 5))


def test_the_leaderboard_row_shows_the_seed_mean_and_spread(tmp_path):
    from amps_eval.report.leaderboard import leaderboard_rows, to_markdown

    root = make_seeded(tmp_path / "runs")
    runs, problems = discover(root)
    index = build_index(runs, problems)
    rows = leaderboard_rows(index)
    l2s = next(r for r in rows if r.method == "l2s")
    side = l2s.sides["vision"]
    assert side.cell.n_seeds == 3
    assert side.alpha_text == "1; 2; 1"
    assert "3 seeds" in side.choice
    # the results files of each seed's chosen alpha
    assert [p.parent.relative_to(root).as_posix() for p in side.runs] == [
        "sweep_l2s_seed0/alpha_1", "sweep_l2s_seed1/alpha_2", "sweep_l2s_seed2/alpha_1"]
    md = to_markdown(rows, index, root)
    line = next(x for x in md.splitlines() if "| L2S " in x)
    assert f"{100 * (0.75 + 0.5 + 0.875) / 3:.1f} (50.0–87.5)" in line
    from amps_eval.report.leaderboard import write_leaderboard

    html, _ = write_leaderboard(root, tmp_path / "site")
    page = html.read_text()
    assert "70.8 (50.0–87.5)" in page and "mean over 3 training seeds, 50.0–87.5" in page


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 2, 0)])
def test_the_suggested_steering_file_does_not_depend_on_run_dates(tmp_path, order):
    days = {seed: f"2026010{position + 1}" for position, seed in enumerate(order)}
    root = make_seeded(tmp_path / "runs", days)
    runs, _ = discover(root)
    assert steering_of(runs, MODEL, "l2s") == (steering_name(0), None)
    assert steering_of(runs, MODEL, "amps") is None  # another kind of file: none known
    text = build_report(ReportOptions(root, tables=("1",))).text
    # the text target has no run: its command names the seed-0 file, whichever seed ran last
    assert f"steering={steering_name(0)}" in text
    assert "_seed1.safetensors,alpha" not in text and "_seed2.safetensors,alpha" not in text
    # and the row lists the seeds' alphas in seed order, whatever order they ran in
    assert "L2S (α 1; 2; 1ᵃᶜ)" in table_rows(text, "target: vision")


def test_a_fixed_alpha_averages_the_seeds_at_that_alpha(tmp_path):
    root = make_seeded(tmp_path / "runs")
    rows = table_rows(build_report(ReportOptions(root, tables=("1",), alpha=1.0)).text, "target: vision")
    label = next(k for k in rows if k.startswith("L2S"))
    assert label == "L2S (α=1, 3 seedsᶜ)"
    # at alpha 1 the seeds' shares are 6/8, 0 and 7/8: not the best seed's 87.5
    assert rows[label][-1] == f"{100 * (0.75 + 0 + 0.875) / 3:.1f} (seeds 0.0-87.5)"


def test_seeds_with_one_alpha_each_are_averaged_not_picked(tmp_path):
    from amps_eval.report.leaderboard import leaderboard_rows

    root = tmp_path / "runs"
    for seed, follows in enumerate(([V] * 2 + [T] * 6, [V] * 6 + [T] * 2, [V] * 4 + [T] * 4)):
        write_run(root / f"s{seed}", f"2026010{seed + 1}_080000",
                  {"pretrained": MODEL, "method": "amps", "steering": f"x_amps_seed{seed}.safetensors", "alpha": 2},
                  follows)
    runs, problems = discover(root)
    index = build_index(runs, problems)
    side = next(r for r in leaderboard_rows(index) if r.method == "amps").sides["vision"]
    assert side.cell.target_acc == pytest.approx(0.5) and side.cell.seed_range == (0.25, 0.75)
    assert side.choice == "single α, 3 seeds" and len(side.runs) == 3


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1)])
def test_susceptibility_sweeps_name_each_training_seed_in_seed_order(tmp_path, order):
    from amps_eval.report.susceptibility_report import find_sweeps

    root = make_seeded(tmp_path / "runs", {seed: f"2026010{p + 1}" for p, seed in enumerate(order)})
    sweeps = [s for s in find_sweeps(root, []) if s.method == "l2s"]
    assert [s.setup for s in sweeps] == [f"training seed {k}, steering {Path(steering_name(k)).name}" for k in range(3)]
