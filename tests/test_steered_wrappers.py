"""The steering methods inside the wrappers, with steering files made in the test."""

import json

import pytest
import torch

from amps_eval.model_wrappers.base import Batch
from amps_eval.model_wrappers.registered import AmpsLlava
from amps_eval.model_wrappers.registered import AmpsQwen
from amps_eval.settings import SettingsError
from amps_eval.steering import hooks
from amps_eval.steering.file import Fold, SteeringFile, SteeringFileMismatch
from amps_eval.steering.module import SteeringMLP

from wrapper_helpers import make_wrapper, requests_for

LAYER = 1


def write_file(path, model_path, method, task_dict, scale=4.0, hidden_size=None, seed=0):
    """A steering file with random vectors/modules and 2 folds over the task's items."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    text = config.get_text_config()
    d = hidden_size or text.hidden_size
    ids = sorted({str(i) for i in task_dict["mc2_visual"]["test"]["mc2_id"]}, key=int)
    generator = torch.Generator().manual_seed(seed)
    folds = []
    for k in range(2):
        held = ids[k::2]
        if method == "mean":
            v = scale * torch.randn(d, generator=generator)
            tensors, hidden = {"vision.vector": v, "text.vector": -v}, None
        else:
            torch.manual_seed(seed + k)
            state = SteeringMLP(d, 8).state_dict()
            tensors = {f"{direction}.{name}": (scale * t if name == "decoder.weight" else t) * (1 if direction == "vision" else 1)
                       for direction in ("vision", "text") for name, t in state.items()}
            tensors["text.decoder.weight"] = -tensors["text.decoder.weight"]
            hidden = 8
        folds.append(Fold(f"fold{k}", [i for i in ids if i not in held], held, tensors, hidden))
    anchors = {"__all__": 0.5} if method == "mean" else {}
    SteeringFile(method=method, layer=LAYER, hidden_size=d, num_layers=text.num_hidden_layers, model_id=str(model_path),
                 architecture=config.architectures[0], folds=folds, anchors=anchors).save(path)
    return path


def steered(cls, path, task_dict, tmp_path, method, **args):
    file_method = "mean" if method == "mean_mcs" else method
    steering = write_file(tmp_path / f"{file_method}.safetensors", path, file_method, task_dict)
    return make_wrapper(cls, path, task_dict, method=method, steering=str(steering), **args)


def _layer_hooks(wrapper):
    return sum(len(layer._forward_hooks) for layer in hooks.decoder_layers(wrapper.model))


@pytest.mark.parametrize("method", ["mean", "mean_mcs", "l2s", "amps"])
def test_alpha_zero_equals_unsteered_and_alpha_changes_logits(arch, task_dict, tmp_path, method):
    cls, path = arch
    requests = requests_for(task_dict, "mc2_visual", n=4) + requests_for(task_dict, "mc2_text", n=4)
    plain = make_wrapper(cls, path, task_dict, batch_size=4)
    zero = steered(cls, path, task_dict, tmp_path, method, alpha=0.0, batch_size=4, mcs_draws=1)
    assert zero.generate_until(requests) == plain.generate_until(requests)
    strong = steered(cls, path, task_dict, tmp_path, method, alpha=8.0, batch_size=4, mcs_draws=1)
    prompts = [strong._prompt(i, r) for i, r in enumerate(requests[:4])]
    batch = Batch(prompts, strong.encode_turns([p.turns for p in prompts]))
    with torch.no_grad():
        base = strong.model(**batch.inputs).logits[:, -1]
        with strong.intervene(batch):
            moved = strong.model(**batch.inputs).logits[:, -1]
    assert not torch.allclose(base, moved, atol=1e-4)
    assert _layer_hooks(strong) == 0


@pytest.mark.parametrize("method", ["mean", "mean_mcs", "amps"])
def test_steered_batch_of_four_equals_four_single_runs(arch, task_dict, tmp_path, method):
    cls, path = arch
    requests = requests_for(task_dict, "mc2_visual", n=4) + requests_for(task_dict, "mc2_text", n=4)
    single = steered(cls, path, task_dict, tmp_path, method, alpha=3.0, batch_size=1, mcs_draws=1)
    batched = steered(cls, path, task_dict, tmp_path, method, alpha=3.0, batch_size=4, mcs_draws=1)
    assert batched.generate_until(requests) == single.generate_until(requests)


def test_hooks_are_removed_after_an_exception(tiny_qwen_path, task_dict, tmp_path, monkeypatch):
    wrapper = steered(AmpsQwen, tiny_qwen_path, task_dict, tmp_path, "amps", alpha=1.0)
    requests = requests_for(task_dict, "mc2_visual", n=2)

    def boom(*args, **kwargs):
        raise RuntimeError("generation failed")

    monkeypatch.setattr(wrapper.model, "generate", boom)
    with pytest.raises(RuntimeError, match="generation failed"):
        wrapper.generate_until(requests)
    assert _layer_hooks(wrapper) == 0


def test_cross_fit_and_diagnostics(tiny_llava_path, task_dict, tmp_path):
    diag = tmp_path / "diag"
    wrapper = steered(AmpsLlava, tiny_llava_path, task_dict, tmp_path, "mean_mcs", alpha=2.0, batch_size=3,
                      diagnostics=str(diag), mcs_draws=1)
    requests = requests_for(task_dict, "mc2_visual") + requests_for(task_dict, "mc2_text")
    wrapper.generate_until(requests)
    lines = [json.loads(line) for f in diag.glob("*.jsonl") for line in f.read_text().splitlines()]
    assert lines[0]["settings"]["method"] == "mean_mcs"
    rows = lines[1:]
    assert len(rows) == len(requests)
    file = wrapper.steering.file
    for row in rows:
        assert str(row["mc2_id"]) not in file.folds[row["fold"]].fit_ids, "steered with a fold that saw the item"
        assert str(row["mc2_id"]) in file.folds[row["fold"]].held_out_ids and row["in_sample"] is False
        assert 0 <= row["r_v"] <= 1 and row["gamma"] >= 0
        assert row["strength"] == pytest.approx(2.0 * row["gamma"])
        assert row["shift_norm"] == pytest.approx(abs(row["strength"]) * row["vector_norm"], rel=1e-5)
        assert row["relative_shift"] > 0  # ||shift|| / ||h||: the hidden state's norm is finite and positive
        for key in ("task", "c_v", "c_t", "anchor", "category", "target"):
            assert key in row
    assert {r["target"] for r in rows} == {"vision", "text"}


def test_each_row_is_steered_toward_its_target_with_its_fold(tiny_qwen_path, task_dict, tmp_path):
    wrapper = steered(AmpsQwen, tiny_qwen_path, task_dict, tmp_path, "mean", alpha=1.5, batch_size=2)
    requests = requests_for(task_dict, "mc2_visual", n=1) + requests_for(task_dict, "mc2_text", n=2)[1:]
    prompts = [wrapper._prompt(i, r) for i, r in enumerate(requests)]
    batch = Batch(prompts, wrapper.encode_turns([p.turns for p in prompts]))
    file = wrapper.steering.file
    folds = [file.fold_for(p.item_id) for p in prompts]
    expected = torch.stack([file.vector(folds[0], "vision"), -file.vector(folds[1], "vision")])
    with torch.no_grad():
        with wrapper.intervene(batch):
            via_wrapper = wrapper.model(**batch.inputs).logits
        with hooks.steer(wrapper.model, LAYER, expected, 1.5, batch.inputs["attention_mask"]):
            by_hand = wrapper.model(**batch.inputs).logits
    assert torch.equal(via_wrapper, by_hand)
    assert [str(p.doc["mc2_id"]) in file.folds[f].held_out_ids for p, f in zip(prompts, folds)] == [True, True]


def test_bad_steering_settings_and_files_are_refused(tiny_qwen_path, task_dict, tmp_path):
    with pytest.raises(SettingsError, match="needs steering="):
        make_wrapper(AmpsQwen, tiny_qwen_path, task_dict, method="mean")
    with pytest.raises(SettingsError, match="does not steer"):
        make_wrapper(AmpsQwen, tiny_qwen_path, task_dict, method="inst", steering="x.safetensors")
    wrong = write_file(tmp_path / "wrong.safetensors", tiny_qwen_path, "mean", task_dict, hidden_size=48)
    with pytest.raises(SteeringFileMismatch, match="hidden size: the model has 64, the file 48"):
        make_wrapper(AmpsQwen, tiny_qwen_path, task_dict, method="mean", steering=str(wrong))
    l2s = write_file(tmp_path / "l2s.safetensors", tiny_qwen_path, "l2s", task_dict)
    with pytest.raises(SteeringFileMismatch, match="method: the run uses 'amps', the file was fitted for 'l2s'"):
        make_wrapper(AmpsQwen, tiny_qwen_path, task_dict, method="amps", steering=str(l2s))
    with pytest.raises(SettingsError, match="sha256"):
        make_wrapper(AmpsQwen, tiny_qwen_path, task_dict, method="l2s", steering=str(l2s), steering_sha256="0" * 64)
    with pytest.raises(SettingsError, match="positions="):
        make_wrapper(AmpsQwen, tiny_qwen_path, task_dict, method="l2s", steering=str(l2s), positions="everywhere")


def test_mean_mcs_at_inference_gives_the_items_fit_time_mcs(tiny_qwen_path, task_dict, synthetic_mc2_dir, tmp_path):
    """The noise of an item's MCS depends on (seed, mc2_id, prompt) only: `mean_mcs` inside
    generation and `amps-eval fit`'s extraction (which computes the anchors) agree on r_v."""
    from amps_eval.extract import mcs_batch
    from amps_eval.fit_data import load_items

    diag = tmp_path / "diag"
    wrapper = steered(AmpsQwen, tiny_qwen_path, task_dict, tmp_path, "mean_mcs", alpha=1.0, batch_size=3,
                      diagnostics=str(diag))
    wrapper.generate_until(requests_for(task_dict, "mc2_visual", n=5))
    at_inference = {str(r["mc2_id"]): r for f in diag.glob("*.jsonl") for r in map(json.loads, f.read_text().splitlines())
                    if "r_v" in r}
    items = load_items(synthetic_mc2_dir)
    rows = [items.ids.index(i) for i in at_inference]
    fitted = mcs_batch(wrapper, items.conversations(rows, "none"), [items.ids[i] for i in rows],
                       wrapper.settings.mcs_settings())
    for j, item in enumerate(fitted.sample_ids):
        assert at_inference[item]["r_v"] == pytest.approx(float(fitted.r_v[j]), abs=1e-6)
        assert at_inference[item]["r_v_stderr"] == pytest.approx(float(fitted.r_v_stderr[j]), abs=1e-6)
