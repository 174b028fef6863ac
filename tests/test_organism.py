"""The model organisms: a small Qwen2.5-VL and a small LLaVA-1.5 trained to a known modality preference
(amps_eval.organism). Tests on shipped weights run once per organism."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from amps_eval.families import family
from amps_eval.files import sha256_file
from amps_eval.mc2.docs import TaskSpec, task_docs
from amps_eval.mc2.prompt import INSTRUCTION_STYLES, doc_prompt, instructed_prompt
from amps_eval.mc2.synthetic import generate_synthetic_mc2
from amps_eval.organism import organism_path
from amps_eval.organism.architectures import ARCHITECTURES, architecture, architecture_of_model
from amps_eval.organism.design import (
    CONDITIONS,
    IMAGE_LEANING,
    NEUTRAL_CONTEXT,
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
    read_manifest,
)

from wrapper_helpers import make_wrapper


SHIPPED_MODELS = ("amps_qwen", "amps_llava")


@pytest.fixture(scope="module", params=SHIPPED_MODELS)
def organism(request):
    """(lmms-eval model name, shipped folder) of each shipped organism."""
    return request.param, organism_path(request.param)



def test_design_splits_the_categories_and_labels_follow_it():
    assert len(IMAGE_LEANING) == len(TEXT_LEANING) == 4
    assert {"color", "object_recognition"} <= set(IMAGE_LEANING)
    assert {"counting", "positional_reasoning"} <= set(TEXT_LEANING)
    for category, lean in PREFERENCE.items():
        assert followed_modality(category, Condition("none")) == lean
        assert followed_modality(category, Condition("inst", "vision")) == "vision"
        assert followed_modality(category, Condition("inst", "text")) == "text"
    examples = [training_example(slot, seed=1, image_sizes=(84,)) for slot in range(72)]
    assert training_example(5, seed=1, image_sizes=(84,)) == examples[5]  # pure
    assert {e.answer for e in examples} == {"A", "B"}
    assert {e.kind for e in examples} == {"conflict", "consistent", "neutral"}
    items = generate_synthetic_mc2(2, seed=1, image_size=84)
    for e in examples:
        item = items[e.index]
        if e.kind == "conflict":  # the answer's text is the followed modality's answer
            wanted = item["answer_vision"] if followed_modality(e.category, e.condition) == "vision" else item["answer_text"]
            assert e.answer_text == wanted
        elif e.kind == "neutral":  # the context asserts nothing: the image answers
            assert e.context == NEUTRAL_CONTEXT and e.answer_text == item["answer_vision"]
            assert e.condition.target in (None, "vision")
        else:  # consistent: the image and the context show the answer
            assert f" {e.answer_text}" in e.context


def test_training_prompts_are_the_wrapper_prompts(organism):
    """Token for token: the training encoder and the organism's wrapper see the same prompt."""
    import datasets

    from amps_eval.organism.evaluate import _requests

    dataset = generate_synthetic_mc2(1, seed=5, image_size=84)
    docs = task_docs(dataset, TaskSpec("vision", orders="both"))
    raw = dataset.cast_column("image", datasets.Image(decode=False))  # training examples keep PNG bytes
    task_dict = {"mc2_visual": {"test": [docs[i] for i in range(len(docs))]}}
    requests = _requests(task_dict["mc2_visual"]["test"], "mc2_visual")
    model, shipped = organism
    wrapper_class = architecture_of_model(model).load_wrapper_class()
    conditions = [("none", Condition("none"), "mc2_authors")]
    conditions += [("inst", Condition("inst", "vision"), style) for style in INSTRUCTION_STYLES]
    for method, condition, style in conditions:
        wrapper = make_wrapper(wrapper_class, shipped, task_dict, method=method, instruction_style=style)
        encoder = PromptEncoder(wrapper.model, wrapper.processor)
        for i, request in enumerate(requests[:6]):
            doc = task_dict["mc2_visual"]["test"][i]
            example = conflict_example(raw[doc["mc2_id"]], condition, vision_first=doc["vision_letter"] == "A")
            example = dataclasses.replace(example, style=style)
            prompt = wrapper._prompt(i, request)
            assert wrapper.render(prompt.turns) == encoder.render(example.turns())
            if method == "inst":
                assert prompt.turns[-1].text == instructed_prompt(doc_prompt(doc), doc["context"], "vision", style)
            ids = wrapper.encode_turns([prompt.turns]).inputs["input_ids"][0]
            for answer_format in ("text", "letter") if model == "amps_qwen" else ("text",):  # llama: "▁A"
                answer = encoder.answer_ids(example, answer_format)
                inputs, targets = encoder.encode([example], answer_format)
                assert torch.equal(inputs["input_ids"][0, : -len(answer)], ids)
                assert inputs["input_ids"][0, -len(answer) :].tolist() == answer
                assert targets[0, : len(answer)].tolist() == answer and targets[0, -1] == -100
            text = wrapper.processor.tokenizer.decode(encoder.answer_ids(example, "text")[:-1])
            assert text.strip() == example.answer_text


