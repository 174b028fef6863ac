"""Per-item hidden states and MCS for a fit, cached on disk so that an interrupted fit resumes.

What is extracted for every item (AMPS Eq. 10): the output of decoder layer ``layer`` at the last
prompt token for [I,T] (the plain prompt), [I,T,P_v] and [I,T,P_t] (the prompt plus the instruction
toward the image / the text); for ``mean`` and ``amps`` also the item's MCS (c_v, c_t, r_v) on [I,T].

How (`item_batch`): the three prompts are the same up to the end of the user's text, so that prefix
(the image, the vision tower, the question) is prefilled once and each prompt's own tokens run
against it (`amps_eval.shared_prefix`); the MCS is scored from the none prompt's pass
(`compute_mcs(..., prefilled=...)`), so a fresh item costs about 1.3 prefills plus the MCS's
perturbation passes instead of four prefills.

The cache (default ``<out>.cache/``; the study passes one folder to every command) is
`amps_eval.item_cache`: hidden states in ``hidden-<key>/`` shards (keyed by the model, the layer and
the instruction texts; an entry by the item's content hash, ``amps_eval.fit_data``, so a run with
``--limit`` and a full run share the work), MCS records in ``mcs-<key>/records.jsonl`` (keyed by the
model and the MCS settings; an entry by the prompt's content and its noise id, so `amps-eval mcs`
and the ``mean_mcs`` wrapper read and write the same entries). A killed fit resumes from what was
written; damaged entries are set aside, logged and recomputed (see `amps_eval.item_cache`).
Values round-trip exactly, so a resumed fit gives the same tensors as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from amps_eval.files import ensure_folder
from amps_eval.fit_data import FIT_INSTRUCTION_STYLE, PROMPTS, ItemSet
from amps_eval.item_cache import MCSCache, TensorShards, model_key, namespace
from amps_eval.mcs.item import entry_key, item_mcs
from amps_eval.mc2.prompt import INSTRUCTIONS
from amps_eval.mcs.kv_cache import Prefill
from amps_eval.shared_prefix import PrefixPasses, VariantPass, run_variants
from amps_eval.steering.hooks import capture, hidden_size
from amps_eval.mcs.score import MCSResult, MCSSettings, NonFiniteMCSError, compute_mcs, noise_key

__all__ = ["Extracted", "extract", "item_batch", "last_token_states", "mcs_batch", "mcs_prefilled"]

KINDS = tuple(PROMPTS)  # ("none", "vision", "text"): [I,T], [I,T,P_v], [I,T,P_t]


@dataclass
class Extracted:
    """Per-item results in the ItemSet's order. Hidden states [N, D] float32 on the CPU; MCS [N]
    float64, None when not asked for. ``computed_*``: items computed in this call (not cached)."""

    ids: list[str]
    categories: list[str]
    hidden: dict[str, Tensor]  # kind in KINDS -> [N, D]
    c_v: Tensor | None
    c_t: Tensor | None
    r_v: Tensor | None
    computed_hidden: int
    computed_mcs: int

    @property
    def d(self) -> Tensor:
        """h[I,T,P_v] - h[I,T,P_t] per item: the unscaled steering target toward the image."""
        return self.hidden["vision"] - self.hidden["text"]


def last_token_states(encoder, conversations: list, layer: int) -> Tensor:
    """[B, D] float32 CPU: output of decoder layer ``layer`` at each conversation's last prompt token."""
    enc = encoder.encode_turns(conversations)
    with torch.no_grad(), capture(encoder.model, layer, first_only=True, dtype=torch.float32, device="cpu") as cap:
        encoder.model(**enc.inputs, use_cache=False, logits_to_keep=1)
    return cap.last_token(enc.inputs["attention_mask"].cpu())


def _named(error: NonFiniteMCSError) -> NonFiniteMCSError:
    return NonFiniteMCSError(
        f"the MCS of MC2 item(s) {error.sample_ids} is not finite ({error}). The model's next-token "
        "distribution is degenerate for these items: check the weights and dtype (try --dtype float32), or "
        "leave the items out of the data.",
        error.sample_ids,
        error.values,
    )


def mcs_batch(encoder, conversations: list, ids: list[str], settings: MCSSettings, prompt: str = "none") -> MCSResult:
    """MCS of a batch of conversations of the ``prompt`` variant ("none", "vision", "text"); each
    item's noise is seeded by `noise_key` (mc2_id, prompt), as `mean_mcs` seeds it at inference, so
    the same prompt gets the same r_v at fit time and at run time. The result's sample ids are the
    mc2_ids."""
    enc = encoder.encode_turns(conversations)
    return _item_mcs(encoder.model, enc.inputs, enc.vision_mask, enc.text_mask, ids, settings, prompt)


def _item_mcs(model, inputs, vision_mask, text_mask, ids: list[str], settings: MCSSettings, prompt: str,
              prefilled: Prefill | None = None) -> MCSResult:
    """`compute_mcs` with each item's noise keyed by (mc2_id, prompt), a non-finite item named by
    its mc2_id, and the mc2_ids as the result's sample ids."""
    try:
        result = compute_mcs(model, inputs, vision_mask, text_mask, settings, [noise_key(i, prompt) for i in ids],
                             prefilled=prefilled)
    except NonFiniteMCSError as error:
        raise _named(error) from error
    result.sample_ids = list(ids)
    return result


