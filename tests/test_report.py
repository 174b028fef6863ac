"""`amps-eval report`, `leaderboard` and `sweep` on result folders made by running the tiny pipeline.

One session fixture runs lmms-eval (through `run_lmms_eval` and `run_sweep`) with the tiny models on
the generated MC2 set: Qwen with none, inst, mean at two alphas, l2s and amps (hand-written steering
files), LLaVA with none. The random tiny models answer neither option, so every share is 0; a
second fixture relabels a copy of the samples files deterministically (and the results files to
match) so that the golden tests compare non-trivial numbers. Expected numbers are recomputed here
from the JSONL lines, without `amps_eval.mc2.metrics`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from report_helpers import table_rows

from amps_eval.mc2.schema import CATEGORIES, CATEGORY_ABBREV
from amps_eval.report.build import ReportOptions, build_report
from amps_eval.report.paper import PaperNumbers
from amps_eval.report.runs import parse_model_args, parse_task_name
from amps_eval.report.select import Variant, variant_of
from amps_eval.report.sweep import parse_alphas

LIMIT = 8  # documents per task: one item of each category (the generated set interleaves them)
TASKS = ["mc2_visual", "mc2_text"]
COLUMNS = [CATEGORY_ABBREV[c] for c in CATEGORIES] + ["Total"]


# ---- the pipeline ----------------------------------------------------------------------------
def write_steering(path: Path, model_path: Path, method: str, scale: float = 4.0) -> Path:
    """A steering file with random vectors/modules and one fold "all" (no held-out items)."""
    import torch
    from transformers import AutoConfig

    from amps_eval.steering.file import Fold, SteeringFile
    from amps_eval.steering.module import SteeringMLP

    config = AutoConfig.from_pretrained(model_path)
    text = config.get_text_config()
    d = text.hidden_size
    torch.manual_seed(0)
    if method == "mean":
        v = scale * torch.randn(d)
        tensors, hidden = {"vision.vector": v, "text.vector": -v}, None
    else:
        state = SteeringMLP(d, 8).state_dict()
        tensors = {f"{direction}.{name}": (scale * t if name == "decoder.weight" else t).clone()
                   for direction in ("vision", "text") for name, t in state.items()}
        tensors["text.decoder.weight"] = -tensors["text.decoder.weight"]
        hidden = 8
    SteeringFile(method=method, layer=1, hidden_size=d, num_layers=text.num_hidden_layers, model_id=str(model_path),
                 architecture=config.architectures[0], folds=[Fold("all", [], [], tensors, hidden)],
                 anchors={"__all__": 0.5} if method == "mean" else {}).save(path)
    return path


@dataclass(frozen=True)
class Pipeline:
    results: Path
    qwen: str
    llava: str
    mean_file: Path
    sweep_messages: tuple[str, ...]


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory, tiny_qwen_path, tiny_llava_path, synthetic_mc2_dir) -> Pipeline:
    from amps_eval.mc2.source import ENV_VAR
    from amps_eval.mcs_run import run_mcs
    from amps_eval.report.sweep import SweepSettings, run_sweep
    from amps_eval.runner import run_lmms_eval
    from amps_eval.mcs.score import MCSSettings

    root = tmp_path_factory.mktemp("report")
    out = root / "results"
    qwen, llava = str(tiny_qwen_path), str(tiny_llava_path)
    messages: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_VAR, str(synthetic_mc2_dir))
        for method in ("none", "inst"):
            run_lmms_eval("amps_qwen", f"pretrained={qwen},method={method},device=cpu", TASKS, out / "qwen" / method,
                          batch_size=8, limit=LIMIT)
        run_lmms_eval("amps_llava", f"pretrained={llava},device=cpu", TASKS, out / "llava" / "none",
                      batch_size=8, limit=LIMIT)
        files = {m: write_steering(root / f"{m}.safetensors", tiny_qwen_path, m) for m in ("mean", "l2s", "amps")}
        for method, alphas in (("mean", (1.0, 2.0)), ("l2s", (1.0,)), ("amps", (1.0,))):
            run_sweep(SweepSettings("amps_qwen", qwen, method, files[method], alphas, tuple(TASKS), out / "qwen" / method,
                                    batch_size=8, limit=LIMIT, device="cpu"), progress=messages.append)
        run_mcs("amps_qwen", qwen, out / "mcs" / "qwen_none.jsonl", data=synthetic_mc2_dir, prompt="none",
                settings=MCSSettings(sigmas=(0.1,), draws=1), batch_size=8, device="cpu", limit=LIMIT, progress=False)
    return Pipeline(out, qwen, llava, files["mean"], tuple(messages))


def _follows(key: str) -> str:
    return ("vision", "text", "others")[zlib.crc32(key.encode()) % 3]


def relabel(folder: Path) -> None:
    """Give every answer a deterministic pseudo-random `follows`, and the results files matching shares."""
    for results_file in folder.rglob("*_results.json"):
        data = json.loads(results_file.read_text())
        prefix = results_file.name[: -len("_results.json")]
        for task, metrics in data["results"].items():
            samples = results_file.with_name(f"{prefix}_samples_{task}.jsonl")
            lines = [json.loads(x) for x in samples.read_text().splitlines()]
            for line in lines:
                follows = _follows(f"{results_file.parent.relative_to(folder)}/{task}/{line['doc_id']}")
                for metric in ("target_acc", "vision_rate", "text_rate", "others_rate", "vision_ratio"):
                    record = line[metric]
                    record["follows"] = follows
                    if "score" in record:
                        wanted = {"target_acc": record["target"], "vision_rate": "vision", "text_rate": "text",
                                  "others_rate": "others"}[metric]
                        record["score"] = int(follows == wanted)
            samples.write_text("".join(json.dumps(x) + "\n" for x in lines))
            shares = expected_cells(samples)["Total"]
            metrics["target_acc,none"], metrics["others_rate,none"] = shares[:2]
        results_file.write_text(json.dumps(data))


@pytest.fixture(scope="session")
def labelled(pipeline, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("labelled") / "results"
    shutil.copytree(pipeline.results, folder)
    relabel(folder)
    return folder


def expected_cells(samples: Path) -> dict[str, tuple[float, float, int]]:
    """column -> (target share, others share, items) straight from a one-order samples file."""
    records = [json.loads(x)["target_acc"] for x in samples.read_text().splitlines()]
    out = {}
    for column, rows in [*((CATEGORY_ABBREV[c], [r for r in records if r["category"] == c]) for c in CATEGORIES),
                         ("Total", records)]:
        if rows:
            out[column] = (sum(r["follows"] == r["target"] for r in rows) / len(rows),
                           sum(r["follows"] == "others" for r in rows) / len(rows), len(rows))
    return out


def samples_of(folder: Path, task: str) -> Path:
    found = sorted(folder.rglob(f"*_samples_{task}.jsonl"))
    assert len(found) == 1, found
    return found[0]


def report(folder: Path, **kw) -> str:
    return build_report(ReportOptions(results_dir=folder, **kw)).text


def cell(p: float, others: float, n: int) -> str:
    return f"{100 * p:.1f} ± {100 * math.sqrt(p * (1 - p) / n):.1f} / {100 * others:.1f}"


def best_alpha(folder: Path, task: str, alphas=(1, 2)) -> int:
    totals = {a: expected_cells(samples_of(folder / f"alpha_{a}", task))["Total"][0] for a in alphas}
    return max(alphas, key=lambda a: (totals[a], -a))


# ---- pure parts ------------------------------------------------------------------------------
def test_parse_model_args_task_names_and_alphas():
    assert parse_model_args("pretrained=/m/x,method=mean,alpha=2.0, steering=f.st") == {
        "pretrained": "/m/x", "method": "mean", "alpha": "2.0", "steering": "f.st"}
    assert parse_task_name("mc2_visual") == ("vision", None, "one")
    assert parse_task_name("mc2_text_color") == ("text", "color", "one")
    assert parse_task_name("mc2_text_both_orders") == ("text", None, "both")
    assert parse_task_name("mc2_visual_categories") is None and parse_task_name("mmmu_val") is None
    assert parse_alphas("0,0.5,2") == (0.0, 0.5, 2.0)
    with pytest.raises(ValueError, match="distinct"):
        parse_alphas("1,1")


def test_variant_ignores_defaults_and_run_only_settings():
    from amps_eval.report.runs import Run

    defaults = {"alpha": 1.0, "positions": "all", "fewshot_k": 2, "dtype": "auto", "device": None}

    def variant(args: str) -> Variant:
        return variant_of(Run(Path("r.json"), "amps_qwen", args, parse_model_args(args), "20260101_000000", None), "one",
                          defaults)

    base = "pretrained=/m/q,method=mean,steering=/a/f.st,steering_sha256=abcdef0123456789"
    assert variant(base) == variant(base + ",alpha=1,positions=all,device=cpu,batch_size=4")
    assert variant(base + ",alpha=2").alpha == 2.0 and variant(base + ",alpha=2") != variant(base)
    assert dict(variant(base).settings)["steering"] == "sha256:abcdef012345"
    assert variant("pretrained=/m/q,method=fewshot,fewshot_k=4").settings == (("fewshot_k", "4"),)
    assert variant("pretrained=/m/q,alpha=3").alpha is None  # the prompt methods do not steer


def test_cells_from_category_tasks_and_both_orders():
    from amps_eval.report.cells import run_cells
    from amps_eval.report.runs import Run, TaskData

    def record(i, category, follows, order="vision_first", target="vision"):
        return {"mc2_id": i, "category": category, "target": target, "order": order, "follows": follows}

    # per-category tasks without samples: Total is their size-weighted mean
    tasks = tuple(TaskData(f"mc2_text_{c}", "text", c, "one", {"target_acc,none": k / 4, "others_rate,none": 0.5},
                           4, None) for k, c in enumerate(CATEGORIES))
    run = Run(Path("r.json"), "amps_qwen", "pretrained=x", {"pretrained": "x"}, "20260101_000000", None, tasks)
    cells = run_cells(run, [])[("text", "one")]
    assert cells["color"].target_acc == 0.5 and cells["color"].source == "results"
    assert cells["Total"].target_acc == pytest.approx(sum(range(8)) / 4 / 8) and cells["Total"].n_items == 32
    # both orders: an item counts for the target only when both of its answers follow it
    records = (record(0, "color", "vision"), record(0, "color", "vision", "text_first"),
               record(1, "color", "vision"), record(1, "color", "text", "text_first"))
    both = TaskData("mc2_visual_both_orders", "vision", None, "both", {"target_acc,none": 0.5}, 4, records)
    problems = []
    cells = run_cells(Run(Path("r.json"), "m", "", {}, "d", None, (both,)), problems)[("vision", "both")]
    assert cells["Total"].target_acc == 0.5 and cells["Total"].n_items == 2 and cells["color"].others == 0.5
    assert problems == []


def test_mcs_points_from_mcs_outputs_and_diagnostics(tmp_path):
    from amps_eval.report.mcs_data import load_mcs

    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"mc2_id": i, "category": "color", "prompt": "text", "c_v": 1.0,
                                                           "c_t": 3.0, "r_v": 0.25}) + "\n" for i in range(3)))
    (tmp_path / "q.jsonl.meta.json").write_text(json.dumps({"model": "amps_qwen", "pretrained": "Qwen/Qwen2.5-VL-7B-Instruct"}))
    rows = [{"settings": {"pretrained": "/m/llava-1.5-7b-hf", "method": "mean_mcs"}}]
    rows += [{"task": t, "mc2_id": 5, "category": "counting", "r_v": 0.75} for t in ("mc2_visual", "mc2_text")]
    (tmp_path / "amps_diagnostics_x_rank0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "20260101_000000_samples_mc2_text.jsonl").write_text('{"doc_id": 0}\n')
    points = sorted(load_mcs([tmp_path], []), key=lambda p: p.model)
    assert [(p.model, p.prompt, p.category, p.r_v) for p in points] == [
        ("Qwen2.5-VL-7B-Instruct", "text", "color", 0.25)] * 3 + [("llava-1.5-7b-hf", "none", "counting", 0.75)]


def test_paper_numbers_are_only_the_ones_on_file_with_sources():
    # the AMPS paper's own cells: tests/test_paper_numbers.py
    paper = PaperNumbers.load()
    assert all(e.source for e in paper.entries)
    assert {e.value for e in paper.entries if e.value is not None and e.source.startswith("MC2")} == {
        52.2, 12.4, 35.4, 11.9, 10.9, 77.2}
    assert paper.lookup("3", "/models/Qwen2.5-VL-7B-Instruct", "none", "vision", "Total").value == 52.2
    assert paper.lookup("1", "llava-hf/llava-1.5-7b-hf", "none", "text", "Total").value == 10.9
    assert paper.lookup("3", "Qwen/Qwen2.5-VL-7B-Instruct", "none", "text", "Total", "others_rate").value == 35.4
    not_on_file = paper.lookup("1", "Qwen/Qwen2.5-VL-7B-Instruct", "mean_mcs", "vision", "Total")
    assert not_on_file.value is None and "not published" in not_on_file.source


# ---- on the real pipeline's files ------------------------------------------------------------
pytestmark_slow = pytest.mark.slow


@pytestmark_slow
def test_sweep_and_raw_pipeline_files_read_without_problems(pipeline):
    from amps_eval.steering.file import sha256

    folders = sorted(p.name for p in (pipeline.results / "qwen" / "mean").iterdir())
    assert folders == ["alpha_1", "alpha_2"]
    digest = sha256(pipeline.mean_file)
    for alpha in (1, 2):
        results = json.loads(next((pipeline.results / "qwen" / "mean" / f"alpha_{alpha}").rglob("*_results.json")).read_text())
        args = parse_model_args(results["config"]["model_args"])
        assert args["steering_sha256"] == digest and float(args["alpha"]) == alpha and args["method"] == "mean"
    assert [m for m in pipeline.sweep_messages if m.startswith("[sweep] 1/2 alpha=1")]
    assert [m for m in pipeline.sweep_messages if m.startswith("[sweep] 2/2 alpha=2")]
    result = build_report(ReportOptions(results_dir=pipeline.results, tables=("1",), model=Path(pipeline.qwen).name))
    assert result.index.problems == [] and result.index.dropped == []
    rows = table_rows(result.text, "target: vision")
    zero = [f"{100 * expected_cells(samples_of(pipeline.results / 'qwen' / 'none', 'mc2_visual'))[c][0]:.1f}"
            for c in COLUMNS]
    assert rows["MLLM-only"] == zero


@pytestmark_slow
def test_table1_cells_equal_the_samples_files(labelled, pipeline):
    # the optimistic choice shows one alpha's run as it is; the held-out default is checked below
    text = report(labelled, tables=("1",), model=Path(pipeline.qwen).name, collapse=True, stderr=True,
                  alpha_choice="optimistic")
    held_out = report(labelled, tables=("1",), model=Path(pipeline.qwen).name)
    assert re.search(r"\| Mean steering \(α ([\d.]+( / [\d.]+)?ᵃ|tiedᵇ)\)", held_out)
    qwen = labelled / "qwen"
    for target, task in (("vision", "mc2_visual"), ("text", "mc2_text")):
        rows = table_rows(text, f"target: {target}")
        alpha = best_alpha(qwen / "mean", task)
        mean_label = f"Mean steering (α={alpha})"
        assert list(rows) == ["MLLM-only", "Inst Design", "CoT", "Few shot", mean_label, "Mean+MCS", "L2S (α=1)",
                              "AMPS (α=1)"]
        sources = {"MLLM-only": qwen / "none", "Inst Design": qwen / "inst", mean_label: qwen / "mean" / f"alpha_{alpha}",
                   "L2S (α=1)": qwen / "l2s", "AMPS (α=1)": qwen / "amps"}
        for label, folder in sources.items():
            expected = expected_cells(samples_of(folder, task))
            assert rows[label] == [cell(*expected[c]) if c in expected else "-" for c in COLUMNS], label
        assert rows["CoT"] == ["-"] * len(COLUMNS)


@pytestmark_slow
def test_missing_rows_name_the_command_that_makes_them(labelled, pipeline):
    from amps_eval.steering.file import sha256

    text = report(labelled, tables=("2",))
    q, l = Path(pipeline.qwen).name, Path(pipeline.llava).name
    rows = table_rows(text, "target: text")
    assert list(rows) == [f"{l} base", f"{l}-L2S", f"{l}-AMPS", f"{q} base", f"{q}-L2S (α=1)", f"{q}-AMPS (α=1)"]
    assert rows[f"{l}-AMPS"] == ["-"] * len(COLUMNS) and rows[f"{l} base"] != ["-"] * len(COLUMNS)
    assert (f"`lmms-eval --model amps_llava --model_args pretrained={pipeline.llava},method=amps,steering=STEERING_FILE,"
            f"alpha=1 --tasks mc2_visual,mc2_text --limit {LIMIT} --log_samples --output_path {labelled}`") in text
    assert f"`amps-eval fit --model amps_llava --pretrained {pipeline.llava} --method l2s --out STEERING_FILE` then" in text
    text1 = report(labelled, tables=("1",), model=q)
    mean_file = str(pipeline.mean_file.resolve())
    assert (f"`lmms-eval --model amps_qwen --model_args pretrained={pipeline.qwen},method=mean_mcs,steering={mean_file},"
            f"steering_sha256={sha256(pipeline.mean_file)},alpha=1 --tasks mc2_visual,mc2_text") in text1
    assert f"pretrained={pipeline.qwen},method=cot --tasks mc2_visual,mc2_text" in text1
    text3 = report(labelled, tables=("3",), model=q)
    table3 = table_rows(text3, "target: vision")
    assert list(table3) == ["w/o steering (MLLM-only)", "w/o scaling (L2S) (α=1)", "AMPS β=0 (added ablation)",
                            "full (AMPS) (α=1)"]
    assert table3["AMPS β=0 (added ablation)"] == ["-"] * len(COLUMNS)  # not run: a missing row with its command
    assert f"--pretrained {pipeline.qwen} --method amps_beta0 --out STEERING_FILE" in text3


@pytestmark_slow
def test_alpha_option_fixes_the_alpha(labelled, pipeline):
    q = Path(pipeline.qwen).name
    rows = table_rows(report(labelled, tables=("1",), model=q, alpha=2.0), "target: vision")
    expected = expected_cells(samples_of(labelled / "qwen" / "mean" / "alpha_2", "mc2_visual"))
    assert rows["Mean steering (α=2)"][-1] == f"{100 * expected['Total'][0]:.1f}"
    assert rows["L2S"] == ["-"] * len(COLUMNS)  # no L2S run at alpha 2


@pytestmark_slow
def test_latex_is_a_tabular_that_compiles_and_csv_holds_the_numbers(labelled, pipeline, tmp_path):
    q = Path(pipeline.qwen).name
    latex = report(labelled, tables=("1",), model=q, format="latex", stderr=True)
    assert latex.count(r"\begin{tabular}") == 1 and r"\end{tabular}" in latex and r"$\alpha$=1" in latex
    if shutil.which("pdflatex"):
        doc = tmp_path / "t.tex"
        doc.write_text("\\documentclass{article}\n\\begin{document}\n\\tiny\n" + latex + "\n\\end{document}\n")
        proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout[-2000:]
    rows = list(csv.DictReader(io.StringIO(report(labelled, tables=("1",), model=q, format="csv"))))
    assert len(rows) == 2 * 8 * len(COLUMNS)  # targets x rows x columns
    expected = expected_cells(samples_of(labelled / "qwen" / "inst", "mc2_text"))
    inst = {r["column"]: r for r in rows if r["method"] == "inst" and r["target"] == "text"}
    total = inst["Total"]
    assert float(total["target_acc"]) == pytest.approx(100 * expected["Total"][0], abs=1e-3)
    assert float(total["others_rate"]) == pytest.approx(100 * expected["Total"][1], abs=1e-3)
    assert int(total["n_items"]) == LIMIT
    assert {r["target_acc"] for r in rows if r["method"] == "cot"} == {""}


@pytestmark_slow
def test_figures_are_written(labelled, pipeline, tmp_path):
    mcs = tmp_path / "mcs"
    mcs.mkdir()
    lines = [{"mc2_id": i, "category": CATEGORIES[i % 8], "prompt": prompt, "c_v": 1.0, "c_t": 1.0,
              "r_v": (i % 5) / 5 + (0.1 if prompt == "visual" else 0.0)} for prompt in ("visual", "text") for i in range(16)]
    (mcs / "instructed.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (mcs / "instructed.jsonl.meta.json").write_text(json.dumps({"model": "amps_qwen", "pretrained": pipeline.qwen}))
    out = tmp_path / "figures"
    result = build_report(ReportOptions(results_dir=labelled, tables=("1",), model=Path(pipeline.qwen).name, figures=out,
                                        mcs=(labelled / "mcs", mcs)))
    names = {p.name for p in result.figures}
    q = Path(pipeline.qwen).name
    for stem in (f"figure1_mean_alpha_{q}", f"figure6_amps_vs_l2s_{q}", "figure4_mcs_ratio", "figure5_mcs_ratio_instructed"):
        for suffix in (".png", ".pdf"):
            assert stem + suffix in names
            assert (out / (stem + suffix)).stat().st_size > 1000
    assert "## Figures" in result.text


def _copy(labelled: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "results"
    shutil.copytree(labelled, folder)
    return folder


@pytestmark_slow
def test_duplicate_runs_use_the_newest_and_say_which_was_dropped(labelled, pipeline, tmp_path):
    folder = _copy(labelled, tmp_path)
    old = next((folder / "qwen" / "none").rglob("*_results.json"))
    prefix = old.name[: -len("_results.json")]
    new_prefix = "20991231_235959"
    data = json.loads(old.read_text())
    data["date"] = new_prefix
    for task in TASKS:
        lines = [json.loads(x) for x in old.with_name(f"{prefix}_samples_{task}.jsonl").read_text().splitlines()]
        for line in lines:
            line["target_acc"]["follows"] = line["target_acc"]["target"]
        old.with_name(f"{new_prefix}_samples_{task}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        data["results"][task]["target_acc,none"] = 1.0
    new = old.with_name(f"{new_prefix}_results.json")
    new.write_text(json.dumps(data))
    result = build_report(ReportOptions(results_dir=folder, tables=("1",), model=Path(pipeline.qwen).name))
    assert table_rows(result.text, "target: vision")["MLLM-only"] == ["100.0"] * len(COLUMNS)
    assert {(d.used, d.dropped, d.target) for d in result.index.dropped} == {(new, old, "vision"), (new, old, "text")}
    assert f"used {new}, dropped {old} ({prefix}; {len(COLUMNS)} cell(s))" in result.text


@pytestmark_slow
def test_corrupt_files_are_named_and_the_rest_renders(labelled, pipeline, tmp_path):
    folder = _copy(labelled, tmp_path)
    broken = next((folder / "qwen" / "inst").rglob("*_results.json"))
    broken.write_text(broken.read_text()[: len(broken.read_text()) // 2])
    truncated = samples_of(folder / "qwen" / "none", "mc2_text")
    truncated.write_text(truncated.read_text()[:-40])
    result = build_report(ReportOptions(results_dir=folder, tables=("1",), model=Path(pipeline.qwen).name))
    problems = {p.path: p.what for p in result.index.problems}
    assert set(problems) == {broken, truncated}
    assert "not a readable JSON results file" in problems[broken]
    assert "line 8 is not a complete MC2 sample" in problems[truncated]
    assert f"- {broken}: not a readable JSON results file" in result.text
    vision, text = table_rows(result.text, "target: vision"), table_rows(result.text, "target: text")
    assert vision["Inst Design"] == ["-"] * len(COLUMNS)
    expected = expected_cells(samples_of(folder / "qwen" / "none", "mc2_visual"))
    assert vision["MLLM-only"] == [f"{100 * expected[c][0]:.1f}" for c in COLUMNS]
    # the damaged samples file: Total falls back to the results file, the categories are missing
    total = json.loads(next((folder / "qwen" / "none").rglob("*_results.json")).read_text())["results"]["mc2_text"]
    assert text["MLLM-only"] == ["-"] * 8 + [f"{100 * total['target_acc,none']:.1f}"]


@pytestmark_slow
def test_paper_numbers_beside_ours(labelled, tmp_path):
    folder = tmp_path / "results"
    shutil.copytree(labelled / "qwen" / "none", folder)
    results_file = next(folder.rglob("*_results.json"))
    data = json.loads(results_file.read_text())
    data["config"]["model_args"] = "pretrained=Qwen/Qwen2.5-VL-7B-Instruct,method=none"
    results_file.write_text(json.dumps(data))
    text = report(folder, tables=("1",), paper=True)
    ours = expected_cells(samples_of(folder, "mc2_visual"))["Total"][0]
    # the AMPS paper's Table 1 (its MLLM-only is not the MC2 authors' baseline): tests/test_paper_numbers.py
    assert table_rows(text, "target: vision")["MLLM-only"][-1] == f"{100 * ours:.1f} [paper 15.3, Δ {100 * ours - 15.3:+.1f}]"
    assert "[paper 35.4, Δ" in table_rows(text, "target: text")["MLLM-only"][-1]
    assert table_rows(text, "target: vision")["AMPS"][-1] == "- [paper 73.0]"
    assert "108 published cell(s) shown" in text and "AMPS paper (arXiv 2602.12533)" in text
    assert "no published numbers on file" in report(labelled, tables=("3",), paper=True)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytestmark_slow
def test_leaderboard_is_self_contained_and_renders_in_chromium(labelled, tmp_path):
    from amps_eval.report.leaderboard import write_leaderboard

    html_path, md_path = write_leaderboard(labelled, tmp_path / "board")
    html = html_path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html) and "@import" not in html
    assert "Content-Security-Policy" in html
    md = md_path.read_text()
    n_rows = 6  # one per (model, method): qwen none, inst, mean (alphas 1 and 2: one row), l2s, amps; llava none
    assert md.count("\n| ") == n_rows + 1 and md.count("| Inst Design ") == 1 and "| model " in md
    assert "| Mean steering " in md and md.count("| MLLM-only ") == 2
    assert html.count('<tbody class="entry"') == n_rows
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium); the HTML was only checked as text")
    profile = tmp_path / "profile"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--dump-dom", html_path.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    dom = proc.stdout
    assert '<table class="board" id="leaderboard">' in dom, proc.stderr[-2000:]
    assert dom.count('<tbody class="entry"') == n_rows
    assert f"{n_rows} of {n_rows} rows" in dom  # the page's script ran (it writes the row count)


@pytestmark_slow
def test_cli_report_and_leaderboard(labelled, pipeline, tmp_path, capsys):
    from amps_eval.cli import main

    assert main(["report", str(labelled), "--table", "3", "--model", Path(pipeline.qwen).name, "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert "### Table 3: ablation on" in out and re.search(r"\| w/o steering \(MLLM-only\) +\|", out)
    assert main(["leaderboard", str(labelled), "--out", str(tmp_path / "lb")]) == 0
    assert (tmp_path / "lb" / "leaderboard.html").exists() and (tmp_path / "lb" / "leaderboard.md").exists()
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["sweep", "--model", "amps_qwen", "--pretrained", pipeline.qwen, "--method", "mean", "--steering",
                 str(tmp_path / "missing.safetensors"), "--alphas", "0,1", "--out", str(tmp_path / "sweep")]) == 2
    assert "write it with `amps-eval fit`" in capsys.readouterr().err
