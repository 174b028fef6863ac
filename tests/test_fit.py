"""`amps-eval fit` and `amps-eval mcs` on the tiny models and the generated MC2 set (24 items)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from transformers import AutoConfig

import amps_eval.encoding as encoding
import amps_eval.extract as extract_module
import amps_eval.fit as fit_module
import amps_eval.fit_data as fit_data
from amps_eval.cli import main
from amps_eval.fit import FitSettings, amps_targets, category_anchors, fit, split_folds
from amps_eval.mcs_run import run_mcs
from amps_eval.plugin import wrapper_class
from amps_eval.steering.file import SteeringFile
from amps_eval.steering.hooks import capture
from amps_eval.mcs.score import MCSSettings
from amps_eval.steering.module import TrainSettings

LAYER = 1
TRAIN = TrainSettings(epochs=5, lr=1e-3, batch_size=8)
MCS = MCSSettings(sigmas=(0.1,), draws=1)
MODELS = {"qwen": ("amps_qwen", "tiny_qwen_path"), "llava": ("amps_llava", "tiny_llava_path"),
          "qwen2": ("amps_qwen2", "tiny_qwen2_path")}
FITS = [("qwen", "mean"), ("qwen", "l2s"), ("qwen", "amps"), ("llava", "mean"), ("llava", "amps"), ("qwen2", "mean"),
        ("qwen2", "amps")]


def settings_for(request, arch, method, data, **overrides):
    model, fixture = MODELS[arch]
    base = dict(model=model, pretrained=str(request.getfixturevalue(fixture)), method=method, layer=LAYER, hidden=8,
                train=TRAIN, mcs=MCS, batch_size=5, device="cpu", data=str(data))
    return FitSettings(**{**base, **overrides})


@pytest.fixture(scope="module")
def fits(request, synthetic_mc2_dir, tmp_path_factory):
    """Fit once per (arch, method) on demand; one extraction cache per arch, shared by its methods."""
    root = tmp_path_factory.mktemp("fits")
    done: dict[tuple[str, str], tuple[FitSettings, object]] = {}

    def get(arch, method, **overrides):
        key = (arch, method, tuple(sorted(overrides.items())))
        if key not in done:
            s = settings_for(request, arch, method, synthetic_mc2_dir, cache_dir=str(root / f"cache-{arch}"), **overrides)
            name = f"{arch}-{method}-{len(done)}.safetensors"
            done[key] = (s, fit(s, root / name, progress=False), root / name)
        return done[key]

    return get


def independent_d(cls_name, path, data, ids):
    """h[P_v] - h[P_t] per item, captured here one item at a time (no padding) with the wrapper's encoder."""
    from amps_eval.mc2.docs import TaskSpec, task_docs
    from amps_eval.mc2.prompt import doc_prompt
    from amps_eval.mc2.source import load_mc2, resolve_source
    from amps_eval.methods.prompts import build_conversation

    wrapper = wrapper_class(cls_name)(pretrained=str(path), device="cpu", batch_size=1)
    docs = task_docs(load_mc2(resolve_source({"AMPS_MC2_DATA": str(data)})), TaskSpec("vision"))
    out = {}
    for doc in docs:
        h = {}
        for target in ("vision", "text"):
            # the fits' contrast prompts: the instruction appended after the question (AMPS Eq. 8)
            enc = wrapper.encode_turns([build_conversation("inst", doc_prompt(doc), [doc["image"].convert("RGB")], target,
                                                           style="appended")])
            with torch.no_grad(), capture(wrapper.model, LAYER, first_only=True, dtype=torch.float32) as cap:
                wrapper.model(**enc.inputs)
            h[target] = cap.last_token(enc.inputs["attention_mask"])[0]
        out[str(doc["mc2_id"])] = h["vision"] - h["text"]
    assert sorted(out) == sorted(ids)
    return out


