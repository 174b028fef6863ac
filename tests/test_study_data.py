"""The study's data, learning rate and method choice (issue 22, "The study uses the real data when
there is real data"): a real checkpoint reads exactly what the tasks read and stops before any
compute without data; the generated set only for the organisms or with --synthetic; the learning
rate follows the item count; --methods / --targets choose the runs."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest

from amps_eval.cli import build_parser, main, study_settings
from amps_eval.mc2.source import MC2SourceError
from amps_eval.study import StudySettings, resolve_data_and_lr
from amps_eval.study_data import choose_data, n_items, study_lr
from amps_eval.study_plan import select


def test_a_real_checkpoint_reads_what_the_tasks_read(synthetic_mc2_dir, tmp_path):
    env = {"AMPS_MC2_DATA": str(synthetic_mc2_dir)}
    assert choose_data(None, False, False, env).folder == synthetic_mc2_dir.absolute()
    home = tmp_path / "home"  # the default folder, AMPS_MC2_DATA unset
    (home / "mc2").parent.mkdir()
    (home / "mc2").symlink_to(synthetic_mc2_dir)
    choice = choose_data(None, False, False, {"AMPS_EVAL_HOME": str(home)})
    assert choice.folder == (home / "mc2").absolute() and "default folder" in choice.how
    given = choose_data(synthetic_mc2_dir, False, False, {})  # --data wins over the environment
    assert given.folder == synthetic_mc2_dir.absolute() and "(--data)" in given.how


def test_a_real_checkpoint_without_data_gets_the_command_that_makes_it(tmp_path):
    with pytest.raises(MC2SourceError) as error:
        choose_data(None, False, False, {"AMPS_EVAL_HOME": str(tmp_path)})
    assert "amps-eval prepare-mc2 --download" in str(error.value) and "--synthetic" in str(error.value)
    with pytest.raises(MC2SourceError, match="does not exist"):  # a set variable is never a fallback
        choose_data(None, False, False, {"AMPS_MC2_DATA": str(tmp_path / "typo")})


def test_the_generated_set_only_for_organisms_or_when_asked(synthetic_mc2_dir, tmp_path):
    env = {"AMPS_MC2_DATA": str(synthetic_mc2_dir)}
    assert choose_data(None, False, True, env).folder is None  # the organisms' own set, whatever is set
    synthetic = choose_data(None, True, False, {"AMPS_EVAL_HOME": str(tmp_path)})
    assert synthetic.folder is None and "not the MC2 benchmark" in synthetic.how
    with pytest.raises(ValueError, match="exclude each other"):
        choose_data(synthetic_mc2_dir, True, False, env)


def test_the_study_stops_before_any_compute_without_data(tiny_qwen_path, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("AMPS_MC2_DATA", raising=False)
    monkeypatch.setenv("AMPS_EVAL_HOME", str(tmp_path / "home"))
    out = tmp_path / "study"
    with mock.patch("amps_eval.study._run_study", side_effect=AssertionError("the study started")):
        code = main(["study", "--model", "amps_qwen", "--pretrained", str(tiny_qwen_path), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "amps-eval prepare-mc2 --download" in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_study_takes_the_data_and_the_lr_it_chose(tiny_qwen_path, synthetic_mc2_dir, capsys):
    settings = StudySettings(pretrained=str(tiny_qwen_path))
    chosen = resolve_data_and_lr(settings, environ={"AMPS_MC2_DATA": str(synthetic_mc2_dir)})
    n = n_items(choose_data(synthetic_mc2_dir, False, False, {}), 0, None)
    assert chosen.data == synthetic_mc2_dir.absolute() and chosen.lr == study_lr(n)
    assert f"MLP learning rate: {study_lr(n):g}" in capsys.readouterr().out
    organism = resolve_data_and_lr(StudySettings(lr=0.01), environ={"AMPS_MC2_DATA": str(synthetic_mc2_dir)})
    assert organism.data is None and organism.lr == 0.01  # the generated set; --lr as given


def test_the_learning_rate_follows_the_item_count():
    assert study_lr(2000) == pytest.approx(5e-5)  # the L2S reference's, on the real MC2 items
    assert study_lr(100) == pytest.approx(1e-3)  # what ~100 items need
    assert study_lr(10) == pytest.approx(1e-3)  # capped
    assert study_lr(128) == pytest.approx(5e-5 * 2000 / 128)
    assert study_lr(4000) == pytest.approx(2.5e-5)
    with pytest.raises(ValueError):
        study_lr(0)


def test_the_item_count_reads_the_folder_and_the_limit(synthetic_mc2_dir):
    import json

    manifest = json.loads((synthetic_mc2_dir / "mc2_manifest.json").read_text())
    folder = choose_data(synthetic_mc2_dir, False, False, {})
    assert n_items(folder, 99, None) == manifest["n_items"]
    assert n_items(folder, 99, 3) == 3
    assert n_items(choose_data(None, True, False, {}), 16, None) == 128


def test_methods_and_targets_choose_the_runs_and_the_fits():
    chosen = select(("none", "inst", "l2s", "amps"), ("vision", "text"))
    assert chosen.prompt_methods == ("none", "inst")
    assert chosen.fit_methods == ("l2s", "amps") and chosen.steering_methods == ("l2s", "amps")
    assert chosen.tasks == ("mc2_visual", "mc2_text")
    assert select(("mean_mcs",), ("text",)).fit_methods == ("mean",)  # mean_mcs reads the mean file
    assert select(("none",), ("vision",)) .tasks == ("mc2_visual",)
    everything = select(StudySettings().methods, StudySettings().targets)
    # amps_oracle is chosen by default and fitted only on graded data (the study filters it by the data's columns)
    assert everything.fit_methods == ("mean", "l2s", "amps_beta0", "amps", "amps_oracle")
    assert len(everything.steering_methods) == 6


def test_the_command_line_chooses_methods_and_targets():
    args = build_parser().parse_args(["study", "--out", "o", "--methods", "none,inst,l2s,amps", "--targets", "vision",
                                      "--synthetic"])
    settings = study_settings(args)
    assert settings.methods == ("none", "inst", "l2s", "amps") and settings.targets == ("vision",)
    assert settings.synthetic and settings.lr is None
    with pytest.raises(ValueError, match="did you mean 'amps'"):
        StudySettings(methods=("ampz",))
    with pytest.raises(ValueError, match="--targets"):
        StudySettings(targets=("image",))
    with pytest.raises(ValueError, match="lr"):
        StudySettings(lr=0.0)
