"""Generation continues from one unsteered prefill when the prompt is not steered (positions
``generated`` / ``from_last_prompt``); for mean_mcs, from the MCS prefill: same answers and diagnostics
as prefilling twice, one prefill."""

import json

import pytest
import torch

from amps_eval.mcs.kv_cache import prefill_prompt
from amps_eval.mcs.score import MCSSettings, compute_mcs
from amps_eval.methods.steering import Steering
from amps_eval.model_wrappers.base import Batch, continuation_inputs
from amps_eval.steering import hooks

from test_steered_wrappers import steered
from wrapper_helpers import make_wrapper, requests_for

DIAGNOSED = ("c_v", "c_t", "r_v", "r_v_stderr", "gamma", "strength", "vector_norm", "shift_norm", "relative_shift")


def _batch(wrapper, requests):
    prompts = [wrapper._prompt(i, r) for i, r in enumerate(requests)]
    return Batch(prompts, wrapper.encode_turns([p.turns for p in prompts]))


def _prompt_forwards(model) -> list[int]:
    """Records the length of every forward through the first decoder layer longer than one token."""
    seen = []
    hooks.decoder_layers(model)[0].register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append(args[0].shape[1] if args else kwargs["hidden_states"].shape[1]),
        with_kwargs=True)
    return seen


def _diagnostics(folder):
    rows = [json.loads(line) for f in folder.glob("*.jsonl") for line in f.read_text().splitlines()[1:]]
    return sorted(rows, key=lambda r: (r["task"], r["doc_id"]))


@pytest.mark.parametrize("positions", ["generated", "from_last_prompt"])
def test_continuing_from_the_mcs_prefill_gives_the_answers_of_two_prefills(arch, task_dict, tmp_path, monkeypatch,
                                                                           positions):
    cls, path = arch
    requests = requests_for(task_dict, "mc2_visual", n=4, max_new_tokens=8) + requests_for(task_dict, "mc2_text", n=4,
                                                                                           max_new_tokens=8)
    # 8 new tokens, the requests' budget, for the wrapper too (its default of 64 would win)
    args = {"alpha": 6.0, "batch_size": 4, "mcs_draws": 2, "positions": positions, "max_new_tokens": 8}
    wrapper = steered(cls, path, task_dict, tmp_path, "mean_mcs", diagnostics=str(tmp_path / "once"), **args)
    lengths = _prompt_forwards(wrapper.model)
    once = wrapper.generate_until(requests)
    full_prompt = [n for n in lengths if n > 1]
    assert len(full_prompt) == 2  # one prefill per batch of four: the MCS's, which generation continues from

    monkeypatch.setattr(Steering, "_prefill", lambda self, model, batch: None)  # the former path: prefill twice
    twice_wrapper = steered(cls, path, task_dict, tmp_path, "mean_mcs", diagnostics=str(tmp_path / "twice"), **args)
    lengths = _prompt_forwards(twice_wrapper.model)
    twice = twice_wrapper.generate_until(requests)
    assert len([n for n in lengths if n > 1]) == 4
    assert once == twice
    plain = make_wrapper(cls, path, task_dict, batch_size=4, max_new_tokens=8).generate_until(requests)
    assert once != plain  # the steering changed answers, so equal answers above are a real check
    rows_once, rows_twice = _diagnostics(tmp_path / "once"), _diagnostics(tmp_path / "twice")
    assert len(rows_once) == len(rows_twice) == 8
    for a, b in zip(rows_once, rows_twice):
        assert {k: a[k] for k in a if k not in DIAGNOSED} == {k: b[k] for k in b if k not in DIAGNOSED}
        for key in DIAGNOSED:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key