@pytest.mark.parametrize("arch,method", FITS)
def test_fitted_files_load_and_cross_fit(fits, arch, method, request):
    settings, steering, path = fits(arch, method)
    loaded = SteeringFile.load(path)
    model_path = str(request.getfixturevalue(MODELS[arch][1]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded.check_compatible(AutoConfig.from_pretrained(model_path), model_path, method)
    assert loaded.method == method and loaded.layer == LAYER and loaded.num_layers == 4
    assert loaded.settings["folds"] == 2 and loaded.settings["train"]["epochs"] == 5 and loaded.settings["n_items"] == 24
    assert len(loaded.folds) == 2
    all_ids = set(loaded.folds[0].fit_ids) | set(loaded.folds[0].held_out_ids)
    assert len(all_ids) == 24
    held = [i for fold in loaded.folds for i in fold.held_out_ids]
    assert sorted(held) == sorted(all_ids), "held-out sets partition the items"
    for fold in loaded.folds:
        assert not set(fold.fit_ids) & set(fold.held_out_ids)
        assert set(fold.fit_ids) | set(fold.held_out_ids) == all_ids
    if method == "l2s":
        assert loaded.anchors == {}
    else:
        assert "__all__" in loaded.anchors and len(loaded.anchors) == 9
        assert all(0 <= v <= 1 for v in loaded.anchors.values())
        # per-fold anchors from each fold's own fit items (mean_mcs and AMPS scale with them), and the bounds
        assert sorted(loaded.settings["fold_anchors"]) == [f.name for f in loaded.folds]
        for fold in loaded.folds:
            assert loaded.settings["fold_anchors"][fold.name]["__all__"] != loaded.anchors["__all__"]
        assert loaded.settings["gamma_max"] == 4.0 and loaded.settings["anchor_floor"] == 0.01
    for k, fold in enumerate(loaded.folds):
        for name, tensor in steering.folds[k].tensors.items():
            assert torch.equal(tensor, fold.tensors[name])


@pytest.mark.parametrize("arch", ["qwen", "llava", "qwen2"])
def test_mean_vector_is_the_mean_instruction_difference(fits, arch, request, synthetic_mc2_dir):
    _, steering, _ = fits(arch, "mean")
    ids = steering.folds[0].fit_ids + steering.folds[0].held_out_ids
    d = independent_d(MODELS[arch][0], request.getfixturevalue(MODELS[arch][1]), synthetic_mc2_dir, ids)
    for k, fold in enumerate(steering.folds):
        expected = torch.stack([d[i] for i in fold.fit_ids]).mean(dim=0)
        torch.testing.assert_close(steering.vector(k, "vision"), expected, rtol=1e-4, atol=1e-5)
        assert torch.equal(steering.vector(k, "text"), -steering.vector(k, "vision"))


def test_l2s_text_module_is_the_negated_vision_module(fits):
    _, steering, _ = fits("qwen", "l2s")
    x = torch.randn(3, steering.hidden_size)
    for k in range(len(steering.folds)):
        vision, text = steering.module(k, "vision"), steering.module(k, "text")
        with torch.no_grad():
            assert torch.equal(text(x), -vision(x))


def test_amps_targets_pure():
    d = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    r_v = torch.tensor([0.75, 0.25])
    anchors = {"a": 0.5, "b": 0.5}
    for convention in ("prose", "literal"):
        assert torch.equal(amps_targets(d, r_v, ["a", "b"], anchors, 0.0, "vision", convention), 2 * d)
        assert torch.equal(amps_targets(d, r_v, ["a", "b"], anchors, 0.0, "text", convention), -2 * d)
    # toward the text: gamma = 1 + (r_v - mu) / mu -> 1.5 and 0.5
    torch.testing.assert_close(amps_targets(d, r_v, ["a", "b"], anchors, 1.0, "text"), -torch.tensor([[2.5], [1.5]]) * d)
    # toward the image, prose: reliance on the text 1 - r_v -> gamma 0.5 and 1.5; literal uses r_v
    torch.testing.assert_close(amps_targets(d, r_v, ["a", "b"], anchors, 1.0, "vision"), torch.tensor([[1.5], [2.5]]) * d)
    torch.testing.assert_close(amps_targets(d, r_v, ["a", "b"], anchors, 1.0, "vision", "literal"), torch.tensor([[2.5], [1.5]]) * d)
    with pytest.raises(ValueError, match="no anchor"):
        amps_targets(d, r_v, ["a", "c"], anchors, 1.0, "vision")
    assert category_anchors(r_v, ["a", "b"]) == {"__all__": 0.5, "a": 0.75, "b": 0.25}


def test_amps_beta0_trains_on_twice_the_difference(fits, monkeypatch):
    """amps_beta0 (beta = 0 -> gamma = 1): the vision module is train_mlp(h, 2d), the text one
    train_mlp(h, -2d), with L2S's recipe; the file says what it is."""
    import amps_eval.methods.amps as amps_method
    import amps_eval.methods.l2s as l2s_method

    calls = []
    real = amps_method.train_mlp

    def spy(x, y, hidden, settings, progress):
        result = real(x, y, hidden, settings, progress)
        calls.append((x.clone(), y.clone(), result[0]))
        return result

    monkeypatch.setattr(amps_method, "train_mlp", spy)
    monkeypatch.setattr(l2s_method, "train_mlp", spy)
    _, l2s, _ = fits("llava", "l2s")
    _, amps, _ = fits("llava", "amps_beta0")
    assert amps.method == "amps_beta0" and amps.settings["beta"] == 0.0
    assert len(calls) == 2 + 4  # l2s: one module per fold; amps_beta0: one per fold and direction
    for k in range(2):
        x, d, _ = calls[k]
        for j, sign in enumerate((1, -1)):
            x_a, y_a, module = calls[2 + 2 * k + j]
            assert torch.equal(x_a, x) and torch.equal(y_a, sign * 2 * d)
            direction = ("vision", "text")[j]
            for name, t in module.state_dict().items():
                assert torch.equal(amps.folds[k].tensors[f"{direction}.{name}"], t)


def test_beta_is_fixed_by_the_ablation_and_refused_at_zero_for_amps(request, synthetic_mc2_dir):
    with pytest.raises(ValueError, match="method=amps_beta0 fixes beta at 0"):
        settings_for(request, "qwen", "amps_beta0", synthetic_mc2_dir, beta=1.0)
    with pytest.raises(ValueError, match="use --method amps_beta0"):
        settings_for(request, "qwen", "amps", synthetic_mc2_dir, beta=0.0)
    assert settings_for(request, "qwen", "amps", synthetic_mc2_dir).fit_beta == 1.0
    assert settings_for(request, "qwen", "amps", synthetic_mc2_dir, beta=0.5).to_dict()["beta"] == 0.5


def test_interrupted_fit_resumes_without_recomputing(request, synthetic_mc2_dir, tmp_path, monkeypatch):
    settings = settings_for(request, "qwen", "amps", synthetic_mc2_dir, limit=8, batch_size=2, cache_dir=str(tmp_path / "c"))
    forwards, batch_rows, mcs_rows = [], [], []
    real_batch, real_mcs, real_load = extract_module.item_batch, extract_module.mcs_prefilled, encoding.load_encoder

    def load_encoder(*args, **kwargs):
        encoder = real_load(*args, **kwargs)
        encoder.model.register_forward_pre_hook(lambda *_: forwards.append(1))
        return encoder

    def batch(encoder, conversations, layer, with_mcs, fail_at=None):
        batch_rows.append(len(conversations["none"]))
        if len(batch_rows) == fail_at:
            raise RuntimeError("interrupted")
        return real_batch(encoder, conversations, layer, with_mcs)

    def mcs(encoder, passed, ids, s, prompt, rows, fail_at=None):
        mcs_rows.append(len(ids))
        if len(mcs_rows) == fail_at:
            raise RuntimeError("interrupted")
        return real_mcs(encoder, passed, ids, s, prompt, rows)

    monkeypatch.setattr(encoding, "load_encoder", load_encoder)
    monkeypatch.setattr(extract_module, "item_batch", lambda *a: batch(*a, fail_at=2))  # in batch 2
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(settings, tmp_path / "a.safetensors", progress=False)
    monkeypatch.setattr(extract_module, "item_batch", lambda *a: batch(*a))
    monkeypatch.setattr(extract_module, "mcs_prefilled", lambda *a: mcs(*a, fail_at=2))  # after 1 more MCS batch
    batch_rows.clear(), mcs_rows.clear()
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(settings, tmp_path / "a.safetensors", progress=False)
    assert batch_rows == [2, 2], "the first batch (hidden states and MCS) came from the cache"
    monkeypatch.setattr(extract_module, "mcs_prefilled", lambda *a: mcs(*a))
    batch_rows.clear(), mcs_rows.clear()
    printed = []
    monkeypatch.setattr("builtins.print", lambda *a, **k: printed.append(" ".join(map(str, a))))
    first = fit(settings, tmp_path / "a.safetensors", progress=False)
    assert batch_rows == [2, 2] and mcs_rows == [2, 2], "items 5-6 lacked their MCS, items 7-8 everything"
    assert "on 8 items (2 extracted, 6 from the cache; MCS computed for 4)" in printed[0]
    forwards.clear(), batch_rows.clear(), mcs_rows.clear()
    second = fit(settings, tmp_path / "b.safetensors", progress=False)
    assert forwards == [] and batch_rows == [] and mcs_rows == [], "a complete cache runs no forward"
    assert first.anchors == second.anchors and first.data_hash == second.data_hash
    for a, b in zip(first.folds, second.folds):
        assert a.tensors.keys() == b.tensors.keys() and all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


def test_bad_settings_are_clear_errors(request, synthetic_mc2_dir, tmp_path):
    with pytest.raises(ValueError, match=r"layer 99 is out of range .* valid layers are 0\.\.3"):
        fit(settings_for(request, "qwen", "mean", synthetic_mc2_dir, layer=99), tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="method='stear'"):
        settings_for(request, "qwen", "stear", synthetic_mc2_dir)
    with pytest.raises(ValueError, match="folds=30 needs at least 30 items"):
        split_folds([str(i) for i in range(24)], ["a"] * 24, 30, 0)


def test_non_finite_hidden_states_name_the_item(request, synthetic_mc2_dir, tmp_path, monkeypatch):
    from amps_eval.shared_prefix import PrefixPasses, VariantPass

    def passes(encoder, conversations, layer, with_mcs):
        out = torch.zeros(len(conversations["none"]), 64)
        out[-1, 0] = float("nan")
        return PrefixPasses({kind: VariantPass(out) for kind in conversations}, True, [1] * len(out))

    monkeypatch.setattr(extract_module, "item_batch", passes)
    settings = settings_for(request, "qwen", "l2s", synthetic_mc2_dir, limit=2, batch_size=2, cache_dir=str(tmp_path))
    first_two = [str(i) for i in fit_data.load_items(synthetic_mc2_dir, limit=2).ids]
    with pytest.raises(ValueError, match=rf"non-finite hidden states .* mc2_id=\['{first_two[1]}'\]"):
        fit(settings, tmp_path / "x.safetensors", progress=False)


def test_split_folds_is_stratified_and_deterministic():
    ids = [str(i) for i in range(10)]
    cats = ["a"] * 4 + ["b"] * 6
    parts = split_folds(ids, cats, 2, seed=3)
    assert parts == split_folds(list(reversed(ids)), list(reversed(cats)), 2, seed=3)
    for _, fit_ids, held in parts:
        assert sum(cats[int(i)] == "a" for i in held) == 2 and len(held) == 5
    assert split_folds(ids, cats, 1, seed=0) == [("all", ids, [])]


def test_run_mcs_writes_one_line_per_item_and_a_summary(tiny_llava_path, synthetic_mc2_dir, tmp_path):
    out = tmp_path / "mcs.jsonl"
    records = run_mcs("amps_llava", str(tiny_llava_path), out, data=synthetic_mc2_dir, settings=MCS, batch_size=6,
                      device="cpu", progress=False)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == records and len(lines) == 24 and len({r["mc2_id"] for r in lines}) == 24
    assert all(0 <= r["r_v"] <= 1 and r["prompt"] == "none" for r in lines)
    summary = json.loads((tmp_path / "mcs.summary.json").read_text())
    assert len(summary["categories"]) == 8 and summary["overall"]["r_v"]["n"] == 24
    assert sum(c["r_v"]["n"] for c in summary["categories"].values()) == 24
    meta = json.loads((tmp_path / "mcs.jsonl.meta.json").read_text())
    assert meta["mcs"]["draws"] == 1 and meta["prompt"] == "none" and meta["n_items"] == 24


def test_cli_fit_and_mcs(tiny_llava_path, synthetic_mc2_dir, tmp_path, capsys):
    out = tmp_path / "l2s.safetensors"
    common = ["--model", "amps_llava", "--pretrained", str(tiny_llava_path), "--data", str(synthetic_mc2_dir),
              "--limit", "6", "--device", "cpu"]
    assert main(["fit", *common, "--method", "l2s", "--layer", "2", "--out", str(out), "--hidden", "8",
                 "--epochs", "2", "--lr", "1e-3", "--folds", "1"]) == 0
    loaded = SteeringFile.load(out)
    assert loaded.settings["limit"] == 6 and loaded.settings["n_items"] == 6 and loaded.layer == 2
    assert [f.name for f in loaded.folds] == ["all"] and loaded.folds[0].held_out_ids == []
    assert "fitted l2s at layer 2 on 6 items" in capsys.readouterr().out
    assert main(["fit", *common, "--method", "mean", "--layer", "14", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "valid layers are 0..3" in capsys.readouterr().err
    assert main(["mcs", *common, "--prompt", "visual", "--out", str(tmp_path / "m.jsonl"), "--draws", "1",
                 "--sigmas", "0.1"]) == 0
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    assert len(lines) == 6 and json.loads(lines[0])["prompt"] == "visual"


def test_cli_fit_and_mcs_qwen2(tiny_qwen2_path, synthetic_mc2_dir, tmp_path, capsys):
    """The third family through `amps-eval fit` and `amps-eval mcs` (its adapter and tiny model only)."""
    out = tmp_path / "amps.safetensors"
    common = ["--model", "amps_qwen2", "--pretrained", str(tiny_qwen2_path), "--data", str(synthetic_mc2_dir),
              "--limit", "6", "--device", "cpu", "--draws", "1", "--sigmas", "0.1"]
    assert main(["fit", *common, "--method", "amps", "--layer", "1", "--out", str(out), "--hidden", "8",
                 "--epochs", "2", "--lr", "1e-3", "--folds", "1"]) == 0
    loaded = SteeringFile.load(out)
    assert loaded.architecture == "Qwen2VLForConditionalGeneration" and loaded.settings["n_items"] == 6
    assert loaded.settings["hidden"] == 8 and loaded.layer == 1
    assert main(["mcs", *common, "--out", str(tmp_path / "m.jsonl")]) == 0
    lines = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and all(0 <= r["r_v"] <= 1 for r in lines)
    meta = json.loads((tmp_path / "m.jsonl.meta.json").read_text())
    assert meta["model"] == "amps_qwen2"
