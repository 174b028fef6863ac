"""Steering hooks, the steering MLP and the steering file, on tiny models of the real architectures.

The models are Qwen2_5_VLForConditionalGeneration, LlavaForConditionalGeneration and
Qwen2VLForConditionalGeneration built from tiny
configs (random weights, about a second each), so the hook point and the prefill/decode behaviour
are exercised through the same code paths as the 7B checkpoints.
"""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from transformers import (
    LlavaConfig,
    LlavaForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)

from amps_eval.steering.file import Fold, SteeringFile, SteeringFileMismatch, SteeringFileWarning, sha256
from amps_eval.steering.hooks import capture, decoder_layers, hidden_size, steer, steer_with_module
from amps_eval.steering.module import SteeringMLP, TrainingDiverged, TrainSettings, train_mlp

D, LAYERS, VOCAB, IMAGE_TOKEN = 32, 3, 128, 120
TEXT = dict(vocab_size=VOCAB, hidden_size=D, intermediate_size=64, num_hidden_layers=LAYERS,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _qwen():
    config = Qwen2_5_VLConfig(
        text_config=dict(TEXT, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=D,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, fullatt_block_indexes=[0]),
        image_token_id=IMAGE_TOKEN, video_token_id=121, vision_start_token_id=122, vision_end_token_id=123)
    return Qwen2_5_VLForConditionalGeneration(config)


def _qwen2():
    config = Qwen2VLConfig(
        text_config=dict(TEXT, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}),
        vision_config=dict(depth=1, embed_dim=16, mlp_ratio=2, num_heads=2, hidden_size=D, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=IMAGE_TOKEN, video_token_id=121, vision_start_token_id=122, vision_end_token_id=123)
    return Qwen2VLForConditionalGeneration(config)


def _llava():
    config = LlavaConfig(
        text_config=dict(TEXT, model_type="llama"),
        vision_config=dict(model_type="clip_vision_model", hidden_size=16, intermediate_size=32,
                           num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14),
        image_token_id=IMAGE_TOKEN)
    return LlavaForConditionalGeneration(config)


@pytest.fixture(scope="module", params=["qwen", "llava", "qwen2"])
def model(request):
    torch.manual_seed(0)
    m = {"qwen": _qwen, "llava": _llava, "qwen2": _qwen2}[request.param]().eval()
    m.generation_config.eos_token_id = None  # always generate the full length
    m.generation_config.pad_token_id = 0
    return m


def _prompt(batch=2, length=7, pad=(2, 0), seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for row, n in enumerate(pad[:batch]):
        ids[row, :n], mask[row, :n] = 0, 0  # left padding
    return ids, mask


def _vec(seed=0, rows=None):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*(() if rows is None else (rows,)), D, generator=g)


@torch.no_grad()
def _logits(model, ids, mask):
    return model(input_ids=ids, attention_mask=mask).logits


@torch.no_grad()
def _generate(model, ids, mask, n=4):
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                         output_logits=True, return_dict_in_generate=True)
    return out.sequences, torch.stack(out.logits, dim=1)  # [B, n, V]


def _hooks(model):
    return sum(len(layer._forward_hooks) for layer in decoder_layers(model))


# ---- the hook point and steer ------------------------------------------------------------------
def test_decoder_layers_resolved_and_unresolved(model):
    assert len(decoder_layers(model)) == LAYERS and hidden_size(model) == D
    with pytest.raises(AttributeError, match=r"decoder layers of Sequential.*get_decoder"):
        decoder_layers(nn.Sequential(nn.Linear(2, 2)))


def test_alpha_zero_is_exact_and_alpha_changes_logits(model):
    ids, mask = _prompt()
    base = _logits(model, ids, mask)
    with steer(model, 1, _vec(), 0.0, mask):
        assert torch.equal(_logits(model, ids, mask), base)
    with steer(model, 1, _vec(), 4.0, mask):
        assert not torch.allclose(_logits(model, ids, mask), base)
    assert torch.equal(_logits(model, ids, mask), base)


