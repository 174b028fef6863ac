"""Train the model organism: a small ``Qwen2_5_VLForConditionalGeneration`` from scratch, on CPU.

:func:`build_organism` writes a checkpoint folder in hub layout (``build_tiny_qwen`` supplies the
config, tokenizer, image processor and chat template; training replaces the random weights), then
evaluates it on held-out items and writes ``organism_manifest.json`` next to the weights.

Training
    teacher forcing on the answer only: the prompt is what the ``amps_qwen`` wrapper sends (the
    wrapper's own ``render`` / ``encode_turns``, left padding, so training prompts are identical
    token for token to evaluation prompts), followed by the option letter and ``<|im_end|>``; the
    loss is the cross-entropy of those two tokens. AdamW, linear warm-up then cosine decay,
    gradient clipping. Examples come from :func:`amps_eval.organism.design.training_example`
    (generated on the fly, nothing is cached), in an order fixed by the seed.

Determinism
    fixed seeds for the weights (``seed``), the training items (``data_seed``) and the data order
    (``seed``); ``torch.use_deterministic_algorithms`` while training; a fixed number of CPU threads
    (``num_threads``: the float reductions, and so the weights, can depend on it). The same settings
    on the same software give identical weights (the manifest records the sha256).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from amps_eval.model_wrappers.base import AmpsWrapper
from amps_eval.files import sha256_file as file_sha256
from amps_eval.organism.design import CONDITIONS, KINDS, VARIANTS_PER_ITEM, Example, design_dict, training_example

MANIFEST_NAME = "organism_manifest.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True)
class OrganismSettings:
    """Everything that determines an organism (recorded in its manifest)."""

    seed: int = 0  # weight initialisation and data order
    data_seed: int = 1  # the synthetic training items
    eval_seed: int = 2  # the held-out items (must differ from data_seed)
    pixels: int = 84  # images are resized to pixels x pixels: 6x6 patches, 9 image tokens
    image_size: int = 84  # drawing size of the held-out items
    train_image_sizes: tuple[int, ...] = (84, 224)  # drawing sizes of the training items (cycled)
    n_items: int = 6000  # distinct training items; each gives 4 examples (design.training_example)
    steps: int = 700
    batch_size: int = 32
    lr: float = 2e-3
    min_lr_ratio: float = 0.05  # cosine decay to lr * min_lr_ratio
    warmup_steps: int = 30
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    # language model
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    positional_offsets: tuple[int, ...] | None = (1, 2, 3, 4)  # layer 0 heads start as fixed-offset heads
    word_tokens: bool = True  # train the tokenizer on MC2-style text too (see tokenizer_corpus)
    qk_init_logit: float | None = 4.0  # mimetic init of the LM's attention (None: the model's own)
    # vision tower
    vision_hidden_size: int = 128
    vision_intermediate_size: int = 256
    vision_depth: int = 2
    vision_num_heads: int = 4
    lm_steps: int = 0  # steps with an extra language-modelling loss on the prompt text (warm-up)
    lm_weight: float = 1.0
    consistent_from_step: int = 0  # consistent examples join the stream from this step on
    # runtime
    num_threads: int = 1
    log_every: int = 25
    eval_per_category: int = 16  # held-out items per category (each asked in both option orders)
    eval_batch_size: int = 16

    def __post_init__(self) -> None:
        if self.data_seed == self.eval_seed:
            raise ValueError("eval_seed must differ from data_seed: the evaluation is on held-out items")
        if self.pixels % 28:
            raise ValueError(f"pixels must be a multiple of 28 (patch 14 x merge 2), got {self.pixels}")
        if self.steps < 1 or self.batch_size < 1 or self.n_items < 1:
            raise ValueError("steps, batch_size and n_items must be >= 1")
        if self.hidden_size % self.num_attention_heads or self.vision_hidden_size % self.vision_num_heads:
            raise ValueError("hidden sizes must be divisible by the number of heads")

    def model_overrides(self) -> dict[str, Any]:
        """Arguments of ``build_tiny_qwen`` for this organism."""
        return {
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "vision_config": {
                "hidden_size": self.vision_hidden_size,
                "intermediate_size": self.vision_intermediate_size,
                "depth": self.vision_depth,
                "num_heads": self.vision_num_heads,
                "fullatt_block_indexes": [self.vision_depth - 1],
            },
            "min_pixels": self.pixels * self.pixels,
            "max_pixels": self.pixels * self.pixels,
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "OrganismSettings":
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names}
        return cls(**values)


# ---------------------------------------------------------------------------------------------
# Encoding: the wrapper's own code
# ---------------------------------------------------------------------------------------------


class PromptEncoder:
    """Encodes conversations with ``AmpsWrapper.render`` / ``AmpsWrapper.encode_turns`` themselves,
    so that training prompts are exactly the evaluation prompts."""

    render = AmpsWrapper.render
    encode_turns = AmpsWrapper.encode_turns

    def __init__(self, model: torch.nn.Module, processor: Any) -> None:
        self.model = model
        self.processor = processor
        self.input_device = torch.device("cpu")
        tokenizer = processor.tokenizer
        self.letter_ids = {}
        for letter in ("A", "B"):
            ids = tokenizer(letter, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise RuntimeError(f"the answer {letter!r} is not a single token: {ids}")
            self.letter_ids[letter] = ids[0]
        self.eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def encode(self, examples: list[Example]) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Model inputs (prompt then answer letter), the two target ids (letter, EOS) per row, and
        the mask of the user's text tokens (context, question, options, instructions)."""
        encoded = self.encode_turns([example.turns() for example in examples])
        inputs = encoded.inputs
        letters = torch.tensor([[self.letter_ids[e.answer]] for e in examples])
        inputs["input_ids"] = torch.cat([inputs["input_ids"], letters], dim=1)
        inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(letters)], dim=1)
        if "mm_token_type_ids" in inputs:
            inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(letters)], dim=1)
        targets = torch.cat([letters, torch.full_like(letters, self.eos_id)], dim=1)
        text_mask = torch.cat([encoded.text_mask, torch.zeros_like(letters, dtype=torch.bool)], dim=1)
        return inputs, targets, text_mask


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def torch_settings(num_threads: int, seed: int) -> Iterator[None]:
    """Threads, deterministic algorithms and a seeded RNG for the block; restored afterwards."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def lr_at(step: int, settings: OrganismSettings) -> float:
    """Linear warm-up, then cosine decay to ``lr * min_lr_ratio``."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    span = max(1, settings.steps - settings.warmup_steps)
    progress = min(1.0, (step - settings.warmup_steps) / span)
    floor = settings.lr * settings.min_lr_ratio
    return floor + (settings.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def data_order(settings: OrganismSettings) -> Iterator[int]:
    """Example slots in training order: seeded permutations of all slots, epoch after epoch."""
    generator = torch.Generator().manual_seed(settings.seed)
    n = settings.n_items * VARIANTS_PER_ITEM
    while True:
        yield from torch.randperm(n, generator=generator).tolist()


def batches(settings: OrganismSettings) -> Iterator[list[int]]:
    """The slots of each step's batch; consistent examples (variant 3) are skipped before
    ``consistent_from_step``."""
    order = data_order(settings)
    for step in range(settings.steps):
        slots: list[int] = []
        while len(slots) < settings.batch_size:
            slot = next(order)
            if step < settings.consistent_from_step and slot % VARIANTS_PER_ITEM == len(CONDITIONS):
                continue
            slots.append(slot)
        yield slots


@torch.no_grad()
def positional_qk_init(model: torch.nn.Module, offsets: tuple[int, ...], layer: int = 0) -> None:
    """Initialise the heads of one language-model layer as fixed-offset ("convolutional") heads:
    head ``h`` starts attending to the token ``offsets[h]`` positions back, whatever the content
    (cf. convolutional initialisation of attention, Zheng et al., 2023). Only the query / key biases
    are set: with rotary embeddings a constant query and key whose per-frequency phases differ by
    ``-omega * offset`` give the logit ``sum_i c_i cos(omega_i (distance - offset))``, largest at
    ``distance == offset``. The weights stay random, so the heads can also learn content."""
    config = model.config.text_config
    attention = model.model.language_model.layers[layer].self_attn
    head_dim = config.hidden_size // config.num_attention_heads
    half = head_dim // 2
    group = config.num_attention_heads // config.num_key_value_heads
    if len(offsets) != config.num_attention_heads:
        raise ValueError(f"need one offset per head ({config.num_attention_heads}), got {offsets}")
    rope = model.model.language_model.rotary_emb
    omega = rope.inv_freq.detach().float()[:half]
    weights = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5])[: min(5, half)]  # logit per frequency pair
    amplitude = (weights * head_dim**0.5).sqrt()  # q . k * head_dim**-0.5 = weight
    with torch.no_grad():
        q_bias = attention.q_proj.bias.view(config.num_attention_heads, head_dim)
        k_bias = attention.k_proj.bias.view(config.num_key_value_heads, head_dim)
        k_bias.zero_()
        k_bias[:, : len(weights)] = amplitude
        q_bias.zero_()
        for head, offset in enumerate(offsets):
            phase = -omega[: len(weights)] * offset
            q_bias[head, : len(weights)] = amplitude * phase.cos()
            q_bias[head, half : half + len(weights)] = amplitude * phase.sin()
        del group