def test_continuation_positions_are_those_generate_computes(arch, task_dict):
    """Positions (3-D mrope for Qwen2/2.5-VL) equal transformers' own for the whole prompt, whatever
    an earlier batch left in the model's ``rope_deltas``; the prefill is left unchanged."""
    cls, path = arch
    wrapper = make_wrapper(cls, path, task_dict, batch_size=4)
    earlier = _batch(wrapper, requests_for(task_dict, "mc2_text", n=2))
    with torch.no_grad():
        wrapper.model.generate(**earlier.inputs, max_new_tokens=2, do_sample=False)  # leaves rope_deltas of 2 rows
    batch = _batch(wrapper, requests_for(task_dict, "mc2_visual", n=4))
    mask = batch.inputs["attention_mask"]
    assert len(set(mask.sum(1).tolist())) > 1  # left-padded rows of different lengths
    prefill = prefill_prompt(wrapper.model, batch.inputs)
    keys = [k.clone() for k in prefill.keys]
    inputs = continuation_inputs(batch.inputs, prefill)
    model_kwargs = {k: v for k, v in batch.inputs.items() if k != "input_ids"}
    expected = wrapper.model._prepare_position_ids_for_generation(batch.inputs["input_ids"], dict(model_kwargs))
    assert torch.equal(inputs["position_ids"], expected)
    assert inputs["cache"].get_seq_length() == mask.shape[1] - 1
    with torch.no_grad():
        cont = wrapper.model.generate(**inputs, max_new_tokens=4, do_sample=False, output_logits=True,
                                      return_dict_in_generate=True)
        full = wrapper.model.generate(**batch.inputs, max_new_tokens=4, do_sample=False, output_logits=True,
                                      return_dict_in_generate=True)
    assert torch.equal(cont.sequences, full.sequences)
    for a, b in zip(cont.logits, full.logits):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(keys, prefill.keys))


def test_compute_mcs_leaves_the_prefill_it_is_given_unchanged(tiny_qwen_path, task_dict):
    from amps_eval.model_wrappers.registered import AmpsQwen

    wrapper = make_wrapper(AmpsQwen, tiny_qwen_path, task_dict, batch_size=2)
    batch = _batch(wrapper, requests_for(task_dict, "mc2_visual", n=2))
    prefill = prefill_prompt(wrapper.model, batch.inputs)
    before = [t.clone() for t in (*prefill.keys, *prefill.values, prefill.logits, prefill.position_ids)]
    given = compute_mcs(wrapper.model, batch.inputs, batch.encoded.vision_mask, batch.encoded.text_mask,
                        MCSSettings(draws=2), prefilled=prefill)
    after = (*prefill.keys, *prefill.values, prefill.logits, prefill.position_ids)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    own = compute_mcs(wrapper.model, batch.inputs, batch.encoded.vision_mask, batch.encoded.text_mask,
                      MCSSettings(draws=2))
    assert torch.equal(given.r_v, own.r_v)


@pytest.mark.parametrize("method, positions, continues", [("mean_mcs", "all", False), ("mean_mcs", "generated", True),
                                                           ("mean", "generated", True), ("amps", "from_last_prompt", True),
                                                           ("l2s", "all", False)])
def test_only_an_unsteered_prompt_continues(tiny_qwen_path, task_dict, tmp_path, method, positions, continues):
    """Every method continues from one unsteered prefill when its prompt is not steered (the prefill
    a sweep pass shares between its alphas, `amps_eval.sweep_pass`); with positions=all it cannot."""
    from amps_eval.model_wrappers.registered import AmpsQwen

    wrapper = steered(AmpsQwen, tiny_qwen_path, task_dict, tmp_path, method, positions=positions, batch_size=2,
                      mcs_draws=1)
    batch = _batch(wrapper, requests_for(task_dict, "mc2_visual", n=2))
    with wrapper.intervene(batch) as prefill, torch.no_grad():
        assert (prefill is not None) == continues
        inputs = batch.inputs if prefill is None else continuation_inputs(batch.inputs, prefill)
        wrapper.model.generate(**inputs, max_new_tokens=2, do_sample=False)