def test_positions_generated_leaves_prefill_alone(model):
    ids, mask = _prompt()
    _, base = _generate(model, ids, mask)
    with steer(model, 1, _vec(), 4.0, mask, positions="generated") as handle:
        _, steered = _generate(model, ids, mask)
    assert handle.calls == 4  # one prefill + three decode steps
    assert torch.equal(steered[:, 0], base[:, 0])  # first token comes from the prefill
    assert not torch.allclose(steered[:, 1:], base[:, 1:])


def test_generation_without_cache_and_with_beams(model):
    """use_cache=False re-runs the whole sequence each step; beams expand each row k times."""
    ids, mask = _prompt()
    v = _vec(rows=2)
    with steer(model, 1, v, 3.0, mask, positions="generated"):
        seqs, cached = _generate(model, ids, mask)
    with steer(model, 1, v, 3.0, mask, positions="generated"), torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                             use_cache=False, output_logits=True, return_dict_in_generate=True)
    assert torch.equal(out.sequences, seqs)
    assert torch.allclose(torch.stack(out.logits, dim=1), cached, atol=1e-4)
    with steer(model, 1, v, 3.0, mask) as handle, torch.no_grad():
        beams = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, num_beams=2, do_sample=False)
    assert beams.shape == (2, 10) and handle.calls == 3


def test_positions_from_last_prompt(model):
    ids, mask = _prompt()
    base = _logits(model, ids, mask)
    with steer(model, 1, _vec(), 4.0, mask, positions="from_last_prompt"):
        steered = _logits(model, ids, mask)
    assert torch.equal(steered[:, :-1], base[:, :-1])  # causal: earlier positions are untouched
    assert not torch.allclose(steered[:, -1], base[:, -1])


def test_padding_positions_are_never_touched(model):
    ids, mask = _prompt(batch=2, pad=(3, 1))
    v, alpha = _vec(rows=2), torch.tensor([2.0, -1.5])
    with capture(model, 0) as plain:
        _logits(model, ids, mask)
    with steer(model, 0, v, alpha, mask), capture(model, 0) as steered:
        _logits(model, ids, mask)
    before, after = plain.first, steered.first
    pad = mask == 0
    assert torch.equal(after[pad], before[pad])
    expected = before + (alpha[:, None] * v)[:, None, :]
    assert torch.allclose(after[~pad], expected[~pad], atol=1e-6)


def test_per_row_vectors_equal_single_runs(model):
    ids, mask = _prompt(batch=4, pad=(0, 0, 0, 0))
    v, alpha = _vec(rows=4), torch.tensor([1.0, 2.0, 3.0, -2.0])
    with steer(model, 2, v, alpha, mask) as handle:
        seqs, logits = _generate(model, ids, mask)
    assert handle.vectors.shape == (4, D) and handle.shift_norms.shape == (4,)
    for row in range(4):
        with steer(model, 2, v[row], float(alpha[row]), mask[row : row + 1]):
            s1, l1 = _generate(model, ids[row : row + 1], mask[row : row + 1])
        assert torch.equal(s1[0], seqs[row])
        assert torch.allclose(l1[0], logits[row], atol=1e-5)


def test_hooks_removed_on_exit_and_on_error(model):
    ids, mask = _prompt()
    with steer(model, 1, _vec(), 1.0, mask), capture(model, 1):
        assert _hooks(model) == 2
    assert _hooks(model) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with steer_with_module(model, 1, SteeringMLP(D, 4), 1.0, mask):
            raise RuntimeError("boom")
    assert _hooks(model) == 0
    with pytest.raises(ValueError, match="first forward"):  # a mask of another prompt: loud
        with steer(model, 1, _vec(), 1.0, mask[:, :5]):
            _logits(model, ids, mask)
    assert _hooks(model) == 0


def test_validation_errors(model):
    _, mask = _prompt()
    with pytest.raises(IndexError, match=r"valid decoder layers are 0\.\.2"):
        with steer(model, 3, _vec(), 1.0, mask):
            pass
    with pytest.raises(ValueError, match=r"expected \[32\] or \[B, 32\]"):
        with steer(model, 0, torch.zeros(D + 1), 1.0, mask):
            pass
    with pytest.raises(ValueError, match="batch size mismatch"):
        with steer(model, 0, _vec(rows=3), 1.0, mask):
            pass
    with pytest.raises(ValueError, match="finite"):
        with steer(model, 0, _vec(), float("nan"), mask):
            pass
    with pytest.raises(ValueError, match="positions must be one of"):
        with steer(model, 0, _vec(), 1.0, mask, positions="prompt"):
            pass
    assert _hooks(model) == 0


