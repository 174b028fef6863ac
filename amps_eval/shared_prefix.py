"""Prompt variants that share their start, run as one prefill of that start plus each variant's own tokens.

A fit needs, per item, the last-token hidden state of [I,T], [I,T,P_v] and [I,T,P_t] (AMPS Eq. 10)
and the MCS of [I,T]. The three prompts are the same up to the end of the user's text (Eq. 8
appends the instruction there, ``amps_eval.fit_data.FIT_INSTRUCTION_STYLE``), so the image, the
vision tower and the question are run once: the shared prefix is prefilled once and each variant's
remaining tokens (instruction, the chat template's end of turn and assistant header) run against a
fresh cache built from the prefix's keys and values (a forward appends to the cache it is given, so
the prefix tensors themselves are never changed).

How it stays exact (equal to a full prefill of each prompt up to float rounding):

* the prefix of a row is the longest common prefix of the variants' *token ids* (not of their
  text), so a boundary where tokenization merges differently simply ends the prefix one token
  earlier; by causality the prefix's keys and values are those of every variant's first tokens;
* positions are those of each full prompt (the family's `prompt_position_ids`, 3-D mrope for the
  Qwen families) rearranged, never recomputed for a part;
* left-padded batches: the prefix block and each variant's suffix block are each left-padded to
  their own longest row, and the attention mask covers both (padding inside a row is masked like
  left padding), so rows of different lengths and suffixes of different lengths share a batch;
* a batch where the variants differ before the end of the image (a prefix that would not hold
  every image token), where the prefix positions or the image inputs differ between variants, or
  where a variant would have no own token, is run the plain way: a full prefill per variant
  (``PrefixPasses.shared`` says which way a batch went).

For the MCS the variant's pass is handed over as a `Prefill` (last-token logits, the cache cut
before the last token, the positions) with the inputs and modality masks in the same rearranged
layout, so `compute_mcs(..., prefilled=...)` perturbs exactly the prompt's own positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from amps_eval.families import adapter_for
from amps_eval.mcs.kv_cache import Prefill, _DROP_INPUT_KEYS, _work_dtype, frozen_eval, prompt_position_ids
from amps_eval.steering.hooks import capture

__all__ = ["PrefixPasses", "VariantPass", "common_prefix_lengths", "run_variants"]


@dataclass
class VariantPass:
    """One prompt variant of a batch: the last-token output of the captured layer [B, D] (float32,
    CPU) and, when asked for, what `compute_mcs` needs (``prefill``, ``inputs`` with input_ids and
    attention_mask, ``vision_mask`` / ``text_mask``, all in the same layout)."""

    hidden: Tensor
    prefill: Prefill | None = None
    inputs: dict | None = None
    vision_mask: Tensor | None = None
    text_mask: Tensor | None = None


@dataclass
class PrefixPasses:
    variants: dict[str, VariantPass]
    shared: bool  # True: one prefix prefill plus suffixes; False: a full prefill per variant
    prefix_lengths: list[int]  # per row, the shared prefix in tokens (0 when not shared)


def common_prefix_lengths(ids_per_variant: list[list[Tensor]]) -> list[int]:
    """Per row, the length of the longest common prefix of the variants' (unpadded) token ids,
    at most one less than the shortest variant (every variant keeps one own token). Pure."""
    out = []
    for row in zip(*ids_per_variant):
        limit = min(len(ids) for ids in row) - 1
        n = 0
        while n < limit and all(int(ids[n]) == int(row[0][n]) for ids in row[1:]):
            n += 1
        out.append(n)
    return out


def _right_aligned(x: Tensor, cols: list[Tensor], width: int, fill) -> Tensor:
    """x [..., B, T] -> [..., B, width]: row r holds x[..., r, cols[r]] at its right end, ``fill`` before."""
    out = x.new_full((*x.shape[:-2], x.shape[-2], width), fill)
    for r, c in enumerate(cols):
        if len(c):
            out[..., r, width - len(c):] = x[..., r, c]
    return out


def _full_pass(model, enc, position_ids: Tensor, layer: int, keep: bool) -> VariantPass:
    kwargs = {k: v for k, v in enc.inputs.items() if k not in _DROP_INPUT_KEYS}
    with capture(model, layer, first_only=True, dtype=torch.float32, device="cpu") as cap:
        out = model(**kwargs, position_ids=position_ids, use_cache=keep, logits_to_keep=1)
    hidden = cap.first[:, -1]
    if not keep:
        return VariantPass(hidden)
    return VariantPass(hidden, _prefill_of(out, position_ids),
                       {"input_ids": enc.inputs["input_ids"], "attention_mask": enc.inputs["attention_mask"]},
                       enc.vision_mask, enc.text_mask)


def _prefill_of(out, position_ids: Tensor) -> Prefill:
    keys = [layer.keys[:, :, :-1, :].detach() for layer in out.cache.layers]
    values = [layer.values[:, :, :-1, :].detach() for layer in out.cache.layers]
    logits = out.logits[:, -1, :]
    return Prefill(logits.to(_work_dtype(logits.dtype)), keys, values, position_ids)


def _per_token(inputs: dict, shape: torch.Size) -> list[str]:
    return [k for k, v in inputs.items() if torch.is_tensor(v) and tuple(v.shape[:2]) == tuple(shape)
            and k not in _DROP_INPUT_KEYS]


def run_variants(encoder, conversations: dict[str, list], layer: int, mcs_for: tuple[str, ...] = (),
                 share: bool = True) -> PrefixPasses:
    """Run every variant of ``conversations`` (variant -> one conversation per row, rows aligned)
    and keep the output of decoder layer ``layer`` at each row's last token; for the variants in
    ``mcs_for`` also their `Prefill` for `compute_mcs`. ``share=False`` forces a full prefill per
    variant (the reference the shared way is tested against)."""
    model = encoder.model
    names = list(conversations)
    encoded = {k: encoder.encode_turns(conversations[k]) for k in names}
    with frozen_eval(model), torch.no_grad():
        for k in mcs_for:  # before any compute, as `prefill` does: the MCS needs every layer's K/V
            adapter_for(model).check_kv_support(model, int(encoded[k].inputs["input_ids"].shape[1]))
        positions = {k: prompt_position_ids(model, encoded[k].inputs) for k in names}
        plan = _plan(encoded, positions) if share else None
        if plan is None:
            variants = {k: _full_pass(model, encoded[k], positions[k], layer, k in mcs_for) for k in names}
            return PrefixPasses(variants, False, [0] * len(conversations[names[0]]))
        return PrefixPasses(_shared_passes(model, encoded, positions, plan, layer, mcs_for), True, plan["lengths"])


def _plan(encoded: dict, positions: dict) -> dict | None:
    """Per variant and row, the source columns of the prefix and of the suffix; None when the
    variants cannot share a prefix (see the module docstring)."""
    names = list(encoded)
    base = names[0]
    valid = {k: [row.nonzero().flatten() for row in encoded[k].inputs["attention_mask"].bool().cpu()] for k in names}
    ids = {k: [encoded[k].inputs["input_ids"][r].cpu()[c] for r, c in enumerate(valid[k])] for k in names}
    lengths = common_prefix_lengths([ids[k] for k in names])
    for k in names:
        for key, value in encoded[base].inputs.items():  # images and their grids: the same for every variant
            if torch.is_tensor(value) and key not in _per_token(encoded[base].inputs, encoded[base].inputs["input_ids"].shape):
                other = encoded[k].inputs.get(key)
                if other is None or other.shape != value.shape or not torch.equal(other, value):
                    return None
        vision = encoded[k].vision_mask.cpu()
        for r, cols in enumerate(valid[k]):
            n = lengths[r]
            if n < 1 or bool(vision[r, cols[n:]].any()):  # every image token must be in the prefix
                return None
            if not torch.equal(positions[k].cpu()[..., r, cols[:n]], positions[base].cpu()[..., r, valid[base][r][:n]]):
                return None
    return {"valid": valid, "lengths": lengths}


def _shared_passes(model, encoded: dict, positions: dict, plan: dict, layer: int, mcs_for) -> dict[str, VariantPass]:
    from transformers.cache_utils import DynamicCache

    names = list(encoded)
    base_enc, base_pos = encoded[names[0]], positions[names[0]]
    lengths, valid = plan["lengths"], plan["valid"]
    device = base_enc.inputs["input_ids"].device
    width = max(lengths)
    pre_cols = [c[:n].to(device) for c, n in zip(valid[names[0]], lengths)]
    inputs = base_enc.inputs
    per_token = _per_token(inputs, inputs["input_ids"].shape)
    prefix = {k: v for k, v in inputs.items() if k not in _DROP_INPUT_KEYS and k not in per_token}
    for key in per_token:
        prefix[key] = _right_aligned(inputs[key], pre_cols, width, 0)
    pre_pos = _right_aligned(base_pos, [c.to(base_pos.device) for c in pre_cols], width, 0)
    out = model(**prefix, position_ids=pre_pos, use_cache=True, logits_to_keep=1)  # its logits are not needed
    cache_kv = [(layer_.keys, layer_.values) for layer_ in out.cache.layers]
    del out

    result = {}
    for k in names:
        enc = encoded[k]
        suf_cols = [c[n:].to(device) for c, n in zip(valid[k], lengths)]
        swidth = max(len(c) for c in suf_cols)
        ids = _right_aligned(enc.inputs["input_ids"], suf_cols, swidth, 0)
        mask = _right_aligned(enc.inputs["attention_mask"], suf_cols, swidth, 0)
        pos = _right_aligned(positions[k], [c.to(positions[k].device) for c in suf_cols], swidth, 0)
        full_mask = torch.cat([prefix["attention_mask"], mask], dim=-1)
        cache = DynamicCache(ddp_cache_data=list(cache_kv))
        with capture(model, layer, first_only=True, dtype=torch.float32, device="cpu") as cap:
            step = model(input_ids=ids, attention_mask=full_mask, position_ids=pos, cache=cache, use_cache=True,
                         logits_to_keep=1)
        hidden = cap.first[:, -1]
        if k not in mcs_for:
            result[k] = VariantPass(hidden)
            continue
        full_pos = torch.cat([pre_pos.to(pos.device), pos], dim=-1)
        own_pre = [c[:n].to(device) for c, n in zip(valid[k], lengths)]  # this variant's own padding

        def relaid(x: Tensor, fill) -> Tensor:
            return torch.cat([_right_aligned(x, own_pre, width, fill), _right_aligned(x, suf_cols, swidth, fill)], -1)

        result[k] = VariantPass(
            hidden, _prefill_of(step, full_pos),
            {"input_ids": torch.cat([prefix["input_ids"], ids], dim=-1), "attention_mask": full_mask},
            relaid(enc.vision_mask, False), relaid(enc.text_mask, False),
        )
    return result
