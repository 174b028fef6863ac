"""The model organism: a small Qwen2.5-VL trained to a known modality preference (amps_eval.organism)."""

from __future__ import annotations

import json

import pytest
import torch

from amps_eval.mc2.docs import TaskSpec, task_docs
from amps_eval.mc2.prompt import MODALITY_INSTRUCTIONS
from amps_eval.mc2.synthetic import generate_synthetic_mc2
from amps_eval.model_wrappers.qwen import AmpsQwen
from amps_eval.organism import organism_path
from amps_eval.organism.design import (
    CONDITIONS,
    IMAGE_LEANING,
    PREFERENCE,
    TEXT_LEANING,
    Condition,
    conflict_example,
    followed_modality,
    training_example,
)
from amps_eval.organism.evaluate import evaluate_organism
from amps_eval.organism.train import (
    MANIFEST_NAME,
    WEIGHTS_NAME,
    OrganismSettings,
    PromptEncoder,
    build_organism,
    file_sha256,
    read_manifest,
)

from wrapper_helpers import make_wrapper


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A briefly trained organism of the real architecture (the trained one is not shipped yet)."""
    return build_organism(tmp_path_factory.mktemp("organism") / "org", _tiny(0), progress=False, evaluate=False)


def test_design_splits_the_categories_and_labels_follow_it():
    assert len(IMAGE_LEANING) == len(TEXT_LEANING) == 4
    assert {"color", "object_recognition"} <= set(IMAGE_LEANING)
    assert {"counting", "positional_reasoning"} <= set(TEXT_LEANING)
    for category, lean in PREFERENCE.items():
        assert followed_modality(category, Condition("none")) == lean
        assert followed_modality(category, Condition("inst", "vision")) == "vision"
        assert followed_modality(category, Condition("inst", "text")) == "text"
    examples = [training_example(slot, seed=1, image_sizes=(84,)) for slot in range(64)]
    assert training_example(5, seed=1, image_sizes=(84,)) == examples[5]  # pure
    assert {e.answer for e in examples} == {"A", "B"}
    for e in examples:
        if e.kind == "conflict":  # the answer's text is the followed modality's answer
            item = generate_synthetic_mc2(2, seed=1, image_size=84)[e.index]
            wanted = item["answer_vision"] if followed_modality(e.category, e.condition) == "vision" else item["answer_text"]
            assert (e.option_a if e.answer == "A" else e.option_b) == wanted
        else:  # consistent: the image and the context show the answer
            assert f" {e.option_a if e.answer == 'A' else e.option_b}" in e.context


def test_training_prompts_are_the_wrapper_prompts(built):
    """Token for token: the training encoder and the amps_qwen wrapper see the same prompt."""
    import datasets

    dataset = generate_synthetic_mc2(1, seed=5, image_size=84)
    docs = task_docs(dataset, TaskSpec("vision", orders="both"))
    raw = dataset.cast_column("image", datasets.Image(decode=False))  # training examples keep PNG bytes
    task_dict = {"mc2_visual": {"test": [docs[i] for i in range(len(docs))]}}
    from amps_eval.organism.evaluate import _requests

    requests = _requests(task_dict["mc2_visual"]["test"], "mc2_visual")
    for method, condition in (("none", Condition("none")), ("inst", Condition("inst", "vision"))):
        wrapper = make_wrapper(AmpsQwen, built, task_dict, method=method)
        encoder = PromptEncoder(wrapper.model, wrapper.processor)
        for i, request in enumerate(requests[:6]):
            doc = task_dict["mc2_visual"]["test"][i]
            item = raw[doc["mc2_id"]]
            example = conflict_example(item, condition, vision_first=doc["vision_letter"] == "A")
            prompt = wrapper._prompt(i, request)
            assert wrapper.render(prompt.turns) == encoder.render(example.turns())
            if method == "inst":
                assert prompt.turns[-1].text.endswith("\n" + MODALITY_INSTRUCTIONS["vision"])
            ids = wrapper.encode_turns([prompt.turns]).inputs["input_ids"][0]
            inputs, targets, _ = encoder.encode([example])
            assert torch.equal(inputs["input_ids"][0, :-1], ids)
            assert inputs["input_ids"][0, -1] == targets[0, 0] == encoder.letter_ids[example.answer]


def test_built_organism_is_a_hub_style_qwen_checkpoint(built):
    for name in ("config.json", WEIGHTS_NAME, "tokenizer.json", "preprocessor_config.json", "chat_template.json", MANIFEST_NAME):
        assert (built / name).is_file(), name
    config = json.loads((built / "config.json").read_text())
    assert config["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]
    manifest = read_manifest(built)
    assert manifest["weights_sha256"] == file_sha256(built / WEIGHTS_NAME)
    assert manifest["design"]["preference_without_instruction"] == PREFERENCE


def _tiny(seed: int) -> OrganismSettings:
    return OrganismSettings(
        seed=seed, steps=3, batch_size=4, n_items=16, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        vision_hidden_size=32, vision_intermediate_size=64, vision_depth=1, vision_num_heads=2, log_every=1,
    )


def test_training_is_reproducible(tmp_path):
    first = build_organism(tmp_path / "a", _tiny(0), progress=False, evaluate=False)
    again = build_organism(tmp_path / "b", _tiny(0), progress=False, evaluate=False)
    other = build_organism(tmp_path / "c", _tiny(1), progress=False, evaluate=False)
    digest = [read_manifest(p)["weights_sha256"] for p in (first, again, other)]
    assert digest[0] == digest[1] == file_sha256(first / WEIGHTS_NAME)
    assert digest[2] != digest[0]
    curve = read_manifest(first)["training"]["curve"]
    assert [r["step"] for r in curve] == [1, 2, 3]
    with pytest.raises(FileExistsError):
        build_organism(first, _tiny(0), progress=False, evaluate=False)


def test_settings_are_validated():
    with pytest.raises(ValueError, match="held-out"):
        OrganismSettings(data_seed=3, eval_seed=3)
    with pytest.raises(ValueError, match="multiple of 28"):
        OrganismSettings(pixels=90)
    assert OrganismSettings.from_dict(OrganismSettings().to_dict()) == OrganismSettings()
    assert len(CONDITIONS) == 3