def _rows_of(passed: VariantPass, rows: list[int]) -> VariantPass:
    """The rows ``rows`` of a variant's pass (its padding columns stay: they are masked)."""
    if rows == list(range(len(passed.hidden))):
        return passed
    index = torch.tensor(rows, device=passed.prefill.logits.device)
    p = passed.prefill
    prefill = Prefill(p.logits[index], [k[index] for k in p.keys], [v[index] for v in p.values],
                      p.position_ids.index_select(-2, index.to(p.position_ids.device)))
    return VariantPass(passed.hidden[rows], prefill, {k: v[index] for k, v in passed.inputs.items()},
                       passed.vision_mask[index], passed.text_mask[index])


def mcs_prefilled(encoder, passed: VariantPass, ids: list[str], settings: MCSSettings, prompt: str = "none",
                  rows: list[int] | None = None) -> MCSResult:
    """`mcs_batch` from a variant's pass that is already done (`shared_prefix.run_variants` with
    ``mcs_for``): the same values without prefilling the prompt again. ``rows``: only these rows
    of the pass (``ids`` are theirs)."""
    if rows is not None:
        passed = _rows_of(passed, rows)
    return _item_mcs(encoder.model, passed.inputs, passed.vision_mask, passed.text_mask, ids, settings, prompt,
                     prefilled=passed.prefill)


def item_batch(encoder, conversations: dict[str, list], layer: int, with_mcs: bool) -> PrefixPasses:
    """The fit's passes of one batch: the three prompts of `KINDS` through one prefill of their
    shared prefix (`amps_eval.shared_prefix`), keeping the none prompt's prefill for its MCS when
    ``with_mcs``."""
    return run_variants(encoder, conversations, layer, mcs_for=("none",) if with_mcs else ())


def _check_finite(name: str, values: Tensor, ids: list[str]) -> None:
    bad = [ids[i] for i in range(len(ids)) if not bool(torch.isfinite(values[i]).all())]
    if bad:
        raise ValueError(
            f"non-finite {name} for MC2 item(s) mc2_id={bad}; check the model weights and dtype "
            "(try --dtype float32) or leave these items out"
        )


def _batches(rows: list[int], size: int) -> list[list[int]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def extract(
    encoder, items: ItemSet, layer: int, cache_root: Path, mcs: MCSSettings | None, batch_size: int, progress: bool = True
) -> Extracted:
    """Hidden states (and MCS when ``mcs`` is given) of every item, computing only what the cache
    (`amps_eval.item_cache`) lacks: a batch of items that lack either runs the three prompts through
    one shared prefix (`item_batch`) and scores the MCS from the none prompt's pass."""
    ensure_folder(cache_root, "the extraction cache")
    model = model_key(encoder.model, encoder.pretrained)
    folder = namespace(Path(cache_root), "hidden", {**model, "layer": layer, "prompts": PROMPTS,
                                                    "instructions": INSTRUCTIONS[FIT_INSTRUCTION_STYLE]})
    shards = TensorShards(folder, KINDS, hidden_size(encoder.model))
    done = shards.read()
    need_hidden = {i for i, item in enumerate(items.ids) if done.get(item, ("",))[0] != items.hashes[i]}
    records, keys = None, []
    if mcs is not None:
        records = MCSCache(Path(cache_root), model, mcs)
        keys = [entry_key(encoder.prompt_digest(turns), item, "none")
                for item, turns in zip(items.ids, items.conversations(list(range(len(items))), "none"))]
    need_mcs = {i for i, key in enumerate(keys) if records.get(key) is None}
    todo = sorted(need_hidden | need_mcs)
    bar = tqdm(total=len(todo), desc=f"hidden states (layer {layer})" + (" and MCS" if need_mcs else ""),
               disable=not progress or not todo)
    for rows in _batches(todo, batch_size):
        ids = [items.ids[i] for i in rows]
        scored = [j for j, i in enumerate(rows) if i in need_mcs]
        passes = item_batch(encoder, {kind: items.conversations(rows, kind) for kind in KINDS}, layer, bool(scored))
        states = {kind: passes.variants[kind].hidden for kind in KINDS}
        for kind, values in states.items():
            _check_finite(f"hidden states ({kind} prompt, layer {layer})", values, ids)
        fresh = [j for j, i in enumerate(rows) if i in need_hidden]
        if fresh:
            shards.write([ids[j] for j in fresh], [items.hashes[rows[j]] for j in fresh],
                         {kind: values[fresh] for kind, values in states.items()})
            for j in fresh:
                done[ids[j]] = (items.hashes[rows[j]], {kind: values[j] for kind, values in states.items()})
        if scored:
            item_mcs(ids, lambda sub: mcs_prefilled(encoder, passes.variants["none"], [ids[j] for j in sub], mcs,
                                                    "none", sub), records, [keys[i] for i in rows])
        bar.update(len(rows))
    bar.close()
    hidden = {kind: torch.stack([done[item][1][kind] for item in items.ids]) for kind in KINDS}

    c_v = c_t = r_v = None
    if records is not None:
        c_v, c_t, r_v = (torch.tensor([records.get(key)[k] for key in keys], dtype=torch.float64)
                         for k in ("c_v", "c_t", "r_v"))
    return Extracted(list(items.ids), list(items.categories), hidden, c_v, c_t, r_v, len(need_hidden), len(need_mcs))
