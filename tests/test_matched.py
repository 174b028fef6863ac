"""Methods at matched effective strength (amps_eval.report.matched): curves, interpolation, grid,
held-out summary and paired differences, on hand-made sweeps whose answers are known."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from amps_eval.report.cells import TOTAL, cells_from_records
from amps_eval.report.matched import (
    common_grid, held_out_summary, interpolate, make_curve, matched_table, point_values,
)
from amps_eval.report.select import ResultIndex, Variant

CATEGORIES = ("color", "counting", "position", "attribute")


def records(follows: list[str], strength: float | None = None, target: str = "vision", **fields) -> list[dict]:
    out = []
    for i, f in enumerate(follows):
        r = {"mc2_id": i, "category": CATEGORIES[i % 4], "target": target, "order": "vision_first", "follows": f}
        if strength is not None:
            r["relative_shift"] = strength
        for name, values in fields.items():
            r[name] = values[i]
        out.append(r)
    return out


def index_of(sweeps: dict[str, list[tuple[float, list[dict]]]], target: str = "vision",
             steering: dict[str, str] | None = None) -> ResultIndex:
    index = ResultIndex()
    for method, points in sweeps.items():
        key = method.split("@")[0]
        settings = (("steering", (steering or {}).get(method, "")),) if steering else ()
        for alpha, recs in points:
            v = Variant("amps_qwen", "org", key, alpha, settings, "one")
            index.records[(v, target)] = tuple(recs)
            index.cells[(v, target)] = cells_from_records(recs, Path(f"{method}_{alpha}"), "20260101_000000")
    return index


def test_point_values_score_items_and_numeric_fields():
    recs = records(["vision", "text", "others", "vision"], logodds=[1.0, -1.0, 0.5, 2.0])
    values = point_values(recs, "vision", fields=("logodds", "absent"))
    assert values["share"] == {0: 1.0, 1: 0.0, 2: 0.0, 3: 1.0}
    assert values["collapse"] == {0: 0.0, 1: 0.0, 2: 1.0, 3: 0.0}
    assert values["logodds"] == {0: 1.0, 1: -1.0, 2: 0.5, 3: 2.0}
    assert "absent" not in values


def test_interpolation_is_linear_item_by_item_and_absent_outside_the_range():
    curve = make_curve("l2s", "vision", [(0.0, 0.0, records(["text"] * 4)),
                                         (2.0, 0.4, records(["vision", "vision", "text", "others"]))])
    assert interpolate(curve, 0.1, "share") == pytest.approx({0: 0.25, 1: 0.25, 2: 0.0, 3: 0.0})
    assert interpolate(curve, 0.4, "collapse") == {0: 0.0, 1: 0.0, 2: 0.0, 3: 1.0}
    assert interpolate(curve, 0.0, "share") == {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0}
    assert interpolate(curve, 0.41, "share") is None


def test_the_common_grid_covers_the_range_every_method_reaches():
    a = make_curve("a", "vision", [(0, 0.0, records(["text"])), (1, 1.0, records(["text"]))])
    b = make_curve("b", "vision", [(0, 0.2, records(["text"])), (1, 2.0, records(["text"]))])
    assert common_grid([a, b], k=4) == pytest.approx((0.4, 0.6, 0.8, 1.0))
    c = make_curve("c", "vision", [(0, 1.5, records(["text"])), (1, 3.0, records(["text"]))])
    assert common_grid([a, c]) == ()


def test_a_method_that_is_another_at_double_alpha_matches_it_at_every_common_strength():
    """AMPS-like: the same answers as L2S's at twice the alpha, and twice the strength per alpha:
    at matched strength the two are the same method, difference 0 with a zero-width interval."""
    answers = {0.0: ["text"] * 8, 1.0: ["vision", "text", "text", "others"] * 2,
               2.0: ["vision", "vision", "text", "others"] * 2, 4.0: ["vision"] * 6 + ["others"] * 2}
    l2s = [(a, records(answers[a], 0.1 * a)) for a in (0.0, 1.0, 2.0, 4.0)]
    amps = [(a / 2, records(answers[a], 0.1 * a)) for a in (0.0, 1.0, 2.0, 4.0)]
    table = matched_table(index_of({"l2s": l2s, "amps": amps}), "org", "vision", n_boot=300)
    assert table.grid == pytest.approx((0.1, 0.2, 0.3, 0.4))
    amps_row = next(r for r in table.rows if r.method == "amps")
    for s, d in amps_row.vs_baseline_at.items():
        assert (d.difference, d.low, d.high) == (0.0, 0.0, 0.0)
    assert amps_row.vs_baseline["share"].difference == 0.0
    assert amps_row.indistinguishable_from_best
    # at 0.3 both interpolate halfway between 0.2 (share 4/8) and 0.4 (share 6/8)
    assert amps_row.at[table.grid[2]]["share"] == pytest.approx(0.625)


def test_the_summary_keeps_collapse_under_five_percent_on_held_out_halves():
    n = 40
    low = ["vision"] * 10 + ["text"] * 30          # s=0.1: share 0.25, no collapse
    high = ["vision"] * 30 + ["others"] * 10       # s=0.2: share 0.75, collapse 0.25
    curve = make_curve("mean", "vision", [(0, 0.0, records(["text"] * n)), (1, 0.1, records(low)),
                                          (2, 0.2, records(high))])
    summary = held_out_summary(curve, (0.1, 0.2))
    assert summary.strengths == (0.1, 0.1)  # 0.2 collapses a quarter of either half
    assert summary.mean("share") == pytest.approx(0.25)
    assert summary.mean("collapse") == 0.0
    assert not summary.equal_choice


def test_rows_are_ranked_and_compared_with_l2s_and_the_best():
    n = 64
    weak = ["vision"] * 16 + ["text"] * 48
    strong = ["vision"] * 48 + ["text"] * 16
    sweeps = {"l2s": [(0.0, records(["text"] * n, 0.0)), (1.0, records(weak, 0.5))],
              "amps": [(0.0, records(["text"] * n, 0.0)), (1.0, records(strong, 0.5))],
              "mean": [(0.0, records(["text"] * n, 0.0)), (1.0, records(weak, 0.5))]}
    table = matched_table(index_of(sweeps), "org", "vision", k=2, n_boot=500)
    assert [r.method for r in table.rows][0] == "amps"
    amps, l2s = table.rows[0], next(r for r in table.rows if r.method == "l2s")
    assert amps.best and amps.vs_baseline["share"].difference == pytest.approx(0.5)
    assert amps.vs_baseline["share"].distinguishable
    assert not l2s.indistinguishable_from_best and l2s.vs_baseline == {}
    assert table.quantities == ("share", "collapse")


def test_a_method_without_recorded_strength_is_skipped_with_a_reason():
    sweeps = {"l2s": [(0.0, records(["text"] * 4, 0.0)), (1.0, records(["vision"] * 4, 0.5))],
              "amps": [(0.0, records(["text"] * 4, 0.0)), (1.0, records(["vision"] * 4, 0.4))],
              "mean": [(1.0, records(["vision"] * 4)), (2.0, records(["vision"] * 4))]}
    table = matched_table(index_of(sweeps), "org", "vision", n_boot=50)
    assert {r.method for r in table.rows} == {"l2s", "amps"}
    assert table.skipped and table.skipped[0].startswith("mean:")


DEMO = Path(__file__).resolve().parents[1] / "results" / "demo" / "runs"


@pytest.mark.skipif(not DEMO.is_dir(), reason="no committed demo")
def test_the_report_has_a_matched_strength_table_per_model_and_target_with_l2s_as_baseline():
    from amps_eval.report.build import ReportOptions, build_report

    text = build_report(ReportOptions(DEMO)).text
    section = text[text.index("## At matched strength"):text.index("## Rows and alphas")]
    tables = [part for part in section.split("#### ")[1:]]
    assert len(tables) == 4  # two organisms x two targets
    for part in tables:
        rows = [line for line in part.splitlines() if line.startswith("| ") and not line.startswith("| method")]
        assert len(rows) == 6  # the six steered methods (the oracle on the demo's graded data)
        l2s = next(r for r in rows if r.startswith("| L2S |"))
        assert "(baseline)" in l2s
        assert sum(1 for r in rows if r.rstrip().endswith("| best |")) == 1
        others = [r for r in rows if not r.startswith("| L2S |")]
        assert all(re.search(r"[+-]\d+\.\d \[[+-]\d+\.\d, [+-]\d+\.\d\]", r) for r in others)
    fixed = build_report(ReportOptions(DEMO, alpha=1.0)).text
    assert "## At matched strength" not in fixed


def test_several_training_seeds_are_averaged_item_by_item_with_their_spread():
    n = 64
    half = ["vision"] * 32 + ["text"] * 32
    sweeps = {"l2s": [(0.0, records(["text"] * n, 0.0)), (1.0, records(half, 0.5))],
              "amps@0": [(0.0, records(["text"] * n, 0.0)), (1.0, records(["vision"] * n, 0.5))],
              "amps@1": [(0.0, records(["text"] * n, 0.0)), (1.0, records(["text"] * n, 0.5))],
              "amps@2": [(0.0, records(["text"] * n, 0.0)), (1.0, records(half, 0.5))]}
    steering = {"l2s": "sha:l", "amps@0": "sha:a0", "amps@1": "sha:a1", "amps@2": "sha:a2"}
    table = matched_table(index_of(sweeps, steering=steering), "org", "vision", k=2, n_boot=300)
    amps = next(r for r in table.rows if r.method == "amps")
    # at s = 0.5 the three seeds give shares 1, 0 and 0.5: the method's is their mean, item by item
    assert amps.at[table.grid[-1]]["share"] == pytest.approx(0.5)
    assert amps.summary.seed_range() == (0.0, 1.0) and len(amps.summary.per_seed) == 3
    assert amps.vs_baseline["share"].difference == pytest.approx(amps.summary.mean("share") - 0.5)
    l2s = next(r for r in table.rows if r.method == "l2s")
    assert l2s.summary.seed_range() is None


def test_the_sweep_series_keep_training_seeds_apart():
    from amps_eval.report.series import alpha_series

    sweeps = {"amps@0": [(0.0, records(["text"] * 4, 0.0)), (1.0, records(["vision"] * 4, 0.5))],
              "amps@1": [(0.0, records(["text"] * 4, 0.0)), (1.0, records(["text"] * 4, 0.4))]}
    series = alpha_series(index_of(sweeps, steering={"amps@0": "sha:a", "amps@1": "sha:b"}), "org", "amps", "vision")
    assert sorted(series) == ["AMPS (seed 0)", "AMPS (seed 1)"]
    assert [p.share for p in series["AMPS (seed 0)"]] == [0.0, 100.0]
    assert [p.share for p in series["AMPS (seed 1)"]] == [0.0, 0.0]
