"""`amps_auto` on tiny random checkpoints of 12 vision-language families, built offline here
(`amps_eval.tiny_vlms`, `amps_eval.tiny_models`), through the generic adapter alone.

For each family: the lmms-eval wrapper answers MC2 requests and batch 2 equals batch 1; a fit of mean,
L2S and AMPS (one shared extraction cache); ``alpha=0`` equals ``method=none``; a steered run; and the
MCS equals an independent autograd computation (prefill without the last token by the model's own
forward, explicit noise tensors on a clone of the cache, ``torch.autograd.grad``). A cross-attention
model (Mllama) and a hybrid one (Qwen3.5) get the MCS refusal naming the layer and its type.
Mistral3 and SmolVLM go through their family files' processor hooks; Llama 4, whose image processor
needs torchvision, is refused naming the extra, and its patched model and MCS are checked on
hand-built inputs. Each checkpoint is built and loaded once per session.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from amps_eval.mcs.score import MCSSettings, compute_mcs, sample_seed
from amps_eval.tiny_models import tiny_image, tiny_model
from amps_eval.tiny_vlms import build_tiny_vlm

LEGACY = {"llava": "llava", "qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_5_vl"}  # hub-faithful builders
FAMILIES = ["llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "gemma3", "paligemma",
            "idefics3", "smolvlm", "internvl", "mistral3"]
NEEDS = {"smolvlm": ("num2words", "its processor imports num2words (in the lock)")}
LAYER = 1


def _missing(family: str) -> str | None:
    module, why = NEEDS.get(family, (None, None))
    return why if module and importlib.util.find_spec(module) is None else None


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory, tiny_models_root):
    """family -> tiny checkpoint folder, built on first use."""
    built: dict = {}

    def get(family: str):
        if family not in built:
            if family in LEGACY:
                built[family] = tiny_model(LEGACY[family], tiny_models_root, seed=0)
            else:
                built[family] = build_tiny_vlm(family, tmp_path_factory.mktemp(f"tiny-{family}"), seed=0)
        return built[family]

    return get


@pytest.fixture(scope="session")
def loaded(checkpoints):
    """family -> (settings, LoadedModel) of `amps_auto`, loaded once."""
    from amps_eval.model_wrappers.registered import AmpsAuto

    cache: dict = {}

    def get(family: str):
        reason = _missing(family)
        if reason:
            pytest.skip(f"{family}: {reason} (not installed here)")
        if family not in cache:
            path = str(checkpoints(family))
            settings = AmpsAuto.settings_class.from_model_args(pretrained=path, device="cpu", dtype="float32")
            cache[family] = (path, AmpsAuto.load_checkpoint(settings))
        return cache[family]

    return get


def _wrapper(loaded_model, path, task_dict, **model_args):
    from amps_eval.model_wrappers.registered import AmpsAuto

    wrapper = AmpsAuto(loaded=loaded_model, pretrained=path, device="cpu", dtype="float32", **model_args)
    wrapper.task_dict = task_dict
    return wrapper


@pytest.fixture(scope="session")
def fitted(loaded, synthetic_mc2_dir, tmp_path_factory):
    """family -> {method: steering file} of mean, l2s and amps fitted on 4 items (one extraction)."""
    from amps_eval.fit import FitSettings, fit
    from amps_eval.steering.module import TrainSettings

    cache: dict = {}

    def get(family: str):
        if family not in cache:
            path, _ = loaded(family)
            out = tmp_path_factory.mktemp(f"fit-{family}")
            files = {}
            for method in ("mean", "l2s", "amps"):
                settings = FitSettings(model="amps_auto", pretrained=path, method=method, layer=LAYER, folds=1, hidden=8,
                                       train=TrainSettings(epochs=2), mcs=MCSSettings(sigmas=(0.1,), draws=2),
                                       device="cpu", dtype="float32", data=synthetic_mc2_dir, cache_dir=out / "cache",
                                       limit=4)
                files[method] = out / f"{method}.safetensors"
                fit(settings, files[method], progress=False)
            cache[family] = files
        return cache[family]

    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_wrapper_batches_and_steering(family, loaded, fitted, task_dict):
    from wrapper_helpers import requests_for

    path, model = loaded(family)
    requests = requests_for(task_dict, "mc2_visual", n=2, max_new_tokens=2)
    one = _wrapper(model, path, task_dict, batch_size=1).generate_until(requests)
    two = _wrapper(model, path, task_dict, batch_size=2).generate_until(requests)
    assert one == two and len(one) == 2 and all(isinstance(a, str) for a in one)
    files = fitted(family)
    for method in ("mean", "l2s", "amps"):
        assert files[method].is_file()
    zero = _wrapper(model, path, task_dict, batch_size=2, method="mean", steering=str(files["mean"]), alpha=0)
    assert zero.generate_until(requests) == one
    steered = _wrapper(model, path, task_dict, batch_size=2, method="amps", steering=str(files["amps"]), alpha=4)
    answers = steered.generate_until(requests)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def _seq_keys(inputs: dict, length: int) -> list[str]:
    return [k for k, v in inputs.items() if torch.is_tensor(v) and v.dim() == 2 and v.shape[1] == length
            and k != "pixel_values"]


def direct_mcs(model, single: dict, vision: torch.Tensor, settings: MCSSettings, sample_id: str,
               prefix_lm: bool = False):
    """(C_V, C_T) of one unpadded sample, computed independently of amps_eval.mcs: the model's own
    forward for the prefill without the last token (its own positions), the documented noise drawn
    here on a clone of the cut cache, the last token forward and ``torch.autograd.grad``.

    ``prefix_lm`` (PaliGemma): the prompt is one bidirectional prefix, so the earlier tokens' K/V saw
    the last prompt token; the MCS perturbs the cache of the whole prompt cut before its last token,
    at positions ``cumsum(attention_mask) - 1`` (PaliGemma's own start at 1: the rope is relative, so
    the logits agree, but the rotated keys the noise is added to are one position apart), and so does
    this reference (docs/models.md)."""
    from transformers.cache_utils import DynamicCache

    ids = single["input_ids"]
    t = ids.shape[1]
    seq = _seq_keys(single, t)
    cut = {k: (v[:, :-1] if k in seq else v) for k, v in single.items()}
    inner = getattr(model, "model", model)
    own = {}
    if prefix_lm:  # amps-eval's positions (cumsum - 1), where PaliGemma's own are one higher (docs/models.md)
        own = {"position_ids": torch.arange(t)[None]}
    with torch.no_grad():
        full = model(**single, use_cache=True, **own)
        p_x = torch.softmax(full.logits[0, -1].double(), -1)
        if hasattr(inner, "rope_deltas"):
            inner.rope_deltas = None
        pre = model(**cut, use_cache=True)
    clean = [(layer.keys.clone(), layer.values.clone()) for layer in pre.cache.layers]
    if prefix_lm:  # the prompt attends to itself both ways: the cut cache of the whole prompt is the one
        clean = [(layer.keys[:, :, :-1].clone(), layer.values[:, :, :-1].clone()) for layer in full.cache.layers]
    last_pos = None
    if getattr(inner, "rope_deltas", None) is not None:  # mrope: the model's own offset of text positions
        last_pos = (torch.full((1, 1), t - 1) + inner.rope_deltas).view(1, 1, 1).expand(3, 1, 1)
        inner.rope_deltas = None
    if prefix_lm:
        last_pos = torch.full((1, 1), t - 1)
    last = {k: single[k][:, -1:] for k in seq if k not in ("input_ids", "attention_mask")}
    idx_of = {"vision": vision[0, :-1].nonzero().flatten(), "text": (~vision[0, :-1]).nonzero().flatten()}
    gen = torch.Generator().manual_seed(sample_seed(settings.seed, sample_id))
    widest = max(idx_of["vision"].numel(), idx_of["text"].numel())
    noise = {}
    for si in range(len(settings.sigmas)):
        for mi, mod in enumerate(("vision", "text")):
            for n in range(settings.draws):
                if settings.antithetic and n % 2 == 1:
                    noise[si, mi, n] = [-z for z in noise[si, mi, n - 1]]
                elif settings.common_sigmas and si > 0:
                    noise[si, mi, n] = noise[0, mi, n]
                elif settings.common_modalities and mi == 1:
                    noise[si, mi, n] = noise[si, 0, n]
                else:
                    width = widest if settings.common_modalities else idx_of[mod].numel()
                    noise[si, mi, n] = [torch.randn((c.shape[1], width, c.shape[3]), generator=gen)
                                        for kc, vc in clean for c in (kc, vc)]
    scores = {"vision": [], "text": []}
    for si, sigma in enumerate(settings.sigmas):
        for mi, mod in enumerate(("vision", "text")):
            idx = idx_of[mod]
            for n in range(settings.draws):
                deltas, cache = [], DynamicCache()
                zs = iter(noise[si, mi, n])
                for li, (kc, vc) in enumerate(clean):
                    pair = []
                    for c in (kc, vc):
                        z = next(zs)[:, : idx.numel()]
                        std = sigma * float(c[0][:, idx, :].std(unbiased=False)) if settings.relative else sigma
                        d = (std * z.to(c.dtype)).requires_grad_(True)
                        deltas.append(d)
                        pert = c.clone()
                        pert[0, :, idx, :] = pert[0, :, idx, :] + d
                        pair.append(pert)
                    cache.update(pair[0], pair[1], li)
                out = model(input_ids=ids[:, -1:], cache=cache, position_ids=last_pos, use_cache=True, **last)
                logp = torch.log_softmax(out.logits[0, -1].double(), -1)
                loss = -(p_x * logp).sum()
                grads = torch.autograd.grad(loss, deltas)
                gsq = sum(float(g.double().pow(2).sum()) for g in grads)
                scores[mod].append(gsq / max(float(loss.detach()), settings.eps))
    return sum(scores["vision"]) / len(scores["vision"]), sum(scores["text"]) / len(scores["text"])


@pytest.mark.parametrize("family", FAMILIES)
def test_mcs_matches_direct_autograd(family, loaded):
    from amps_eval.encoding import PromptEncoder
    from amps_eval.families import family as family_named
    from amps_eval.methods.prompts import Turn

    _, model = loaded(family)
    encoder = PromptEncoder(family_named("auto"), model.model, model.processor)
    encoded = encoder.encode_turns([[Turn("user", "Which shape is left of the circle?\nA. square",
                                          (tiny_image(64, 48, seed=2),))]])
    inputs, vision = encoded.inputs, encoded.vision_mask
    assert int(vision.sum()) > 0 and int(encoded.text_mask.sum()) > 0
    settings = MCSSettings(sigmas=(0.1, 0.3), draws=2, seed=3)
    net = model.model
    dtype = next(net.parameters()).dtype
    net.to(torch.float64)
    try:
        floats = {k: v.to(torch.float64) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inputs.items()}
        got = compute_mcs(net, floats, vision, ~vision & floats["attention_mask"].bool(), settings, sample_ids=["s"])
        c_v, c_t = direct_mcs(net, floats, vision, settings, "s", prefix_lm=family == "paligemma")
    finally:
        net.to(dtype)
    assert math.isclose(float(got.c_v[0]), c_v, rel_tol=1e-6), (family, float(got.c_v[0]), c_v)
    assert math.isclose(float(got.c_t[0]), c_t, rel_tol=1e-6), (family, float(got.c_t[0]), c_t)


class _ConfigOnly(torch.nn.Module):
    """A model of ``model_type`` as far as the MCS's check before any compute sees it: its config."""

    def __init__(self, model_type: str, **text) -> None:
        from transformers import AutoConfig

        super().__init__()
        self.config = AutoConfig.for_model(model_type, text_config={"hidden_size": 32, "num_attention_heads": 2,
                                                                    "vocab_size": 128, **text})

    def forward(self, **kwargs):
        raise AssertionError("the MCS ran a forward before refusing the model")


