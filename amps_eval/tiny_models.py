"""Tiny, randomly initialised checkpoints of the real architectures, for tests and the offline demo.

No weights can be downloaded where the tests run, yet the code under test (wrappers, steering
hooks, KV-cache perturbations) must see the real classes: ``Qwen2_5_VLForConditionalGeneration``
(3-D "mrope" positions, window-attention vision tower, variable image-token count) and
``LlavaForConditionalGeneration`` (CLIP tower, fixed image-token count, BOS from the tokenizer).
The builders here write a folder laid out like the hub repositories of
``Qwen/Qwen2.5-VL-7B-Instruct`` and ``llava-hf/llava-1.5-7b-hf``, which is then loaded back through
exactly the calls a real checkpoint goes through::

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder)
    processor = amps_eval.families.family("qwen2_5_vl").load_processor(folder)

Folder contents (as in the hub repositories)
    config.json, model.safetensors, generation_config.json   model.save_pretrained (+ greedy config)
    tokenizer.json, tokenizer_config.json                     tokenizer.save_pretrained
    preprocessor_config.json                                   image processor, hub style
    processor_config.json                                      LLaVA only: patch size etc.
    chat_template.json                                         the real model's template, verbatim

What is real and what is not
    * architecture classes, special tokens and their roles, chat templates, image preprocessing,
      tokenizer pipelines (Qwen: ``Qwen2Tokenizer``, byte-level BPE; LLaVA: Llama's metaspace BPE
      with byte fallback and an automatic ``<s>``, saved by ``LlamaTokenizer``; transformers 5.x
      loads llava checkpoints' tokenizer.json as a plain ``TokenizersBackend``, real or tiny),
      generation-config ids;
    * the embedding matrix is padded past the tokenizer to a multiple of 64, as in the real models
      (152064 vs 151665 for Qwen2.5-VL-7B, 32064 vs 32002 for LLaVA-1.5), so code must not assume
      ``vocab_size == len(tokenizer)``;
    * sizes are tiny: 4 decoder layers, hidden size 64; a Qwen image gives 4-16 placeholder tokens
      (``min_pixels=56*56``, ``max_pixels=112*112``), a LLaVA image 16 (``image_size=56``);
    * the tokenizer is trained here (a few ms) on MC2-style English, so prompts tokenize into words
      and word pieces rather than bytes; the weights are random, so the generated text is noise.

Builds are deterministic: the same seed gives identical weights and identical files. A build takes
well under a second and about 1.5 MB on disk. Left padding, needed for batched generation, is not
baked into the Qwen tokenizer (the real one does not set it either); ``load_processor`` sets it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    LlamaTokenizer,
    Qwen2Tokenizer,
)

from amps_eval.families.llava import build_tiny_llava  # noqa: E402,F401 (each builder sits with its family)
from amps_eval.families.qwen2_5_vl import build_tiny_qwen  # noqa: E402,F401

__all__ = [
    "LLAVA_CHAT_TEMPLATE",
    "QWEN_CHAT_TEMPLATE",
    "build_tiny_llava",
    "build_tiny_qwen",
    "build_tiny_qwen_family",
    "corpus",
    "tiny_image",
    "tiny_model",
]

# Verbatim from Qwen/Qwen2.5-VL-7B-Instruct/chat_template.json.
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Verbatim from llava-hf/llava-1.5-7b-hf/chat_template.json. It renders no "<s>": the tokenizer's
# post-processor adds it.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# Qwen2.5-VL's special tokens, in the real order (ids 151643.. there; appended after the BPE
# vocabulary here).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Mean/std of CLIP, used by both real image processors.
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

_QWEN_TEXT_DEFAULTS: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # grouped-query attention, as in the real model (28 q / 4 kv heads)
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1_000_000.0,
}
_QWEN_VISION_DEFAULTS: dict[str, Any] = {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [1],
    "tokens_per_second": 2,
}
_LLAVA_TEXT_DEFAULTS: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,  # Llama-2-7B (LLaVA-1.5's LM) has no grouped-query attention
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
}
_LLAVA_VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,  # >= 2: LLaVA reads the second-to-last layer (vision_feature_layer=-2)
    "num_attention_heads": 2,
    "image_size": 56,
    "patch_size": 14,
    "projection_dim": 32,
    "hidden_act": "quick_gelu",
}

_BPE_VOCAB_SIZE = 1280  # an upper bound: the small corpus runs out of merges earlier for Qwen
_EMBED_MULTIPLE = 64


# ---------------------------------------------------------------------------------------------
# Corpus and tokenizers
# ---------------------------------------------------------------------------------------------


def corpus() -> list[str]:
    """MC2-style English: the prompt scaffolding (context, question, options, instructions) and
    the words the eight tasks use. Deterministic, so the trained tokenizer is too."""
    colours = "red blue green yellow black white brown orange pink purple gray silver gold".split()
    objects = (
        "cat dog horse cow sheep elephant bear zebra giraffe bird ant person man woman child boy girl "
        "car bus truck train bicycle motorcycle airplane boat kite umbrella pizza cake banana apple "
        "sandwich table chair bed couch clock laptop phone book vase bottle cup bowl ball racket "
        "skateboard surfboard frisbee snowboard skis bench sign light"
    ).split()
    numbers = "zero one two three four five six seven eight nine ten eleven twelve".split()
    sports = "tennis baseball soccer football basketball surfing skiing skateboarding snowboarding".split()
    activities = "eating drinking sitting standing walking running riding playing sleeping reading".split()
    feelings = "happy unhappy sad calm angry excited peaceful lonely joyful".split()
    positions = "left right above below behind front next near top bottom middle inside outside".split()
    attributes = "large small tall short old new wooden metal empty full open closed wet dry".split()
    scaffolding = [
        "Answer the question by selecting the correct answer A or B.",
        "In case there is an inconsistency between the text context and the image content, "
        "you should follow the image content rather than the text context.",
        "In case there is an inconsistency between the text context and the image content, "
        "you must rely on the text context rather than the input image content.",
        "Respond to the question based only on the image context.",
        "Follow the text context rather than the image content.",
        "You are a helpful assistant.",
        "The answer is A.",
        "The answer is B.",
        "Answer: A",
        "Answer: B",
        "(A) (B) A. B.",
        "Let us think step by step.",
    ]
    # The role words of both chat templates, frequent enough to become single tokens.
    roles = ["system\nuser\nassistant\n", "USER: ASSISTANT: USER: ASSISTANT:"] * 8
    lines = scaffolding + roles
    for i, (obj, colour, number) in enumerate(zip(itertools.cycle(objects), colours * 5, numbers * 6)):
        sport = sports[i % len(sports)]
        act = activities[i % len(activities)]
        feel = feelings[i % len(feelings)]
        pos = positions[i % len(positions)]
        attr = attributes[i % len(attributes)]
        other = objects[(i * 7 + 3) % len(objects)]
        lines += [
            f"Text context: In the picture, the {attr} {obj} is {colour} and there are {number} "
            f"of them {pos} the {other}.",
            f"What color is the {obj}?\nA. {colour}\nB. {colours[(i + 3) % len(colours)]}",
            f"How many {obj}s are there in the image?\nA. {number}\nB. {numbers[(i + 2) % len(numbers)]}",
            f"What is the person doing?\nA. {act}\nB. not {act}",
            f"Which sport is being played?\nA. {sport}\nB. {sports[(i + 1) % len(sports)]}",
            f"What is the {obj} {pos} of?\nA. the {other}\nB. the {obj}",
            f"How does the {obj} feel?\nA. {feel}\nB. {feelings[(i + 4) % len(feelings)]}",
            f"Is the {obj} {attr}? The image shows a {attr} {obj}. {number.capitalize()}, {i}.",
        ]
    return lines


def _train_bpe(
    template: Tokenizer, vocab_size: int, special_tokens: list[str], extra_corpus: Sequence[str] = (), **trainer_kwargs: Any
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a BPE model with the normalizer and pre-tokenizer of ``template`` (the tokenizer class
    of the real model), so the learnt merges fit the pipeline the class rebuilds on load."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = template.normalizer
    tokenizer.pre_tokenizer = template.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False, **trainer_kwargs
    )
    tokenizer.train_from_iterator(corpus() + list(extra_corpus), trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    return model["vocab"], [tuple(m) for m in model["merges"]]


def _qwen_tokenizer(extra_corpus: Sequence[str] = ()) -> Qwen2Tokenizer:
    """Byte-level BPE in ``Qwen2Tokenizer``'s pipeline; special tokens appended in Qwen's order."""
    vocab, merges = _train_bpe(
        Qwen2Tokenizer().backend_tokenizer,
        _BPE_VOCAB_SIZE,
        special_tokens=[],
        extra_corpus=extra_corpus,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    vocab = dict(vocab)
    for token in QWEN_SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    return Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        errors="replace",
        extra_special_tokens=[t for t in QWEN_SPECIAL_TOKENS if t not in ("<|endoftext|>", "<|im_end|>")],
        model_max_length=32768,
    )


def _llava_tokenizer(extra_corpus: Sequence[str] = ()) -> LlamaTokenizer:
    """Llama-style BPE (metaspace, byte fallback): ``<unk> <s> </s>`` and the 256 byte tokens
    first, as in Llama's vocabulary, then ``<image>`` and ``<pad>`` appended as in llava-hf."""
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    # Train on "▁word" chunks (split=True), as SentencePiece does, so no merge crosses a word
    # boundary; LlamaTokenizer itself runs Metaspace with split=False, which these merges respect.
    template = Tokenizer(models.BPE())
    template.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    vocab, merges = _train_bpe(
        template, _BPE_VOCAB_SIZE, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens], extra_corpus=extra_corpus
    )
    vocab = dict(vocab)
    for token in ("<image>", "<pad>"):
        vocab[token] = len(vocab)
    return LlamaTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        add_bos_token=True,  # as llava-hf: the chat template renders no <s>, the tokenizer adds it
        add_eos_token=False,
        legacy=False,
        padding_side="left",
        extra_special_tokens=["<image>"],
        model_max_length=4096,
    )


