"""The instruction prompts of `inst` / `cot` (the MC2 authors' wording and placement, or appended),
the fits' contrast prompts, and where generation stops."""

from __future__ import annotations

import pytest

from amps_eval.mc2.prompt import (
    APPENDED_INSTRUCTIONS,
    INSTRUCTION_STYLES,
    MC2_AUTHORS_INSTRUCTIONS,
    doc_prompt,
    instructed_prompt,
)
from amps_eval.methods.prompts import COT_INSTRUCTION, build_conversation

from wrapper_helpers import make_wrapper, requests_for

DOC = {"context": "The sky in the photo is green.", "question": "What color is the sky?", "option_a": "blue",
       "option_b": "green"}
QUESTION = "What color is the sky?\nA. blue\nB. green\nAnswer the question by selecting the correct answer A or B."

# The MC2 authors' script (EchoDreamer/Modality-Preference), character for character.
AUTHORS_VISION = ("In case there is an inconsistency between the text context and the image content, you should "
                  "follow the image content rather than the text context. ")
AUTHORS_TEXT = ("In case there is an inconsistency between the Text Context and the input image content, you must "
                "rely on the text context rather than the input image content. ")
# The appended instructions (AMPS Eq. 8 form; the fits' P_v / P_t), unchanged since the first steering files.
APPENDED_VISION = ("In case there is an inconsistency between the text context and the image content, you should "
                   "follow the image content rather than the text context.")
APPENDED_TEXT = ("In case there is an inconsistency between the text context and the image content, you must rely "
                 "on the text context rather than the input image content.")


def test_the_authors_wording_and_placement_verbatim():
    assert MC2_AUTHORS_INSTRUCTIONS == {"vision": AUTHORS_VISION, "text": AUTHORS_TEXT}
    text = doc_prompt(DOC)
    assert text == f"Text context: The sky in the photo is green.\n{QUESTION}"
    vision = build_conversation("inst", text, [], "vision", context=DOC["context"])
    assert [t.role for t in vision] == ["user"]
    assert vision[0].text == (
        "Text context: The sky in the photo is green.\n"
        "In case there is an inconsistency between the text context and the image content, you should follow the "
        "image content rather than the text context. \n"
        "What color is the sky?\nA. blue\nB. green\nAnswer the question by selecting the correct answer A or B."
    )
    textual = build_conversation("inst", text, [], "text", context=DOC["context"])
    assert textual[0].text == (
        "Text context: The sky in the photo is green.\n"
        "In case there is an inconsistency between the Text Context and the input image content, you must rely on "
        "the text context rather than the input image content. \n"
        "What color is the sky?\nA. blue\nB. green\nAnswer the question by selecting the correct answer A or B."
    )
    for target, words in (("vision", AUTHORS_VISION), ("text", AUTHORS_TEXT)):
        cot = build_conversation("cot", text, [], target, context=DOC["context"])
        assert cot[0].text == f"Text context: {DOC['context']}\n{words}\n{QUESTION}\n{COT_INSTRUCTION}"


def test_the_appended_style_is_still_available():
    assert APPENDED_INSTRUCTIONS == {"vision": APPENDED_VISION, "text": APPENDED_TEXT}
    text = doc_prompt(DOC)
    for target, words in (("vision", APPENDED_VISION), ("text", APPENDED_TEXT)):
        assert build_conversation("inst", text, [], target, style="appended")[0].text == f"{text}\n{words}"
        assert (build_conversation("cot", text, [], target, style="appended")[0].text
                == f"{text}\n{words}\n{COT_INSTRUCTION}")
    assert build_conversation("none", text, [], None, style="appended")[0].text == text


def test_bad_styles_and_prompts_are_clear_errors():
    text = doc_prompt(DOC)
    with pytest.raises(ValueError, match="unknown instruction_style='authors'; valid instruction styles: mc2_authors, appended"):
        build_conversation("inst", text, [], "vision", style="authors", context=DOC["context"])
    with pytest.raises(ValueError, match="instruction_style=appended"):  # no context line to insert after
        instructed_prompt("What color is the sky?", DOC["context"], "vision", "mc2_authors")
    with pytest.raises(ValueError, match="instruction_style=appended"):
        build_conversation("inst", text, [], "vision")  # the authors' placement needs the context
    assert INSTRUCTION_STYLES == ("mc2_authors", "appended")


def test_fit_contrast_prompts_stay_appended(synthetic_mc2_dir):
    """[I, T], [I, T, P_v], [I, T, P_t] of the fits and of `amps-eval mcs`: AMPS Eq. 8, the instruction
    appended after the whole question, whatever the evaluation's instruction style."""
    from amps_eval.fit_data import FIT_INSTRUCTION_STYLE, PROMPTS, load_items

    assert FIT_INSTRUCTION_STYLE == "appended"
    assert PROMPTS == {"none": ("none", None), "vision": ("inst", "vision"), "text": ("inst", "text")}
    items = load_items(synthetic_mc2_dir, limit=4)
    rows = list(range(len(items)))
    for kind, suffix in (("none", ""), ("vision", "\n" + APPENDED_VISION), ("text", "\n" + APPENDED_TEXT)):
        for row, conversation in zip(rows, items.conversations(rows, kind)):
            assert len(conversation) == 1 and len(conversation[0].images) == 1
            assert conversation[0].text == doc_prompt(items.docs[row]) + suffix


def test_stop_token_ids(arch):
    cls, path = arch
    wrapper = cls(pretrained=str(path), device="cpu")
    tokens = wrapper.processor.tokenizer.convert_ids_to_tokens(wrapper.stop_ids)
    assert tokens == (["<|im_end|>", "<|endoftext|>"] if cls.__name__ in ("AmpsQwen", "AmpsQwen2") else ["</s>"])


def test_generation_stops_at_the_end_of_turn_token(arch, task_dict):
    """A model whose every next token is the end-of-turn token generates one token, not its budget,
    even without an EOS id in its generation config: the wrapper passes the stop ids to generate."""
    cls, path = arch
    wrapper = make_wrapper(cls, path, task_dict, batch_size=2)
    stop = wrapper.stop_ids[0]
    wrapper.model.generation_config.eos_token_id = None  # only the ids the wrapper passes can stop it
    steps = []

    def end_of_turn(module, args, output):
        steps.append(1)
        output = output.clone()
        output[..., stop] = output.abs().amax() * 10 + 100
        return output

    handle = wrapper.model.get_output_embeddings().register_forward_hook(end_of_turn)
    generated = []
    real_generate = wrapper.model.generate

    def recording_generate(**kwargs):
        out = real_generate(**kwargs)
        generated.append(out.sequences.shape[1] - kwargs["input_ids"].shape[1])
        return out

    wrapper.model.generate = recording_generate
    try:
        answers = wrapper.generate_until(requests_for(task_dict, "mc2_visual", n=2, max_new_tokens=64))
    finally:
        handle.remove()
    assert answers == ["", ""]
    assert generated == [1] and len(steps) == 1, f"generation ran {len(steps)} steps instead of stopping at EOS"
