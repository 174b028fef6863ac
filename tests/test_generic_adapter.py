"""The generic adapter (issue 21) changes no number of the families it replaced: answers, hidden
states, modality masks and MCS of the shipped organisms (Qwen2.5-VL, LLaVA-1.5) and the tiny Qwen2-VL
equal those the family-specific code gave, recorded in `tests/reference/generic_reference.json` by
`tests/reference/make_generic_reference.py` before the refactoring; and the legacy lmms-eval names
resolve to the same generic path as ``amps_auto``."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "reference"))
import make_generic_reference as ref  # noqa: E402

REFERENCE = json.loads(ref.OUT.read_text())


@pytest.fixture(scope="module")
def measured(tiny_models_root):
    cases = dict(ref.cases(tiny_models_root))
    return {name: ref.measure(name, path) for name, path in cases.items()}


@pytest.mark.parametrize("model", ["amps_qwen", "amps_llava", "amps_qwen2"])
def test_outputs_unchanged(measured, model):
    got, want = measured[model], REFERENCE[model]
    for key in ("input_ids", "vision_mask", "text_mask", "answers"):
        assert got[key] == want[key], f"{model}: {key} changed"
    for row_got, row_want in zip(got["hidden"], want["hidden"]):
        assert all(math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6) for a, b in zip(row_got, row_want)), f"{model}: hidden"
    for key in ("c_v", "c_t"):
        assert all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(got[key], want[key])), f"{model}: {key} {got[key]} != {want[key]}"


@pytest.mark.parametrize("model", ["amps_qwen", "amps_llava"])
def test_amps_auto_gives_the_same_numbers(measured, model):
    """``amps_auto`` on the same checkpoint: the same generic path, the same numbers."""
    from amps_eval.organism import organism_path

    got = ref.measure("amps_auto", str(organism_path(model)))
    want = REFERENCE[model]
    for key in ("input_ids", "vision_mask", "text_mask", "answers"):
        assert got[key] == want[key], f"amps_auto on {model}'s organism: {key} changed"
    assert all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(got["c_v"], want["c_v"]))


def test_mlp_width_rule():
    """L2S's width: 400 for the Qwen-VL model types under any name, 100 otherwise (docs/models.md)."""
    from amps_eval.families import family

    auto = family("auto")
    assert [auto.mlp_hidden(t) for t in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")] == [400, 400, 400]
    assert auto.mlp_hidden("gemma3") == auto.mlp_hidden("llava") == 100
    assert family("qwen2_5_vl").mlp_hidden("qwen2_5_vl") == 400 and family("llava").mlp_hidden("llava") == 100


def test_trust_remote_code_refused():
    from amps_eval.families import family

    with pytest.raises(ValueError, match="trust_remote_code is refused"):
        family("auto").load_model("any/checkpoint", trust_remote_code=True)


def test_a_model_that_is_not_image_text_to_text_is_refused(tmp_path):
    from transformers import GPT2Config

    from amps_eval.families import WrongFamilyError, check_pretrained

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(WrongFamilyError, match="'gpt2' is not an image-text-to-text model"):
        check_pretrained(tmp_path, "amps_auto")
    with pytest.raises(WrongFamilyError, match="use --model amps_auto"):
        check_pretrained(tmp_path, "amps_qwen")