@torch.no_grad()
def mimetic_qk_init(model: torch.nn.Module, self_logit: float, seed: int, layers: range | None = None) -> None:
    """Mimetic initialisation of the language model's attention (after Trockman & Kolter, 2023,
    "Mimetic initialization of self-attention layers"): each query head starts as a copy of its
    key head, so ``W_q x . W_k x > 0`` and every head initially prefers tokens like its own. The
    weights are redrawn with the scale at which a token's attention logit to itself (at distance
    0, before rotary rotation) is about ``self_logit``; biases start at zero. This is what lets a
    model this small find the "which option appears in the context" match within the budget.
    """
    generator = torch.Generator().manual_seed(seed + 7919)
    config = model.config.text_config
    head_dim = config.hidden_size // config.num_attention_heads
    group = config.num_attention_heads // config.num_key_value_heads
    # |W x|^2 / sqrt(head_dim) = self_logit with x of unit RMS: per-entry std of W
    std = (self_logit * head_dim**0.5 / (head_dim * config.hidden_size)) ** 0.5
    for index, layer in enumerate(model.model.language_model.layers):
        if layers is not None and index not in layers:
            continue
        attention = layer.self_attn
        key = torch.randn(attention.k_proj.weight.shape, generator=generator) * std
        attention.k_proj.weight.copy_(key)
        attention.q_proj.weight.copy_(key.view(config.num_key_value_heads, 1, head_dim, -1).expand(-1, group, -1, -1).reshape(attention.q_proj.weight.shape))
        for proj in (attention.q_proj, attention.k_proj):
            if proj.bias is not None:
                proj.bias.zero_()