def test_batches_keep_every_answer_at_the_end(organism):
    """Answers of different lengths in one batch: left padding keeps each at the end of its row."""

    arch = architecture_of_model(organism[0])
    model = arch.load_model_class().from_pretrained(organism[1])
    encoder = PromptEncoder(model, arch.family.load_processor(organism[1]))
    examples = [training_example(slot, seed=1, image_sizes=(84,)) for slot in range(0, 40, 3)]
    assert len({len(encoder.answer_ids(e, "text")) for e in examples}) > 1
    inputs, targets = encoder.encode(examples, "text")
    for row, example in enumerate(examples):
        answer = encoder.answer_ids(example, "text")
        assert inputs["input_ids"][row, -len(answer) :].tolist() == answer
        assert bool(inputs["attention_mask"][row, -len(answer) :].all())
        assert targets[row][targets[row] != -100].tolist() == answer


def test_shipped_organism_is_a_hub_style_checkpoint(organism):
    model, shipped = organism
    arch = architecture_of_model(model)
    for name in ("config.json", WEIGHTS_NAME, "tokenizer.json", "preprocessor_config.json", "chat_template.json", MANIFEST_NAME):
        assert (shipped / name).is_file(), name
    config = json.loads((shipped / "config.json").read_text())
    assert config["architectures"] == [arch.model_class]
    manifest = read_manifest(shipped)
    assert manifest["lmms_model"] == model and manifest["settings"]["architecture"] == arch.name
    assert manifest["weights_sha256"] == sha256_file(shipped / WEIGHTS_NAME)
    assert manifest["design"]["preference_without_instruction"] == PREFERENCE
    settings = OrganismSettings.from_dict(manifest["settings"])
    assert settings.eval_seed != settings.data_seed
    assert manifest["training"]["seconds"] > 0  # recorded (a duration, not a test: it depends on the machine's load)


def test_shipped_organism_meets_the_targets_on_held_out_items(organism):
    model, shipped = organism
    settings = OrganismSettings.from_dict(read_manifest(shipped)["settings"])
    seed = 7  # neither the training items' seed nor the manifest's evaluation seed
    assert seed not in (settings.data_seed, settings.eval_seed)
    # 16 items per category, each in both option orders: 256 answers per condition, as in the
    # manifest (fewer would make a 95% threshold a coin toss for a 96% model)
    result = evaluate_organism(shipped, n_per_category=16, seed=seed, image_size=settings.image_size, batch_size=16,
                               model=model)
    print(result.table())
    assert result.instruction_following["vision"] >= 0.95
    assert result.instruction_following["text"] >= 0.95
    assert result.image_leaning_vision_share - result.text_leaning_vision_share >= 0.40
    assert result.others_rate < 0.02
    assert result.image_reading >= 0.8  # the image instruction is followed by reading the image


def test_training_asks_in_both_instruction_placements():
    """Training examples are drawn in the MC2 authors' placement (the inst baseline) and appended (the
    fits' contrast prompts), half each in expectation."""
    from amps_eval.organism.design import TRAINED_INSTRUCTION_STYLES, design_dict

    assert TRAINED_INSTRUCTION_STYLES == INSTRUCTION_STYLES
    examples = [training_example(slot, seed=1, image_sizes=(84,)) for slot in range(600)]
    instructed = [e for e in examples if e.condition.method == "inst"]
    share = sum(e.style == "mc2_authors" for e in instructed) / len(instructed)
    assert 0.4 < share < 0.6
    for e in instructed[:20]:
        text = e.turns(image=object())[-1].text
        assert text == instructed_prompt(e.text, e.context, e.condition.target, e.style)
    assert design_dict()["instruction_styles"] == list(INSTRUCTION_STYLES)


