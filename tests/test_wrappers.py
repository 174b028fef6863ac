"""The amps_qwen / amps_llava wrappers on tiny models of the real architectures."""

import random

import pytest

from amps_eval.methods.prompts import COT_INSTRUCTION
from amps_eval.mc2.prompt import APPENDED_INSTRUCTIONS, MC2_AUTHORS_INSTRUCTIONS
from amps_eval.model_wrappers.base import truncate
from amps_eval.model_wrappers.registered import AmpsLlava
from amps_eval.model_wrappers.registered import AmpsQwen
from amps_eval.settings import QwenSettings, SettingsError, WrapperSettings

from wrapper_helpers import make_wrapper, requests_for

def test_unknown_argument_lists_valid_ones():
    with pytest.raises(SettingsError, match=r"unknown model argument 'temprature'; valid arguments: pretrained"):
        WrapperSettings.from_model_args(pretrained="x", temprature=0.1)
    with pytest.raises(SettingsError, match="min_pixels"):
        WrapperSettings.from_model_args(pretrained="x", min_pixels=10)  # LLaVA has no pixel bounds
    assert QwenSettings.from_model_args(pretrained="x", min_pixels=3136, max_batch_size=None).min_pixels == 3136
    with pytest.raises(SettingsError, match="unknown method='stear'; valid methods: none, inst, cot, fewshot"):
        WrapperSettings.from_model_args(pretrained="x", method="stear")
    with pytest.raises(SettingsError, match="batch_size='auto' is not a valid int"):
        WrapperSettings.from_model_args(pretrained="x", batch_size="auto")
    with pytest.raises(SettingsError, match="pretrained"):
        WrapperSettings.from_model_args(method="none")


def test_batched_equals_unbatched_and_request_order(arch, task_dict):
    cls, path = arch
    requests = requests_for(task_dict, "mc2_visual", n=8) + requests_for(task_dict, "mc2_text", n=4)
    single = make_wrapper(cls, path, task_dict, batch_size=1).generate_until(requests)
    batched_wrapper = make_wrapper(cls, path, task_dict, batch_size=4)
    assert batched_wrapper.generate_until(requests) == single
    shuffled = list(range(len(requests)))
    random.Random(0).shuffle(shuffled)
    assert batched_wrapper.generate_until([requests[i] for i in shuffled]) == [single[i] for i in shuffled]
    assert any(text for text in single), "a random tiny model still produces some text"


def test_prompt_methods_build_the_documented_prompts(tiny_llava_path, task_dict):
    requests = requests_for(task_dict, "mc2_visual", n=2) + requests_for(task_dict, "mc2_text", n=2)
    docs = [task_dict["mc2_visual"]["test"][i] for i in range(2)] + [task_dict["mc2_text"]["test"][i] for i in range(2)]

    def authors(doc, instruction):  # the MC2 authors' prompt with an instruction, field by field
        return (f"Text context: {doc['context']}\n{instruction}\n{doc['question']}\nA. {doc['option_a']}\n"
                f"B. {doc['option_b']}\nAnswer the question by selecting the correct answer A or B.")

    inst = make_wrapper(AmpsLlava, tiny_llava_path, task_dict, method="inst")
    texts = [inst._prompt(i, r).turns[-1].text for i, r in enumerate(requests)]
    for text, doc in zip(texts, docs):
        assert text == authors(doc, MC2_AUTHORS_INSTRUCTIONS[doc["target"]])
    cot = make_wrapper(AmpsLlava, tiny_llava_path, task_dict, method="cot", cot_max_new_tokens=20)
    for i, (request, doc) in enumerate(zip(requests, docs)):
        prompt = cot._prompt(i, request)
        assert prompt.turns[-1].text == f"{texts[i]}\n{COT_INSTRUCTION}"
        assert prompt.max_new_tokens == 20 and prompt.until == ()
    appended = make_wrapper(AmpsLlava, tiny_llava_path, task_dict, method="inst", instruction_style="appended")
    for i, (request, doc) in enumerate(zip(requests, docs)):
        assert appended._prompt(i, request).turns[-1].text == f"{request.args[0]}\n{APPENDED_INSTRUCTIONS[doc['target']]}"
    none = make_wrapper(AmpsLlava, tiny_llava_path, task_dict)
    assert none._prompt(0, requests[0]).turns[-1].text == requests[0].args[0]


