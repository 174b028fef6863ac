"""The perturbed cache copies of an MCS call: which copies (sample, sigma, modality, draw), their
noise (drawn per sample from its own generator, in the order `amps_eval.mcs.score` documents),
and one forward + backward over a slice of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from amps_eval.mcs.kv_cache import _last_position_ids, _work_dtype, forward_last_token
from amps_eval.mcs.memory import CopyFootprint, _language_sizes
from amps_eval.mcs.noise import orthogonal_draws
from amps_eval.mcs.settings import MODALITIES, MCSSettings
from amps_eval.mcs.stats import cross_entropy


@dataclass
class _Sample:
    row: int
    sample_id: str
    positions: tuple[torch.Tensor, torch.Tensor]  # (vision idx, text idx) into the cut cache, increasing
    generator: torch.Generator


@dataclass
class _Copy:
    sample: _Sample
    s: int
    m: int
    n: int


def modality_std(layers: Sequence[torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
    """Population std of each of ``layers`` (cache tensors [B, kv_heads, T, head_dim]) over the heads,
    the positions of ``masks`` (bool [B, M, T]) and the head dims: [len(layers), B, M] float64.

    Two passes (mean, then mean squared deviation) in float64, as torch.std accumulates a float32
    tensor on CPU; positions outside the mask never enter (not even as NaN). A row/mask with no
    position gives NaN."""
    heads, dim = layers[0].shape[1], layers[0].shape[3]
    mask = masks[:, :, None, :, None]  # [B, M, 1, T, 1]
    count = masks.sum(dim=-1).to(torch.float64) * (heads * dim)
    zero = torch.zeros((), dtype=torch.float64, device=masks.device)
    out = []
    for x in layers:
        x = x.to(torch.float64)[:, None]  # [B, 1, H, T, D]
        mean = torch.where(mask, x, zero).sum(dim=(2, 3, 4)) / count  # [B, M]
        dev = torch.where(mask, x - mean[:, :, None, None, None], zero)
        out.append(dev.square_().sum(dim=(2, 3, 4)) / count)
    return torch.stack(out).sqrt_()


@dataclass
class _Built:
    """The perturbed cache copies of one pass: per layer keys / values [P, kv_heads, T-1, head_dim],
    the autograd leaves (the perturbed entries, [E, kv_heads, head_dim] per layer and K/V, in the
    order layer 0 K, layer 0 V, layer 1 K, ...), and for each entry its copy in the pass and its
    slot (index among that copy's perturbed positions)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    leaves: list[torch.Tensor]
    entry_copy: torch.Tensor
    entry_slot: torch.Tensor


class _CopyPlan:
    """What the perturbed copies of one call share, computed once (host synchronisation is
    allowed here, never in `build`): the copies in order; their perturbed entries (entry ``e`` is
    position ``entry_pos[e]`` of batch row ``entry_row[e]``; copy ``p`` owns entries
    ``offsets[p]:offsets[p + 1]``, its modality's positions in increasing order); the clean K/V
    stacked as [layers, 2, B, T-1, kv_heads, head_dim]; the noise std of every (layer, K/V, copy)
    in the work dtype; and the noise groups drawn and not yet used up."""

    def __init__(self, copies: Sequence[_Copy], keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor],
                 settings: MCSSettings, draws: int | None = None):
        device = keys[0].device
        self.draws = settings.draws if draws is None else draws  # per (sample, sigma, modality) in this plan
        self.copies = list(copies)
        self.keys, self.values, self.settings = list(keys), list(values), settings
        self.work = _work_dtype(keys[0].dtype)
        self.counts = [int(c.sample.positions[c.m].numel()) for c in self.copies]
        self.offsets = [0]
        for n in self.counts:
            self.offsets.append(self.offsets[-1] + n)
        self.n_slots = max(self.counts)
        counts = torch.tensor(self.counts)
        self.copy_row = torch.tensor([c.sample.row for c in self.copies], device=device)
        self.entry_copy = torch.repeat_interleave(torch.arange(len(self.copies)), counts).to(device)
        starts = torch.repeat_interleave(torch.tensor(self.offsets[:-1]), counts)
        self.entry_slot = (torch.arange(self.offsets[-1]) - starts).to(device)
        self.entry_row = self.copy_row.index_select(0, self.entry_copy)
        self.entry_pos = torch.cat([c.sample.positions[c.m].to(device) for c in self.copies])
        self.clean = torch.stack([torch.stack((k, v)) for k, v in zip(keys, values)]).transpose(3, 4)
        n_layers, n_copies = len(self.keys), len(self.copies)
        sigma = torch.tensor([settings.sigmas[c.s] for c in self.copies], dtype=torch.float64, device=device)
        if settings.relative:
            bsz, _kv, tokens, _dim = keys[0].shape
            masks = torch.zeros(bsz, len(MODALITIES), tokens, dtype=torch.bool, device=device)
            for smp in {id(c.sample): c.sample for c in self.copies}.values():
                for m, idx in enumerate(smp.positions):
                    masks[smp.row, m, idx.to(device)] = True
            layers = [t for pair in zip(keys, values) for t in pair]
            # rounded to the work dtype, as the std of the work-dtype entries
            std = modality_std(layers, masks).to(self.work).to(torch.float64).view(n_layers, 2, bsz, len(MODALITIES))
            copy_m = torch.tensor([c.m for c in self.copies], device=device)
            self.scale = (sigma * std[:, :, self.copy_row, copy_m]).to(self.work)  # [L, 2, P]
        else:
            self.scale = sigma.to(self.work).expand(n_layers, 2, n_copies)
        self.groups: dict[tuple[int, int, int], torch.Tensor] = {}
        self.uses: dict[tuple[int, int, int], int] = {}
        for c in self.copies:
            self.uses[self._source(c)] = self.uses.get(self._source(c), 0) + 1

    def _source(self, c: _Copy) -> tuple[int, int, int]:
        """The noise group whose normals copy ``c`` uses: (row, sigma index, modality index) of the
        fresh draw (the module docstring's reuse rules)."""
        st = self.settings
        return c.sample.row, 0 if st.common_sigmas else c.s, 0 if st.common_modalities else c.m

    def _group(self, c: _Copy) -> torch.Tensor:
        """The standard normals of copy ``c``'s noise group, [draws, layers, 2, kv_heads, width,
        head_dim] float32 (``draws`` = this plan's, one round of the sequential estimator), drawn
        from the sample's generator the first time it is needed."""
        key = self._source(c)
        if key not in self.groups:
            st, smp = self.settings, c.sample
            if st.common_modalities:
                width = max(int(smp.positions[0].numel()), int(smp.positions[1].numel()))
            else:
                width = int(smp.positions[key[2]].numel())
            n_layers, _, _, _, kv, dim = self.clean.shape
            fresh = self.draws // 2 if st.antithetic else self.draws
            z = torch.randn((fresh, n_layers, 2, kv, width, dim), generator=smp.generator, dtype=torch.float32,
                            device=self.clean.device)
            if st.antithetic:  # draw 2k + 1 is -(draw 2k)
                z = torch.stack((z, -z), dim=1).flatten(0, 1)
            if st.noise_design == "orthogonal":  # this round's draws of the group, mutually orthogonal
                z = orthogonal_draws(z)
            self.groups[key] = z
        return self.groups[key]

    def _release(self, c: _Copy, used: int) -> None:
        key = self._source(c)
        self.uses[key] -= used
        if self.uses[key] == 0:
            del self.groups[key]

    def _run_end(self, p: int, stop: int) -> int:
        """The end of the run of copies from ``p`` (before ``stop``) with consecutive draws of one
        (sample, sigma, modality)."""
        c, q = self.copies[p], p + 1
        while q < stop:
            d = self.copies[q]
            if d.sample is not c.sample or (d.s, d.m, d.n) != (c.s, c.m, c.n + q - p):
                break
            q += 1
        return q

    def build(self, start: int, stop: int) -> _Built:
        """The perturbed cache copies of ``copies[start:stop]`` (no host synchronisation)."""
        e0, e1 = self.offsets[start], self.offsets[stop]
        n_layers, _, _, _, kv, dim = self.clean.shape
        z = torch.empty((n_layers, 2, e1 - e0, kv, dim), dtype=self.work, device=self.clean.device)
        p = start
        while p < stop:  # one run of consecutive draws of one (sample, sigma, modality) at a time
            c, q = self.copies[p], self._run_end(p, stop)
            n_m = self.counts[p]
            src = self._group(c)[c.n : c.n + q - p, :, :, :, :n_m].permute(1, 2, 0, 4, 3, 5)
            z[:, :, self.offsets[p] - e0 : self.offsets[q] - e0].unflatten(2, (q - p, n_m)).copy_(src)
            self._release(c, q - p)
            p = q
        copy_ids = self.entry_copy[e0:e1]
        z.mul_(self.scale.index_select(2, copy_ids)[..., None, None])
        z.add_(self.clean[:, :, self.entry_row[e0:e1], self.entry_pos[e0:e1]])  # = clean + std * z
        leaves = list(z.to(self.keys[0].dtype).flatten(0, 1).unbind(0))
        for leaf in leaves:
            leaf.requires_grad_(True)
        rows, local, pos = self.copy_row[start:stop], copy_ids - start, self.entry_pos[e0:e1]
        new_k, new_v = [], []
        with torch.enable_grad():  # the scatter of the leaves must be recorded, even for a no_grad caller
            for layer, (k, v) in enumerate(zip(self.keys, self.values)):
                for kind, (clean, out) in enumerate(((k, new_k), (v, new_v))):
                    copy = clean.index_select(0, rows)
                    copy[local, :, pos, :] = leaves[2 * layer + kind]
                    out.append(copy)
        return _Built(new_k, new_v, leaves, local, self.entry_slot[e0:e1])

    def footprint(self, model: torch.nn.Module, vocab: int) -> CopyFootprint:
        n_layers, _, _, tokens, kv, dim = self.clean.shape
        widths = [max(int(c.sample.positions[0].numel()), int(c.sample.positions[1].numel())) for c in self.copies]
        sizes = _language_sizes(model)
        return CopyFootprint(
            layers=n_layers, kv_heads=kv, head_dim=dim, tokens=tokens, entries=self.n_slots, group_width=max(widths),
            draws=self.draws, cache_bytes=self.keys[0].element_size(),
            work_bytes=torch.empty((), dtype=self.work).element_size(),
            query_heads=sizes.get("num_attention_heads", kv), vocab=vocab, hidden=sizes.get("hidden_size", 0),
            intermediate=sizes.get("intermediate_size", 0),
            noise_groups=3 if self.settings.noise_design == "orthogonal" else 2,
        )


