"""image_logodds: the pure selection rules, the wrappers' value against a plain forward of the model,
batched = unbatched, present for every method, and the MC2 records and aggregation."""

import math

import pytest
import torch

from amps_eval.logodds import (
    ScoredAnswer,
    answer_logodds,
    candidate_pairs,
    first_difference,
    letter_pair,
    logodds_from_steps,
    text_pair,
)
from amps_eval.mc2 import metrics
from amps_eval.methods.registry import METHODS
from amps_eval.model_wrappers.base import Batch
from amps_eval.model_wrappers.registered import AmpsLlava, AmpsQwen
from amps_eval.organism import organism_path

from wrapper_helpers import make_wrapper, requests_for


# ------------------------------------------------------------------ pure rules


def test_first_difference_and_text_pair():
    assert first_difference([5, 7, 9], [5, 8]) == 1
    assert first_difference([5], [6]) == 0
    assert first_difference([5, 7], [5, 7, 1]) == 2  # a prefix differs at its end
    with pytest.raises(ValueError, match="identically"):
        first_difference([1, 2], [1, 2])
    pair = text_pair([3, 4], [3, 5, 6], end_token=0)  # "moving left" vs "moving right"
    assert (pair.step, pair.prefix, pair.image_token, pair.text_token) == (1, (3,), 4, 5)
    pair = text_pair([3], [3, 5], end_token=0)
    assert (pair.step, pair.image_token, pair.text_token) == (1, 0, 5)


def test_logodds_uses_the_pair_with_more_mass_and_needs_its_prefix():
    table = {0: {1: math.log(0.6), 2: math.log(0.2), 3: math.log(0.01), 4: math.log(0.01), 9: math.log(0.1)},
             1: {3: math.log(0.3), 4: math.log(0.6)}}

    def lp(step, token):
        return table[step][token]

    letters, texts = letter_pair(1, 2), text_pair([9, 3], [9, 4], end_token=0)
    value, kind = logodds_from_steps([letters, texts], [1, 0], lp)
    assert kind == "letter" and value == pytest.approx(math.log(3))
    # the option texts' shared prefix was generated and carries more mass at its step
    table[0] = {1: math.log(0.05), 2: math.log(0.05), 9: math.log(0.9)}
    value, kind = logodds_from_steps([letters, texts], [9, 4], lp)
    assert kind == "text" and value == pytest.approx(math.log(0.5))
    # prefix not generated: only the letters count
    value, kind = logodds_from_steps([letters, texts], [2, 4], lp)
    assert kind == "letter" and value == pytest.approx(0.0)
    assert logodds_from_steps([], [1], lp) == (None, None)


def test_candidate_pairs_from_a_document():
    vocab = {"A": [1], "B": [2], "blue": [10], "red": [11], "moving left": [20, 21], "moving right": [20, 22]}
    doc = {"vision_letter": "B", "answer_vision": "moving left", "answer_text": "moving right"}
    letters, texts = candidate_pairs(doc, vocab.__getitem__, end_token=0)
    assert (letters.image_token, letters.text_token) == (2, 1)
    assert (texts.step, texts.image_token, texts.text_token) == (1, 21, 22)
    assert candidate_pairs({"question": "x"}, vocab.__getitem__, 0) == []


def test_scored_answer_is_a_string_that_carries_its_values():
    import pickle

    answer = ScoredAnswer("blue", 1.5, "text")
    assert answer == "blue" and isinstance(answer, str)
    assert answer_logodds(answer) == (1.5, "text")
    assert answer_logodds(pickle.loads(pickle.dumps(answer))) == (1.5, "text")
    assert answer_logodds("blue") == (None, None)
    assert answer_logodds(ScoredAnswer(" blue ", 1.5, "text").strip()) == (1.5, "text")  # lmms-eval strips answers


def test_records_and_aggregation():
    doc = {"mc2_id": 3, "category": "color", "target": "vision", "order": "vision_first"}
    record = metrics.answer_record(doc, "vision", "image_logodds", 2.0, "text")
    assert record["score"] == 2.0 and record["image_logodds"] == 2.0 and record["image_logodds_kind"] == "text"
    assert metrics.answer_record(doc, "vision", "target_acc", 2.0, "text")["image_logodds"] == 2.0
    missing = metrics.answer_record(doc, "others", "image_logodds")
    assert "score" not in missing and missing["image_logodds"] is None
    assert metrics.agg_image_logodds([record, missing, {**record, "image_logodds": -1.0}]) == pytest.approx(0.5)
    assert math.isnan(metrics.agg_image_logodds([missing]))


def test_process_results_reads_the_answer():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("mc2_utils", Path(__file__).parents[1] / "tasks" / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    doc = {"mc2_id": 1, "category": "color", "target": "vision", "order": "vision_first", "vision_letter": "A",
           "option_a": "blue", "option_b": "red", "answer_vision": "blue", "answer_text": "red"}
    out = utils.process_results(doc, [ScoredAnswer("blue", 0.7, "text")])
    assert set(out) == set(metrics.METRICS)
    assert out["image_logodds"]["score"] == 0.7 and out["target_acc"]["image_logodds"] == 0.7


# ------------------------------------------------------------------ the wrappers on the organisms


def independent_logodds(wrapper, prompt) -> float:
    """log p(image option) - log p(text option) by a plain forward of prompt + the shared prefix of the
    two option texts (the organisms answer with the option's text)."""
    tokenizer = wrapper.processor.tokenizer
    image_ids = tokenizer(prompt.doc["answer_vision"], add_special_tokens=False)["input_ids"] + [wrapper.stop_ids[0]]
    text_ids = tokenizer(prompt.doc["answer_text"], add_special_tokens=False)["input_ids"] + [wrapper.stop_ids[0]]
    k = next(i for i, (a, b) in enumerate(zip(image_ids, text_ids)) if a != b)
    inputs = dict(wrapper.encode_turns([prompt.turns]).inputs)
    prefix = torch.tensor([image_ids[:k]], dtype=inputs["input_ids"].dtype)
    inputs["input_ids"] = torch.cat([inputs["input_ids"], prefix], dim=1)
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(prefix)], dim=1)
    if "mm_token_type_ids" in inputs:
        inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(prefix)], dim=1)
    with torch.no_grad():
        logits = wrapper.model(**inputs).logits[0, -1].float()
    log_probs = torch.log_softmax(logits, dim=-1)
    return float(log_probs[image_ids[k]] - log_probs[text_ids[k]])


