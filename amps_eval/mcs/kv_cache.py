"""Model plumbing for the MCS (Algorithm 1): prefill, positions and single-token passes.

Both architectures in transformers 5.x: the cache is a `DynamicCache` whose layers hold
``keys``/``values`` [batch, kv_heads, tokens, head_dim]; a forward appends to the cache it is given,
so every perturbed pass gets a fresh one. Positions are always passed explicitly, as the model's
adapter (`amps_eval.families.adapter_for`) answers ``prompt_position_ids`` (by default the generic
rule of `amps_eval.anatomy.position_ids`: the model's own ``get_rope_index`` where it has one, 3-D
mrope for Qwen2/2.5/3-VL, else ``cumsum(attention_mask) - 1`` as ``generate`` does), so a
left-padded sample gets the positions it has alone. Left padding is required. Before any compute,
the adapter's ``kv_refusal`` (by default `amps_eval.anatomy.kv_refusal`) refuses a model whose layers
do not all hold self-attention K/V over the whole prompt (hybrid, cross-attention, or a window
shorter than the prompt), naming the layer and its type.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from amps_eval import anatomy
from amps_eval.families import adapter_for

# Keys of a processor output that must not reach the prefill forward (set here, or meaningless).
_DROP_INPUT_KEYS = frozenset(
    {
        "position_ids",
        "past_key_values",
        "cache",
        "use_cache",
        "labels",
        "logits_to_keep",
        "return_dict",
        "output_hidden_states",
        "output_attentions",
        "cache_position",
    }
)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half/bf16/float32 tensors, float64 for float64 ones."""
    return torch.promote_types(dtype, torch.float32)


@contextlib.contextmanager
def frozen_eval(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode + all parameters frozen; restores every module's flag and requires_grad after."""
    training = [(m, m.training) for m in model.modules()]
    req = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in req:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in req:
            p.requires_grad_(flag)
        for m, flag in training:
            m.training = flag


def uses_mrope(model: torch.nn.Module) -> bool:
    """True for models with their own rope index (Qwen2/2.5/3-VL style 3-D positions)."""
    return anatomy._rope_owner(model) is not None


def prompt_position_ids(model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    """Position ids of the (left-padded) prompt, as the model's adapter answers them (by default
    `amps_eval.anatomy.position_ids`): [3, B, T] for mrope models, else [B, T]."""
    return adapter_for(model).prompt_position_ids(model, inputs)


def _last_position_ids(position_ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Position ids of the last prompt token for the given batch rows: [3, P, 1] or [P, 1]."""
    if position_ids.dim() == 3:
        return position_ids[:, rows, -1:]
    return position_ids[rows, -1:]


@dataclass
class Prefill:
    """One prefill of a left-padded prompt batch, as the MCS needs it: the last prompt token's
    logits [B, V] (float32, float64 for a float64 model), the cache cut before the last token (per
    layer keys/values [B, kv_heads, T-1, head_dim]) and the prompt's position ids ([3, B, T] for mrope
    families, else [B, T]). Whoever already prefilled the prompt (a fit, a steered generation) hands
    it to `compute_mcs` instead of prefilling again."""

    logits: torch.Tensor
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    position_ids: torch.Tensor


def prefill_prompt(model: torch.nn.Module, inputs: dict[str, Any]) -> Prefill:
    """Position ids and one prefill of the whole (left-padded) prompt, in eval mode with frozen
    parameters as `compute_mcs` runs it (frozen parameters change kernel choices: the cache would
    differ in the last bits)."""
    with frozen_eval(model):
        position_ids = prompt_position_ids(model, inputs)
        logits, keys, values = prefill(model, inputs, position_ids)
    return Prefill(logits, keys, values, position_ids)


@torch.no_grad()
def prefill(
    model: torch.nn.Module, inputs: dict[str, Any], position_ids: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Prefill the whole prompt. Returns (last-token logits [B, V] float32, keys, values), where
    keys/values are per layer [B, kv_heads, T-1, head_dim]: the cache cut before the last token."""
    adapter_for(model).check_kv_support(model, int(inputs["input_ids"].shape[1]))
    kwargs = {k: v for k, v in inputs.items() if k not in _DROP_INPUT_KEYS}
    out = model(**kwargs, position_ids=position_ids, use_cache=True, logits_to_keep=1)
    cache = out.cache
    keys, values = [], []
    for i, layer in enumerate(cache.layers):
        if getattr(layer, "keys", None) is None:
            raise anatomy.KVSupportError(f"{type(model).__name__}: cache layer {i} ({type(layer).__name__}) holds no "
                                         "keys/values: the MCS does not apply to this model")
        keys.append(layer.keys[:, :, :-1, :].detach())
        values.append(layer.values[:, :, :-1, :].detach())
    logits = out.logits[:, -1, :]
    return logits.to(_work_dtype(logits.dtype)), keys, values


def forward_last_token(
    model: torch.nn.Module,
    last_ids: torch.Tensor,
    last_positions: torch.Tensor,
    attention_mask: torch.Tensor,
    keys: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
) -> torch.Tensor:
    """Run the last prompt token ([P, 1]) against a FRESH cache built from keys/values
    ([P, H, T-1, D] per layer). Returns logits [P, V]."""
    from transformers.cache_utils import DynamicCache

    cache = DynamicCache(ddp_cache_data=list(zip(keys, values)))
    out = model(
        input_ids=last_ids,
        attention_mask=attention_mask,
        position_ids=last_positions,
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return out.logits[:, -1, :]
