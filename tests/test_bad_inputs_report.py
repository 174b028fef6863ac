"""Bad inputs of `amps-eval report` / `leaderboard` and the failure classes of `amps-eval`'s `main`.

Results folders are built from the committed demo runs (`results/demo/runs`): a few files copied
into the test's folder and edited (truncated, retyped, pointed at other data, cut as by `--limit`),
so no model runs. Every row is a command as a user types it; a failing one must exit non-zero with
one `amps-eval <command>: error: ...` line naming the input, never a traceback, and leave no output
that looks valid. Rows with ``raises=None`` are inputs the command handles (it reports them and
exits 0); their `run` checks what the output says.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from unittest import mock

import pytest

from tests.bad_inputs import BadInput, CLIFailed, check, params

ROOT = Path(__file__).resolve().parents[1]
DEMO_RUN = ROOT / "results" / "demo" / "runs" / "amps_qwen" / "none" / "organism__amps-organism-graded-qwen2.5-vl"
DEMO_NONE_VISION = "46.9"  # the demo's unsteered vision Total on the graded Qwen organism (results/demo/tables.md)
DEMO_MANIFEST = ROOT / "results" / "demo" / "data" / "mc2_manifest.json"
# the demo run's file prefix (its timestamp changes each time `make demo` regenerates results/demo)
STAMP = next(DEMO_RUN.glob("*_results.json")).name.removesuffix("_results.json")
TASKS = ("mc2_visual", "mc2_text")


# ---- building results folders from the demo run ---------------------------------------------------
def make_data(folder: Path, seed: int) -> Path:
    """A prepared-folder stand-in: only the manifest (all the reporter reads), with ``seed``."""
    manifest = json.loads(DEMO_MANIFEST.read_text())
    manifest["seed"] = seed
    folder.mkdir(parents=True)
    (folder / "mc2_manifest.json").write_text(json.dumps(manifest))
    return folder


def copy_run(dest: Path, data: Path, *, stamp: str = STAMP, limit: int | None = None, follow_target: bool = False) -> Path:
    """The demo run (Qwen organism, method none) as ``dest/<stamp>_results.json`` + samples, reading
    ``data``; ``limit`` cuts it as lmms-eval's --limit does; ``follow_target`` makes every answer
    follow the target (Total 100%) so that its numbers are told apart from the original's (50%)."""
    dest.mkdir(parents=True, exist_ok=True)
    results = json.loads((DEMO_RUN / f"{STAMP}_results.json").read_text())
    results["date"] = stamp
    results["config"]["limit"] = limit
    for task in TASKS:
        results["configs"][task]["dataset_path"] = str(data)
        lines = [json.loads(x) for x in (DEMO_RUN / f"{STAMP}_samples_{task}.jsonl").read_text().splitlines()]
        if limit is not None:
            lines = lines[:limit]
            results["n-samples"][task]["effective"] = limit
        if follow_target:
            for line in lines:
                line["target_acc"]["follows"] = line["target_acc"]["target"]
                line["target_acc"]["score"] = 1
        scores = [line["target_acc"]["score"] for line in lines]
        results["results"][task]["target_acc,none"] = sum(scores) / len(scores)
        (dest / f"{stamp}_samples_{task}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    path = dest / f"{stamp}_results.json"
    path.write_text(json.dumps(results))
    return path


def one_run(folder: Path) -> Path:
    """``folder/results`` holding one good run; returns the results folder."""
    copy_run(folder / "results" / "qwen", make_data(folder / "data", seed=3))
    return folder / "results"


def damaged(folder: Path, damage) -> Path:
    """``folder/results`` whose only results file went through ``damage(path)``."""
    results = one_run(folder)
    damage(results / "qwen" / f"{STAMP}_results.json")
    return results


def truncate(path: Path) -> None:
    text = path.read_text()
    path.write_text(text[: len(text) // 2])


def not_lmms_eval(path: Path) -> None:
    path.write_text(json.dumps({"accuracy": 0.5, "model": "mine"}))


def retyped(path: Path) -> None:
    data = json.loads(path.read_text())
    data["n-samples"] = ["not", "a", "mapping"]  # the kind of field a hand edit or another tool breaks
    path.write_text(json.dumps(data))


def malformed_sample(path: Path) -> None:
    samples = path.with_name(f"{STAMP}_samples_mc2_text.jsonl")
    lines = samples.read_text().splitlines()
    lines[2] = lines[2][:40]
    samples.write_text("\n".join(lines) + "\n")


def one_good_one_truncated(folder: Path) -> Path:
    results = one_run(folder)
    truncate(copy_run(results / "broken", folder / "data", stamp="20261203_000000"))
    return results


def two_data(folder: Path) -> Path:
    """The same model and method, on the generated set with seed 3 and with seed 5 (same date)."""
    copy_run(folder / "results" / "seed3", make_data(folder / "data3", seed=3))
    copy_run(folder / "results" / "seed5", make_data(folder / "data5", seed=5), follow_target=True)
    return folder / "results"


def with_and_without_limit(folder: Path) -> Path:
    """The same run in full and, newer, with --limit 8 (which alone would have won a duplicate)."""
    data = make_data(folder / "data", seed=3)
    copy_run(folder / "results" / "full", data)
    copy_run(folder / "results" / "limited", data, stamp="20261203_000000", limit=8, follow_target=True)
    return folder / "results"


def file_in_the_way(folder: Path) -> Path:
    """A results folder and a regular file ``somefile.txt`` where an output folder's parent should be."""
    results = one_run(folder)
    (folder / "somefile.txt").write_text("not a folder\n")
    return results


# ---- running amps-eval ----------------------------------------------------------------------------
def amps_eval(argv: list[str], traceback: bool = False) -> str:
    """Run `amps-eval` like `bad_inputs.cli_exit`, also through argparse's refusals (SystemExit), and
    return stdout. A failure raises `CLIFailed` ("exit N: <stderr>") after checking the promises:
    no traceback (unless ``traceback``), the first line `amps-eval <command>: error: ...` or
    argparse's usage, and nothing on stdout that could pass for a report."""
    from amps_eval.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse: usage + message on stderr
            code = exit_.code
    if code == 0:
        return out.getvalue()
    stderr = err.getvalue()
    assert ("Traceback" in stderr) == traceback, stderr
    command = next(a for a in argv if not a.startswith("-"))
    if not traceback:
        first = stderr.splitlines()[0]
        assert first.startswith((f"amps-eval {command}: ", "usage: amps-eval")), stderr
    assert "###" not in out.getvalue() and "every row has a run" not in out.getvalue(), out.getvalue()
    raise CLIFailed(f"exit {code}: {stderr}")


def report(folder: Path, *extra: str) -> str:
    return amps_eval(["report", str(folder), *extra])


def expect(text: str, *wanted: str, absent: tuple[str, ...] = ()) -> str:
    missing = [w for w in wanted if w not in text]
    assert not missing, f"the output does not say {missing}:\n{text}"
    present = [a for a in absent if a in text]
    assert not present, f"the output should not say {present}:\n{text}"
    return text


def totals(text: str) -> list[str]:
    """The Total cell of every MLLM-only row of a github report, in order (the column headed Total:
    a log-odds column may follow it)."""
    out, column = [], -1
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("|") and "Total" in cells:
            column = cells.index("Total")
        elif line.startswith("| MLLM-only "):
            out.append(cells[column])
    return out


def separate(text: str) -> str:
    """Two data identities, each with its own tables: the demo's numbers (vision Total 50%) first,
    then the edited copy's (100%); neither run was dropped as a duplicate of the other."""
    assert totals(text)[0] == DEMO_NONE_VISION and totals(text)[2:] == ["100.0", "100.0"], totals(text)
    return expect(text, "## Duplicate runs (newest used)\n\nNone.")


def leaderboard_md(results: Path) -> str:
    amps_eval(["leaderboard", str(results)])
    return (results / "leaderboard.md").read_text()


def failing_leaderboard(error: BaseException, *flags: str, traceback: bool = False):
    """`amps-eval [flags] leaderboard` on a good folder whose writing raises ``error``."""
    def run(results: Path):
        with mock.patch("amps_eval.report.leaderboard.write_leaderboard", side_effect=error):
            amps_eval([*flags, "leaderboard", str(results)], traceback=traceback)
    return run


def with_debug_env(run):
    def wrapped(made):
        with mock.patch.dict("os.environ", {"AMPS_EVAL_DEBUG": "1"}):
            return run(made)
    return wrapped


R = f"{STAMP}_results.json"
TABLE: list[BadInput] = [
    # -- result folders ----------------------------------------------------------------------------
    BadInput("report-only-results-file-truncated", lambda d: damaged(d, truncate), report,
             raises=CLIFailed, says=("exit 2", "amps-eval report: error: no usable MC2 result", R,
                                     "not a readable JSON results file")),
    BadInput("leaderboard-only-results-file-truncated", lambda d: damaged(d, truncate),
             lambda r: amps_eval(["leaderboard", str(r)]), raises=CLIFailed,
             says=("exit 2", "amps-eval leaderboard: error:", R, "not a readable JSON results file"),
             absent=("results/leaderboard.html", "results/leaderboard.md")),
    BadInput("report-empty-folder", lambda d: (d / "results").mkdir() or d / "results", report, raises=CLIFailed,
             says=("exit 2", "no *_results.json under", "--output_path")),
    BadInput("report-json-but-not-lmms-eval", lambda d: damaged(d, not_lmms_eval), report, raises=CLIFailed,
             says=("exit 2", R, "missing 'results' or 'config.model_args'")),
    BadInput("report-results-field-of-wrong-type", lambda d: damaged(d, retyped), report, raises=CLIFailed,
             says=("exit 2", R, "malformed lmms-eval results file")),
    BadInput("report-samples-file-malformed-line", lambda d: damaged(d, malformed_sample),
             lambda r: expect(report(r), f"{STAMP}_samples_mc2_text.jsonl: line 3 is not a complete MC2 sample",
                              "| MLLM-only "),
             raises=None, why="the run is valid: Total comes from the results file, the problem is listed, exit 0"),
    BadInput("report-one-good-one-truncated", one_good_one_truncated,
             lambda r: expect(report(r), "20261203_000000_results.json: not a readable JSON results file",
                              "| MLLM-only "),
             raises=None, why="one valid run: the tables render and the corrupt file is listed under Problems"),
    BadInput("report-same-run-on-two-data-sets", two_data,
             lambda r: separate(expect(report(r, "--table", "1"), "data: generated graded MC2-format set, seed 3, 128 items",
                                       "data: generated graded MC2-format set, seed 5, 128 items", "on 2 different data sets")),
             raises=None, why="not duplicates: one set of tables per data, each block names its data"),
    BadInput("leaderboard-same-run-on-two-data-sets", two_data,
             lambda r: expect(leaderboard_md(r), "| generated, graded, seed 3 |", "| generated, graded, seed 5 |",
                              "- generated graded MC2-format set, seed 3, 128 items", "- generated graded MC2-format set, seed 5, 128 items",
                              absent=("Superseded",)),
             raises=None, why="not duplicates: a row per data, each naming its data, and the data listed"),
    BadInput("report-same-run-with-and-without-limit", with_and_without_limit,
             lambda r: separate(expect(report(r, "--table", "1"), "data: generated graded MC2-format set, seed 3, 128 items\n",
                                       "only the first 8 documents per task (--limit 8)")),
             raises=None, why="a --limit run is other data: its own tables, the full run is not dropped"),
    BadInput("report-missing-row-of-a-limited-table-gets-the-limit", with_and_without_limit,
             lambda r: expect(report(r, "--table", "1"), "--tasks mc2_visual,mc2_text --limit 8 --log_samples"),
             raises=None, why="the suggested command makes a run that lands in the same (limited) table"),
    # -- command line --------------------------------------------------------------------------------
    BadInput("report-alpha-nan", one_run, lambda r: report(r, "--alpha", "nan"), raises=CLIFailed,
             says=("exit 2", "argument --alpha", "finite", "'nan'")),
    BadInput("report-alpha-inf", one_run, lambda r: report(r, "--alpha", "inf"), raises=CLIFailed,
             says=("exit 2", "argument --alpha", "finite", "'inf'")),
    BadInput("report-path-does-not-exist", lambda d: d / "no-such-folder", report, raises=CLIFailed,
             says=("exit 2", "amps-eval report: error:", "no-such-folder", "does not exist")),
    BadInput("leaderboard-out-under-a-regular-file", file_in_the_way,
             lambda r: amps_eval(["leaderboard", str(r), "--out", str(r.parent / "somefile.txt" / "sub")]),
             raises=CLIFailed, says=("exit 2", "amps-eval leaderboard: error: cannot write the leaderboard folder (--out)",
                                     "somefile.txt is a file, not a folder"),
             absent=("results/leaderboard.html", "results/leaderboard.md")),
    BadInput("report-out-under-a-regular-file", file_in_the_way,
             lambda r: report(r, "--out", str(r.parent / "somefile.txt" / "sub" / "tables.md")),
             raises=CLIFailed, says=("exit 2", "amps-eval report: error:", "somefile.txt")),
    # -- every failure class of main: one line and exit 2; a bug: exit 1, traceback only with --debug --
    BadInput("fit-missing-data-folder", lambda d: d,
             lambda d: amps_eval(["fit", "--model", "amps_qwen", "--pretrained",
                                  str(ROOT / "amps_eval" / "organism" / "amps-organism-qwen2.5-vl"), "--method", "mean",
                                  "--layer", "1", "--data", str(d / "no-data"), "--out", str(d / "v.safetensors")]),
             raises=CLIFailed, says=("exit 2", "amps-eval fit: error:", "no-data"),
             absent=("v.safetensors",), why="MC2SourceError (a RuntimeError)"),
    BadInput("main-oserror-permission", one_run, failing_leaderboard(PermissionError(13, "Permission denied", "/x/lb")),
             raises=CLIFailed, says=("exit 2", "amps-eval leaderboard: error: [Errno 13] Permission denied: '/x/lb'")),
    BadInput("main-oserror-disk-full", one_run, failing_leaderboard(OSError(28, "No space left on device")),
             raises=CLIFailed, says=("exit 2", "amps-eval leaderboard: error: [Errno 28] No space left on device")),
    BadInput("main-lookuperror-keyerror", one_run, failing_leaderboard(KeyError("results")),
             raises=CLIFailed, says=("exit 2", "amps-eval leaderboard: error: KeyError: 'results'")),
    BadInput("main-valueerror", one_run, failing_leaderboard(ValueError("bad value in a file")),
             raises=CLIFailed, says=("exit 2", "amps-eval leaderboard: error: bad value in a file")),
    BadInput("main-project-error", one_run,
             failing_leaderboard(__import__("amps_eval.mc2.source", fromlist=["MC2SourceError"]).MC2SourceError("no MC2")),
             raises=CLIFailed, says=("exit 2", "amps-eval leaderboard: error: no MC2")),
    BadInput("main-bug-without-debug", one_run, failing_leaderboard(TypeError("unsupported operand")),
             raises=CLIFailed, says=("exit 1", "internal error", "TypeError: unsupported operand", "--debug")),
    BadInput("main-bug-with-debug-flag", one_run,
             failing_leaderboard(TypeError("unsupported operand"), "--debug", traceback=True),
             raises=CLIFailed, says=("exit 1", "Traceback", "TypeError: unsupported operand")),
    BadInput("main-bug-with-debug-env", one_run,
             with_debug_env(failing_leaderboard(TypeError("unsupported operand"), traceback=True)),
             raises=CLIFailed, says=("exit 1", "Traceback", "TypeError: unsupported operand")),
    BadInput("main-keyboard-interrupt", one_run, failing_leaderboard(KeyboardInterrupt()),
             raises=CLIFailed, says=("exit 130", "amps-eval leaderboard: interrupted")),
]


@pytest.mark.parametrize("row", params(TABLE))
def test_bad_input(row: BadInput, tmp_path: Path) -> None:
    check(row, tmp_path)


def test_a_good_copy_of_the_demo_run_reports_cleanly(tmp_path: Path) -> None:
    """The folders above differ from this one only by the bad input."""
    text = report(one_run(tmp_path), "--table", "1")
    expect(text, "data: generated graded MC2-format set, seed 3, 128 items", "## Problems\n\nNone.")
    assert totals(text)[0] == DEMO_NONE_VISION


def test_data_identity_of_a_run(tmp_path: Path) -> None:
    from amps_eval.report.runs import discover

    data = make_data(tmp_path / "data", seed=3)
    copy_run(tmp_path / "r" / "full", data)
    copy_run(tmp_path / "r" / "cut", data, stamp="20261203_000000", limit=8)
    manifest = json.loads(DEMO_MANIFEST.read_text())
    manifest.update(source="questions", questions_sha256="7fcb45ef6a49" + "0" * 52)
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "mc2_manifest.json").write_text(json.dumps(manifest))
    copy_run(tmp_path / "r" / "real", tmp_path / "real", stamp="20261204_000000")
    copy_run(tmp_path / "r" / "gone", tmp_path / "gone", stamp="20261205_000000")
    runs, problems = discover(tmp_path / "r")
    assert problems == []
    by_folder = {r.path.relative_to(tmp_path / "r").parts[0]: r.data for r in runs}
    full, cut, real, gone = (by_folder[name] for name in ("full", "cut", "real", "gone"))
    assert full.describe() == "generated graded MC2-format set, seed 3, 128 items" and full.limit is None
    assert cut.key == full.key and cut.limit == 8 and cut != full
    assert real.describe() == "MC2 (questions sha256 7fcb45ef6a49), 128 items"
    assert gone.key == f"path:{tmp_path / 'gone'}" and gone.n_items == 128 and "not found now" in gone.description
    # a folder rewritten since the run (other item count) is not trusted: the run is known by its path
    manifest.update(n_items=64)
    (tmp_path / "real" / "mc2_manifest.json").write_text(json.dumps(manifest))
    runs, problems = discover(tmp_path / "r")
    assert next(r for r in runs if "real" in r.path.parts).data.key.startswith("path:") and "rewritten since this run" in str(problems[0])
