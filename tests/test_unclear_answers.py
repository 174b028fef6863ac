"""The remaining unclear answers of issue 25, section 4: one test per case.

* an unusable output of prepare-mc2, synth-mc2, report --out/--figures, leaderboard --out: the
  usual "cannot write/use ..." line before any work (the CLI runs as root here: an unusable path is
  one below a regular file or in /proc);
* prepare-mc2 refuses duplicated questions and questions with two equal options, naming them, or
  drops and lists them with --skip-invalid;
* folders written by prepare-mc2 / synth-mc2 follow the umask;
* prepare-mc2's build folder left by a killed run is removed by the next run.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from amps_eval import cli
from test_mc2_data import fake_mc2  # noqa: F401  (fixture)


def _fails_fast(argv: list[str], capsys, *says: str) -> str:
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "Errno" not in err and ".staging" not in err and ".partial" not in err, err
    for text in says:
        assert text in err, err
    return err


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "file.txt"
    path.write_text("x")
    return path


def test_synth_mc2_into_an_unusable_place_fails_before_any_work(a_file, capsys):
    _fails_fast(["synth-mc2", "--out", str(a_file / "data")], capsys, "cannot", str(a_file), "is a file, not a folder")
    _fails_fast(["synth-mc2", "--out", "/proc/amps-eval-test/data"], capsys, "cannot", "/proc", "does not take new files")


def test_prepare_mc2_into_an_unusable_place_fails_before_any_work(fake_mc2, a_file, capsys):  # noqa: F811
    questions, root, _ = fake_mc2
    for out, says in ((a_file / "mc2", "is a file, not a folder"), (Path("/proc/amps-eval-test/mc2"), "does not take new files")):
        _fails_fast(["prepare-mc2", "--images", str(root), "--questions", str(questions), "--out", str(out)], capsys,
                    "cannot", says)


def test_report_and_leaderboard_outputs_are_checked_before_any_work(tmp_path, a_file, capsys):
    runs = tmp_path / "runs"  # no results at all: a check after the work would say "no *_results.json"
    runs.mkdir()
    (tmp_path / "folder").mkdir()
    _fails_fast(["report", str(runs), "--out", str(tmp_path / "folder")], capsys, "cannot", "is an existing folder")
    _fails_fast(["report", str(runs), "--out", str(a_file / "t.md")], capsys, "cannot", "is a file, not a folder")
    _fails_fast(["report", str(runs), "--figures", str(a_file / "figs")], capsys, "cannot", "--figures")
    _fails_fast(["report", str(runs), "--figures", "/proc/amps-eval-test/figs"], capsys, "cannot", "does not take new files")
    _fails_fast(["leaderboard", str(runs), "--out", str(a_file / "lb")], capsys, "cannot", "--out")


def _bad_questions(questions: Path) -> list[dict]:
    records = json.loads(questions.read_text())
    records.append(dict(records[2]))  # an exact repeat of question 2: question 10
    records[5]["answer_text"] = " " + records[5]["answer_vision"].upper()  # equal options
    questions.write_text(json.dumps(records))
    return records


def test_prepare_mc2_refuses_repeated_questions_and_equal_options_naming_them(fake_mc2, tmp_path, capsys):  # noqa: F811
    questions, root, _ = fake_mc2
    _bad_questions(questions)
    out = tmp_path / "mc2"
    _fails_fast(["prepare-mc2", "--images", str(root), "--questions", str(questions), "--out", str(out)], capsys,
                "question 10", "repeats question 2", "question 5", "two options are the same answer", "--skip-invalid")
    assert not out.exists()


def test_prepare_mc2_skip_invalid_drops_and_lists_them_and_the_folder_is_accepted(fake_mc2, tmp_path, capsys):  # noqa: F811
    from amps_eval.mc2.source import load_mc2, local_source

    questions, root, _ = fake_mc2
    _bad_questions(questions)
    out = tmp_path / "mc2"
    assert cli.main(["prepare-mc2", "--images", str(root), "--questions", str(questions), "--out", str(out),
                     "--skip-invalid"]) == 0
    skipped = json.loads((out / "skipped.json").read_text())
    assert [s["mc2_id"] for s in skipped] == [5, 10]
    assert "same answer" in skipped[0]["reason"] and "repeats question 2" in skipped[1]["reason"]
    assert len(load_mc2(local_source(out))) == 9  # what every later command loads: accepted


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_folders_written_by_prepare_and_synth_follow_the_umask(fake_mc2, tmp_path):  # noqa: F811
    from amps_eval.mc2.prepare import prepare_mc2
    from amps_eval.mc2.synthetic import write_synthetic_mc2

    umask = os.umask(0o022)  # the test's own process setting, restored below
    os.umask(umask)
    expected = 0o777 & ~umask
    questions, root, _ = fake_mc2
    prepare_mc2(questions, root, tmp_path / "mc2", progress=False)
    write_synthetic_mc2(tmp_path / "synth", n_per_category=1, image_size=32, progress=False)
    for folder in (tmp_path / "mc2", tmp_path / "synth"):
        assert _mode(folder) == expected, oct(_mode(folder))
        assert all(_mode(p) == expected for p in folder.rglob("*") if p.is_dir())


def test_a_build_folder_left_by_a_killed_prepare_is_removed_by_the_next_run(fake_mc2, tmp_path):  # noqa: F811
    from amps_eval.mc2.prepare import prepare_mc2

    questions, root, _ = fake_mc2
    out = tmp_path / "mc2"
    left = tmp_path / ".mc2.build-1234-abcd"  # as a kill during "Generating test split" leaves it
    (left / "cache").mkdir(parents=True)
    (left / "cache" / "data-00000.arrow").write_bytes(b"\0" * 1000)
    prepare_mc2(questions, root, out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".mc2")) == []
    assert (out / "mc2_manifest.json").is_file()


def test_a_task_of_a_category_the_data_lacks_says_why_on_lmms_evals_last_line():
    """lmms-eval 0.7.3 builds the documents inside tenacity's @retry and its CLI's last line is
    ``Error during evaluation: {error}``: with a RetryError, that line must still say the reason."""
    import datasets
    from tenacity import RetryError, retry, stop_after_attempt

    from amps_eval.mc2.docs import REQUIRED_COLUMNS, MC2TaskError, TaskSpec, task_docs

    data = datasets.Dataset.from_dict({c: (["color", "size"] if c == "category" else [1, 2] if c == "mc2_id" else ["x", "y"])
                                       for c in REQUIRED_COLUMNS})

    @retry(stop=stop_after_attempt(2))  # as lmms-eval's ConfigurableTask.download, without its 2 s waits
    def download():
        return task_docs(data, TaskSpec("vision", "counting"))

    with pytest.raises(RetryError) as caught:
        download()
    last_line = f"Error during evaluation: {caught.value}. Please set `--verbosity=DEBUG` to get more information."
    assert "no items of category 'counting' (it has color, size)" in last_line
    error = caught.value.last_attempt.exception()
    assert isinstance(error, MC2TaskError) and isinstance(error, ValueError)
    assert str(error).startswith("the MC2 data has no items of category 'counting'")


def test_the_report_says_which_run_it_left_out_for_a_nan_share_and_why(tmp_path, capsys):
    from test_leaderboard import ALPHA, write_run

    runs = tmp_path / "runs"
    write_run(runs / "none", "20260101_080000", {"pretrained": ALPHA, "method": "none"}, {"vision": "half", "text": "half"})
    bad = write_run(runs / "inst", "20260101_080100", {"pretrained": ALPHA, "method": "inst"},
                    {"vision": "all", "text": "all"})
    for samples in bad.parent.glob("*_samples_*.jsonl"):  # results only, as a run without --log_samples
        samples.unlink()
    results = json.loads(bad.read_text())
    results["results"]["mc2_visual"]["target_acc,none"] = float("nan")
    bad.write_text(json.dumps(results))  # json writes NaN, as lmms-eval does
    assert cli.main(["report", str(runs)]) == 0
    text = capsys.readouterr().out
    problems = text[text.index("## Problems"):]
    assert str(bad) in problems and "mc2_visual: target_acc is NaN in the results file" in problems
    assert "left out of the tables" in problems
