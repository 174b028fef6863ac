"""Several models of a study at once, in worker processes (`amps_eval.study_workers`): the same
outputs as one after the other, a failing worker stops the study with its model's name and log,
and the settings and command lines that choose it."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from test_resume import _published


def _settings(out: Path, pretrained: Path, **changes):
    from amps_eval.study import StudySettings

    given = {"out": out, "models": ("amps_qwen", "amps_llava"), "pretrained": pretrained,
             "n_per_category": 1, "alphas": (2.0,), "epochs": 1, "device": "cpu", "image_size": 56, "limit": 4,
             "synthetic": True, "methods": ("none", "mean"), "targets": ("vision",), "seeds": 1}
    return StudySettings(**{**given, **changes})


def _comparable(out: Path) -> dict[str, bytes]:
    """`_published` without the output folder's own path (the steering files record their data
    folder, so their hashes follow it) and without the settings that say how the models ran."""
    steering_hash = re.compile(rb"sha256:[0-9a-f]{12}")
    how = re.compile(rb'"(jobs|threads)": [^,\n]*')
    return {name: how.sub(b"HOW", steering_hash.sub(b"sha256:HASH", data.replace(str(out).encode(), b"OUT")))
            for name, data in _published(out).items()}


def test_two_workers_publish_what_one_process_does(tmp_path, tiny_qwen_path, tiny_llava_path, capsys):
    """Three families (the third through the generic adapter, waiting for a free worker) in two
    workers: the same files as one process, and one leaderboard across the three."""
    import torch

    from amps_eval.study import run_study
    from amps_eval.tiny_vlms import build_tiny_vlm

    gemma = build_tiny_vlm("gemma3", tmp_path / "tiny-gemma3", seed=0)
    models = ("amps_qwen", "amps_llava", "amps_auto")
    pretrained = (str(tiny_qwen_path), str(tiny_llava_path), str(gemma))
    run_study(_settings(tmp_path / "side_by_side", pretrained, models=models, jobs=2, threads=1))
    printed = capsys.readouterr().out
    assert "3 model(s) in 2 worker process(es) at a time, 1 torch thread(s) each" in printed
    # the workers' progress reaches the terminal, each line named by its model
    assert all(f"[{m}] [study 5/6]" in printed and f"[{m}] done:" in printed for m in models)
    board = (tmp_path / "side_by_side" / "leaderboard.md").read_text()
    assert all(Path(p).name in board for p in pretrained)  # one leaderboard across the three families
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what the workers ran with, in this process (restored below)
    try:
        run_study(_settings(tmp_path / "in_process", pretrained, models=models, jobs=1, threads=None))
    finally:
        torch.set_num_threads(threads)
    assert "worker process" not in capsys.readouterr().out
    side, single = _comparable(tmp_path / "side_by_side"), _comparable(tmp_path / "in_process")
    assert side.keys() == single.keys() and any("amps_auto/sweep_mean" in name for name in side)
    assert side == single
    assert not list((tmp_path / "side_by_side").rglob("*.log"))  # the logs go with the staging records


def test_a_failing_worker_stops_the_study_naming_its_model_and_log(tmp_path, tiny_qwen_path):
    from amps_eval.study import run_study

    broken = tmp_path / "broken"
    shutil.copytree(tiny_qwen_path, broken)
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(weights.read_bytes()[:100])  # truncated: the config loads, the weights do not
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "keep.txt").write_text("an earlier result")
    settings = _settings(tmp_path / "study", (str(tiny_qwen_path), str(broken)), jobs=2, threads=1,
                         models=("amps_qwen", "amps_qwen"))
    with pytest.raises(RuntimeError) as error:
        run_study(settings)
    message = str(error.value)
    assert "the study of amps_qwen-2" in message and str(broken) in message and "the end of its log" in message
    assert "amps_qwen-2.log" in message
    assert (tmp_path / "study" / "keep.txt").read_text() == "an earlier result"  # nothing published or lost


def test_worker_settings_are_validated_and_the_commands_choose_them():
    from amps_eval.cli import build_parser, study_settings
    from amps_eval.study import StudySettings, resume_context
    from amps_eval.study_workers import default_threads

    for bad in ({"jobs": 0}, {"jobs": True}, {"threads": 0}, {"threads": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            StudySettings(**bad)
    assert not StudySettings().in_workers and StudySettings(threads=1).in_workers and StudySettings(jobs=2).in_workers
    parser = build_parser()
    demo = study_settings(parser.parse_args(["demo"]))
    assert (demo.jobs, demo.threads, demo.graded) == (len(demo.models), 1, True)
    study = study_settings(parser.parse_args(["study", "--out", "o"]))
    assert (study.jobs, study.threads) == (1, None)
    given = study_settings(parser.parse_args(["study", "--out", "o", "--jobs", "3", "--threads", "2"]))
    assert (given.jobs, given.threads) == (3, 2)
    # how many models run at once changes no number: a study resumes across --jobs, not across --threads
    assert resume_context(StudySettings(jobs=1)) == resume_context(StudySettings(jobs=2))
    assert resume_context(StudySettings(threads=1)) != resume_context(StudySettings(threads=2))
    assert default_threads(2, cores=2) == 1 and default_threads(3, cores=2) == 1 and default_threads(2, cores=16) == 8


def test_the_log_relay_prints_whole_progress_lines_once_and_not_the_bars(tmp_path):
    from amps_eval.study_workers import _LogRelay

    log = tmp_path / "m.log"
    printed = []
    relay = _LogRelay({"m": log}, say=lambda line, **kw: printed.append(line))
    relay.poll()  # no log yet
    log.write_text("[study 2/6] m: MCS\nAmpsQwen (none):  12%|  | 1/8\r  [mcs] 1/3 passes done in 3 s, about 6 s le")
    relay.poll()
    assert printed == ["[m] [study 2/6] m: MCS"]
    with open(log, "a") as stream:
        stream.write("ft\nnoise\n")
    relay.poll()
    relay.poll()
    assert printed == ["[m] [study 2/6] m: MCS", "[m]   [mcs] 1/3 passes done in 3 s, about 6 s left"]
