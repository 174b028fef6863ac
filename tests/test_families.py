"""The family registry (`amps_eval.families`) and the refusal of a wrong-family or missing checkpoint
before any weights load: by the wrappers, `amps-eval fit`, `amps-eval mcs` and the study."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest

from amps_eval.cli import main
from amps_eval.families import FAMILIES, WrongFamilyError, by_lmms_model, by_model_type, check_pretrained, family
from amps_eval.families.base import FamilyAdapter
from amps_eval.plugin import MODEL_CLASSES

CHECKPOINTS = {"amps_qwen": "tiny_qwen_path", "amps_llava": "tiny_llava_path"}


def test_registry_is_the_one_source():
    assert set(MODEL_CLASSES) == {f.lmms_model for f in FAMILIES.values()}
    from amps_eval.model_wrappers.registered import WRAPPERS
    from amps_eval.plugin import wrapper_class

    assert set(WRAPPERS) == set(MODEL_CLASSES)
    assert all(wrapper_class(name) is cls and cls.family.lmms_model == name for name, cls in WRAPPERS.items())
    for f in FAMILIES.values():
        assert by_lmms_model(f.lmms_model) is f and family(f.name) is f
        assert all(by_model_type(t) is f for t in f.model_types)
    assert family("auto").model_types == () and by_model_type("gemma3") is None  # amps_auto serves it
    assert by_model_type("gpt2") is None
    with pytest.raises(ValueError, match="valid models"):
        by_lmms_model("amps_nope")


def test_import_light():
    """lmms-eval loads the plugin while it starts: the registry must not import torch or transformers."""
    import subprocess
    import sys

    code = ("import sys, amps_eval.plugin, amps_eval.families; "
            "print(any(m in sys.modules for m in ('torch', 'transformers')))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_the_core_does_not_import_the_wrappers():
    """The layering: nothing under amps_eval/ imports the lmms-eval wrappers (model_wrappers/, installed
    as amps_eval.model_wrappers), which are built on it; the plugin names them by a string only."""
    import ast

    root = Path(__file__).resolve().parents[1] / "amps_eval"
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(root.parent)}:{node.lineno} {n}" for n in names if "model_wrappers" in n]
    assert offenders == []


@pytest.fixture
def no_weights():
    """Fail the test if any weights load."""
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the checkpoint's family was checked")

    with mock.patch.object(FamilyAdapter, "load_model", refuse):
        yield


@pytest.mark.parametrize("asked, given", [("amps_qwen", "amps_llava"), ("amps_llava", "amps_qwen")])
def test_wrong_family_named(request, asked, given, no_weights):
    path = request.getfixturevalue(CHECKPOINTS[given])
    other = by_lmms_model(given)
    with pytest.raises(WrongFamilyError, match=rf"is a {other.display} checkpoint \(model_type {other.model_types[0]}\)"
                       rf".*use --model {given}"):
        check_pretrained(path, asked)
    from amps_eval.plugin import wrapper_class

    with pytest.raises(WrongFamilyError, match=f"use --model {given}"):
        wrapper_class(asked)(pretrained=str(path), device="cpu")


def test_missing_path_says_so(tmp_path, no_weights):
    from amps_eval.plugin import wrapper_class

    for missing in (str(tmp_path / "nowhere"), "./not/a/folder", "~/no-such-checkpoint-folder"):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            check_pretrained(missing, "amps_qwen")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        wrapper_class("amps_llava")(pretrained=str(tmp_path / "nowhere"), device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        check_pretrained(tmp_path / "empty", "amps_qwen")


def test_right_family_passes(request):
    for model, fixture in CHECKPOINTS.items():
        assert check_pretrained(request.getfixturevalue(fixture), model) is by_lmms_model(model)


def _cli(argv, capsys) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_fit_and_mcs_refuse_before_loading(tiny_llava_path, synthetic_mc2_dir, tmp_path, capsys, no_weights):
    common = ["--model", "amps_qwen", "--pretrained", str(tiny_llava_path), "--data", str(synthetic_mc2_dir),
              "--device", "cpu", "--limit", "2"]
    with mock.patch("amps_eval.fit_data.load_items", side_effect=AssertionError("data loaded first")):
        err = _cli(["fit", *common, "--method", "mean", "--layer", "1", "--out", str(tmp_path / "f.safetensors")], capsys)
        assert "is a LLaVA checkpoint (model_type llava)" in err and "use --model amps_llava" in err
        err = _cli(["mcs", *common, "--out", str(tmp_path / "m.jsonl")], capsys)
        assert "is a LLaVA checkpoint (model_type llava)" in err and "use --model amps_llava" in err
        missing = ["--pretrained", str(tmp_path / "nowhere")]
        err = _cli(["fit", *common, *missing, "--method", "mean", "--layer", "1", "--out", str(tmp_path / "f.safetensors")],
                   capsys)
        assert "does not exist" in err and "Repo id" not in err
        err = _cli(["mcs", *common, *missing, "--out", str(tmp_path / "m.jsonl")], capsys)
        assert "does not exist" in err and "Repo id" not in err


def test_study_refuses_before_work(tiny_qwen_path, tmp_path, capsys, no_weights):
    with mock.patch("amps_eval.study._run_study", side_effect=AssertionError("the study started")):
        err = _cli(["study", "--model", "amps_llava", "--pretrained", str(tiny_qwen_path), "--out",
                    str(tmp_path / "study")], capsys)
        assert "is a Qwen2.5-VL checkpoint (model_type qwen2_5_vl)" in err and "use --model amps_qwen" in err
        err = _cli(["study", "--model", "amps_llava", "--pretrained", str(tmp_path / "nowhere"), "--out",
                    str(tmp_path / "study")], capsys)
        assert "does not exist" in err
