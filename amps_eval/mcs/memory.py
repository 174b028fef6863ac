"""The memory of one batched MCS pass: how many perturbed cache copies fit a budget."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["CUDA_MEMORY_FRACTION", "CopyFootprint", "HOST_MEMORY_BUDGET", "copies_per_pass", "memory_budget"]

HOST_MEMORY_BUDGET = 4 * 2**30
"""Bytes that the perturbed copies of one pass may take on a device other than CUDA, when
``max_copies_per_pass`` is None (`copies_per_pass`)."""
CUDA_MEMORY_FRACTION = 0.5
"""Share of a CUDA device's free memory (``torch.cuda.mem_get_info`` plus what torch's allocator
holds unused) that the perturbed copies of one pass may take, when ``max_copies_per_pass`` is None."""


@dataclass(frozen=True)
class CopyFootprint:
    """The sizes that set the memory of one batched MCS pass (`bytes_per_copy`, `fixed_bytes`).

    layers, kv_heads, head_dim: the cache's; tokens: the cut cache's length (prompt - 1);
    entries: the most positions one copy perturbs; group_width, draws: the positions and draws of
    the widest noise group; cache_bytes / work_bytes: element sizes of the cache dtype and of the
    work dtype; query_heads: attention heads (> kv_heads for grouped-query attention); vocab,
    hidden, intermediate: the language model's sizes (hidden / intermediate 0 when unknown);
    noise_groups: the noise groups a pass may hold at once (2; 3 with orthogonal noise, whose
    newest group is held with its orthogonalised copy while it is made, `amps_eval.mcs.noise`).
    """

    layers: int
    kv_heads: int
    head_dim: int
    tokens: int
    entries: int
    group_width: int
    draws: int
    cache_bytes: int
    work_bytes: int
    query_heads: int
    vocab: int
    hidden: int = 0
    intermediate: int = 0
    noise_groups: int = 2

    def bytes_per_copy(self) -> int:
        """Estimated bytes one perturbed copy adds to a pass: its cache copy; inside the pass, the
        copy concatenated with the query token's K/V and, for grouped-query attention, repeated to
        the query heads (both kept for the backward), plus one layer's gradient of those; its
        perturbed entries (leaves, their gradients, the gathered clean entries and the stacked
        gradients in the cache dtype, the noise and the squared gradients in the work dtype); the
        one-token activations (about 12 hidden + 4 intermediate vectors per layer) and 4 vectors of
        vocabulary size (logits, log-softmax, their gradients)."""
        per_position = self.layers * 2 * self.kv_heads * self.head_dim  # K/V elements, all layers
        repeat = self.query_heads // self.kv_heads if self.query_heads > self.kv_heads else 0
        cache = per_position * self.tokens * self.cache_bytes
        in_pass = per_position * (self.tokens + 1) * self.cache_bytes * (1 + repeat + max(repeat, 1) / self.layers)
        entries = per_position * self.entries * (4 * self.cache_bytes + 2 * self.work_bytes)
        activations = (self.layers * (12 * self.hidden + 4 * self.intermediate) + 4 * self.vocab) * self.work_bytes
        return int(cache + in_pass + entries + activations)

    def fixed_bytes(self) -> int:
        """Bytes a pass holds whatever its size: up to ``noise_groups`` noise groups (float32) drawn ahead."""
        return self.noise_groups * self.draws * self.layers * 2 * self.kv_heads * self.group_width * self.head_dim * 4


def copies_per_pass(footprint: CopyFootprint, budget_bytes: int, total: int) -> int:
    """The most perturbed copies (at least 1, at most ``total``) whose `CopyFootprint` fits
    ``budget_bytes``."""
    room = budget_bytes - footprint.fixed_bytes()
    return max(1, min(total, room // max(footprint.bytes_per_copy(), 1)))


def memory_budget(device: torch.device) -> int:
    """Bytes the perturbed copies of one pass may take on ``device``: `CUDA_MEMORY_FRACTION` of the
    free memory of a CUDA device, `HOST_MEMORY_BUDGET` elsewhere."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(CUDA_MEMORY_FRACTION * free)
    return HOST_MEMORY_BUDGET


def _language_sizes(model: torch.nn.Module) -> dict[str, int]:
    """The language model's num_attention_heads, hidden_size and intermediate_size from its
    config (the keys it lacks are left out)."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    sizes = {}
    for name in ("num_attention_heads", "hidden_size", "intermediate_size"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            sizes[name] = value
    return sizes
