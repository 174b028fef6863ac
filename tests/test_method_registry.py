"""One registry of methods: every place that lists methods reads it, and every steered method has
its implementation file."""

from __future__ import annotations

import subprocess
import sys

import pytest

from amps_eval.methods import registry
from amps_eval.methods.registry import FIT_METHODS, METHODS, PROMPT_METHODS, STEERING_METHODS, implementation, info


def test_every_steered_method_has_its_implementation_and_file_kind():
    for method in METHODS:
        if not method.steered:
            with pytest.raises(ValueError, match="prompt method"):
                implementation(method.name)
            continue
        impl = implementation(method.name)
        assert impl.name == method.name and impl.info is method
        assert method.file_method in FIT_METHODS, f"{method.name} reads a file no fit writes"
    assert set(FIT_METHODS) == {"mean", "l2s", "amps", "amps_beta0", "amps_oracle"}
    assert info("mean_mcs").file_method == "mean" and not info("mean_mcs").fits


def test_the_lists_elsewhere_are_the_registry():
    from amps_eval import study
    from amps_eval.methods import prompts
    from amps_eval.settings import WrapperSettings
    from amps_eval.report import METHOD_LABELS, STEERED
    from amps_eval.report.commands import FILE_KIND
    from amps_eval.steering import file_schema

    assert WrapperSettings.valid_methods() == tuple(m.name for m in METHODS)
    assert tuple(prompts.PROMPT_METHODS) == PROMPT_METHODS
    assert file_schema.METHODS == FIT_METHODS
    assert STEERED == STEERING_METHODS and list(METHOD_LABELS) == [m.name for m in METHODS]
    assert FILE_KIND == {m.name: m.file_method for m in METHODS if m.steered}
    assert study.STEERING_METHODS == STEERING_METHODS and study.FIT_METHODS == FIT_METHODS


def test_cli_choices_come_from_the_registry(capsys):
    from amps_eval.cli import main

    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = capsys.readouterr().out
    assert "{" + ",".join(FIT_METHODS) + "}" in text.replace("\n", "").replace(" ", "")


def test_unknown_method_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown method 'ampz'; valid methods: none, inst, .*amps"):
        info("ampz")


def test_the_registry_and_the_report_do_not_import_torch():
    code = ("import sys; import amps_eval.methods.registry, amps_eval.report.build, amps_eval.report.tables; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    assert registry.__doc__ and "one entry here" in registry.__doc__