def test_generation_budgets(tiny_llava_path, task_dict):
    request = requests_for(task_dict, "mc2_visual", n=1, max_new_tokens=16)[0]  # as tasks/_mc2_common.yaml
    request.args[1]["until"] = ["\n\n"]  # lmms-eval's default stop string for a task that sets none
    assert WrapperSettings(pretrained="x").max_new_tokens == 64
    assert WrapperSettings(pretrained="x").cot_max_new_tokens == 512
    plain = make_wrapper(AmpsLlava, tiny_llava_path, task_dict)._prompt(0, request)
    assert plain.max_new_tokens == 64 and plain.until == ("\n\n",)
    assert make_wrapper(AmpsLlava, tiny_llava_path, task_dict, max_new_tokens=8)._prompt(0, request).max_new_tokens == 16
    cot = make_wrapper(AmpsLlava, tiny_llava_path, task_dict, method="cot")._prompt(0, request)
    assert cot.max_new_tokens == 512 and cot.until == ()  # the reasoning may hold blank lines
    for name in ("max_new_tokens", "cot_max_new_tokens"):
        with pytest.raises(SettingsError, match=f"{name} must be >= 1"):
            WrapperSettings(pretrained="x", **{name: 0})


def test_instruction_style_is_validated():
    with pytest.raises(SettingsError, match=r"unknown instruction_style='authors'; valid instruction styles: mc2_authors, appended"):
        WrapperSettings.from_model_args(pretrained="x", method="inst", instruction_style="authors")
    assert WrapperSettings.from_model_args(pretrained="x", instruction_style="appended").instruction_style == "appended"
    assert WrapperSettings(pretrained="x").instruction_style == "mc2_authors"


def test_fewshot_examples_are_other_items_answered_toward_the_target(tiny_qwen_path, task_dict):
    wrapper = make_wrapper(AmpsQwen, tiny_qwen_path, task_dict, method="fewshot", fewshot_k=2)
    for task in ("mc2_visual", "mc2_text"):
        docs = task_dict[task]["test"]
        for i, request in enumerate(requests_for(task_dict, task)):
            turns = wrapper._prompt(i, request).turns
            assert [t.role for t in turns] == ["user", "assistant", "user", "assistant", "user"]
            assert turns[-1].text == request.args[0]
            for example, answer in zip(turns[0:4:2], turns[1:4:2]):
                assert example.text != request.args[0], "an item is never its own example"
                row = next(j for j in range(len(docs)) if docs[j]["question"] in example.text and docs[j]["context"] in example.text)
                assert docs[row]["mc2_id"] != docs[i]["mc2_id"]
                expected = docs[row]["answer_vision"] if docs[i]["target"] == "vision" else docs[row]["answer_text"]
                letter = "A" if docs[row]["option_a"] == expected else "B"
                # The example was asked with its own option order; the answer names the target's option.
                assert f"{letter}. {expected}" in example.text and answer.text == letter
    again = make_wrapper(AmpsQwen, tiny_qwen_path, task_dict, method="fewshot", fewshot_k=2)
    request = requests_for(task_dict, "mc2_visual", n=1)[0]
    assert [t.text for t in again._prompt(0, request).turns] == [t.text for t in wrapper._prompt(0, request).turns]


def test_fewshot_generates(tiny_qwen_path, task_dict):
    wrapper = make_wrapper(AmpsQwen, tiny_qwen_path, task_dict, method="fewshot", fewshot_k=1, batch_size=2)
    requests = requests_for(task_dict, "mc2_text", n=3)
    assert len(wrapper.generate_until(requests)) == 3


def test_truncate_at_stop_strings():
    assert truncate("A. red\nUSER: more", ("\nUSER:",)) == "A. red"
    assert truncate("B", ()) == "B"


def test_modality_masks_cover_image_tokens_and_user_text(arch, task_dict):
    cls, path = arch
    wrapper = make_wrapper(cls, path, task_dict, batch_size=2)
    requests = requests_for(task_dict, "mc2_visual", n=2)
    prompts = [wrapper._prompt(i, r) for i, r in enumerate(requests)]
    encoded = wrapper.encode_turns([p.turns for p in prompts])
    tokenizer = wrapper.processor.tokenizer
    for row, prompt in enumerate(prompts):
        ids = encoded.inputs["input_ids"][row]
        text = tokenizer.decode(ids[encoded.text_mask[row]])
        # The text positions decode to the user's text (context, question, options) and nothing else.
        assert " ".join(text.split()) == " ".join(prompt.turns[-1].text.split())
        assert (ids[encoded.vision_mask[row]] == wrapper.model.config.image_token_id).all()
        assert encoded.vision_mask[row].sum() > 0
        assert not (encoded.text_mask[row] & encoded.vision_mask[row]).any()
        template = encoded.inputs["attention_mask"][row].bool() & ~encoded.text_mask[row] & ~encoded.vision_mask[row]
        assert template.sum() > 0  # the chat template is neither


@pytest.mark.parametrize("field, value", [("alpha", float("nan")), ("alpha", float("inf")), ("alpha", 1e39),
                                          ("beta", float("nan"))])
def test_settings_built_in_code_refuse_a_strength_no_float32_model_can_take(field, value):
    from amps_eval.settings import SettingsError, WrapperSettings

    with pytest.raises(SettingsError, match=field):
        WrapperSettings(pretrained="unused", **{field: value})
