"""Stage 1 of the organism's training: teach its vision tower to read the synthetic images.

Why a stage of its own: trained only through the answer tokens, the organism learns the easy image
categories (colour, size, sport) within a few hundred steps but stays near chance on counting,
relative position, facial expression and arrow direction for thousands of steps: the gradient that
reaches the vision tower through a language model that does not yet look at the image is weak and
noisy. Real multimodal models do not learn to see this way either: their vision encoders are
pretrained (CLIP / SigLIP) before the language model is connected. Stage 1 does the same, in small:
the modules that turn pixels into the language model's image tokens (Qwen2.5-VL's vision tower and
patch merger, LLaVA's CLIP tower and projector: whatever ``model.model.get_image_features`` runs)
are trained to classify the image of each synthetic item, through a linear probe on the mean of the
image tokens. The probe is thrown away; the language model is untouched.

The mean pooling matters: the probe can only succeed if the answer is present in the average image
token, so the tower learns to spread it over all image tokens, where the language model's attention
finds it easily in stage 2.

Images are the training items' (``data_seed``, never the held-out ``eval_seed``), drawn on the fly
at the organism's ``image_size``; the same settings give the same weights.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from amps_eval.mc2.schema import CATEGORIES
from amps_eval.mc2.synthetic import SPECS, synthetic_item


@dataclass(frozen=True)
class AnswerClasses:
    """Every (category, answer) pair as one class; an item is classified among its category's."""

    pairs: tuple[tuple[str, str], ...] = tuple((c, a) for c in CATEGORIES for a in SPECS[c].answers)

    def index(self, category: str, answer: str) -> int:
        return self.pairs.index((category, answer))

    def category_mask(self, categories: list[str]) -> torch.Tensor:
        """[B, n_classes]: 0 for the classes of each row's category, -inf elsewhere."""
        mask = torch.full((len(categories), len(self.pairs)), float("-inf"))
        for row, category in enumerate(categories):
            for column, (c, _) in enumerate(self.pairs):
                if c == category:
                    mask[row, column] = 0.0
        return mask


IMAGE_INPUTS = ("pixel_values", "image_grid_thw")
"""The image processor's outputs that ``get_image_features`` takes (Qwen2.5-VL: both; LLaVA: pixels)."""


def pooled_image_features(model: torch.nn.Module, processor: Any, images: list[Image.Image]) -> torch.Tensor:
    """[B, hidden]: the mean of each image's tokens, as the language model receives them."""
    pixels = processor.image_processor(images=images, return_tensors="pt")
    inputs = {k: v for k, v in pixels.items() if k in IMAGE_INPUTS}
    per_image = model.model.get_image_features(**inputs).pooler_output  # one [tokens, hidden] per image
    return torch.stack([tokens.mean(dim=0) for tokens in per_image])


def pretrain_vision(model: torch.nn.Module, processor: Any, settings: Any, progress: bool = True) -> list[dict[str, Any]]:
    """Train the image path of ``model`` in place (call inside ``torch_settings``): the optimiser
    holds every parameter, but only those ``get_image_features`` uses get a gradient, and AdamW
    leaves the others exactly as they are. Returns the curve: probe accuracy per category, averaged
    over ``settings.log_every`` steps."""
    from tqdm import tqdm

    classes = AnswerClasses()
    probe = torch.nn.Linear(model.config.text_config.hidden_size, len(classes.pairs))
    parameters = [*model.parameters(), *probe.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=settings.vision_pretrain_lr, weight_decay=settings.weight_decay)
    batch = settings.vision_pretrain_batch_size
    curve: list[dict[str, Any]] = []
    hits = {c: [0, 0] for c in CATEGORIES}
    model.train()
    bar = tqdm(range(settings.vision_pretrain_steps), desc="organism vision", disable=not progress, dynamic_ncols=True)
    for step in bar:
        items = [synthetic_item(step * batch + i, settings.data_seed, settings.image_size) for i in range(batch)]
        images = [Image.open(io.BytesIO(item["image"]["bytes"])).convert("RGB") for item in items]
        categories = [item["category"] for item in items]
        labels = torch.tensor([classes.index(item["category"], item["answer_vision"]) for item in items])
        logits = probe(pooled_image_features(model, processor, images)) + classes.category_mask(categories)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)  # the probe is not clipped
        optimizer.step()
        for category, ok in zip(categories, (logits.argmax(-1) == labels).tolist()):
            hits[category][0] += int(ok)
            hits[category][1] += 1
        if (step + 1) % settings.log_every == 0 or step + 1 == settings.vision_pretrain_steps:
            by = {c: round(h[0] / h[1], 3) for c, h in hits.items() if h[1]}
            curve.append({"step": step + 1, "loss": round(loss.item(), 4), "accuracy_by_category": by})
            bar.set_postfix(loss=round(loss.item(), 3), worst=min(by.values()))
            hits = {c: [0, 0] for c in CATEGORIES}
    bar.close()
    return curve
