"""Steering inside generation, for every steered method of `amps_eval.methods.registry`.

All methods add ``alpha * gamma_i * v_i`` to the output of one decoder layer through
`amps_eval.steering.hooks`; the steering file's kind says where ``v_i`` comes from (a fixed vector
of a ``mean`` file, or the fitted MLP applied to the layer's output at the last prompt token for
``l2s`` / ``amps`` / ``amps_beta0``), and the method says what gamma_i is (`base.SteeringMethod`).

Every row is steered toward its task document's ``target`` with the fold of the steering file that
did not see its item (cross-fitting); a row whose item every fold saw is marked ``in_sample``.
The diagnostics of each row include its effective strength ``relative_shift``: ||alpha gamma v|| /
||h||, averaged over the positions it was added to (`hooks.SteeringHandle.relative_shift`).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn

from amps_eval.methods.registry import STEERING_METHODS, implementation, info
from amps_eval.steering import hooks
from amps_eval.steering.file import SteeringFile
from amps_eval.mcs.score import MCSSettings

__all__ = ["RowModules", "Steering", "SteeringConfig"]


@dataclass(frozen=True)
class SteeringConfig:
    method: str
    alpha: float = 1.0
    positions: str = "all"
    beta: float = 1.0
    convention: str = "prose"
    mcs: MCSSettings = MCSSettings()
    item_cache: str | None = None  # mean_mcs: the item cache folder its MCS is read from / written to

    def __post_init__(self) -> None:
        if self.method not in STEERING_METHODS:
            raise ValueError(f"unknown steering method {self.method!r}; expected one of {STEERING_METHODS}")


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
        self.method = implementation(config.method)
        if file.method != info(config.method).file_method:
            raise ValueError(f"method={config.method} reads a {info(config.method).file_method!r} steering file; "
                             f"{file.source} is a {file.method!r} file")
        self.method.check_file(file, config)
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

    @contextlib.contextmanager
    def apply(self, model, batch):
        """Steer one batch's generation; yields the per-row diagnostics (filled in on exit)."""
        rows = self._rows(batch.prompts)
        scales = self.method.row_scales(model, batch, rows, self.file, self.config)
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
        relative = handle.relative_shift.tolist()
        for row, strength, norm, rel in zip(rows, alphas.tolist(), handle.norms.tolist(), relative):
            row.update(method=self.config.method, layer=self.layer, alpha=self.config.alpha, strength=strength,
                       vector_norm=norm, shift_norm=abs(strength) * norm,
                       relative_shift=rel if math.isfinite(rel) else None)
