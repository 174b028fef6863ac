"""`amps-eval eval`: an lmms-eval run that exits non-zero when it failed (issue 22, "Failures that
scripts and schedulers can see"). The four failures lmms-eval itself answers with exit code 0 (a
missing data folder, a missing checkpoint, ``alhpa=2``, ``method=ampz``) stop before lmms-eval starts,
with one line; a failure inside lmms-eval is caught by checking the results it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from amps_eval.cli import main
from amps_eval.eval_command import EvaluationFailed, check_results, parse_request


def _eval(capsys, *argv: str) -> tuple[int, str]:
    code = main(["eval", *argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture
def base(tiny_qwen_path, tmp_path, mc2_env):
    return ["--model", "amps_qwen", "--tasks", "mc2_visual", "--output_path", str(tmp_path / "out"),
            "--model_args", f"pretrained={tiny_qwen_path}"]


@pytest.mark.parametrize(("extra", "message"), [
    (",alhpa=2", "unknown model argument 'alhpa'; did you mean 'alpha'"),
    (",method=ampz", "ampz"),
])
def test_a_bad_model_argument_exits_2_with_one_line(base, capsys, extra, message):
    code, shown = _eval(capsys, *base[:-1], base[-1] + extra)
    assert code == 2
    assert message in shown
    assert shown.count("error:") == 1 and "Traceback" not in shown


def test_a_missing_checkpoint_exits_2(base, capsys, tmp_path):
    code, shown = _eval(capsys, *base[:-1], f"pretrained={tmp_path / 'no-such-checkpoint'}")
    assert code == 2
    assert "the checkpoint folder does not exist" in shown


def test_a_missing_data_folder_exits_2_with_the_command_that_makes_it(base, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("AMPS_MC2_DATA", raising=False)
    monkeypatch.setenv("AMPS_EVAL_HOME", str(tmp_path / "empty-home"))
    code, shown = _eval(capsys, *base)
    assert code == 2
    assert "No MC2 data" in shown and "prepare-mc2 --download" in shown
    monkeypatch.setenv("AMPS_MC2_DATA", str(tmp_path / "typo"))  # a named folder that is not there
    code, shown = _eval(capsys, *base)
    assert code == 2 and "does not exist" in shown


def test_an_output_path_that_takes_no_files_exits_2(base, capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, shown = _eval(capsys, *base[:4], "--output_path", str(blocker / "out"), *base[6:])
    assert code == 2 and "is a file, not a folder" in shown


def test_everything_after_eval_is_lmms_eval_s():
    from amps_eval.cli import build_parser

    argv = ["--model", "amps_qwen", "--model_args", "pretrained=x,alpha=2", "--tasks", "mc2_visual", "--limit", "3"]
    args = build_parser().parse_args(["eval", *argv])
    assert args.command == "eval" and args.lmms_args == argv


@pytest.mark.parametrize(("argv", "message"), [
    (["--model", "amps_qwen", "--output_path", "x"], "give the tasks"),
    (["--model", "amps_qwen", "--tasks", "mc2_visual"], "--output_path"),
    (["--config", "runs.yaml"], "--config"),
])
def test_what_the_checks_need_is_required(argv, message):
    with pytest.raises(ValueError, match=message):
        parse_request(argv)


def _results(folder: Path, tasks: list[str], samples: list[str]) -> None:
    run = folder / "model"
    run.mkdir(parents=True)
    (run / "2026_results.json").write_text(json.dumps({"results": {t: {} for t in tasks},
                                                       "configs": {t: {} for t in tasks}}))
    for task in samples:
        (run / f"2026_samples_{task}.jsonl").write_text("{}\n")


def test_the_results_check_names_what_is_missing(tmp_path):
    request = parse_request(["--tasks", "mc2_visual,mc2_text", "--output_path", str(tmp_path / "a"), "--log_samples"])
    with pytest.raises(EvaluationFailed, match="wrote no results file"):
        check_results(request, set())
    _results(tmp_path / "a", ["mc2_visual"], ["mc2_visual"])
    with pytest.raises(EvaluationFailed, match="no results for mc2_text"):
        check_results(request, set())
    request = parse_request(["--tasks", "mc2_visual,mc2_text", "--output_path", str(tmp_path / "b"), "--log_samples"])
    _results(tmp_path / "b", ["mc2_visual", "mc2_text"], ["mc2_visual"])
    with pytest.raises(EvaluationFailed, match="no samples file for mc2_text"):
        check_results(request, set())
    before = set((tmp_path / "b").rglob("*_results.json"))
    with pytest.raises(EvaluationFailed, match="wrote no results file"):  # an earlier run's file does not count
        check_results(request, before)
    (tmp_path / "b" / "model" / "2026_samples_mc2_text.jsonl").write_text("{}\n")
    assert check_results(request, set()).name == "2026_results.json"


def _env(data: Path) -> dict:
    return {**os.environ, "AMPS_MC2_DATA": str(data), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def test_a_run_through_lmms_eval_exits_0_only_with_every_task_written(tiny_qwen_path, synthetic_mc2_dir, tmp_path):
    out = tmp_path / "out"
    # 8 answer tokens (task and wrapper budget): a tiny random model never stops on its own
    common = [sys.executable, "-m", "amps_eval.cli", "eval", "--model", "amps_qwen", "--model_args",
              f"pretrained={tiny_qwen_path},max_new_tokens=8", "--gen_kwargs", "max_new_tokens=8", "--limit", "2",
              "--log_samples"]
    # the two runs start together, each into its own folder (each spends most of its time starting
    # lmms-eval and indexing tasks)
    runs = [subprocess.Popen([*common, "--tasks", tasks, "--output_path", str(out / name)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=_env(synthetic_mc2_dir))
            for name, tasks in (("ok", "mc2_visual"), ("failed", "mc2_visual,mc2_no_such_task"))]
    (ok_out, ok_err), (_, failed_err) = (run.communicate(timeout=600) for run in runs)
    assert runs[0].returncode == 0, ok_out[-3000:] + ok_err[-3000:]
    assert "every requested task wrote its results" in ok_out
    # lmms-eval itself exits 0 on an unknown task after its traceback; amps-eval eval does not
    assert runs[1].returncode == 2
    assert "amps-eval eval: error: lmms-eval wrote no results file" in failed_err


def test_the_study_s_runs_raise_on_these_failures(tiny_qwen_path, synthetic_mc2_dir, tmp_path):
    """The study runs lmms-eval through `amps_eval.runner` (simple_evaluate, which raises), not the
    CLI: the same failures stop it with their own message, so `amps-eval study` exits 2."""
    from amps_eval.mc2.source import MC2SourceError
    from amps_eval.runner import run_lmms_eval
    from amps_eval.settings import SettingsError

    out = tmp_path / "out"
    with pytest.raises(SettingsError, match="alhpa"):
        run_lmms_eval("amps_qwen", f"pretrained={tiny_qwen_path},alhpa=2", ["mc2_visual"], out, data=synthetic_mc2_dir)
    with pytest.raises(SettingsError, match="ampz"):
        run_lmms_eval("amps_qwen", f"pretrained={tiny_qwen_path},method=ampz", ["mc2_visual"], out,
                      data=synthetic_mc2_dir)
    with pytest.raises(MC2SourceError, match="does not exist"):
        run_lmms_eval("amps_qwen", f"pretrained={tiny_qwen_path}", ["mc2_visual"], out, data=tmp_path / "no-data",
                      limit=1)
    with pytest.raises(Exception, match="no-such-checkpoint"):
        run_lmms_eval("amps_qwen", f"pretrained={tmp_path / 'no-such-checkpoint'}", ["mc2_visual"], out,
                      data=synthetic_mc2_dir, limit=1)