@pytest.mark.parametrize("model_type, text, match", [
    ("mllama", {"num_hidden_layers": 2, "cross_attention_layers": [1]}, r"layer 1 is a cross-attention layer"),
    ("qwen3_5", {"num_hidden_layers": 2, "layer_types": ["linear_attention", "full_attention"]},
     r"layer 0 is a 'linear_attention' layer"),
])
def test_mcs_refuses_models_without_kv_over_the_prompt(model_type, text, match):
    from amps_eval.anatomy import KVSupportError

    model = _ConfigOnly(model_type, **text)
    ids = torch.ones((1, 6), dtype=torch.long)
    vision = torch.zeros_like(ids, dtype=torch.bool)
    vision[0, 1] = True
    with pytest.raises(KVSupportError, match=match):
        compute_mcs(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, vision, ~vision)


def test_sliding_window_refused_only_when_shorter_than_the_prompt(checkpoints):
    from amps_eval.anatomy import kv_refusal
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(checkpoints("gemma3"))

    class Model:  # the refusal reads the config only
        pass

    model = Model()
    model.config = config
    assert kv_refusal(model, 100) is None  # window 512 covers the prompt: exact
    assert "layer 0 is a 'sliding_attention' layer with a window of 512 tokens" in kv_refusal(model, 600)