def test_capture_matches_hf_hidden_states(model):
    ids, mask = _prompt()
    with torch.no_grad(), capture(model, 1) as cap:
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert cap.first.shape == (2, 7, D)
    assert torch.equal(cap.first, out.hidden_states[2])  # output of layer l is hidden_states[l + 1]
    assert torch.equal(cap.last_token(mask), cap.first[:, -1])


class _Counting(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.inputs = inner, []

    def forward(self, x):
        self.inputs.append(x.clone())
        return self.inner(x)


def test_steer_with_module_reads_last_prompt_token_once(model):
    ids, mask = _prompt()
    torch.manual_seed(3)
    counting = _Counting(SteeringMLP(D, 8))
    with capture(model, 1, first_only=True) as plain:
        _, base = _generate(model, ids, mask)
    with steer_with_module(model, 1, counting, 3.0, mask) as handle:
        _, steered = _generate(model, ids, mask, n=4)
    assert len(counting.inputs) == 1  # once, at prefill, for the whole generation
    assert torch.equal(counting.inputs[0], plain.first[:, -1])  # unsteered last prompt token
    assert torch.allclose(handle.vectors, counting.inner(plain.first[:, -1]).detach())
    assert handle.norms.shape == (2,)
    with steer(model, 1, handle.vectors, 3.0, mask):  # the same shift as a fixed vector
        _, fixed = _generate(model, ids, mask, n=4)
    assert torch.allclose(steered, fixed, atol=1e-5)
    assert not torch.allclose(steered[:, 1:], base[:, 1:])


def test_steering_with_an_image_prompt(model):
    """Prefill of an image prompt: the hidden length equals the (image-expanded) input_ids."""
    torch.manual_seed(5)
    if isinstance(model, LlavaForConditionalGeneration):
        ids = torch.tensor([[1, 5] + [IMAGE_TOKEN] * 4 + [7, 8, 9]])
        extra = {"pixel_values": torch.randn(1, 3, 28, 28)}
    else:
        ids = torch.tensor([[1, 122, IMAGE_TOKEN, 123, 7, 8, 9]])
        extra = {"pixel_values": torch.randn(4, 3 * 2 * 14 * 14), "image_grid_thw": torch.tensor([[1, 2, 2]])}
    mask = torch.ones_like(ids)
    with torch.no_grad():
        base = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False,
                              output_logits=True, return_dict_in_generate=True, **extra)
        with steer_with_module(model, 1, SteeringMLP(D, 8), 5.0, mask, positions="generated") as handle:
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True, **extra)
    assert handle.calls == 3 and handle.vectors.shape == (1, D)
    assert torch.equal(out.logits[0], base.logits[0])
    assert not torch.allclose(out.logits[2], base.logits[2])


# ---- the steering MLP --------------------------------------------------------------------------
def test_mlp_training_reduces_loss_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=g)
    y = 0.5 * x @ torch.randn(16, 16, generator=g)
    settings = TrainSettings(lr=3e-3, epochs=30, batch_size=32, seed=7)
    mlp, history = train_mlp(x, y, hidden=16, settings=settings, progress=False)
    assert len(history) == 30 and history[-1] < 0.5 * history[0]
    mlp2, history2 = train_mlp(x, y, hidden=16, settings=settings, progress=False)
    assert history == history2
    assert all(torch.equal(a, b) for a, b in zip(mlp.state_dict().values(), mlp2.state_dict().values()))
    _, history3 = train_mlp(x, y, hidden=16, settings=TrainSettings(lr=3e-3, epochs=30, batch_size=32, seed=8),
                            progress=False)
    assert history3 != history
    _, l2s = train_mlp(x, y, hidden=16, settings=TrainSettings(loss="l2s", lr=3e-3, epochs=5), progress=False)
    assert len(l2s) == 5


