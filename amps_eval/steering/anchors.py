"""The MCS anchors of Eq. 9 and the scaled targets of Eq. 11 (pure functions).

* `category_anchors`: mu_v, the mean visual ratio of the fit items per MC2 category, plus
  ``"__all__"`` over every item;
* `amps_targets`: each item's AMPS target, (1 + gamma_i) * (+-d_i).
"""

from __future__ import annotations

import torch
from torch import Tensor

from amps_eval.steering.scaling import ANCHOR_FLOOR, DIRECTIONS, GAMMA_MAX, gamma

ALL = "__all__"  # the anchor over every item, next to the per-category ones


def category_anchors(r_v: Tensor, categories: list[str]) -> dict[str, float]:
    """mu_v of Eq. 9: the mean visual ratio per category, plus ``"__all__"`` over every item."""
    values = torch.as_tensor(r_v, dtype=torch.float64)
    anchors = {ALL: float(values.mean())}
    for category in sorted(set(categories)):
        rows = [i for i, c in enumerate(categories) if c == category]
        anchors[category] = float(values[rows].mean())
    return anchors


def amps_targets(
    d: Tensor, r_v: Tensor, categories: list[str], anchors: dict[str, float], beta: float, direction: str,
    convention: str = "prose", gamma_max: float | None = GAMMA_MAX, anchor_floor: float = ANCHOR_FLOOR,
) -> Tensor:
    """Eq. 11 per item: (1 + gamma_i) * d_i toward the image, (1 + gamma_i) * (-d_i) toward the text.

    gamma_i is Eq. 9 (``scaling.gamma``) with the anchor of item i's category; with beta = 0 every
    gamma is 1 and the targets are 2 * (+-d). Pure: [N, D] float32 out.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    missing = sorted(set(categories) - set(anchors))
    if missing:
        raise ValueError(f"no anchor for categor(y/ies) {missing}; anchors cover {sorted(anchors)}")
    mu = torch.tensor([anchors[c] for c in categories], dtype=torch.float64)
    g = gamma(torch.as_tensor(r_v, dtype=torch.float64), mu, beta, direction, convention, cap=gamma_max,
              anchor_floor=anchor_floor)
    sign = 1.0 if direction == "vision" else -1.0
    return ((1.0 + g) * sign).to(torch.float32)[:, None].to(d.device) * d.float()
