"""The interface of a steering method: how it fits one cross-fitting fold and how it steers.

Every steered method adds ``alpha * gamma_i * v_i`` to one decoder layer's output (the mechanism is
shared: `amps_eval.steering.hooks`, driven by `amps_eval.methods.steering.Steering`). A method
decides only:

* ``fit_fold``: the tensors of one fold, fitted on that fold's items (a vector per direction, or an
  MLP per direction), with the fold's own MCS anchors when it uses them;
* ``check_file``: what it needs from a steering file beyond the shared compatibility checks;
* ``row_scales``: the per-row strength multiplier gamma_i at inference (1 unless the method scales
  per sample at inference, as ``mean_mcs`` does).

Whether ``v_i`` is a fixed vector or an MLP's prediction follows from the steering file's kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from amps_eval.methods.registry import MethodInfo, info


@dataclass
class FoldFit:
    """What one fold's fit produced: tensors for both directions (``vision.*``, ``text.*``), the
    final training loss per direction (empty when nothing is trained), and the fold's MCS anchors
    (empty when the method does not use them)."""

    tensors: dict[str, Tensor]
    losses: dict[str, float] = field(default_factory=dict)
    anchors: dict[str, float] = field(default_factory=dict)


class SteeringMethod:
    """Base class: a method that needs no MCS, scales nothing per row, and fits nothing itself."""

    name: str = ""
    needs_mcs_at_fit: bool = False  # the fit extracts each item's MCS on [I, T]
    prefills_at_inference: bool = False  # row_scales prefills the prompt (the MCS): it takes ``prefilled``
    reliance_column: str | None = None  # fit with this data column as r_v instead of the MCS (amps_oracle)

    @property
    def info(self) -> MethodInfo:
        return info(self.name)

    def fit_fold(self, x: Tensor, d: Tensor, settings, hidden: int, r_v: Tensor | None,
                 categories: list[str] | None, progress: bool = False) -> FoldFit:
        """Fit one fold on its items: x [N, D] = h[I, T], d [N, D] = h[P_v] - h[P_t]."""
        raise NotImplementedError(f"method {self.name!r} has no fit of its own: fit "
                                  f"`--method {self.info.file_method}` and use that file")

    def check_file(self, file, config) -> None:
        """Refuse a steering file this method cannot use (beyond model/method compatibility)."""

    def row_scales(self, model, batch, rows: list[dict], file, config, prefilled=None) -> list[float]:
        """gamma per row of the batch (and its diagnostics added to ``rows``); 1 by default.
        ``prefilled``: the batch's clean prompt prefill (`amps_eval.mcs.kv_cache.Prefill`) when the
        caller has one, for a method that ``prefills_at_inference``."""
        return [1.0] * len(rows)