@pytest.fixture(params=[(AmpsQwen, "amps_qwen"), (AmpsLlava, "amps_llava")], ids=["qwen", "llava"])
def organism(request):
    cls, model = request.param
    return cls, organism_path(model)


def test_wrapper_value_equals_a_plain_forward_and_batched_equals_unbatched(organism, task_dict):
    cls, path = organism
    # the first 8 documents of each task cover all eight categories (activity: a shared first token)
    requests = requests_for(task_dict, "mc2_visual", n=8) + requests_for(task_dict, "mc2_text", n=8)
    batched = make_wrapper(cls, path, task_dict, batch_size=4)
    answers = batched.generate_until(requests)
    single = make_wrapper(cls, path, task_dict, batch_size=1, loaded=batched.loaded).generate_until(requests)
    assert answers == single
    for i, (answer, one) in enumerate(zip(answers, single)):
        value, kind = answer_logodds(answer)
        assert kind == "text", (answer, kind)  # the organisms answer with the option's text
        assert value == pytest.approx(answer_logodds(one)[0], abs=1e-4)
        prompt = batched._prompt(i, requests[i])
        assert value == pytest.approx(independent_logodds(batched, prompt), abs=1e-4)
        # the sign agrees with the answer the organism gave
        follows_image = str(answer) == prompt.doc["answer_vision"]
        follows_text = str(answer) == prompt.doc["answer_text"]
        if follows_image or follows_text:
            assert (value > 0) == follows_image


def _steering_file(tmp_path, path, method, task_dict):
    from test_steered_wrappers import write_file

    return write_file(tmp_path / f"{method}.safetensors", path, method, task_dict, scale=1.0)


@pytest.mark.parametrize("method", [m.name for m in METHODS])
def test_present_for_every_method(method, task_dict, tmp_path):
    from amps_eval.methods.registry import info

    path = organism_path("amps_qwen")
    requests = requests_for(task_dict, "mc2_visual", n=2) + requests_for(task_dict, "mc2_text", n=2)
    args = {"method": method, "batch_size": 2}
    if info(method).steered:
        args.update(steering=str(_steering_file(tmp_path, path, info(method).file_method, task_dict)), alpha=0.5,
                    mcs_draws=1)
    wrapper = make_wrapper(AmpsQwen, path, task_dict, **args)
    answers = wrapper.generate_until(requests)
    values = [answer_logodds(a)[0] for a in answers]
    if method == "cot":  # a reasoning answer need not start with either option: None is allowed, not garbage
        assert all(v is None or math.isfinite(v) for v in values)
    else:
        assert all(v is not None and math.isfinite(v) for v in values), (method, answers, values)


def test_steered_value_moves_with_alpha_and_alpha_zero_equals_unsteered(task_dict, tmp_path):
    path = organism_path("amps_qwen")
    requests = requests_for(task_dict, "mc2_visual", n=4)
    steering = str(_steering_file(tmp_path, path, "l2s", task_dict))
    plain = make_wrapper(AmpsQwen, path, task_dict, batch_size=4)
    base = [answer_logodds(a)[0] for a in plain.generate_until(requests)]
    zero = make_wrapper(AmpsQwen, path, task_dict, method="l2s", steering=steering, alpha=0.0, batch_size=4,
                        loaded=plain.loaded)
    assert [answer_logodds(a)[0] for a in zero.generate_until(requests)] == pytest.approx(base, abs=1e-5)
    strong = make_wrapper(AmpsQwen, path, task_dict, method="l2s", steering=steering, alpha=4.0, batch_size=4,
                          loaded=plain.loaded)
    moved = [answer_logodds(a)[0] for a in strong.generate_until(requests)]
    assert any(m is None or abs(m - b) > 1e-3 for m, b in zip(moved, base))


def test_report_cells_and_tables_show_the_mean_log_odds(tmp_path):
    from pathlib import Path

    from amps_eval.report.cells import TOTAL, cells_from_records
    from amps_eval.report.render import LOGODDS_HEADER, RenderOptions, logodds_text

    records = [{"mc2_id": i, "category": "color", "target": "vision", "order": "vision_first", "follows": "vision",
                "image_logodds": v} for i, v in enumerate([1.0, 2.0, None, 3.0])]
    total = cells_from_records(records, Path("run.json"), "20260101_000000")[TOTAL]
    assert total.logodds == pytest.approx(2.0) and total.logodds_stderr == pytest.approx(math.sqrt(1.0 / 3))
    assert logodds_text(total, RenderOptions()) == "+2.00"
    assert logodds_text(total, RenderOptions(stderr=True)) == "+2.00 ± 0.58"
    assert logodds_text(None, RenderOptions()) == "-" and LOGODDS_HEADER == "log-odds"