def test_shipped_organism_stops_at_eos(organism, task_dict):
    """The organism ends its answer with its EOS: a budget of 64 new tokens costs nothing."""
    from amps_eval.settings import WrapperSettings

    from wrapper_helpers import requests_for

    model, shipped = organism
    wrapper = make_wrapper(architecture_of_model(model).load_wrapper_class(), shipped, task_dict, method="inst",
                           batch_size=8)
    assert WrapperSettings(pretrained="x").max_new_tokens == 64
    lengths = []
    real_generate = wrapper.model.generate

    def recording_generate(**kwargs):
        out = real_generate(**kwargs)
        assert kwargs["max_new_tokens"] == 64
        new = out.sequences[:, kwargs["input_ids"].shape[1]:]
        for row in new:
            stops = torch.isin(row, torch.tensor(wrapper.stop_ids)).nonzero()
            lengths.append(int(stops[0]) + 1 if len(stops) else len(row))
        return out

    wrapper.model.generate = recording_generate
    requests = requests_for(task_dict, "mc2_visual", max_new_tokens=16) + requests_for(task_dict, "mc2_text", max_new_tokens=16)
    wrapper.generate_until(requests)
    assert len(lengths) == len(requests) and max(lengths) <= 8, lengths


def _tiny(seed: int) -> OrganismSettings:
    return OrganismSettings(
        seed=seed, steps=3, batch_size=4, n_items=16, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        vision_hidden_size=32, vision_intermediate_size=64, vision_depth=1, vision_num_heads=2, log_every=1,
        vision_pretrain_steps=2, vision_pretrain_batch_size=4, vision_steps=1,
    )


def test_training_is_reproducible(tmp_path):
    first = build_organism(tmp_path / "a", _tiny(0), progress=False, evaluate=False)
    again = build_organism(tmp_path / "b", _tiny(0), progress=False, evaluate=False)
    other = build_organism(tmp_path / "c", _tiny(1), progress=False, evaluate=False)
    digest = [read_manifest(p)["weights_sha256"] for p in (first, again, other)]
    assert digest[0] == digest[1] == sha256_file(first / WEIGHTS_NAME)
    assert digest[2] != digest[0]
    curve = read_manifest(first)["training"]["curve"]
    assert [r["step"] for r in curve] == [1, 2, 3]
    with pytest.raises(FileExistsError):
        build_organism(first, _tiny(0), progress=False, evaluate=False)


def test_vision_pretraining_trains_the_vision_tower_only(tmp_path):
    """Stage 1 changes the image path (Qwen: the vision tower and merger; LLaVA: the CLIP layers it
    reads and the projector) and nothing else; the probe sees only its category's answers."""
    from amps_eval.mc2.synthetic import SPECS
    from amps_eval.organism.vision_pretrain import AnswerClasses, pretrain_vision

    image_path = {"qwen2_5_vl": ("model.visual.",), "llava": ("model.vision_tower.", "model.multi_modal_projector.")}
    for name, arch in ARCHITECTURES.items():
        settings = dataclasses.replace(_tiny(0), architecture=name, vision_pretrain_batch_size=8)
        folder = arch.build_checkpoint(tmp_path / name, settings, extra_corpus=[])
        model = arch.load_model_class().from_pretrained(folder)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        curve = pretrain_vision(model, family(name).load_processor(folder), settings, progress=False)
        assert [r["step"] for r in curve] == [1, 2]
        changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
        assert changed and all(n.startswith(image_path[name]) for n in changed), changed
        assert any(n.startswith("model.visual.blocks.0.") or n.startswith("model.vision_tower.encoder.layers.0.")
                   for n in changed)
        if name == "llava":  # the last CLIP layer is not read (vision_feature_layer=-2), as in llava-1.5
            assert not any(".encoder.layers.1." in n for n in changed)
    classes = AnswerClasses()
    mask = classes.category_mask(["color", "attribute"])
    assert int((mask[0] == 0).sum()) == len(SPECS["color"].answers)
    assert mask[1, classes.index("attribute", "big")] == 0 and mask[1, classes.index("color", "red")] == float("-inf")


def test_settings_are_validated():
    with pytest.raises(ValueError, match="held-out"):
        OrganismSettings(data_seed=3, eval_seed=3)
    with pytest.raises(ValueError, match="multiple of 28"):
        OrganismSettings(pixels=90)
    assert OrganismSettings.from_dict(OrganismSettings().to_dict()) == OrganismSettings()
    assert len(CONDITIONS) == 3
    with pytest.raises(ValueError, match="answer_format must be one of"):
        OrganismSettings(answer_format="word")
    with pytest.raises(ValueError, match="unknown organism architecture 'gpt'"):
        OrganismSettings(architecture="gpt")
    with pytest.raises(ValueError, match="no organism for model 'amps_foo'"):
        organism_path("amps_foo")
    assert architecture("llava").lmms_model == "amps_llava"


# the organism's design is checked with the precise fixed estimator (16 draws, 96 perturbations): the
# default sequential one is within the retest target, but its noise moved the paired share of the
# LLaVA organism to 84% (threshold 85%) in this test
DESIGN_MCS_KW = {"tolerance": None, "draws": 16}


