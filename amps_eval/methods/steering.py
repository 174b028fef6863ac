"""Steering inside generation, for every steered method of `amps_eval.methods.registry`.

All methods add ``alpha * gamma_i * v_i`` to the output of one decoder layer through
`amps_eval.steering.hooks`; the steering file's kind says where ``v_i`` comes from (a fixed vector
of a ``mean`` file, or the fitted MLP applied to the layer's output at the last prompt token for
``l2s`` / ``amps`` / ``amps_beta0``), and the method says what gamma_i is (`base.SteeringMethod`).

Every row is steered toward its task document's ``target`` with the fold of the steering file that
did not see its item (cross-fitting); a row whose item every fold saw is marked ``in_sample``.
The diagnostics of each row include its effective strength ``relative_shift``: ||alpha gamma v|| /
||h||, averaged over the positions it was added to (`hooks.SteeringHandle.relative_shift`).

When the prompt is not steered before its last token (``positions`` ``generated`` or
``from_last_prompt``), `apply` prefills the prompt once, unsteered
(`amps_eval.mcs.kv_cache.prefill_prompt`), and hands that prefill's cache (cut before the last
prompt token) to the generation (`Steered.prefill`), which then runs only the last prompt token and
the new tokens: the prefill is the MCS's for ``mean_mcs``, and the one every alpha of a sweep pass
shares (`amps_eval.sweep_pass`). With ``positions=all`` the steering changes the prompt's cache
above the steered layer, so generation prefills the prompt itself (for ``mean_mcs``, once more).

A batch may hold its items once per alpha (`amps_eval.sweep_pass`: ``batch.copies``, each prompt's
own ``alpha``): the folds, the MCS and the prefill are computed on the items once and repeated, and
each row is steered at its own alpha.
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
from amps_eval.sweep_pass import expand_prefill
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
        """The prompt's unsteered prefill when the generation can continue from it (see the module
        docstring); None otherwise."""
        if self.config.positions not in CONTINUES:
            return None
        return prefill_prompt(model, batch.encoded.inputs)

    @contextlib.contextmanager
    def apply(self, model, batch):
        """Steer one batch's generation; yields a `Steered` (the per-row diagnostics, filled in on
        exit, and the prefill to continue from). With a prefill, the generation must start from
        its cache: the hooks then see the last prompt token first, not the whole prompt. A batch
        that sets ``generated`` (tokens per row) before the block ends gets each row's effective
        strength over its own tokens only."""
        base = batch.base  # the items once (the batch itself unless it repeats them per alpha)
        rows = self._rows(base.prompts)
        prefill = self._prefill(model, base)
        scales = self.method.row_scales(model, base, rows, self.file, self.config, prefilled=prefill)
        if batch.copies > 1:
            rows = [dict(row) for _ in range(batch.copies) for row in rows]
            scales = list(scales) * batch.copies
            prefill = expand_prefill(prefill, batch.copies)
        row_alphas = [self.config.alpha if p.alpha is None else float(p.alpha) for p in batch.prompts]
        alphas = torch.tensor([a * s for a, s in zip(row_alphas, scales)])
        mask = batch.inputs["attention_mask"]
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
        handle.generated = batch.generated
        relative = handle.relative_shift.tolist()
        for row, alpha, strength, norm, rel in zip(rows, row_alphas, alphas.tolist(), handle.norms.tolist(), relative):
            row.update(method=self.config.method, layer=self.layer, alpha=alpha, strength=strength,
                       vector_norm=norm, shift_norm=abs(strength) * norm,
                       relative_shift=rel if math.isfinite(rel) else None)
