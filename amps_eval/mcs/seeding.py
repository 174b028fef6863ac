"""How each sample's MCS noise is seeded: a function of the base seed and the sample id only, so the
noise of a sample does not depend on its batch, and of an MC2 item's id and prompt variant, so a
fit, `amps-eval mcs` and the ``mean_mcs`` wrapper draw the same noise for the same prompt."""

from __future__ import annotations

import hashlib
from typing import Any

__all__ = ["noise_key", "sample_seed"]


def noise_key(mc2_id: Any, prompt: str = "none") -> str:
    """The sample id that seeds an MC2 item's MCS noise: a function of the item and the prompt
    variant only, so that `fit` (which computes the anchors) and `mean_mcs` at inference give the
    same r_v for the same prompt, in any batch."""
    return f"mc2_id={mc2_id}/prompt={prompt}"


def sample_seed(seed: int, sample_id: str) -> int:
    """Deterministic 63-bit generator seed for one sample (independent of batch and process)."""
    digest = hashlib.sha256(f"amps-mcs:{int(seed)}:{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