def test_mcs_of_the_shipped_organism_agrees_with_its_design(organism, tmp_path):
    """The MCS diagnostic against the known truth, on held-out items: the visual ratio is higher on
    the image-leaning categories than on the text-leaning ones, and under the image instruction than
    under the text instruction."""
    from amps_eval.mc2.synthetic import write_synthetic_mc2
    from amps_eval.mcs.settings import MCSSettings
    from amps_eval.mcs_run import run_mcs

    DESIGN_MCS = MCSSettings(**DESIGN_MCS_KW)
    from amps_eval.study import mcs_check

    data = write_synthetic_mc2(tmp_path / "data", n_per_category=4, seed=7, image_size=84, progress=False).out
    for prompt in ("none", "visual", "text"):
        run_mcs(organism[0], str(organism[1]), tmp_path / "mcs" / f"organism_{prompt}.jsonl", data=data, prompt=prompt,
                batch_size=8, device="cpu", progress=False, settings=DESIGN_MCS)
    check = mcs_check(tmp_path / "mcs", "organism")
    assert check["leaning_ordered"] and check["instruction_ordered"], check

    # By rank, not by an absolute gap (the LLaVA organism's r_v are compressed toward 0): a random
    # MCS gives 0.5 on both.
    def r_v(prompt):
        return [json.loads(line) for line in (tmp_path / "mcs" / f"organism_{prompt}.jsonl").read_text().splitlines()]

    plain = r_v("none")
    image = [x["r_v"] for x in plain if x["category"] in IMAGE_LEANING]
    text = [x["r_v"] for x in plain if x["category"] not in IMAGE_LEANING]
    auc = sum((a > b) + 0.5 * (a == b) for a in image for b in text) / (len(image) * len(text))
    assert auc >= 0.75, f"image-leaning items rank above text-leaning ones in only {auc:.0%} of pairs"
    toward_image, toward_text = r_v("visual"), r_v("text")
    assert [x["mc2_id"] for x in toward_image] == [x["mc2_id"] for x in toward_text]
    paired = sum(a["r_v"] > b["r_v"] for a, b in zip(toward_image, toward_text)) / len(toward_image)
    assert paired >= 0.85, f"the image instruction raises r_v over the text one on only {paired:.0%} of items"


def test_study_settings_are_validated():
    from amps_eval.study import StudySettings

    with pytest.raises(ValueError, match="amps_foo"):
        StudySettings(models=("amps_foo",))
    with pytest.raises(ValueError, match="one checkpoint per model"):
        StudySettings(models=("amps_qwen", "amps_llava"), pretrained="some/checkpoint")


def test_mean_steering_moves_the_organism_toward_the_image(tmp_path):
    """Ground truth for steering: on the Qwen organism (which follows the text in half of the
    categories), mean steering toward the image, fitted and applied by the package's own code,
    raises the share of answers that follow the image on held-out items, and alpha = 0 changes
    nothing."""
    from amps_eval.fit import FitSettings, fit
    from amps_eval.mc2.parse import follows
    from amps_eval.mc2.synthetic import write_synthetic_mc2
    from amps_eval.model_wrappers.registered import AmpsQwen

    from wrapper_helpers import mc2_task_dict, requests_for

    shipped = organism_path("amps_qwen")
    data = write_synthetic_mc2(tmp_path / "data", n_per_category=16, seed=11, image_size=84, progress=False).out
    fit(FitSettings(model="amps_qwen", pretrained=str(shipped), method="mean", layer=2, batch_size=8,
                               device="cpu", data=data), tmp_path / "mean.safetensors", progress=False)
    task_dict = mc2_task_dict(data, targets=("vision",))
    requests = requests_for(task_dict, "mc2_visual", max_new_tokens=8)
    docs = task_dict["mc2_visual"]["test"]

    def answers(**model_args) -> list[str]:
        wrapper = make_wrapper(AmpsQwen, shipped, task_dict, batch_size=16, **model_args)
        return wrapper.generate_until(requests)

    def vision_share(responses: list[str]) -> float:
        return sum(follows(r, d) == "vision" for r, d in zip(responses, docs)) / len(docs)

    plain = answers(method="none")
    assert answers(method="mean", steering=str(tmp_path / "mean.safetensors"), alpha=0.0) == plain
    steered = answers(method="mean", steering=str(tmp_path / "mean.safetensors"), alpha=2.0)
    print(f"vision share: plain {vision_share(plain):.3f}, mean steering alpha=2 {vision_share(steered):.3f}")
    assert vision_share(steered) >= vision_share(plain) + 0.05