# ---------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------


def _padded_vocab(n: int) -> int:
    return -(-n // _EMBED_MULTIPLE) * _EMBED_MULTIPLE


def _split_overrides(
    overrides: dict[str, Any], text_defaults: dict[str, Any], processor_keys: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Overrides: ``text_config=`` / ``vision_config=`` dicts merge into the sub-configs,
    ``processor_keys`` go to the image processor, any other key is a text-config field
    (``num_hidden_layers=6`` is the common case)."""
    overrides = dict(overrides)
    vision = dict(overrides.pop("vision_config", {}))
    text = dict(overrides.pop("text_config", {}))
    processor = {k: overrides.pop(k) for k in processor_keys if k in overrides}
    text.update(overrides)
    return {**text_defaults, **text}, vision, processor


def _build_model(model_cls: Callable[..., torch.nn.Module], config: Any, seed: int) -> torch.nn.Module:
    """Instantiate with a fixed seed without touching the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    return model.eval()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_tiny_qwen_family(
    out_dir: str | os.PathLike,
    seed: int,
    extra_corpus: Sequence[str],
    overrides: dict[str, Any],
    *,
    config_class: type,
    model_class: type,
    vision_defaults: dict[str, Any],
    vision_out_key: str,
    processor_class: str,
) -> Path:
    """A tiny checkpoint of a Qwen-VL family (Qwen2-VL, Qwen2.5-VL): the same tokenizer, special
    tokens, chat template, mrope split and image processor; the family gives its config and model
    classes, its vision-tower defaults, the vision-config key of the LM width the merger outputs
    (``vision_out_key``) and the processor class named in ``preprocessor_config.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text, vision, pixels = _split_overrides(overrides, _QWEN_TEXT_DEFAULTS, ("min_pixels", "max_pixels"))

    tokenizer = _qwen_tokenizer(extra_corpus)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}

    head_dim = text["hidden_size"] // text["num_attention_heads"]
    half = head_dim // 2  # mrope splits the rotary half-dimension into (temporal, height, width)
    temporal = half // 4  # the real split is [16, 24, 24] of 64
    mrope_section = [temporal, (half - temporal) // 2, half - temporal - (half - temporal) // 2]
    rope_theta = text.pop("rope_theta")
    text.setdefault("rope_parameters", {"rope_type": "default", "mrope_section": mrope_section, "rope_theta": rope_theta})
    vision = {**vision_defaults, **vision}
    vision.setdefault(vision_out_key, text["hidden_size"])

    config = config_class(
        text_config={
            **text,
            "vocab_size": _padded_vocab(len(tokenizer)),
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
        },
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    model = _build_model(model_class, config, seed)
    model.generation_config = GenerationConfig(
        do_sample=False,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
    )
    model.save_pretrained(out_dir)

    tokenizer.save_pretrained(out_dir)
    # preprocessor_config.json as Qwen/Qwen2.5-VL-7B-Instruct ships it: the backend-neutral class
    # name, min/max_pixels at the top level (transformers 5.x's own save would write the class of
    # the backend and size={shortest,longest}_edge; load_processor reads both).
    _write_json(
        out_dir / "preprocessor_config.json",
        {
            "min_pixels": pixels.get("min_pixels", 56 * 56),
            "max_pixels": pixels.get("max_pixels", 112 * 112),
            "patch_size": vision["patch_size"],
            "temporal_patch_size": vision["temporal_patch_size"],
            "merge_size": vision["spatial_merge_size"],
            "image_mean": _CLIP_MEAN,
            "image_std": _CLIP_STD,
            "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": processor_class,
        },
    )
    _write_json(out_dir / "chat_template.json", {"chat_template": QWEN_CHAT_TEMPLATE})
    return out_dir


# Bump when the builders change what they write, so stale cached folders are not reused.
_FORMAT_VERSION = 1


def tiny_model(arch: str, cache_root: str | os.PathLike, seed: int = 0, **overrides: Any) -> Path:
    """Path of a tiny checkpoint for the family ``arch`` (``"qwen2_5_vl"``, ``"llava"``, ...), built on first use
    under ``cache_root`` and reused afterwards (e.g. from a pytest session fixture).

    The folder name encodes arch, seed, overrides, the format version and the transformers version
    (a folder written by transformers 5.x does not load in 4.x). Builds go to a temporary folder
    that is renamed into place, so concurrent processes (pytest-xdist) never see a half-written one.
    """
    from amps_eval.families import FAMILIES

    if arch not in FAMILIES:
        raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(FAMILIES)}")
    import transformers

    key = json.dumps(
        {"o": overrides, "v": _FORMAT_VERSION, "tf": transformers.__version__, "torch": torch.__version__},
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    cache_root = Path(cache_root)
    target = cache_root / f"tiny-{arch}-seed{seed}-{digest}"
    if (target / "config.json").is_file():
        return target

    cache_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=cache_root))
    try:
        FAMILIES[arch].build_tiny(staging, seed=seed, **overrides)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # lost a race only if the winner finished
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def tiny_image(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    """A deterministic RGB noise image (no files, no downloads) to feed the tiny models."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)
