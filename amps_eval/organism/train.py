"""Train a model organism from scratch, on CPU: a small ``Qwen2_5_VLForConditionalGeneration`` or
``LlavaForConditionalGeneration`` (``OrganismSettings.architecture``).

:func:`build_organism` writes a checkpoint folder in hub layout (the ``amps_eval.tiny_models``
builder of the architecture supplies the config, tokenizer, image processor and chat template;
training replaces the random weights), then evaluates it on held-out items and writes
``organism_manifest.json`` next to the weights.

Training, in two stages
    1. the vision tower alone (:mod:`amps_eval.organism.vision_pretrain`, ``vision_pretrain_steps``):
       it learns to read the eight kinds of synthetic image through a throw-away linear probe, as
       real vision encoders are pretrained before the language model is attached (about 3 minutes);
    2. the whole model, by teacher forcing on the answer only: the prompt is what the ``amps_qwen``
       (or ``amps_llava``) wrapper sends (the wrapper's own ``render`` / ``encode_turns``, left padding, so training
       prompts are identical token for token to evaluation prompts), followed by the answer and
       ``<|im_end|>``; the loss is the cross-entropy of those answer tokens. AdamW, linear warm-up
       then cosine decay, gradient clipping. Examples come from
       :func:`amps_eval.organism.design.training_example` (generated on the fly, nothing is
       cached), in an order fixed by the seed; the first ``vision_steps`` steps use only the
       neutral examples (the image with a context that asserts nothing), so the language model
       learns to read the image tokens before it meets conflicts.

    Without stage 1, stage 2 alone learns colour, size and sport within a few hundred steps but
    stays below 80% on reading counts, relative positions, faces and arrows after 1300 steps, and
    so follows the image instruction on only about 70% of conflict items; with it, the shipped
    settings meet every target (``organism_manifest.json``).

Answer format
    ``answer_format="text"`` (the default): the organism answers with the text of the chosen option
    ("blue", "moving left"), which ``amps_eval.mc2.parse.follows`` scores exactly like the option's
    letter. ``"letter"`` (answer "A" / "B") is supported but does not train within the CPU budget:
    choosing a letter needs the model to bind each option's text to its letter and compare it with
    the image or the context, an in-context matching circuit that a model this small, trained from
    scratch on about 40k answer tokens, does not find (training accuracy stays at chance for 1800
    steps of 32, with or without attention-initialisation priors). Answering with the text
    needs no binding: the context's answer is the answer word that occurs twice in the prompt, the
    image's answer is a visual class.

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

from amps_eval.encoding import PromptEncoder as SharedEncoder
from amps_eval.families import family_of_model
from amps_eval.files import sha256_file
from amps_eval.organism.design import (
    ANSWER_FORMATS,
    VARIANTS_PER_ITEM,
    Example,
    design_dict,
    is_neutral_slot,
    training_example,
)

MANIFEST_NAME = "organism_manifest.json"
DESIGNS: tuple[str, ...] = ("fixed", "graded")
INITS: tuple[str, ...] = ("scratch", "shipped")
WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True)
class OrganismSettings:
    """Everything that determines an organism (recorded in its manifest)."""

    architecture: str = "qwen2_5_vl"  # or "llava" (amps_eval.organism.architectures)
    seed: int = 0  # weight initialisation and data order
    data_seed: int = 1  # the synthetic training items
    eval_seed: int = 2  # the held-out items (must differ from data_seed)
    pixels: int = 84  # images are resized to pixels x pixels: 6x6 patches (Qwen: 9 merged tokens, LLaVA: 36)
    image_size: int = 84  # drawing size of the held-out items
    train_image_sizes: tuple[int, ...] = (84,)  # drawing sizes of the training items (cycled)
    n_items: int = 6000  # distinct training items; each gives 6 examples (design.training_example)
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3  # 2e-3 partly undoes the pretrained vision features (slower, 0.80 vs 0.93 at step 550)
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio
    warmup_steps: int = 30
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    # language model
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    word_tokens: bool = True  # train the tokenizer on MC2-style text too (see tokenizer_corpus)
    # vision tower
    vision_hidden_size: int = 128
    vision_intermediate_size: int = 256
    vision_depth: int = 3
    vision_num_heads: int = 4
    answer_format: str = "text"  # "text" (the option's text) or "letter" (A / B); see the module docstring
    vision_pretrain_steps: int = 500  # stage 1 (organism.vision_pretrain): the vision tower alone
    vision_pretrain_batch_size: int = 64
    vision_pretrain_lr: float = 2e-3
    vision_steps: int = 100  # stage 2 curriculum: its first steps use only the neutral examples
    design: str = "fixed"  # "fixed" (organism.design) or "graded" (organism.graded: planted per-item p)
    init: str = "scratch"  # "scratch", or "shipped": fine-tune the shipped fixed organism of the architecture
    # runtime
    num_threads: int = 1
    log_every: int = 50
    eval_per_category: int = 16  # held-out items per category (each asked in both option orders)
    eval_batch_size: int = 16

    def __post_init__(self) -> None:
        from amps_eval.organism.architectures import architecture

        architecture(self.architecture)  # a clear error for an unknown one
        if self.data_seed == self.eval_seed:
            raise ValueError("eval_seed must differ from data_seed: the evaluation is on held-out items")
        if self.pixels % 28:
            raise ValueError(f"pixels must be a multiple of 28 (patch 14 x merge 2), got {self.pixels}")
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(f"answer_format must be one of {tuple(ANSWER_FORMATS)}, got {self.answer_format!r}")
        if self.design not in DESIGNS:
            raise ValueError(f"design must be one of {DESIGNS}, got {self.design!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.steps < 1 or self.batch_size < 1 or self.n_items < 1:
            raise ValueError("steps, batch_size and n_items must be >= 1")
        if self.hidden_size % self.num_attention_heads or self.vision_hidden_size % self.vision_num_heads:
            raise ValueError("hidden sizes must be divisible by the number of heads")

    @classmethod
    def for_architecture(cls, name: str = "qwen2_5_vl", **overrides: Any) -> "OrganismSettings":
        """The settings of the shipped organism of architecture ``name``, with ``overrides``."""
        from amps_eval.organism.architectures import architecture

        return cls(**{"architecture": name, **dict(architecture(name).settings_overrides), **overrides})

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


class PromptEncoder(SharedEncoder):
    """Encodes conversations with the wrappers' own encoder (`amps_eval.encoding.PromptEncoder`), so
    that training prompts are exactly the evaluation prompts."""

    def __init__(self, model: torch.nn.Module, processor: Any) -> None:
        super().__init__(family_of_model(model), model, processor)
        eos = model.generation_config.eos_token_id  # where the wrapper's generation stops
        self.eos_id = eos[0] if isinstance(eos, (list, tuple)) else eos

    def answer_ids(self, example: Example, answer_format: str) -> list[int]:
        """The assistant's answer as token ids, ending with the token where generation stops
        (``<|im_end|>`` for Qwen2.5-VL, ``</s>`` for LLaVA)."""
        if answer_format == "letter":
            ids = self.processor.tokenizer(example.answer, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise RuntimeError(f"the answer {example.answer!r} is not a single token here: {ids}")
            return [ids[0], self.eos_id]
        if answer_format == "text":
            ids = self.processor.tokenizer(example.answer_text, add_special_tokens=False)["input_ids"]
            return [*ids, self.eos_id]
        raise ValueError(f"answer_format must be 'letter' or 'text', got {answer_format!r}")

    def encode(self, examples: list[Example], answer_format: str = "text") -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Model inputs (the left-padded prompt, then the answer) and the targets of the last
        ``targets.shape[1]`` positions (-100 where nothing is predicted)."""
        encoded = self.encode_turns([example.turns() for example in examples])
        inputs = dict(encoded.inputs)
        answers = [self.answer_ids(e, answer_format) for e in examples]
        width = max(len(a) for a in answers)
        rows, length = inputs["input_ids"].shape
        pad_id = self.processor.tokenizer.pad_token_id

        def shifted(tensor: torch.Tensor, fill: int, tails: list[list[int]]) -> torch.Tensor:
            out = torch.full((rows, length + width), fill, dtype=tensor.dtype)
            for r, tail in enumerate(tails):
                row = torch.cat([tensor[r], torch.tensor(tail, dtype=tensor.dtype)])
                out[r, width - len(tail) :] = row
            return out

        inputs["input_ids"] = shifted(inputs["input_ids"], pad_id, answers)
        inputs["attention_mask"] = shifted(inputs["attention_mask"], 0, [[1] * len(a) for a in answers])
        if "mm_token_type_ids" in inputs:
            inputs["mm_token_type_ids"] = shifted(inputs["mm_token_type_ids"], 0, [[0] * len(a) for a in answers])
        # logits of the last width + 1 positions: index j predicts token length + j (absolute);
        # row r's answer occupies the last len(answer) positions.
        targets = torch.full((rows, width + 1), -100, dtype=torch.long)
        for r, answer in enumerate(answers):
            targets[r, width - len(answer) : width] = torch.tensor(answer)
        return inputs, targets


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
    """The slots of each step's batch, in the seeded order. Curriculum: before ``vision_steps``
    only the neutral examples (the image and a context that asserts nothing) are used, so the
    vision tower learns to read every category first."""
    order = data_order(settings)
    for step in range(settings.steps):
        slots: list[int] = []
        while len(slots) < settings.batch_size:
            slot = next(order)
            if step < settings.vision_steps and not is_neutral_slot(slot):
                continue
            slots.append(slot)
        yield slots


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
    """Running loss and answer accuracy (every answer token argmax-correct) by kind, condition and category."""

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


