"""Measure a graded organism on held-out graded items by a plain teacher-forced forward.

Per held-out item (``amps_eval.organism.graded.graded_item`` with a seed training did not use), in
both option orders, the organism's ``image_logodds`` (:mod:`amps_eval.logodds`, option-text
candidates: the first token where the image's and the text's answers differ, after their shared
prefix) is computed from one forward of the prompt followed by the image option's answer:

* without instruction: it should track ``logit(planted_p_vision)``; the targets are
  Spearman >= 0.9 over all items and >= 0.7 within every category (:data:`TARGET_ALL`,
  :data:`TARGET_WITHIN`);
* with the MC2 authors' instruction toward the image / the text (the ``inst`` baselines): the share
  of items whose log-odds favour the instructed option (target >= 0.95, as the fixed organisms).

The same quantity is what the wrappers record as ``image_logodds`` from a generation's first
steps; :mod:`tests.test_graded_organism` checks the two agree.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from amps_eval.correlation import spearman
from amps_eval.logodds import text_pair
from amps_eval.mc2.schema import CATEGORIES

TARGET_ALL = 0.9
TARGET_WITHIN = 0.7
TARGET_INSTRUCTION = 0.95


def answer_logodds(model: torch.nn.Module, encoder: Any, examples: Sequence[Any], batch_size: int = 16) -> list[float]:
    """Per example (an :class:`amps_eval.organism.design.Example` of a conflict item whose
    ``answer`` is the image option), the log-odds image vs text option at the first token where the
    two answer texts differ, from a forward of the prompt + the image option's answer."""
    tokenizer = encoder.processor.tokenizer
    out: list[float] = []
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start : start + batch_size])
        inputs, targets = encoder.encode(chunk, "text")
        keep = targets.shape[1]
        width = keep - 1
        with torch.no_grad():
            logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits.float()[:, -keep:]
        log_probs = torch.log_softmax(logits, dim=-1)
        for r, example in enumerate(chunk):
            other = example.option_b if example.answer == "A" else example.option_a
            image_ids = tokenizer(example.answer_text, add_special_tokens=False)["input_ids"]
            text_ids = tokenizer(other, add_special_tokens=False)["input_ids"]
            pair = text_pair(image_ids, text_ids, encoder.eos_id)
            position = width - (len(image_ids) + 1) + pair.step
            row = log_probs[r, position]
            out.append(float(row[pair.image_token] - row[pair.text_token]))
    return out


@dataclass
class GradedEvaluation:
    n_per_category: int
    seed: int
    spearman_all: float
    spearman_by_category: dict[str, float]
    inst_following: dict[str, float]
    mean_logodds_by_category: dict[str, float]
    mean_logit_p_by_category: dict[str, float]
    rows: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def targets(self) -> dict[str, bool]:
        return {
            f"spearman_all>={TARGET_ALL}": self.spearman_all >= TARGET_ALL,
            f"spearman_within_every_category>={TARGET_WITHIN}": min(self.spearman_by_category.values()) >= TARGET_WITHIN,
            f"inst_vision>={TARGET_INSTRUCTION}": self.inst_following["vision"] >= TARGET_INSTRUCTION,
            f"inst_text>={TARGET_INSTRUCTION}": self.inst_following["text"] >= TARGET_INSTRUCTION,
        }

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("rows")
        data["targets"] = self.targets()
        return data


def held_out_examples(n_per_category: int, seed: int, image_size: int) -> list[Any]:
    """Held-out conflict examples: every graded item in both option orders, under no instruction,
    the image instruction and the text instruction; ``answer`` is always the image option."""
    from amps_eval.mc2.prompt import OptionOrder, options
    from amps_eval.organism.design import CONDITIONS, Example
    from amps_eval.organism.graded import graded_item

    examples = []
    for index in range(n_per_category * len(CATEGORIES)):
        item = graded_item(index, seed, image_size)
        for vision_first in (True, False):
            order = OptionOrder(vision_first=vision_first)
            a, b = options(item["answer_vision"], item["answer_text"], order)
            for condition in CONDITIONS:
                examples.append(Example(index, item["category"], "conflict", condition, item["context"],
                                        item["question"], a, b, order.vision_letter, item["image"]["bytes"]))
    return examples


def evaluate_graded(folder: str | Path, architecture: str, n_per_category: int = 16, seed: int = 2,
                    image_size: int = 84, batch_size: int = 16) -> GradedEvaluation:
    from amps_eval.organism.architectures import architecture as get_architecture
    from amps_eval.organism.graded import planted_logit, cue_level
    from amps_eval.organism.train import PromptEncoder
    from amps_eval.processors import load_processor

    arch = get_architecture(architecture)
    model = arch.load_model_class().from_pretrained(folder, dtype=torch.float32).eval()
    processor = load_processor(folder, arch.name)
    encoder = PromptEncoder(model, processor)
    examples = held_out_examples(n_per_category, seed, image_size)
    values = answer_logodds(model, encoder, examples, batch_size)
    rows = []
    for example, value in zip(examples, values):
        rows.append({"index": example.index, "category": example.category, "condition": example.condition.name,
                     "vision_first": example.answer == "A", "logodds": value,
                     "planted_logit": planted_logit(example.category, cue_level(example.index, seed))})
    none = [r for r in rows if r["condition"] == "none"]
    by_cat = {c: [r for r in none if r["category"] == c] for c in CATEGORIES}
    inst = {t: sum((r["logodds"] > 0) == (t == "vision") for r in rows if r["condition"] == f"inst_{t}")
            / max(1, sum(r["condition"] == f"inst_{t}" for r in rows)) for t in ("vision", "text")}
    return GradedEvaluation(
        n_per_category=n_per_category,
        seed=seed,
        spearman_all=spearman([r["logodds"] for r in none], [r["planted_logit"] for r in none]),
        spearman_by_category={c: spearman([r["logodds"] for r in rs], [r["planted_logit"] for r in rs])
                              for c, rs in by_cat.items()},
        inst_following=inst,
        mean_logodds_by_category={c: sum(r["logodds"] for r in rs) / len(rs) for c, rs in by_cat.items()},
        mean_logit_p_by_category={c: sum(r["planted_logit"] for r in rs) / len(rs) for c, rs in by_cat.items()},
        rows=rows,
    )
