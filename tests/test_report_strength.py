"""Effective strength in the report: diagnostics files matched to their results files by settings,
hand-made so that every expected number is known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from amps_eval.report.cells import TOTAL, run_cells
from amps_eval.report.runs import discover
from amps_eval.report.strength import same_setting

CATS = ("color", "counting")


def write_run(folder: Path, stamp: str, model_args: str, ids=range(4), task="mc2_visual") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    records = [{"mc2_id": i, "category": CATS[i % 2], "target": "vision", "order": "vision_first",
                "follows": "vision" if i % 2 else "text", "score": i % 2} for i in ids]
    (folder / f"{stamp}_samples_{task}.jsonl").write_text(
        "".join(json.dumps({"doc_id": n, "target_acc": r}) + "\n" for n, r in enumerate(records)))
    results = {"results": {task: {"target_acc,none": sum(r["score"] for r in records) / len(records)}},
               "config": {"model": "amps_qwen", "model_args": model_args}, "date": stamp,
               "n-samples": {task: {"original": len(records), "effective": len(records)}}}
    path = folder / f"{stamp}_results.json"
    path.write_text(json.dumps(results))
    return path


def write_diagnostics(folder: Path, name: str, settings: dict, shifts: dict[int, float], task="mc2_visual"):
    folder.mkdir(parents=True, exist_ok=True)
    lines = [{"settings": settings}] + [{"task": task, "doc_id": n, "mc2_id": i, "relative_shift": s}
                                        for n, (i, s) in enumerate(shifts.items())]
    (folder / f"amps_diagnostics_{name}_rank0.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


SETTINGS = {"pretrained": "org", "method": "mean", "alpha": 2.0, "steering": "s.safetensors", "diagnostics": None,
            "mcs_relative": True, "device": None}


def args(alpha="2", diag="diag"):
    return f"pretrained=org,method=mean,alpha={alpha},steering=s.safetensors,diagnostics={diag}"


def total(run):
    return run_cells(run, [])[("vision", "one")][TOTAL]


def test_strength_is_the_mean_over_the_scored_items(tmp_path):
    diag = tmp_path / "diag"
    write_run(tmp_path / "runs" / "a", "20260101_000000", args(diag=str(diag)))
    write_diagnostics(diag, "20260101_000000_aaaa", {**SETTINGS, "diagnostics": str(diag)}, {0: 0.1, 1: 0.2, 2: 0.3, 3: 0.6})
    runs, problems = discover(tmp_path / "runs")
    assert problems == []
    assert total(runs[0]).strength == pytest.approx(0.3)
    cells = run_cells(runs[0], [])[("vision", "one")]
    assert cells["color"].strength == pytest.approx(0.2) and cells["counting"].strength == pytest.approx(0.4)


def test_only_the_file_whose_settings_match_is_used(tmp_path):
    diag = tmp_path / "diag"
    write_run(tmp_path / "runs" / "a", "20260101_000000", args(alpha="2", diag=str(diag)))
    write_run(tmp_path / "runs" / "b", "20260101_000100", args(alpha="4", diag=str(diag)))
    header = {**SETTINGS, "diagnostics": str(diag)}
    write_diagnostics(diag, "20260101_000000_aaaa", {**header, "alpha": 2.0}, dict.fromkeys(range(4), 0.1))
    write_diagnostics(diag, "20260101_000100_bbbb", {**header, "alpha": 4.0}, dict.fromkeys(range(4), 0.2))
    runs, _ = discover(tmp_path / "runs")
    by_alpha = {run.alpha: total(run).strength for run in runs}
    assert by_alpha == {2.0: pytest.approx(0.1), 4.0: pytest.approx(0.2)}


def test_ranks_are_joined_and_a_rerun_overrides(tmp_path):
    diag = tmp_path / "diag"
    write_run(tmp_path / "runs", "20260101_000000", args(diag=str(diag)))
    header = {**SETTINGS, "diagnostics": str(diag)}
    write_diagnostics(diag, "20260101_000000_aaaa", header, {0: 0.1, 1: 0.1})  # rank 0's half
    (diag / "amps_diagnostics_20260101_000000_aaaa_rank1.jsonl").write_text(
        json.dumps({"settings": header}) + "\n"
        + "".join(json.dumps({"task": "mc2_visual", "doc_id": 2 + i, "mc2_id": 2 + i, "relative_shift": 0.3}) + "\n"
                  for i in range(2)))
    runs, problems = discover(tmp_path / "runs")
    assert problems == [] and total(runs[0]).strength == pytest.approx(0.2)
    write_diagnostics(diag, "20260102_000000_cccc", header, {0: 0.5, 1: 0.5, 2: 0.5, 3: 0.5})  # a newer rerun
    runs, _ = discover(tmp_path / "runs")
    assert total(runs[0]).strength == pytest.approx(0.5)


def test_diagnostics_that_miss_items_are_a_problem_not_a_number(tmp_path):
    diag = tmp_path / "diag"
    write_run(tmp_path / "runs", "20260101_000000", args(diag=str(diag)))
    write_diagnostics(diag, "20260101_000000_aaaa", {**SETTINGS, "diagnostics": str(diag)}, {0: 0.1, 1: 0.1})
    runs, problems = discover(tmp_path / "runs")
    assert total(runs[0]).strength is None
    assert len(problems) == 1 and "no effective strength for 2 of its 4 items" in problems[0].what


def test_no_diagnostics_no_strength_and_a_relative_folder_is_found_above_the_results(tmp_path):
    write_run(tmp_path / "runs", "20260101_000000", "pretrained=org,method=mean,alpha=2,steering=s.safetensors")
    runs, problems = discover(tmp_path / "runs")
    assert total(runs[0]).strength is None and problems == []
    project = tmp_path / "project"
    write_run(project / "out" / "runs" / "x", "20260101_000000", args(diag="out/diag"))
    write_diagnostics(project / "out" / "diag", "20260101_000000_aaaa", {**SETTINGS, "diagnostics": "out/diag"},
                      dict.fromkeys(range(4), 0.25))
    runs, _ = discover(project / "out" / "runs")  # the working directory is not `project`
    assert total(runs[0]).strength == pytest.approx(0.25)


@pytest.mark.parametrize("recorded, given, same", [
    (None, "None", True), (None, "", True), (None, "x", False), (True, "True", True), (True, "false", False),
    (2.0, "2", True), (2.0, "2.5", False), (2, "abc", False), ("a/b", "a/b", True), ("a/b", "a/c", False)])
def test_setting_equality(recorded, given, same):
    assert same_setting(recorded, given) is same


def test_the_item_cache_folder_does_not_make_another_variant(tmp_path):
    """Runs that differ only in where their MCS was cached (``item_cache=``) are one sweep: one
    series, one label without the folder, as runs that differ in their diagnostics folder."""
    from amps_eval.report.select import build_index
    from amps_eval.report.series import alpha_series

    for alpha, cache in (("1", "cacheA"), ("2", "cacheB")):
        write_run(tmp_path / "runs" / alpha, f"2026010{alpha}_000000", args(alpha=alpha) + f",item_cache={cache}")
    runs, problems = discover(tmp_path / "runs")
    series = alpha_series(build_index(runs, problems), "org", "mean", "vision")
    assert len(series) == 1 and "item_cache" not in next(iter(series))
    assert [p.alpha for p in next(iter(series.values()))] == [1.0, 2.0]