def soft_target_loss(answer_logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with soft targets over whole answers: row ``r`` is one answer of a question,
    weighted by the probability ``weights[r]`` the target gives it (a question with a soft target
    appears twice, once per option, with weights p and 1 - p). The token losses are summed per row,
    weighted, and divided by the weighted number of answer tokens, so with all weights 1 this is the
    plain mean token cross-entropy. Its minimum over the model is reached when the model gives each
    whole answer the target's probability, i.e. log-odds of the two answers = logit(p)."""
    per_token = torch.nn.functional.cross_entropy(
        answer_logits.transpose(1, 2), targets, ignore_index=-100, reduction="none"
    )  # [rows, keep]
    counted = (targets != -100).float()
    return (weights[:, None] * per_token * counted).sum() / (weights[:, None] * counted).sum()


def example_maker(design: str):
    """The training example function of a design: ``fixed`` (:mod:`amps_eval.organism.design`) or
    ``graded`` (:mod:`amps_eval.organism.graded`)."""
    if design == "graded":
        from amps_eval.organism.graded import graded_training_example

        return graded_training_example
    return training_example


def train(model: torch.nn.Module, processor: Any, settings: OrganismSettings, progress: bool = True) -> TrainingLog:
    """Train ``model`` in place (call inside :func:`torch_settings`)."""
    from tqdm import tqdm

    make_example = example_maker(settings.design)

    encoder = PromptEncoder(model, processor)
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
        examples = [make_example(s, settings.data_seed, settings.train_image_sizes) for s in slots]
        soft = [e.flipped() for e in examples if e.target_p < 1.0]  # the soft targets' other option
        inputs, targets = encoder.encode(examples + soft, settings.answer_format)
        lr = lr_at(step, settings)
        for group in optimizer.param_groups:
            group["lr"] = lr
        keep = targets.shape[1]
        logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits.float()
        answer_logits = logits[:, -keep:]  # [B, keep, V]: the answer tokens, then <|im_end|>
        if soft:
            weights = torch.tensor([e.target_p for e in examples + soft])
            loss = soft_target_loss(answer_logits, targets, weights)
        else:
            loss = torch.nn.functional.cross_entropy(
                answer_logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
            )
        answer_logits, targets = answer_logits[: len(examples)], targets[: len(examples)]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()

        with torch.no_grad():
            predicted = answer_logits.argmax(-1)
            correct = ((predicted == targets) | (targets == -100)).all(dim=1).tolist()
        window.add(loss.item(), examples, correct)
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
        lines += [" ".join(spec.answers)] * 8  # " word", as in the options
        lines += ["\n".join(spec.answers)] * 8  # "word" at the start of a line, as an answer
    return lines




def build_organism(
    out_dir: str | Path,
    settings: OrganismSettings | None = None,
    progress: bool = True,
    evaluate: bool = True,
) -> Path:
    """Train an organism into ``out_dir`` (new or empty) and return the folder.

    The folder loads like a hub checkpoint (``<model class>.from_pretrained``,
    ``amps_eval.families.family(settings.architecture).load_processor(folder)``, ``amps_qwen`` /
    ``amps_llava`` with ``pretrained=folder``) and holds ``organism_manifest.json``: settings, design, training curve,
    held-out evaluation (unless ``evaluate=False``) and the sha256 of the weights.
    """
    import transformers

    from amps_eval.mc2.synthetic import SYNTHETIC_VERSION
    from amps_eval.organism.architectures import architecture
    settings = settings or OrganismSettings()
    arch = architecture(settings.architecture)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty; give a new or empty folder")
    base = None
    if settings.init == "shipped":
        base = start_from_shipped(out_dir, arch)
    else:
        arch.build_checkpoint(out_dir, settings, tokenizer_corpus() if settings.word_tokens else [])
    with torch_settings(settings.num_threads, settings.seed):
        model = arch.load_model_class().from_pretrained(out_dir, dtype=torch.float32)
        processor = arch.family.load_processor(out_dir)
        from amps_eval.organism.vision_pretrain import pretrain_vision

        start = time.perf_counter()
        vision_curve = pretrain_vision(model, processor, settings, progress) if settings.vision_pretrain_steps else []
        vision_seconds = time.perf_counter() - start
        log = train(model, processor, settings, progress)
    model.save_pretrained(out_dir)

    manifest: dict[str, Any] = {
        "what": f"amps-eval model organism: {arch.model_class} trained from scratch on the "
        "synthetic MC2 items to follow a known modality preference",
        "lmms_model": arch.lmms_model,
        "settings": settings.to_dict(),
        "design": design_dict(settings.answer_format) if settings.design == "fixed" else graded_design(),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "training": {
            **log.summary(),
            "seconds": round(vision_seconds + log.seconds, 1),
            "answer_seconds": round(log.seconds, 1),
            "vision_pretraining": {"seconds": round(vision_seconds, 1), "curve": vision_curve},
        },
        "weights_sha256": sha256_file(out_dir / WEIGHTS_NAME),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "synthetic": SYNTHETIC_VERSION,
        },
    }
    if base is not None:
        manifest["what"] = (f"amps-eval graded model organism: the shipped {arch.model_class} organism fine-tuned "
                            "on the synthetic MC2 items to follow the image with a planted per-item probability")
        manifest["init"] = base
    if evaluate and settings.design == "graded":
        from amps_eval.organism.graded_evaluate import evaluate_graded

        with torch_settings(settings.num_threads, settings.seed):
            manifest["evaluation"] = evaluate_graded(out_dir, arch.name, settings.eval_per_category, settings.eval_seed,
                                                     settings.image_size, settings.eval_batch_size).to_dict()
    elif evaluate:
        from amps_eval.organism.evaluate import evaluate_organism

        with torch_settings(settings.num_threads, settings.seed):
            result = evaluate_organism(
                out_dir,
                n_per_category=settings.eval_per_category,
                seed=settings.eval_seed,
                image_size=settings.image_size,
                batch_size=settings.eval_batch_size,
                model=arch.lmms_model,
            )
        manifest["evaluation"] = result.to_dict()
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return out_dir


def graded_design() -> dict[str, Any]:
    from amps_eval.organism.graded import design_dict as graded_design_dict

    return graded_design_dict()


def start_from_shipped(out_dir: Path, arch: Any) -> dict[str, Any]:
    """Copy the shipped fixed organism of ``arch`` (config, tokenizer, processor, weights; not its
    manifest) into ``out_dir``, the starting point of a fine-tuned organism; returns what the
    manifest records about it."""
    import shutil

    from amps_eval.organism import PACKAGE_DIR

    source = PACKAGE_DIR / arch.folder
    if not (source / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"init='shipped' needs the shipped organism at {source}; build it first")
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file() and path.name != MANIFEST_NAME:
            shutil.copy2(path, out_dir / path.name)
    return {"from": arch.folder, "weights_sha256": sha256_file(source / WEIGHTS_NAME)}


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The ``organism_manifest.json`` of an organism folder."""
    return json.loads((Path(folder) / MANIFEST_NAME).read_text(encoding="utf-8"))


__all__ = [
    "MANIFEST_NAME",
    "OrganismSettings",
    "PromptEncoder",
    "build_organism",
    "read_manifest",
    "train",
]
