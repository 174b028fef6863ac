"""Per-sample steering strength from the visual MCS ratio (the AMPS paper's Eq. 9), pure.

    gamma = 1 + beta * (r - mu) / mu,   clipped to [``floor``, ``cap``]; mu at least ``anchor_floor``

``r`` is the sample's reliance on the modality being steered *away from*, ``mu`` the anchor: its
mean over the items of the same MC2 category in the fit set.

Sign convention (an open point; docs/method.md, "Scaling"). The paper's prose: steer *less* where
the model already relies little on the modality being steered away from, *more* where it relies on
it heavily. Eq. 9 as printed uses the visual ratio r_v for both directions, which contradicts that
prose when steering toward the image (away from the text). ``convention="prose"`` (default) uses
r = 1 - r_v (reliance on text) toward the image and r = r_v toward the text;
``convention="literal"`` uses r = r_v for both, as printed. Toward the text both agree.

The clip keeps gamma >= floor >= 0, so neither the scaled target (1 + gamma) * v of Eq. 11 nor the
scaled strength gamma * alpha of mean steering can flip sign.

Bounds (decisions, recorded in every steering file; `amps-eval fit --gamma-max --anchor-floor`): the
anchor reliance mu is at least ``ANCHOR_FLOOR`` (0.01), and gamma at most ``GAMMA_MAX`` (4, i.e.
four times the strength of an item at its category's anchor; gamma averages 1 over a category's fit
items only while no bound binds). Without them a
category whose mean reliance is near 0 turns Monte Carlo noise into huge strengths: an anchor of
0.0059 and an item's r_v of 0.135 gave gamma 22.7 and a collapsed answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from amps_eval.vocabulary import TARGETS as DIRECTIONS

if TYPE_CHECKING:  # torch is imported where it is used: the command line reads CONVENTIONS without it
    from torch import Tensor

CONVENTIONS = ("prose", "literal")
GAMMA_MAX = 4.0
ANCHOR_FLOOR = 0.01


def reliance_away(r_v: Tensor, toward: str, convention: str = "prose") -> Tensor:
    """The ratio Eq. 9 compares: reliance on the modality steered away from (see module doc)."""
    if toward not in DIRECTIONS:
        raise ValueError(f"toward must be one of {DIRECTIONS}, got {toward!r}")
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if convention == "literal" or toward == "text":
        return r_v
    return 1 - r_v


def gamma(
    r_v: Tensor, mu_v: Tensor, beta: float, toward: str, convention: str = "prose", floor: float = 0.0,
    cap: float | None = None, anchor_floor: float = 0.0,
) -> Tensor:
    """Eq. 9 per sample: r_v and mu_v are visual ratios (tensors of the same shape, or mu_v scalar).
    ``cap`` (None: none) bounds gamma above; ``anchor_floor`` bounds the anchor reliance below."""
    import torch

    r_v = torch.as_tensor(r_v, dtype=torch.float64)
    mu_v = torch.as_tensor(mu_v, dtype=torch.float64)
    if not (torch.isfinite(r_v).all() and torch.isfinite(mu_v).all()):
        raise ValueError(f"non-finite visual ratio or anchor: r_v={r_v.tolist()}, mu_v={mu_v.tolist()}")
    if floor < 0:
        raise ValueError(f"floor must be >= 0 so the steering never flips sign, got {floor}")
    if cap is not None and not cap >= max(floor, 1.0):
        raise ValueError(f"cap must be >= max(floor, 1) so an average item keeps its strength, got {cap}")
    if not 0 <= anchor_floor < 1:
        raise ValueError(f"anchor_floor must be in [0, 1), got {anchor_floor}")
    r = reliance_away(r_v, toward, convention)
    mu = reliance_away(mu_v, toward, convention).clamp(min=anchor_floor)
    if (mu <= 0).any():
        raise ValueError(f"anchor reliance must be > 0 to scale by it, got {mu.tolist()}")
    return (1 + beta * (r - mu) / mu).clamp(min=floor, max=cap)