@dataclass
class TrainingLog:
    """The training curve: one record per ``log_every`` steps (means over that window)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    examples_seen: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 1),
            "examples_seen": self.examples_seen,
            "final": self.records[-1] if self.records else None,
            "curve": self.records,
        }


class _Window:
    """Running loss and answer accuracy (argmax at the letter position) by kind and condition."""

    def __init__(self) -> None:
        self.loss, self.steps = 0.0, 0
        self.hits: dict[str, list[int]] = {}

    def add(self, loss: float, examples: list[Example], correct: list[bool]) -> None:
        self.loss += loss
        self.steps += 1
        for example, ok in zip(examples, correct):
            for key in (f"{example.kind}/{example.condition.name}", f"category/{example.category}"):
                hit = self.hits.setdefault(key, [0, 0])
                hit[0] += int(ok)
                hit[1] += 1

    def record(self, step: int, lr: float, elapsed: float) -> dict[str, Any]:
        acc = {key: round(h[0] / h[1], 3) for key, h in sorted(self.hits.items()) if h[1]}
        overall = sum(h[0] for k, h in self.hits.items() if not k.startswith("category/"))
        total = sum(h[1] for k, h in self.hits.items() if not k.startswith("category/"))
        return {
            "step": step,
            "lr": round(lr, 6),
            "loss": round(self.loss / max(1, self.steps), 4),
            "accuracy": round(overall / max(1, total), 3),
            "accuracy_by": acc,
            "seconds": round(elapsed, 1),
        }


def train(model: torch.nn.Module, processor: Any, settings: OrganismSettings, progress: bool = True) -> TrainingLog:
    """Train ``model`` in place (call inside :func:`torch_settings`)."""
    from tqdm import tqdm

    encoder = PromptEncoder(model, processor)
    first = 0
    if settings.positional_offsets:
        heads = settings.num_attention_heads
        offsets = tuple(settings.positional_offsets)
        for layer in range(len(offsets) // heads):
            positional_qk_init(model, offsets[layer * heads : (layer + 1) * heads], layer=layer)
        first = len(offsets) // heads
    if settings.qk_init_logit is not None:
        mimetic_qk_init(model, settings.qk_init_logit, settings.seed, range(first, settings.num_hidden_layers))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "norm" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
        betas=settings.betas,
    )
    log, window = TrainingLog(), _Window()
    start = time.perf_counter()
    model.train()
    bar = tqdm(batches(settings), total=settings.steps, desc="organism", disable=not progress, dynamic_ncols=True)
    for step, slots in enumerate(bar):
        examples = [training_example(s, settings.data_seed, settings.train_image_sizes) for s in slots]
        inputs, targets, text_mask = encoder.encode(examples)
        lr = lr_at(step, settings)
        for group in optimizer.param_groups:
            group["lr"] = lr
        warmup_lm = step < settings.lm_steps
        logits = model(**inputs, logits_to_keep=0 if warmup_lm else 2, use_cache=False).logits.float()
        answer_logits = logits[:, -2:]  # [B, 2, V]: predicts the letter, then <|im_end|>
        loss = torch.nn.functional.cross_entropy(answer_logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        if warmup_lm:  # language modelling on the user's text: next-token loss where the next token is text
            predicts_text = text_mask[:, 1:]
            lm = torch.nn.functional.cross_entropy(logits[:, :-1][predicts_text], inputs["input_ids"][:, 1:][predicts_text])
            loss = loss + settings.lm_weight * lm
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()

        with torch.no_grad():
            predicted = answer_logits[:, 0].argmax(-1)
            correct = (predicted == targets[:, 0]).tolist()
        window.add(float(loss), examples, correct)
        log.examples_seen += len(examples)
        if (step + 1) % settings.log_every == 0 or step + 1 == settings.steps:
            record = window.record(step + 1, lr, time.perf_counter() - start)
            log.records.append(record)
            bar.set_postfix(loss=record["loss"], acc=record["accuracy"])
            if progress:
                by = record["accuracy_by"]
                bar.write(
                    f"step {record['step']:5d} loss {record['loss']:.3f} acc {record['accuracy']:.3f} | "
                    + " ".join(f"{k}={v:.2f}" for k, v in by.items() if not k.startswith("category/"))
                )
            window = _Window()
    bar.close()
    model.eval()
    log.seconds = time.perf_counter() - start
    return log


def tokenizer_corpus(n_per_category: int = 32, seed: int = 0) -> list[str]:
    """Extra tokenizer-training text: the prompts of synthetic MC2 items (seed 0, every answer of
    every category), so that the answer words become whole tokens (" circle", " moving", " big"),
    as they are in the real Qwen2.5-VL vocabulary, instead of letter pieces."""
    from amps_eval.mc2.prompt import question_prompt
    from amps_eval.mc2.synthetic import SPECS, iter_synthetic_items

    lines = []
    for item in iter_synthetic_items(n_per_category, seed, image_size=32):
        lines.append(question_prompt(item["context"], item["question"], item["answer_vision"], item["answer_text"]))
    for spec in SPECS.values():
        lines += [" ".join(spec.answers)] * 8
    return lines




def build_organism(
    out_dir: str | Path,
    settings: OrganismSettings | None = None,
    progress: bool = True,
    evaluate: bool = True,
) -> Path:
    """Train an organism into ``out_dir`` (new or empty) and return the folder.

    The folder loads like a hub checkpoint (``Qwen2_5_VLForConditionalGeneration.from_pretrained``,
    ``amps_eval.processors.load_processor(folder, "qwen2_5_vl")``, ``amps_qwen`` with
    ``pretrained=folder``) and holds ``organism_manifest.json``: settings, design, training curve,
    held-out evaluation (unless ``evaluate=False``) and the sha256 of the weights.
    """
    import transformers
    from transformers import Qwen2_5_VLForConditionalGeneration

    from amps_eval.mc2.synthetic import SYNTHETIC_VERSION
    from amps_eval.processors import load_processor
    from amps_eval.testing.tiny_models import build_tiny_qwen

    settings = settings or OrganismSettings()
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty; give a new or empty folder")
    build_tiny_qwen(out_dir, seed=settings.seed, extra_corpus=tokenizer_corpus() if settings.word_tokens else (),
                    **settings.model_overrides())
    with torch_settings(settings.num_threads, settings.seed):
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(out_dir, dtype=torch.float32)
        processor = load_processor(out_dir, "qwen2_5_vl")
        log = train(model, processor, settings, progress)
    model.save_pretrained(out_dir)

    manifest: dict[str, Any] = {
        "what": "amps-eval model organism: Qwen2_5_VLForConditionalGeneration trained from scratch on the "
        "synthetic MC2 items to follow a known modality preference",
        "settings": settings.to_dict(),
        "design": design_dict(),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "training": log.summary(),
        "weights_sha256": file_sha256(out_dir / WEIGHTS_NAME),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "synthetic": SYNTHETIC_VERSION,
        },
    }
    if evaluate:
        from amps_eval.organism.evaluate import evaluate_organism

        with torch_settings(settings.num_threads, settings.seed):
            result = evaluate_organism(
                out_dir,
                n_per_category=settings.eval_per_category,
                seed=settings.eval_seed,
                image_size=settings.image_size,
                batch_size=settings.eval_batch_size,
            )
        manifest["evaluation"] = result.to_dict()
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return out_dir


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The ``organism_manifest.json`` of an organism folder."""
    return json.loads((Path(folder) / MANIFEST_NAME).read_text(encoding="utf-8"))


__all__ = [
    "CONDITIONS",
    "KINDS",
    "MANIFEST_NAME",
    "OrganismSettings",
    "PromptEncoder",
    "build_organism",
    "read_manifest",
    "train",
]