def test_mlp_training_errors():
    with pytest.raises(ValueError, match="loss must be one of"):
        TrainSettings(loss="huber")
    with pytest.raises(ValueError, match="lr"):
        TrainSettings(lr=0.0)
    x = torch.randn(64, 8)
    with pytest.raises(TrainingDiverged, match="epoch"):
        train_mlp(x, 1e30 * torch.randn(64, 8), hidden=4, settings=TrainSettings(lr=1e30, epochs=3),
                  progress=False)


# ---- the steering file -------------------------------------------------------------------------
def _file(method="amps", folds=2, hidden=8):
    ids = [f"mc2_{i}" for i in range(10)]
    parts = [ids[k::folds] for k in range(folds)]
    out = []
    for k, held in enumerate(parts):
        fit = [i for i in ids if i not in held]
        if method == "mean":
            vector = torch.randn(D)
            tensors = {"vision.vector": vector, "text.vector": -vector}
        else:
            tensors = {f"{d}.{k2}": v.clone() for d in ("vision", "text")
                       for k2, v in SteeringMLP(D, hidden).state_dict().items()}
        out.append(Fold(name=f"fold{k}", fit_ids=fit, held_out_ids=held, tensors=tensors,
                        hidden=None if method == "mean" else hidden))
    return SteeringFile(method=method, layer=1, hidden_size=D, num_layers=LAYERS, model_id="Qwen/Tiny-VL",
                        architecture="Qwen2_5_VLForConditionalGeneration", folds=out,
                        settings={"train": TrainSettings().to_dict(), "beta": 0.5},
                        anchors={"color": 0.41}, data_hash="abc")


@pytest.mark.parametrize("method", ["mean", "l2s", "amps"])
def test_steering_file_round_trip_without_pickle(tmp_path, monkeypatch, method):
    original = _file(method)
    path = tmp_path / "steer.safetensors"
    digest = original.save(path)
    assert digest == sha256(path) and len(digest) == 64

    def refuse(*args, **kwargs):
        raise AssertionError("a steering file must load without pickle")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = SteeringFile.load(path)
    for field in ("method", "layer", "hidden_size", "num_layers", "model_id", "architecture", "settings",
                  "anchors", "data_hash", "versions", "created"):
        assert getattr(loaded, field) == getattr(original, field), field
    for a, b in zip(original.folds, loaded.folds):
        assert (a.name, a.fit_ids, a.held_out_ids, a.hidden) == (b.name, b.fit_ids, b.held_out_ids, b.hidden)
        assert a.tensors.keys() == b.tensors.keys()
        assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    with safe_open(str(path), framework="pt") as handle:  # plain safetensors + JSON
        meta = json.loads(handle.metadata()["amps_eval"])
    assert meta["method"] == method and set(load_file(str(path))) == {
        f"fold{k}.{name}" for k, f in enumerate(original.folds) for name in f.tensors}
    if method == "mean":
        assert torch.equal(loaded.vector(0), original.folds[0].tensors["vision.vector"])
        assert torch.equal(loaded.vector(0, "text"), -original.folds[0].tensors["vision.vector"])
    else:
        x = torch.randn(3, D)
        assert torch.allclose(loaded.module(1)(x), original.module(1)(x))
        assert torch.allclose(loaded.module(1, "text")(x), original.module(1, "text")(x))


