"""The tiny checkpoints load through the real code path and behave like the real models do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import (
    CLIPImageProcessorPil,
    LlavaForConditionalGeneration,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)

from amps_eval.families import family
from amps_eval.anatomy import image_token_id
from amps_eval.families import family, family_of_model


def load_processor(path, arch, **image_kwargs):
    return family(arch).load_processor(path, **image_kwargs)
from amps_eval.tiny_models import build_tiny_llava, build_tiny_qwen, tiny_image, tiny_model

MODEL_CLASSES = {"qwen2_5_vl": Qwen2_5_VLForConditionalGeneration, "llava": LlavaForConditionalGeneration,
                 "qwen2_vl": Qwen2VLForConditionalGeneration}
BUILDERS = {"qwen2_5_vl": build_tiny_qwen, "llava": build_tiny_llava, "qwen2_vl": family("qwen2_vl").build_tiny}
QWEN = ("qwen2_5_vl", "qwen2_vl")  # the Qwen families: same tokenizer, template and image processor
ARCHES = sorted(MODEL_CLASSES)

MC2_PROMPT = (
    "Text context: In the picture, the old cat is red and there are two of them.\n"
    "What color is the cat?\nA. red\nB. blue\n"
    "Answer the question by selecting the correct answer A or B."
)
SHORT_PROMPT = "How many dogs are there?"


@pytest.fixture
def checkpoint(request: pytest.FixtureRequest):
    """(arch, folder) for the parametrized architecture."""
    arch = request.param
    return arch, request.getfixturevalue({"qwen2_5_vl": "tiny_qwen_path", "llava": "tiny_llava_path",
                                          "qwen2_vl": "tiny_qwen2_path"}[arch])


def load(arch: str, path: Path, **image_kwargs):
    model = MODEL_CLASSES[arch].from_pretrained(path).eval()
    return model, load_processor(path, arch, **image_kwargs)


def user_turn(text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def render(processor, text: str) -> str:
    return processor.apply_chat_template(user_turn(text), add_generation_prompt=True, tokenize=False)


def until_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    """Generated tokens up to and including the first end-of-sequence token."""
    for i, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: i + 1]
    return tokens


def eos_ids(model) -> set[int]:
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos])


# Images of different sizes; for Qwen they give different numbers of image tokens.
IMAGES = [tiny_image(64, 48, seed=0), tiny_image(100, 90, seed=1)]
# Qwen: each side rounded to a multiple of 28 within [56*56, 112*112] pixels, then one token per
# 2x2 block of 14-pixel patches: 64x48 -> 56x56 -> 4x4 patches -> 4 tokens; 100x90 -> 112x84 -> 12.
# LLaVA: resize + centre crop to 56x56 -> 4x4 patches -> 16 tokens (CLS dropped) whatever the size.
EXPECTED_IMAGE_TOKENS = {"qwen2_5_vl": [4, 12], "llava": [16, 16], "qwen2_vl": [4, 12]}


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("checkpoint", ARCHES, indirect=True)
def test_reloads_through_the_real_classes(checkpoint):
    arch, path = checkpoint
    expected_files = {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                      "tokenizer_config.json", "preprocessor_config.json", "chat_template.json"}
    assert expected_files <= {p.name for p in path.iterdir()}
    assert sum(p.stat().st_size for p in path.iterdir()) < 5e6

    model, processor = load(arch, path)
    assert type(model) is MODEL_CLASSES[arch]
    assert family_of_model(model).name == arch
    assert len(model.model.language_model.layers) == 4  # docs/lmms-eval.md, "Decoder layers"
    assert model.generation_config.do_sample is False
    assert processor.tokenizer.padding_side == "left"
    assert processor.image_token_id == image_token_id(model.config)
    assert model.config.text_config.vocab_size >= len(processor.tokenizer)
    if arch in QWEN:
        from amps_eval.processors import without_media_slots

        assert type(processor) is without_media_slots(family(arch).processor_class(path))
        assert type(processor.image_processor) is Qwen2VLImageProcessorPil
        assert not hasattr(processor, "video_processor")
    else:
        assert type(processor.image_processor) is CLIPImageProcessorPil
        assert processor.patch_size == 14 and processor.vision_feature_select_strategy == "default"


@pytest.mark.parametrize("arch", ARCHES)
def test_same_seed_same_checkpoint(arch, tmp_path):
    build = BUILDERS[arch]
    paths = [build(tmp_path / name, seed=seed) for name, seed in (("a", 0), ("b", 0), ("c", 1))]
    states = [MODEL_CLASSES[arch].from_pretrained(p).state_dict() for p in paths]
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])
    for name in ("tokenizer.json", "config.json", "preprocessor_config.json"):
        assert (paths[0] / name).read_bytes() == (paths[2] / name).read_bytes()


def test_build_leaves_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_llava(tmp_path / "x", seed=5)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    ("checkpoint", "expected"),
    [
        (
            "qwen2_5_vl",
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            "<|vision_start|><|image_pad|><|vision_end|>" + SHORT_PROMPT + "<|im_end|>\n<|im_start|>assistant\n",
        ),
        ("llava", "USER: <image>\n" + SHORT_PROMPT + " ASSISTANT:"),
    ],
    indirect=["checkpoint"],
)
def test_chat_template_is_the_real_models(checkpoint, expected):
    arch, path = checkpoint
    assert render(load_processor(path, arch), SHORT_PROMPT) == expected


@pytest.mark.parametrize("checkpoint", ARCHES, indirect=True)
def test_batched_processor_pads_left_and_expands_image_tokens(checkpoint):
    arch, path = checkpoint
    model, processor = load(arch, path)
    texts = [render(processor, MC2_PROMPT), render(processor, SHORT_PROMPT)]
    batch = processor(text=texts, images=IMAGES, return_tensors="pt", padding=True)

    ids, mask = batch["input_ids"], batch["attention_mask"]
    is_image = ids == image_token_id(model.config)
    assert is_image.sum(dim=1).tolist() == EXPECTED_IMAGE_TOKENS[arch]
    # Left padding: the short prompt's padding is at the start, every row ends with a real token.
    assert mask[:, -1].all() and not mask[1, 0]
    assert (ids[mask == 0] == processor.tokenizer.pad_token_id).all()
    assert mask[1].tolist() == sorted(mask[1].tolist())
    if arch in QWEN:
        grid = batch["image_grid_thw"]
        assert (grid.prod(dim=1) // 4).tolist() == EXPECTED_IMAGE_TOKENS[arch]
        # transformers 5.x computes the 3-D rope index from mm_token_type_ids (1 = image token);
        # without it generate() silently falls back to 1-D positions.
        assert torch.equal(batch["mm_token_type_ids"] == 1, is_image)
    else:
        # llava-hf's template renders no <s>: the tokenizer adds it as the first real token.
        first_real = mask.argmax(dim=1)
        assert (ids[torch.arange(2), first_real] == processor.tokenizer.bos_token_id).all()


@pytest.mark.parametrize("checkpoint", ARCHES, indirect=True)
def test_batched_greedy_generation_equals_one_by_one(checkpoint):
    """Padding must not leak into the result: same logits and same greedy tokens with and without
    a padded neighbour (for Qwen this also checks the mrope positions under left padding)."""
    arch, path = checkpoint
    model, processor = load(arch, path)
    texts = [render(processor, MC2_PROMPT), render(processor, SHORT_PROMPT)]
    batch = processor(text=texts, images=IMAGES, return_tensors="pt", padding=True)
    new = 6
    with torch.no_grad():
        batch_logits = model(**batch).logits[:, -1]
        batch_out = model.generate(**batch, max_new_tokens=new)[:, batch["input_ids"].shape[1]:]
    stop = eos_ids(model)
    for row, (text, image) in enumerate(zip(texts, IMAGES)):
        single = processor(text=[text], images=[image], return_tensors="pt", padding=True)
        with torch.no_grad():
            single_logits = model(**single).logits[:, -1]
            single_out = model.generate(**single, max_new_tokens=new)[0, single["input_ids"].shape[1]:]
        torch.testing.assert_close(batch_logits[row], single_logits[0], rtol=1e-4, atol=1e-5)
        assert until_eos(batch_out[row].tolist(), stop) == until_eos(single_out.tolist(), stop)
    assert processor.batch_decode(batch_out, skip_special_tokens=True)  # decodes, incl. padded-vocab ids


@pytest.mark.parametrize("checkpoint", ARCHES, indirect=True)
def test_transformers5_layout_loads_the_same(checkpoint, tmp_path):
    """A folder re-saved by transformers 5.x (processor_config.json with a nested image processor,
    chat_template.jinja) loads into a processor that gives the same tensors as the hub layout."""
    arch, path = checkpoint
    processor = load_processor(path, arch)
    resaved = tmp_path / "resaved"
    processor.save_pretrained(resaved)
    shutil.copy(path / "config.json", resaved / "config.json")
    assert not (resaved / "preprocessor_config.json").exists()
    assert (resaved / "chat_template.jinja").exists()
    saved = json.loads((resaved / "processor_config.json").read_text())
    assert saved["processor_class"] == {"qwen2_5_vl": "Qwen2_5_VLProcessor", "llava": "LlavaProcessor",
                                       "qwen2_vl": "Qwen2VLProcessor"}[arch]
    if arch in QWEN:  # what a save with torchvision installed adds; must be ignored here
        saved["video_processor"] = {"video_processor_type": "Qwen2VLVideoProcessor", "merge_size": 2}
        (resaved / "processor_config.json").write_text(json.dumps(saved))

    again = load_processor(resaved, arch)
    texts = [render(processor, MC2_PROMPT), render(processor, SHORT_PROMPT)]
    assert [render(again, MC2_PROMPT), render(again, SHORT_PROMPT)] == texts
    a = processor(text=texts, images=IMAGES, return_tensors="pt", padding=True)
    b = again(text=texts, images=IMAGES, return_tensors="pt", padding=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_qwen_pixel_bounds_are_passable(tiny_qwen_path):
    # 100x90 within at most 56*56 pixels: scaled by sqrt(9000/3136), floored to multiples of 28
    # -> 56x28 -> 4x2 patches -> 2 tokens (12 with the saved bound of 112*112).
    processor = load_processor(tiny_qwen_path, "qwen2_5_vl", max_pixels=56 * 56)
    batch = processor(text=[render(processor, SHORT_PROMPT)], images=[IMAGES[1]], return_tensors="pt")
    assert (batch["input_ids"] == processor.image_token_id).sum() == 2
    with pytest.raises(TypeError, match="not_a_setting"):
        load_processor(tiny_qwen_path, "qwen2_5_vl", not_a_setting=1)


def test_tiny_model_cache_reuses_folders(tmp_path):
    first = tiny_model("llava", tmp_path, seed=0)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert tiny_model("llava", tmp_path, seed=0) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert tiny_model("llava", tmp_path, seed=1) != first
    assert tiny_model("llava", tmp_path, seed=0, num_hidden_layers=2) != first
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left
    with pytest.raises(ValueError):
        tiny_model("blip", tmp_path)
