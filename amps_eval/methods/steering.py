"""Steering inside generation, for every steered method of `amps_eval.methods.registry`.

All methods add ``alpha * gamma_i * v_i`` to the output of one decoder layer through
`amps_eval.steering.hooks`; the steering file's kind says where ``v_i`` comes from (a fixed vector
of a ``mean`` file, or the fitted MLP applied to the layer's output at the last prompt token for
``l2s`` / ``amps`` / ``amps_beta0``), and the method says what gamma_i is (`base.SteeringMethod`).

Every row is steered toward its task document's ``target`` with the fold of the steering file that
did not see its item (cross-fitting); a row whose item every fold saw is marked ``in_sample``.
The diagnostics of each row include its effective strength ``relative_shift``: ||alpha gamma v|| /
||h||, averaged over the positions it was added to (`hooks.SteeringHandle.relative_shift`).

A method that computes the MCS at inference (``mean_mcs``) prefills the prompt for it
(`amps_eval.mcs.kv_cache.prefill_prompt`). When the prompt is not steered before its last token
(``positions`` ``generated`` or ``from_last_prompt``), that prefill's cache (cut before the last
prompt token) is the one an unsteered prefill makes, so `apply` hands it to the generation
(`Steered.prefill`), which then runs only the last prompt token and the new tokens. With
``positions=all`` the steering changes the prompt's cache above the steered layer, so generation
prefills the prompt again (one extra prefill per batch).
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
from amps_eval.mcs.kv_cache import Prefill, prefill_prompt
from amps_eval.mcs.score import MCSSettings
from amps_eval.vocabulary import TARGETS

__all__ = ["CONTINUES", "FLOAT32_MAX", "RowModules", "Steered", "Steering", "SteeringConfig"]


from amps_eval.methods.steering_config import FLOAT32_MAX, SteeringConfig  # re-exported

CONTINUES = ("generated", "from_last_prompt")
"""The ``positions`` that leave the prompt's cache before its last token unsteered: a generation
steered there may continue from an unsteered prefill."""


@dataclass
class Steered:
    """What `Steering.apply` yields for one batch: the per-row diagnostics (filled in when the
    block closes) and the prompt's unsteered prefill for the generation to continue from (None:
    the generation prefills the prompt itself)."""

    rows: list[dict]
    prefill: Prefill | None = None


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
        if config.method is None:
            raise ValueError("Steering needs a SteeringConfig with a steering method, got method=None")
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
                for direction in TARGETS:
                    self._modules[(k, direction)] = file.module(k, direction).to(device=device, dtype=torch.float32)

    def _rows(self, prompts) -> list[dict]:
        rows = []
        for prompt in prompts:
            if prompt.target not in TARGETS:
                raise ValueError(
                    f"method={self.config.method} steers toward the task's target modality, but document "
                    f"{prompt.task}/{prompt.doc_id} has none: use the MC2 tasks (mc2_visual*, mc2_text*)"
                )
            choice = self.file.fold_choice(prompt.item_id)
            rows.append({"task": prompt.task, "doc_id": prompt.doc_id, "mc2_id": prompt.doc.get("mc2_id"),
                         "category": prompt.doc.get("category"), "target": prompt.target,
                         "fold": choice.index, "in_sample": choice.in_sample})
        return rows

    def _prefill(self, model, batch) -> Prefill | None:
        """The prompt's prefill when the method needs one (the MCS) and the generation can continue
        from it (see the module docstring); None otherwise."""
        if not (self.method.prefills_at_inference and self.config.positions in CONTINUES):
            return None
        return prefill_prompt(model, batch.encoded.inputs)

    @contextlib.contextmanager
    def apply(self, model, batch):
        """Steer one batch's generation; yields a `Steered` (the per-row diagnostics, filled in on
        exit, and the prefill to continue from). With a prefill, the generation must start from
        its cache: the hooks then see the last prompt token first, not the whole prompt."""
        rows = self._rows(batch.prompts)
        prefill = self._prefill(model, batch)
        scales = self.method.row_scales(model, batch, rows, self.file, self.config, prefilled=prefill)
        alphas = torch.tensor([self.config.alpha * s for s in scales])
        mask = batch.encoded.inputs["attention_mask"]
        if prefill is not None:
            mask = mask[:, -1:]  # the generation's first forward is the last prompt token (left padding: real)
        if self.file.method == "mean":
            vectors = torch.stack([self.file.vector(r["fold"], r["target"]) for r in rows])
            context = hooks.steer(model, self.layer, vectors, alphas, mask, self.config.positions)
        else:
            keys = sorted({(r["fold"], r["target"]) for r in rows})
            router = RowModules([self._modules[k] for k in keys], [keys.index((r["fold"], r["target"])) for r in rows])
            context = hooks.steer_with_module(model, self.layer, router, alphas, mask, self.config.positions)
        with context as handle:
            yield Steered(rows, prefill)
        relative = handle.relative_shift.tolist()
        for row, strength, norm, rel in zip(rows, alphas.tolist(), handle.norms.tolist(), relative):
            row.update(method=self.config.method, layer=self.layer, alpha=self.config.alpha, strength=strength,
                       vector_norm=norm, shift_norm=abs(strength) * norm,
                       relative_shift=rel if math.isfinite(rel) else None)