def test_steering_file_mismatch_refused(model, tmp_path):
    path = tmp_path / "s.safetensors"
    _file("amps").save(path)
    sf = SteeringFile.load(path)
    arch = type(model).__name__
    sf.architecture = arch
    sf.check_compatible(model.config, "Qwen/Tiny-VL", "amps", architecture=arch)  # fits
    with pytest.raises(SteeringFileMismatch, match=r"(?s)method: the run uses 'l2s'.*'amps'.*amps-eval fit"):
        sf.check_compatible(model.config, "Qwen/Tiny-VL", "l2s", architecture=arch)
    cfg = type(model.config).from_dict(model.config.to_dict())
    cfg.get_text_config().hidden_size = 64
    cfg.get_text_config().num_hidden_layers = 5
    with pytest.raises(SteeringFileMismatch) as err:
        sf.check_compatible(cfg, "Qwen/Tiny-VL", "amps", architecture="OtherForConditionalGeneration")
    message = str(err.value)
    for part in ("hidden size: the model has 64, the file 32", "decoder layers: the model has 5, the file 3",
                 "architecture: the model is OtherForConditionalGeneration", str(path), "refit"):
        assert part in message
    with pytest.warns(SteeringFileWarning, match="fitted on 'Qwen/Tiny-VL'"):
        sf.check_compatible(model.config, "someone/Other-VL", "amps", architecture=arch)
    import warnings

    with warnings.catch_warnings():  # a local path of the same model is not worth a warning
        warnings.simplefilter("error")
        sf.check_compatible(model.config, "/models/Tiny-VL/", "amps", architecture=arch)


def test_fold_for_never_returns_a_fold_that_saw_the_item():
    sf = _file("mean", folds=3)
    for i in range(10):
        item = f"mc2_{i}"
        choice = sf.fold_choice(item)
        assert item not in sf.folds[choice.index].fit_ids and item in sf.folds[choice.index].held_out_ids
        assert not choice.in_sample and sf.fold_for(item) == choice.index
    assert not sf.fold_choice("unknown").in_sample
    single = SteeringFile(method="mean", layer=0, hidden_size=D, num_layers=LAYERS, model_id="m", architecture="A",
                          folds=[Fold("all", [f"mc2_{i}" for i in range(10)], [], {"vision.vector": torch.zeros(D), "text.vector": torch.zeros(D)})])
    assert single.fold_choice("mc2_3").in_sample and single.fold_for("mc2_3") == 0
    with pytest.raises(ValueError, match="expected tensors"):
        SteeringFile(method="mean", layer=0, hidden_size=D, num_layers=LAYERS, model_id="m", architecture="A",
                     folds=[Fold("all", [], [], {"vision.vector": torch.zeros(D + 1), "text.vector": torch.zeros(D + 1)})])


@pytest.mark.parametrize("positions", ["all", "generated", "from_last_prompt"])
def test_relative_shift_equals_independent_computation(model, positions):
    """Effective strength = ||alpha v|| / ||h|| averaged over the steered positions, h unsteered.

    A capture registered before the steering hook sees every call's unsteered output; the steered
    positions are rebuilt here from the mask and ``positions``, independently of the tracker."""
    ids, mask = _prompt(pad=(2, 0))
    v, alpha, n = _vec(rows=2), torch.tensor([1.5, -0.5]), 3
    with capture(model, 1) as seen, steer(model, 1, v, alpha, mask, positions=positions) as handle:
        _generate(model, ids, mask, n=n)
    prefill, decode = seen.outputs[0], seen.outputs[1:]
    assert len(decode) == n - 1
    for row in range(2):
        real = mask[row].bool()
        last = int(real.nonzero().max())
        prompt_steered = {"all": real, "generated": torch.zeros_like(real),
                          "from_last_prompt": torch.arange(len(real)) == last}[positions]
        norms = [prefill[row, i].norm() for i in range(len(real)) if prompt_steered[i]]
        norms += [step[row, 0].norm() for step in decode]
        expected = torch.stack([(alpha[row] * v[row]).norm() / h for h in norms]).mean()
        assert handle.relative_shift[row].item() == pytest.approx(expected.item(), rel=1e-5)


def test_relative_shift_of_module_steering_uses_its_prediction(model):
    ids, mask = _prompt()
    torch.manual_seed(5)
    module = SteeringMLP(D, 8)
    with capture(model, 1) as seen, steer_with_module(model, 1, module, 2.0, mask) as handle:
        _generate(model, ids, mask, n=2)
    h = torch.cat([seen.outputs[0], *seen.outputs[1:]], dim=1)
    steered = torch.cat([mask.bool(), torch.ones(2, 1, dtype=torch.bool)], dim=1)
    for row in range(2):
        inverse = (1 / h[row].norm(dim=-1))[steered[row]].mean()
        assert handle.relative_shift[row].item() == pytest.approx((2.0 * handle.norms[row] * inverse).item(), rel=1e-5)