def _build_copies(
    copies: Sequence[_Copy],
    keys: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    settings: MCSSettings,
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """All of ``copies`` in one pass, as `compute_mcs` builds them: per layer perturbed keys and
    values [P, kv_heads, T-1, head_dim] (their perturbed entries are the autograd leaves), plus the
    boolean mask [P, T-1] of each copy's perturbed positions (to look at the noise)."""
    plan = _CopyPlan(copies, keys, values, settings)
    built = plan.build(0, len(plan.copies))
    mask = torch.zeros(len(plan.copies), keys[0].shape[2], dtype=torch.bool, device=keys[0].device)
    mask[built.entry_copy, plan.entry_pos] = True
    return built.keys, built.values, mask


def _grad_sq_per_copy(grads: Sequence[torch.Tensor], built: _Built, n_copies: int, n_slots: int) -> torch.Tensor:
    """Squared norm of each copy's gradient from the leaves' gradients (per layer and K/V
    [E, kv_heads, head_dim]): per entry in the work dtype, then a segment sum over each copy's
    entries (written to [copies, slots] and summed: deterministic, unlike an atomic index_add)."""
    sq = torch.stack(list(grads)).to(_work_dtype(grads[0].dtype))
    per_entry = sq.square_().sum(dim=(0, 2, 3))
    slots = per_entry.new_zeros((n_copies, n_slots))
    slots[built.entry_copy, built.entry_slot] = per_entry
    return slots.sum(dim=1)


def _run_copies(
    model: torch.nn.Module,
    plan: _CopyPlan,
    start: int,
    stop: int,
    p_x: torch.Tensor,
    last_ids: torch.Tensor,
    position_ids: torch.Tensor,
    attention_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward + one backward over ``plan.copies[start:stop]``. Returns (grad_sq_norm [P], ce [P])
    in the work dtype."""
    built = plan.build(start, stop)
    rows = plan.copy_row[start:stop]
    with torch.enable_grad():
        logits = forward_last_token(
            model,
            last_ids.index_select(0, rows),
            _last_position_ids(position_ids, rows),
            attention_mask.index_select(0, rows),
            built.keys,
            built.values,
        )
        ce = cross_entropy(p_x.index_select(0, rows), logits)
        grads = torch.autograd.grad(ce.sum(), built.leaves)
    grad_sq = _grad_sq_per_copy(grads, built, stop - start, plan.n_slots)
    return grad_sq.detach(), ce.detach()
