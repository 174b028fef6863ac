"""The command line's options: defaults read from the settings dataclasses and shown in --help,
lmms-eval's spellings, list separators, "did you mean" and --version (amps_eval/cli_options.py)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

from amps_eval.cli import _mcs_settings, build_parser, fit_settings, main, study_settings
from amps_eval.cli_options import show_default
from amps_eval.fit import FitSettings
from amps_eval.mcs_run import run_mcs
from amps_eval.mcs.score import MCSSettings
from amps_eval.methods.steering import SteeringConfig
from amps_eval.organism.architectures import ARCHITECTURES
from amps_eval.report.cli_parsers import sweep_settings
from amps_eval.report.runs import parse_model_args
from amps_eval.report.sweep import SweepSettings
from amps_eval.settings import SettingsError, WrapperSettings
from amps_eval.steering.hooks import POSITIONS
from amps_eval.steering.module import TrainSettings
from amps_eval.study import StudySettings
from amps_eval.vocabulary import did_you_mean, split_list

ROOT = Path(__file__).resolve().parents[1]
FIT = ["fit", "--model", "amps_qwen", "--pretrained", "some/checkpoint", "--method", "mean", "--out", "o.safetensors"]


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def flat(text: str) -> str:
    return " ".join(text.split())


def test_help_of_every_subcommand_shows_every_default():
    parser = build_parser()
    checked = 0
    for name, sub in [("amps-eval", parser), *subparsers(parser).items()]:
        shown = flat(sub.format_help())
        for action in sub._actions:
            one_of = any(action in g._group_actions for g in sub._mutually_exclusive_groups if g.required)
            if not action.option_strings or action.nargs == 0 or action.required or one_of:
                continue  # positionals, flags (off unless given), required options
            entry = flat(sub._get_formatter()._format_action(action))
            assert entry.replace(" ", "") in shown.replace(" ", ""), (name, action.dest)  # long words wrap anywhere
            assert "default:" in entry, f"amps-eval {name} {action.option_strings[0]}: no default in its help"
            if action.default not in (None, ""):
                assert f"(default: {show_default(action.default)})" in entry or show_default(action.default) in entry
            checked += 1
    assert checked > 60  # every subcommand's options were seen


def test_help_shows_the_default_values_themselves():
    text = flat(subparsers(build_parser())["fit"].format_help())
    assert "--layer LAYER decoder layer to read and steer" in text and "(default: 14)" in text
    assert "(default: 0.05,0.1,0.2)" in text and "(default: 8)" in text and "(default: per_sigma)" in text
    assert "(default: 0.05)" in text  # --mcs-tolerance
    assert "(default: the recipe's, 5e-05)" in text and "--batch_size" not in text  # the alias is not listed twice


def test_option_defaults_are_the_settings_defaults(tmp_path):
    parser = build_parser()
    assert fit_settings(parser.parse_args(FIT)) == FitSettings(model="amps_qwen", pretrained="some/checkpoint",
                                                               method="mean")
    assert fit_settings(parser.parse_args([*FIT, "--recipe", "mse_v1"])).train == TrainSettings.mse_v1()
    assert study_settings(parser.parse_args(["study", "--out", "o"])) == StudySettings(out=Path("o"))
    organisms = tuple(a.lmms_model for a in ARCHITECTURES.values())
    # the demo: the graded organisms with the known-answer tests, side by side, one thread each
    assert study_settings(parser.parse_args(["demo"])) == StudySettings(models=organisms, graded=True,
                                                                        jobs=len(organisms), threads=1)
    steering = tmp_path / "s.safetensors"
    steering.write_bytes(b"x")
    sweep = ["sweep", "--model", "amps_qwen", "--pretrained", "p", "--method", "mean", "--steering", str(steering),
             "--alphas", "0,1", "--out", str(tmp_path / "out")]
    assert sweep_settings(parser.parse_args(sweep)) == SweepSettings("amps_qwen", "p", "mean", steering, (0.0, 1.0),
                                                                     out=tmp_path / "out")
    mcs = parser.parse_args(["mcs", *FIT[1:5], "--out", "m.jsonl"])
    assert _mcs_settings(mcs) == MCSSettings()  # every MCS option's default, sequential ones included
    defaults = inspect.signature(run_mcs).parameters
    assert (mcs.batch_size, mcs.dtype, mcs.prompt) == tuple(defaults[k].default for k in ("batch_size", "dtype", "prompt"))


def test_the_steering_settings_are_defined_once():
    steering = {f.name: f.default for f in dataclasses.fields(SteeringConfig)}
    wrapper = WrapperSettings(pretrained="x")
    assert {k: getattr(wrapper, k) for k in ("alpha", "positions", "beta", "convention")} == \
        {k: steering[k] for k in ("alpha", "positions", "beta", "convention")}
    assert wrapper.steering_config() == SteeringConfig(None)
    assert wrapper.mcs_settings() == MCSSettings() == steering["mcs"]
    assert FitSettings(model="amps_qwen", pretrained="x", method="amps").fit_beta == steering["beta"]
    assert FitSettings(model="amps_qwen", pretrained="x", method="mean").convention == steering["convention"]
    assert StudySettings().epochs == TrainSettings().epochs
    assert StudySettings().lr is None  # follows the data size: the papers' rate on the real 2,000 items
    from amps_eval.study_data import study_lr

    assert study_lr(2000) == TrainSettings().lr and study_lr(100) != TrainSettings().lr  # see study --lr's help


def test_lmms_eval_spellings_and_abbreviations():
    parser = build_parser()
    dashed = parser.parse_args([*FIT, "--batch-size", "3", "--train-batch-size", "5", "--mcs-seed", "2"])
    underscored = parser.parse_args([*FIT, "--batch_size", "3", "--train_batch_size", "5", "--mcs_seed", "2"])
    assert vars(dashed) == vars(underscored) and dashed.batch_size == 3 and dashed.train_batch_size == 5
    assert parser.parse_args([*FIT, "--train", "7"]).train_batch_size == 7  # one option under two spellings
    args = parser.parse_args(["sweep", "--model", "amps_qwen", "--pretrained", "p", "--method", "mean", "--steering",
                              "s", "--alphas", "1", "--out", "o", "--model_args", "positions=generated"])
    assert args.model_args == "positions=generated"


def test_lists_take_slashes_and_commas(tmp_path):
    parser = build_parser()
    assert parser.parse_args([*FIT, "--sigmas", "0.05/0.1"]).sigmas == (0.05, 0.1)
    assert parser.parse_args([*FIT, "--sigmas", "0.05,0.1"]).sigmas == (0.05, 0.1)
    slashed = study_settings(parser.parse_args(["study", "--out", "o", "--model", "amps_qwen/amps_llava",
                                                "--alphas", "0/2"]))
    assert slashed.models == ("amps_qwen", "amps_llava") and slashed.alphas == (0.0, 2.0)
    assert study_settings(parser.parse_args(["study", "--out", "o", "--model", "amps_qwen,amps_llava",
                                             "--alphas", "0,2"])) == slashed
    assert WrapperSettings(pretrained="x", mcs_sigmas="0.05/0.3").mcs_settings().sigmas == (0.05, 0.3)
    assert split_list(" a/b, c ,") == ("a", "b", "c")
    assert split_list("mc2_visual,mc2_text") == SweepSettings.__dataclass_fields__["tasks"].default
    with pytest.raises(SystemExit):
        parser.parse_args(["study", "--out", "o", "--alphas", "0/x"])


@pytest.mark.parametrize("argv, hint", [
    (["fitt"], "invalid choice: 'fitt'; did you mean 'fit'?"),
    ([*FIT[:2], "amps_qwn", *FIT[3:]], "invalid choice: 'amps_qwn'; did you mean 'amps_qwen'?"),
    ([*FIT[:6], "meen", *FIT[7:]], "invalid choice: 'meen'; did you mean 'mean'?"),
    ([*FIT, "--layr", "3"], "unrecognized arguments: --layr 3; did you mean --layer?"),
    ([*FIT, "--drws", "3", "--seeed", "1"], "unrecognized arguments: --drws 3 --seeed 1; did you mean --draws --seed?"),
    (["sweep", "--model", "amps_lava"], "did you mean 'amps_llava'?"),
])
def test_cli_says_what_was_meant(argv, hint, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert hint in flat(capsys.readouterr().err)


def test_settings_say_what_was_meant(tmp_path, capsys):
    assert main(["study", "--out", str(tmp_path / "o"), "--model", "amps_qwn"]) == 2
    assert "did you mean 'amps_qwen'?" in capsys.readouterr().err
    with pytest.raises(SettingsError, match=r"^unknown model argument 'alhpa'; did you mean 'alpha'\?; valid arguments: "):
        WrapperSettings.from_model_args(pretrained="x", alhpa=1)
    with pytest.raises(SettingsError, match=r"unknown model arguments \['alhpa', 'zzz'\]; did you mean 'alpha' for 'alhpa'\?"):
        WrapperSettings.from_model_args(pretrained="x", alhpa=1, zzz=2)
    with pytest.raises(SettingsError, match=r"unknown method='meen'; did you mean 'mean'\?; valid methods: none"):
        WrapperSettings.from_model_args(pretrained="x", method="meen")
    with pytest.raises(SettingsError, match=r"positions='generatd' is not one of .*; did you mean 'generated'\?"):
        WrapperSettings.from_model_args(pretrained="x", positions="generatd")
    steering = tmp_path / "s.safetensors"
    steering.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"unknown model argument 'convension'; did you mean 'convention'\?"):
        SweepSettings("amps_qwen", "p", "mean", steering, (1.0,), extra_model_args={"convension": "prose"})
    assert did_you_mean("temprature", WrapperSettings.field_names()) == ""  # nothing close: no guess


def test_sweep_help_example_is_accepted():
    text = flat(subparsers(build_parser())["sweep"].format_help())
    example = re.search(r"e\.g\. (\S+=\S+?) \(default", text).group(1)
    args = parse_model_args(example)
    assert args["positions"] in POSITIONS
    WrapperSettings.from_model_args(pretrained="x", **args)  # no error


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out.strip() == f"amps-eval {version('amps-eval')}" == f"amps-eval {declared}"


def doc_rows(first: str, *pages: str) -> list[list[str]]:
    """The cells of the table rows of the docs ``pages`` whose first cell starts with ``first``."""
    rows = []
    for page in pages:
        for line in (ROOT / "docs" / page).read_text().splitlines():
            if line.startswith("| " + first):
                rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


def test_documented_model_argument_defaults_are_the_code():
    from amps_eval.settings import QwenSettings

    defaults = {f.name: f.default for f in dataclasses.fields(QwenSettings)}
    unset = {"unset", "model default", "checkpoint's", "cuda if available, else cpu", "required"}
    checked = set()
    for cells in doc_rows("`", "models.md", "steering.md"):  # model arguments, steering arguments
        names = re.findall(r"`(\w+)`", cells[0])
        if not names or not set(names) <= set(defaults):
            continue
        values = [v.strip() for v in cells[1].split(", ")] if len(names) > 1 and cells[1] not in unset else \
            [cells[1]] * len(names)
        for name, text in zip(names, values, strict=True):
            default, text = defaults[name], text.strip("`")
            if text in unset:
                assert default is None or default is dataclasses.MISSING, name
            elif isinstance(default, bool):
                assert text == str(default).lower(), name
            elif isinstance(default, (int, float)):
                assert float(text) == default, name
            else:
                assert text == default, name
            checked.add(name)
    assert {"alpha", "positions", "beta", "convention", "mcs_sigmas", "mcs_draws", "batch_size"} - checked == {"batch_size"}
    assert len(checked) >= 20


def test_documented_table_of_differing_defaults_is_the_code():
    (batch,) = doc_rows("batch size", "cli.md")
    numbers = [int(re.match(r"\d+", cell).group()) for cell in batch[1:5]]
    assert numbers == [FitSettings.batch_size, inspect.signature(run_mcs).parameters["batch_size"].default,
                       StudySettings.batch_size, SweepSettings.batch_size]
    (layer,) = doc_rows("layer", "cli.md")
    assert layer[1].startswith(f"{FitSettings.layer} ") and StudySettings.layer is None
    (lr,) = doc_rows("Adam lr", "cli.md")
    assert lr[1].startswith(f"{TrainSettings.lr:g} / {TrainSettings.epochs} ")
    # the study's rate follows the item count (amps_eval.study_data.study_lr)
    from amps_eval.study_data import REFERENCE_ITEMS, SMALL_DATA_LR

    assert StudySettings.lr is None
    assert lr[3].startswith(f"{TrainSettings.lr:g} x {REFERENCE_ITEMS} / items, at most {SMALL_DATA_LR:g} / "
                            f"{StudySettings.epochs} ")


def test_the_sequential_mcs_options_reach_the_settings():
    args = build_parser().parse_args(["mcs", *FIT[1:5], "--out", "m.jsonl", "--mcs-tolerance", "0.04",
                                      "--mcs-min-draws", "3", "--mcs-round-draws", "1", "--draws", "9",
                                      "--mcs-seed", "5"])
    got = _mcs_settings(args)
    assert (got.tolerance, got.min_draws, got.round_draws, got.draws, got.seed) == (0.04, 3, 1, 9, 5)
    assert _mcs_settings(build_parser().parse_args(["mcs", *FIT[1:5], "--out", "m", "--mcs-tolerance", "none"])
                         ).tolerance is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["mcs", *FIT[1:5], "--out", "m", "--mcs-tolerance", "0"])