def test_mistral3_processor_expands_the_image_as_pixtral_does(loaded):
    """Without torchvision, Mistral3's processor (`amps_eval.families.mistral3`) writes what transformers'
    PixtralProcessor writes: one ``[IMG]`` per merged patch, rows closed by ``[IMG_BREAK]``, the last by
    ``[IMG_END]``, from the image size the image processor reports."""
    _, model = loaded("mistral3")
    processor = model.processor
    if importlib.util.find_spec("torchvision") is None:
        assert type(processor).__name__ == "PixtralPilProcessor"
    batch = processor(images=[[tiny_image(64, 40, seed=1)]], text=["a [IMG] b"], return_tensors="pt")
    height, width = (int(v) for v in batch["image_sizes"][0])
    merged = processor.patch_size * processor.spatial_merge_size
    rows, cols = height // merged, width // merged
    assert rows >= 1 and cols >= 1 and (rows, cols) != (1, 1)
    tok = processor.tokenizer
    want = ([tok.convert_tokens_to_ids("[IMG]")] * cols + [tok.convert_tokens_to_ids("[IMG_BREAK]")]) * rows
    want[-1] = tok.convert_tokens_to_ids("[IMG_END]")
    ids = batch["input_ids"][0].tolist()
    start = ids.index(want[0])
    assert ids[start:start + len(want)] == want
    assert ids.count(model.model.config.image_token_index) == rows * cols


