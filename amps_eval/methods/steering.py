"""The steering methods inside generation: mean, mean_mcs, l2s and amps.

All four add ``alpha * v`` to the output of one decoder layer through `amps_eval.steering.hooks`;
they differ only in where each row's ``v`` comes from:

* ``mean``: the fitted mean of h[P_v] - h[P_t] (negated toward the text), same for every row;
* ``mean_mcs``: that vector with the strength scaled per row by gamma (Eq. 9), from the MCS of the
  row's own prompt, computed here right before generation, and its category's anchor in the file;
* ``l2s`` / ``amps``: the fitted MLP applied to the layer's output at the last prompt token during
  prefill (L2S's network trained on unscaled targets, or AMPS's on MCS-scaled ones).

Every row is steered toward its task document's ``target`` with the fold of the steering file that
did not see its item (cross-fitting); a row whose item every fold saw is marked ``in_sample``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn

from amps_eval.steering import hooks
from amps_eval.steering.file import SteeringFile
from amps_eval.steering.mcs import MCSSettings, compute_mcs, noise_key
from amps_eval.steering.scaling import gamma

STEERING_METHODS = ("mean", "mean_mcs", "l2s", "amps")
FILE_METHOD = {"mean": "mean", "mean_mcs": "mean", "l2s": "l2s", "amps": "amps"}


@dataclass(frozen=True)
class SteeringConfig:
    method: str
    alpha: float = 1.0
    positions: str = "all"
    beta: float = 1.0
    convention: str = "prose"
    mcs: MCSSettings = MCSSettings()


MCS_KEYS = ("sigmas", "draws", "relative", "seed", "eps")
"""The MCS settings that change its values (batching does not)."""


def check_mcs_settings(file: SteeringFile, mcs: MCSSettings) -> None:
    """Refuse a mean_mcs run whose MCS settings differ from those that made the file's anchors: its
    r_v would not be comparable with them (the scaling compares the two)."""
    recorded = (file.settings or {}).get("mcs")
    if not isinstance(recorded, dict):
        return  # a file written in code, without recorded fit settings
    ours = mcs.to_dict()

    def norm(value):
        return [float(v) for v in value] if isinstance(value, (list, tuple)) else value

    differ = {k: (recorded.get(k), ours.get(k)) for k in MCS_KEYS if norm(recorded.get(k)) != norm(ours.get(k))}
    if differ:
        what = ", ".join(f"{k} {a!r} (file) vs {b!r} (run)" for k, (a, b) in differ.items())
        raise ValueError(
            f"{file.source}: its MCS anchors were computed with other MCS settings than this mean_mcs run uses "
            f"({what}); pass mcs_sigmas=, mcs_draws=, mcs_relative= and seed= as the fit had them, or refit"
        )


class RowModules(nn.Module):
    """Applies module ``k`` to the rows assigned to it: one batch, several cross-fit folds."""

    def __init__(self, modules: list[nn.Module], row_module: list[int]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(modules)
        self.row_module = row_module

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        index = torch.as_tensor(self.row_module, device=h.device)
        out = torch.zeros(h.shape, dtype=torch.float32, device=h.device)
        for k, module in enumerate(self.parts):
            rows = index == k
            if rows.any():
                out[rows] = module(h[rows].float())
        return out


class Steering:
    """A loaded steering file plus the run's settings; `apply` steers one batch."""

    def __init__(self, file: SteeringFile, config: SteeringConfig, model: nn.Module) -> None:
        if config.method == "mean_mcs" and not file.anchors:
            raise ValueError(f"method=mean_mcs needs MCS anchors; {file.source} has none: refit with `amps-eval fit --method mean`")
        if config.method == "mean_mcs":
            check_mcs_settings(file, config.mcs)
        self.file = file
        self.config = config
        self.layer = file.layer
        device = next(hooks.decoder_layers(model)[file.layer].parameters()).device
        self._modules: dict[tuple[int, str], nn.Module] = {}
        if file.method != "mean":
            for k in range(len(file.folds)):
                for direction in ("vision", "text"):
                    self._modules[(k, direction)] = file.module(k, direction).to(device=device, dtype=torch.float32)

    def _rows(self, prompts) -> list[dict]:
        rows = []
        for prompt in prompts:
            if prompt.target not in ("vision", "text"):
                raise ValueError(
                    f"method={self.config.method} steers toward the task's target modality, but document "
                    f"{prompt.task}/{prompt.doc_id} has none: use the MC2 tasks (mc2_visual*, mc2_text*)"
                )
            choice = self.file.fold_choice(prompt.item_id)
            rows.append({"task": prompt.task, "doc_id": prompt.doc_id, "mc2_id": prompt.doc.get("mc2_id"),
                         "category": prompt.doc.get("category"), "target": prompt.target,
                         "fold": choice.index, "in_sample": choice.in_sample})
        return rows

    def _scales(self, model, batch, rows) -> list[float]:
        """gamma per row (mean_mcs); 1 for every other method."""
        if self.config.method != "mean_mcs":
            return [1.0] * len(rows)
        encoded = batch.encoded
        result = compute_mcs(model, encoded.inputs, encoded.vision_mask, encoded.text_mask, self.config.mcs,
                             sample_ids=[noise_key(r["mc2_id"]) for r in rows])
        recorded = self.file.settings
        fold_anchors = recorded.get("fold_anchors") or {}
        scales = []
        for row, c_v, c_t, r_v, r_v_se in zip(rows, result.c_v.tolist(), result.c_t.tolist(), result.r_v.tolist(),
                                              result.r_v_stderr.tolist()):
            # the anchors of the fold that steers the row (fitted without it); files from before
            # per-fold anchors fall back to the file's, which saw every item
            anchors = fold_anchors.get(self.file.folds[row["fold"]].name) or self.file.anchors
            mu_v = anchors.get(row["category"], anchors.get("__all__"))
            if mu_v is None:
                raise ValueError(f"no MCS anchor for category {row['category']!r} in {self.file.source}")
            g = float(gamma(torch.tensor(r_v), mu_v, self.config.beta, row["target"], self.config.convention,
                            cap=recorded.get("gamma_max"), anchor_floor=recorded.get("anchor_floor", 0.0)))
            row.update(c_v=c_v, c_t=c_t, r_v=r_v, r_v_stderr=r_v_se if math.isfinite(r_v_se) else None,
                       anchor=mu_v, gamma=g)
            scales.append(g)
        return scales

    @contextlib.contextmanager
    def apply(self, model, batch):
        """Steer one batch's generation; yields the per-row diagnostics (filled in on exit)."""
        rows = self._rows(batch.prompts)
        scales = self._scales(model, batch, rows)
        alphas = torch.tensor([self.config.alpha * s for s in scales])
        mask = batch.encoded.inputs["attention_mask"]
        if self.file.method == "mean":
            vectors = torch.stack([self.file.vector(r["fold"], r["target"]) for r in rows])
            context = hooks.steer(model, self.layer, vectors, alphas, mask, self.config.positions)
        else:
            keys = sorted({(r["fold"], r["target"]) for r in rows})
            router = RowModules([self._modules[k] for k in keys], [keys.index((r["fold"], r["target"])) for r in rows])
            context = hooks.steer_with_module(model, self.layer, router, alphas, mask, self.config.positions)
        with context as handle:
            yield rows
        for row, strength, norm in zip(rows, alphas.tolist(), handle.norms.tolist()):
            row.update(method=self.config.method, layer=self.layer, alpha=self.config.alpha, strength=strength,
                       vector_norm=norm, shift_norm=abs(strength) * norm)
