"""AMPS (arXiv 2602.12533): L2S trained on MCS-scaled targets, one MLP per direction.

Each item's target is Eq. 11, ``(1 + gamma_i) * d_i`` toward the image and ``(1 + gamma_i) * (-d_i)``
toward the text, gamma_i from Eq. 9 with the per-category anchors of the fold's own fit items
(`amps_eval.steering.scaling`). The training recipe is L2S's, so the two differ only in the targets.

``amps_beta0`` is this project's added ablation (not a row of the paper's Table 3, which has
without steering, L2S without scaling and full AMPS): beta = 0 makes every gamma 1, so its targets
are L2S's doubled. AMPS's gamma is linear in the item's reliance r with the category's mean
reliance as anchor mu, so over a category's fit items gamma averages 1, and (1 + gamma) 2, *only
while no bound binds*: gamma is clipped at 0 and at ``gamma_max``, and mu is raised to
``anchor_floor`` (0.01) where the category's mean reliance is smaller. Where the anchor floor
binds (tiny anchors, e.g. toward the text on the organisms) every gamma of the category is
smaller and the mean of (1 + gamma) is below 2, so AMPS and ``amps_beta0`` at the same alpha are
not at the same average strength. Compare them (and AMPS with L2S) at matched effective strength:
``amps_eval.report.matched``.
"""

from __future__ import annotations

from torch import Tensor

from amps_eval.methods.base import FoldFit, SteeringMethod
from amps_eval.steering.anchors import amps_targets, category_anchors
from amps_eval.steering.module import train_mlp
from amps_eval.steering.scaling import DIRECTIONS


class AMPS(SteeringMethod):
    name = "amps"
    needs_mcs_at_fit = True

    def fit_fold(self, x: Tensor, d: Tensor, settings, hidden: int, r_v: Tensor | None,
                 categories: list[str] | None, progress: bool = False) -> FoldFit:
        if r_v is None or categories is None:
            raise ValueError(f"{self.name} needs each item's r_v and category")
        anchors = category_anchors(r_v, categories)
        tensors, losses = {}, {}
        for direction in DIRECTIONS:
            y = amps_targets(d, r_v, categories, anchors, settings.fit_beta, direction, settings.convention,
                             settings.gamma_max, settings.anchor_floor)
            mlp, history = train_mlp(x, y, hidden, settings.train, progress)
            tensors.update({f"{direction}.{k}": t.detach().cpu().clone() for k, t in mlp.state_dict().items()})
            losses[direction] = history[-1]
        return FoldFit(tensors, losses, anchors)


class AMPSBeta0(AMPS):
    """AMPS with beta fixed at 0 (every gamma = 1): this project's added ablation (shown in Table 3,
    but not one of the paper's three Table 3 rows)."""

    name = "amps_beta0"


class AMPSOracle(AMPS):
    """AMPS with gamma computed from a known per-item reliance instead of the MCS: the items'
    ``planted_p_vision`` (a graded data folder, `amps_eval.mc2.graded`) takes the place of r_v in
    Eq. 9-11 (anchors included). The positive control of the known-answer tests (``amps-eval
    validate``): if it beats ``amps_beta0`` at matched strength, per-item scaling can help on the
    model; if AMPS does not follow it, the MCS is the bottleneck."""

    name = "amps_oracle"
    needs_mcs_at_fit = False
    reliance_column = "planted_p_vision"  # read from the data instead of the MCS (amps_eval.fit)


METHODS = {"amps": AMPS(), "amps_beta0": AMPSBeta0(), "amps_oracle": AMPSOracle()}