def test_llama4_needs_torchvision_names_the_extra(checkpoints, monkeypatch):
    """Llama 4's image processor is torchvision-only in 5.24: `amps_auto` refuses it, naming the extra,
    before any weights load."""
    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed")
    from amps_eval.families import FamilyAdapter
    from amps_eval.model_wrappers.registered import AmpsAuto

    def no_weights(*args, **kwargs):
        raise AssertionError("the weights loaded before the processor was refused")

    monkeypatch.setattr(FamilyAdapter, "load_model", no_weights)

    settings = AmpsAuto.settings_class.from_model_args(pretrained=str(checkpoints("llama4")), device="cpu",
                                                       dtype="float32")
    with pytest.raises(ImportError, match=r"needs torchvision.*pip install 'amps-eval\[torchvision\]'"):
        AmpsAuto.load_checkpoint(settings)


def test_llama4_patched_forward_and_mcs(checkpoints):
    """Llama 4's model without its processor (torchvision-only here): transformers 5.24's forward fails
    on its own output; the family's patch makes it return the logits of the model's parts composed by
    hand, and the MCS on hand-built inputs (image tokens where the tile's features go) equals the
    independent autograd computation."""
    from amps_eval.families import GENERIC

    path = checkpoints("llama4")
    from transformers import AutoConfig

    raw = GENERIC.load_model_class(AutoConfig.from_pretrained(path))
    unpatched = raw.from_pretrained(path, dtype=torch.float64).eval()
    model = GENERIC.load_model(path, dtype=torch.float64).eval()
    image = model.config.image_token_index
    ids = torch.tensor([[3, 5, image, 6, 7, 8]])  # a 28-pixel tile: 4 patches, pixel shuffle 0.5 -> 1 token
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
              "pixel_values": torch.randn((1, 3, 28, 28), generator=torch.Generator().manual_seed(0),
                                          dtype=torch.float64)}
    with torch.no_grad():
        with pytest.raises(AttributeError, match="image_outputs"):  # transformers' bug the patch works around
            unpatched(**inputs)
        got = model(**inputs).logits
        features = model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=True).last_hidden_state
        projected = model.multi_modal_projector(features.view(-1, features.size(-1)))
        embeds = model.get_input_embeddings()(ids)
        embeds = embeds.masked_scatter((ids == image)[..., None], projected)
        want = model.language_model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).logits
    assert torch.allclose(got, want, atol=1e-10), float((got - want).abs().max())
    vision = ids == image
    settings = MCSSettings(sigmas=(0.1, 0.3), draws=2, seed=3)
    mcs = compute_mcs(model, inputs, vision, ~vision, settings, sample_ids=["s"])
    c_v, c_t = direct_mcs(model, inputs, vision, settings, "s")
    assert math.isclose(float(mcs.c_v[0]), c_v, rel_tol=1e-6) and math.isclose(float(mcs.c_t[0]), c_t, rel_tol=1e-6)


@pytest.mark.slow
def test_as_a_user_runs_it_lmms_eval_and_amps_eval_mcs(checkpoints, synthetic_mc2_dir, tmp_path):
    """`lmms-eval --model amps_auto` and `amps-eval mcs --model amps_auto` on a tiny Gemma3 folder."""
    import json
    import os
    import subprocess
    import sys

    path = checkpoints("gemma3")
    env = {**os.environ, "AMPS_MC2_DATA": str(synthetic_mc2_dir), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "amps_auto", "--model_args", f"pretrained={path},device=cpu",
           "--tasks", "mc2_visual", "--limit", "4", "--output_path", str(out), "--batch_size", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(next(out.rglob("*_results.json")).read_text())["results"]["mc2_visual"]
    assert metrics["vision_rate,none"] + metrics["text_rate,none"] + metrics["others_rate,none"] == pytest.approx(1.0)
    from amps_eval.cli import main  # the same command line, in this process (no second start-up)

    mcs = tmp_path / "mcs.jsonl"
    assert main(["mcs", "--model", "amps_auto", "--pretrained", str(path), "--data", str(synthetic_mc2_dir),
                 "--limit", "2", "--draws", "2", "--device", "cpu", "--out", str(mcs)]) == 0
    rows = [json.loads(line) for line in mcs.read_text().splitlines()]
    assert len(rows) == 2 and all(0 <= r["r_v"] <= 1 for r in rows)
