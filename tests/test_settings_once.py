"""The wrapper's settings are declared once and its steering file is read once: the MCS a wrapper
computes uses every one of its MCS settings (seed included), and building a steered wrapper's
settings then its steering loads the file once and hashes it once."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from amps_eval.mcs.settings import MCSSettings
from amps_eval.settings import WrapperSettings, load_steering


def test_the_wrappers_mcs_settings_carry_every_argument_seed_included():
    """Dropping any of seed, mcs_sigmas, mcs_draws, mcs_relative, mcs_ratio from the MCS call
    makes the settings differ from the ones built directly (each differs from its default here)."""
    args = {"seed": 7, "mcs_sigmas": "0.3/0.6", "mcs_draws": 5, "mcs_relative": False, "mcs_ratio": "sums"}
    settings = WrapperSettings(pretrained="x", **args)
    expected = MCSSettings(sigmas=(0.3, 0.6), draws=5, relative=False, seed=7, ratio="sums")
    defaults = MCSSettings()
    assert expected.seed != defaults.seed and expected.draws != defaults.draws  # the test can fail
    assert settings.mcs_settings() == expected
    assert settings.steering_config().mcs == expected  # what mean_mcs's MCS call is given


def test_every_mcs_argument_is_an_mcs_setting_with_its_default():
    from amps_eval.settings import MCS_ARGS

    fields = {f.name: f.default for f in dataclasses.fields(MCSSettings)}
    wrapper = WrapperSettings(pretrained="x")
    assert set(MCS_ARGS.values()) <= set(fields) and "seed" in MCS_ARGS
    for arg, field in MCS_ARGS.items():
        default = fields[field]
        got = getattr(wrapper, arg)
        assert (got == "/".join(map(str, default)) if field == "sigmas" else got == default), arg
    # every MCS setting that changes a value is an argument, but eps and the variance-reduction options
    # (Python only, documented in docs/method.md)
    from amps_eval.mcs.settings import MCS_KEYS

    assert set(MCS_KEYS) - set(MCS_ARGS.values()) == {"eps", "antithetic", "common_sigmas", "common_modalities",
                                                      "noise_design"}


def test_a_steered_wrapper_loads_and_hashes_its_steering_file_once(tmp_path, monkeypatch):
    from test_bad_inputs_steering import build

    from amps_eval.methods import steering as steering_module
    from amps_eval.steering import file as file_module

    path = tmp_path / "mean.safetensors"
    build(method="mean").save(path)
    loads, hashes = [], []
    real_load, real_sha = file_module.SteeringFile.load.__func__, file_module.sha256
    monkeypatch.setattr(file_module.SteeringFile, "load",
                        classmethod(lambda cls, p: loads.append(p) or real_load(cls, p)))
    monkeypatch.setattr(file_module, "sha256", lambda p: hashes.append(p) or real_sha(p))
    monkeypatch.setattr(file_module.SteeringFile, "check_compatible", lambda self, *a: None)
    made = []
    monkeypatch.setattr(steering_module, "Steering", lambda file, config, model: made.append(file) or file)

    settings = WrapperSettings(pretrained="x", method="mean", steering=str(path))
    steering = load_steering(settings, model=SimpleNamespace(config=None))
    assert (len(loads), len(hashes)) == (1, 1)
    assert steering is settings.steering_file()[1] and made == [steering]
    # a copy with other settings reads the file anew (its own load, its own digest)
    dataclasses.replace(settings, alpha=2.0)
    assert (len(loads), len(hashes)) == (2, 2)


def test_a_prompt_method_has_no_steering_file():
    assert WrapperSettings(pretrained="x").steering_file() is None
    with pytest.raises(Exception):
        WrapperSettings(pretrained="x", method="mean")  # needs steering=


def _count_loads(monkeypatch) -> tuple[list, list]:
    """Spies on every steering file load and sha256 (the real ones still run)."""
    from amps_eval.steering import file as file_module

    loads, hashes = [], []
    real_load, real_sha = file_module.SteeringFile.load.__func__, file_module.sha256
    monkeypatch.setattr(file_module.SteeringFile, "load",
                        classmethod(lambda cls, p: loads.append(p) or real_load(cls, p)))
    monkeypatch.setattr(file_module, "sha256", lambda p: hashes.append(p) or real_sha(p))
    return loads, hashes


def test_a_session_wrapper_reads_its_steering_file_once(tiny_qwen_path, synthetic_mc2_dir, tmp_path, monkeypatch):
    """`EvalSession.wrapper` checks the model arguments before it loads the checkpoint, then builds
    the wrapper over those same settings: one load and one sha256 of the steering file, and the
    wrapper steers with the file read then."""
    from test_steered_wrappers import write_file
    from wrapper_helpers import mc2_task_dict

    from amps_eval.runner import EvalSession

    path = tmp_path / "mean.safetensors"
    write_file(path, tiny_qwen_path, "mean", mc2_task_dict(synthetic_mc2_dir))
    loads, hashes = _count_loads(monkeypatch)
    with EvalSession() as session:
        wrapper = session.wrapper("amps_qwen", f"pretrained={tiny_qwen_path},method=mean,steering={path},alpha=2,"
                                               "device=cpu")
        assert (len(loads), len(hashes)) == (1, 1)
        assert wrapper.settings.alpha == 2.0 and wrapper.settings.steering_file()[1] is wrapper.steering.file
        # the settings come from the model arguments or from settings=, never both
        with pytest.raises(TypeError, match="not both"):
            type(wrapper)(loaded=wrapper.loaded, settings=wrapper.settings, alpha=3)
        with pytest.raises(TypeError, match="settings= takes a QwenSettings"):
            type(wrapper)(loaded=wrapper.loaded, settings=wrapper.settings.to_dict())


BAD_STEERING = [{"convention": "literall"}, {"beta": -1.0}, {"beta": float("inf")}]


@pytest.mark.parametrize("bad", BAD_STEERING, ids=lambda b: next(iter(b)))
def test_the_steering_settings_are_validated_in_one_place(bad, monkeypatch):
    """A bad beta or convention is refused by `SteeringConfig` alone, with its message, for a run
    (the model arguments) as for a fit; neither repeats the check (with SteeringConfig's check
    switched off, both accept the value)."""
    from amps_eval.fit_settings import FitSettings
    from amps_eval.methods.steering_config import SteeringConfig
    from amps_eval.settings import SettingsError

    with pytest.raises(ValueError) as one_place:
        SteeringConfig(None, **bad)
    message = str(one_place.value)
    with pytest.raises(SettingsError) as run:
        WrapperSettings(pretrained="x", **bad)
    with pytest.raises(ValueError) as fit:
        FitSettings(model="amps_qwen", pretrained="x", method="amps", **bad)
    assert str(run.value) == message and str(fit.value) == f"invalid fit settings: {message}"

    monkeypatch.setattr(SteeringConfig, "__post_init__", lambda self: None)
    WrapperSettings(pretrained="x", **bad)
    FitSettings(model="amps_qwen", pretrained="x", method="amps", **bad)


def test_the_fit_and_the_run_read_their_defaults_from_the_one_declaration(monkeypatch):
    """The wrapper's ``alpha/positions/beta/convention`` and the fit's ``convention`` / ``beta`` are
    SteeringConfig's defaults, its ``mcs`` MCSSettings': each value is declared there only."""
    from amps_eval.fit_settings import FitSettings
    from amps_eval.methods.steering_config import SteeringConfig

    declared = {f.name: f.default for f in dataclasses.fields(SteeringConfig)}
    wrapper = WrapperSettings(pretrained="x")
    for name in ("alpha", "positions", "beta", "convention"):
        assert getattr(wrapper, name) == declared[name], name
    fit = FitSettings(model="amps_qwen", pretrained="x", method="amps")
    assert (fit.convention, fit.fit_beta, fit.mcs) == (declared["convention"], declared["beta"], declared["mcs"])
    # the fit's default beta follows SteeringConfig's at run time (it is read there, not copied)
    monkeypatch.setattr(SteeringConfig, "beta", 0.25)
    assert FitSettings(model="amps_qwen", pretrained="x", method="amps").fit_beta == 0.25


def test_a_mean_mcs_run_with_other_mcs_settings_than_its_file_names_every_mcs_argument():
    """The refusal names the differing setting and the model arguments to pass (`MCS_ARGS`, the one
    list of them), seed included."""
    from amps_eval.methods.mean_mcs import check_mcs_settings
    from amps_eval.settings import MCS_ARGS

    file = SimpleNamespace(source="mean.safetensors", settings={"mcs": MCSSettings(seed=3).to_dict()})
    check_mcs_settings(file, MCSSettings(seed=3))  # the same settings: accepted
    with pytest.raises(ValueError, match=r"seed 3 \(file\) vs 0 \(run\)") as refused:
        check_mcs_settings(file, MCSSettings())
    assert all(f"{arg}=" in str(refused.value) for arg in MCS_ARGS) and "and seed= as the fit had them" in str(refused.value)
