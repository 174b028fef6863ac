"""Mean steering: v = mean over the fit items of h[I, T, P_v] - h[I, T, P_t] (toward the image),
negated toward the text, at a fixed strength alpha for every sample.

The fit also stores each fold's per-category mean visual ratio (the anchors of Eq. 9), taken on the
fold's own fit items, so that ``mean_mcs`` can scale a held-out item by anchors that did not see it.
"""

from __future__ import annotations

from torch import Tensor

from amps_eval.methods.base import FoldFit, SteeringMethod
from amps_eval.steering.anchors import category_anchors


class Mean(SteeringMethod):
    name = "mean"
    needs_mcs_at_fit = True  # for the anchors mean_mcs reads; the vector does not need it

    def fit_fold(self, x: Tensor, d: Tensor, settings, hidden: int, r_v: Tensor | None,
                 categories: list[str] | None, progress: bool = False) -> FoldFit:
        v = d.float().mean(dim=0).cpu()
        anchors = category_anchors(r_v, categories) if r_v is not None and categories is not None else {}
        return FoldFit({"vision.vector": v, "text.vector": -v}, {}, anchors)


METHODS = {"mean": Mean()}
