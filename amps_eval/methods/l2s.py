"""Learn-to-steer (L2S; Parekh et al.): an MLP g maps the layer's output at the last prompt token,
h[I, T], to that item's own shift d = h[I, T, P_v] - h[I, T, P_t]; at inference the shift
``alpha * g(h)`` is added. Trained with the reference implementation's recipe
(`amps_eval.steering.module.TrainSettings.reference`). Toward the text the same MLP with its decoder
negated, so the text prediction is exactly minus the image one.
"""

from __future__ import annotations

from torch import Tensor

from amps_eval.methods.base import FoldFit, SteeringMethod
from amps_eval.steering.module import train_mlp


class L2S(SteeringMethod):
    name = "l2s"

    def fit_fold(self, x: Tensor, d: Tensor, settings, hidden: int, r_v: Tensor | None,
                 categories: list[str] | None, progress: bool = False) -> FoldFit:
        mlp, history = train_mlp(x, d, hidden, settings.train, progress)
        state = {k: t.detach().cpu().clone() for k, t in mlp.state_dict().items()}
        tensors = {f"vision.{k}": t for k, t in state.items()}
        tensors.update({f"text.{k}": (-t if k == "decoder.weight" else t.clone()) for k, t in state.items()})
        return FoldFit(tensors, {"vision": history[-1], "text": history[-1]})


METHODS = {"l2s": L2S()}
