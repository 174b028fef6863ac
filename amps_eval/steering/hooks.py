"""One forward-hook mechanism for every steering method (mean steering, L2S, AMPS).

Every method adds ``alpha * v`` to the output of one decoder layer; they differ only in where ``v``
comes from (a fixed vector per row, or a module applied to the layer's own output at the last prompt
token). Keeping one mechanism means the methods are compared on equal terms: the same positions,
the same padding rules and the same dtype handling.

Prefill versus decode. ``generate`` runs one forward over the whole prompt (the prefill), then one
forward per new token against the KV cache. A hook only sees hidden states, so it tells the two
apart by counting calls and by the prompt length ``T`` (the width of ``attention_mask``, or the
first call's length when no mask is given):

* the first call must cover exactly the prompt (``T`` positions): the prefill;
* a later call of length 1 is a decode step: one generated token per row, never padding;
* a later call of length ``S >= T`` is a full re-run without cache (``use_cache=False``): its first
  ``T`` positions are the prompt again and the remaining ``S - T`` are generated tokens;
* anything else (``1 < S < T``: chunked prefill, speculative decoding) is refused loudly rather
  than steered at guessed positions.

So one context covers one batch: enter a new context for each batch and its generation.

Non-finite activations. A shift can be so large (a huge alpha) that the steered hidden state is
inf/NaN, or finite but beyond what the next layer's RMSNorm can square and sum in float32: the
model then emits one token over and over ("!!!!") and the run would score a silent collapse. Every
hook call therefore reduces the steered state to one flag per row (is its float32 squared norm
finite? one fused reduction, no host sync: the flags stay on the device) and the context checks the
flags once when it closes, raising :class:`SteeringNonFinite` naming alpha, the layer and the rows.

Effective strength. Alpha alone does not say how hard a run steered: the same alpha moves a model
whose hidden states are small much more than one whose states are large, and AMPS's targets are
(1 + gamma) times L2S's. Every hook call therefore also sums, per row and on the device, the inverse
norm of the *unsteered* hidden state at each position it shifts; `SteeringHandle.relative_shift` is
then ||alpha * v|| / ||h|| averaged over the steered positions of the row (prompt and generated,
up to the row's own last token when the caller says how many it generated,
``SteeringHandle.generated``): the effective strength that methods are compared at.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from amps_eval.families import adapter_for
from amps_eval.vocabulary import POSITIONS  # re-exported

__all__ = [
    "POSITIONS",
    "Capture",
    "SteeringHandle",
    "SteeringNonFinite",
    "capture",
    "decoder_layers",
    "hidden_size",
    "steer",
    "steer_with_module",
]


def _layer_output(output: Tensor | tuple) -> Tensor:
    """The hidden states of a decoder layer's output (a tensor in transformers 5.x, else a tuple)."""
    return output[0] if isinstance(output, tuple) else output


class _CallTracker:
    """Classifies each forward through the hooked layer (see the module docstring).

    ``next(h)`` returns a bool [B, S] mask of the positions to shift, or None for "every position"
    (a decode step): the per-call state lives here, never in module globals.
    """

    def __init__(self, attention_mask: Tensor | None, positions: str) -> None:
        self.mask = None if attention_mask is None else attention_mask.detach().bool()
        self.prompt_len = None if attention_mask is None else int(attention_mask.shape[1])
        self.positions = positions
        self.calls = 0
        self.step: int | None = None  # the last call's decode step (None: a prompt call)
        if self.mask is not None and not self.mask.any(dim=1).all():
            raise ValueError("attention_mask has a row with no real token")

    def last_index(self, device: torch.device) -> Tensor:
        """[B] index of each row's last prompt token (T-1 under left padding)."""
        if self.mask is None:
            return torch.full((1,), self.prompt_len - 1, device=device, dtype=torch.long)
        t = self.mask.shape[1]
        return (t - 1 - self.mask.flip(1).int().argmax(dim=1)).to(device)

    def next(self, h: Tensor) -> Tensor | None:
        rows, s = h.shape[0], h.shape[1]
        first = self.calls == 0
        self.calls += 1
        if first and self.prompt_len is None:
            self.prompt_len = s
        t = self.prompt_len
        if first and s != t:
            raise ValueError(
                f"the first forward through the steered layer saw {s} positions but the "
                f"attention_mask has {t}: pass the attention_mask of the prompt being run "
                "(after image-token expansion), and use one steering context per batch"
            )
        self.step = None
        if not first and s == 1:
            self.step = self.calls - 1  # decode step j feeds generated token j
            return None
        if s < t:
            raise ValueError(
                f"forward of {s} positions inside a steering context for a {t}-token prompt: "
                "chunked prefill / speculative decoding are not supported"
            )
        if self.mask is None:
            prompt = torch.ones(1, t, dtype=torch.bool, device=h.device)
        else:
            prompt = _expand_rows(self.mask.to(h.device), rows)
        if self.positions == "generated":
            prompt = torch.zeros_like(prompt)
        elif self.positions == "from_last_prompt":
            idx = torch.arange(t, device=h.device)[None]
            prompt = idx == _expand_rows(self.last_index(h.device)[:, None], prompt.shape[0])
        gen = torch.ones(prompt.shape[0], s - t, dtype=torch.bool, device=h.device)
        return torch.cat([prompt, gen], dim=1)


def _expand_rows(x: Tensor, rows: int) -> Tensor:
    """Match a per-row tensor to the hidden batch: 1 row broadcasts, B rows repeat for beams."""
    if x.shape[0] in (1, rows):
        return x
    if rows % x.shape[0]:
        raise ValueError(f"batch size mismatch: steering was set up for {x.shape[0]} rows, the model ran {rows}")
    return x.repeat_interleave(rows // x.shape[0], dim=0)


def _apply_shift(output: Tensor | tuple, h: Tensor, shift: Tensor, where: Tensor | None):
    """Add shift [B|1, D] at the positions ``where`` [B|1, S] (None: all) of h; rebuild output.

    torch.where keeps the untouched positions bit-identical (padding stays exactly as it was).
    """
    if where is not None and not where.any():
        return None
    shift = _expand_rows(shift.to(device=h.device, dtype=h.dtype), h.shape[0])[:, None, :]
    new = h + shift if where is None else torch.where(where[..., None], h + shift, h)
    return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new


def _shift_and_observe(output, h: Tensor, shift: Tensor, where: Tensor | None, guard: "_FiniteGuard",
                       meter: "_NormMeter", step: int | None = None):
    """`_apply_shift`, then the finiteness flags of the steered state and the norms of the unsteered
    one at the shifted positions (both kept on the device); None when nothing was shifted.
    ``step``: the call's decode step (`_CallTracker.step`)."""
    steered = _apply_shift(output, h, shift, where)
    if steered is not None:
        guard.observe(_layer_output(steered))
        meter.observe(h, where, step)
    return steered


class SteeringNonFinite(RuntimeError):
    """Steering made the hidden state unusable (inf/NaN, or a float32 norm overflow) for some rows.

    ``alpha``: the strengths of those rows, ``layer``: the steered layer, ``rows``: their indices in
    the batch. The wrapper re-raises it with `naming` to say which task documents they were.
    """

    def __init__(self, alpha: list[float], layer: int, rows: list[int], where: str | None = None) -> None:
        self.alpha, self.layer, self.rows = list(alpha), layer, list(rows)
        where = where or "batch row(s) " + ", ".join(map(str, self.rows))
        strengths = ", ".join(f"{a:g}" for a in self.alpha)
        super().__init__(
            f"alpha={strengths} made the hidden state at layer {layer} non-finite (inf/NaN, or too large for the "
            f"next layer's float32 normalisation) for {where}: lower alpha"
        )

    def naming(self, where: str, alpha: float | None = None) -> "SteeringNonFinite":
        """The same error with the rows described as ``where`` (and the run's alpha, if given)."""
        return SteeringNonFinite([alpha] if alpha is not None else self.alpha, self.layer, self.rows, where)


class _FiniteGuard:
    """Per-row flags, kept on the device, of steered hidden states that are unusable (see the module
    docstring); `check` turns them into a SteeringNonFinite once, when the steering context closes."""

    def __init__(self, layer: int, alpha: Tensor, batch: int | None) -> None:
        self.layer, self.alpha, self.batch = layer, alpha, batch
        self.bad: Tensor | None = None

    def observe(self, steered: Tensor) -> None:
        norms = torch.linalg.vector_norm(steered, dim=-1, dtype=torch.float32)  # [B, S]: one reduction
        bad = ~torch.isfinite(norms).all(dim=-1)
        if self.bad is None:
            self.bad = bad
        elif self.bad.shape == bad.shape:
            self.bad |= bad
        else:  # the hidden batch changed size (never in generate): keep one flag
            self.bad = (self.bad.any() | bad.any()).reshape(1)

    def check(self) -> None:
        if self.bad is None or not bool(self.bad.any()):
            return
        hidden_rows = int(self.bad.shape[0])
        batch = self.batch or hidden_rows
        per_row = max(1, hidden_rows // batch)  # beams: each prompt row repeated (repeat_interleave)
        rows = sorted({int(r) // per_row for r in self.bad.nonzero().flatten().tolist()})
        alphas = self.alpha.tolist()
        strengths = sorted({alphas[r] if len(alphas) > 1 and r < len(alphas) else alphas[0] for r in rows})
        raise SteeringNonFinite(strengths, self.layer, rows)


class _NormMeter:
    """Per-row sums of 1 / ||h|| (float32) over the positions a hook shifts, and their count; on the
    device, read once by `mean_inverse` after the context closes. Decode steps (one token per row)
    are kept apart, one [B] tensor per step, so that a row's mean can stop at its own last token."""

    def __init__(self, batch: int | None) -> None:
        self.batch = batch
        self.rows: int | None = None  # hidden rows of the first call seen
        self.inverse: Tensor | None = None  # the prompt's calls (prefill, any full re-run): [B]
        self.count: Tensor | None = None
        self.steps: dict[int, Tensor] = {}  # decode step j (it feeds generated token j) -> [B]

    def observe(self, h: Tensor, where: Tensor | None, step: int | None = None) -> None:
        if self.rows is None:
            self.rows = h.shape[0]
        elif self.rows != h.shape[0]:
            return  # the hidden batch changed size (never in generate): keep the first
        norms = torch.linalg.vector_norm(h, dim=-1, dtype=torch.float32)  # [B, S]
        if step is not None:  # a decode step: one token per row, all shifted
            self.steps[step] = 1.0 / norms[:, 0]
            return
        steered = torch.ones_like(norms, dtype=torch.bool) if where is None else where.to(norms.device).expand_as(norms)
        inverse = torch.where(steered, 1.0 / norms, torch.zeros_like(norms)).sum(dim=-1)
        count = steered.sum(dim=-1).float()
        if self.inverse is None:
            self.inverse, self.count = inverse, count
        else:
            self.inverse, self.count = self.inverse + inverse, self.count + count

    def mean_inverse(self, generated: list[int] | None = None) -> Tensor | None:
        """[B] mean of 1 / ||h|| over each prompt row's steered positions (beams folded back); NaN
        for a row with none; None before the model ran. ``generated``: per prompt row, the tokens
        it generated through its end of turn; the decode steps after its last token (the padding
        ``generate`` feeds a finished row while others go on) are then left out, so that a row's
        mean does not depend on the rows it shares a batch with. None: every step."""
        if self.rows is None:
            return None
        inverse = torch.zeros(self.rows) if self.inverse is None else self.inverse.cpu()
        count = torch.zeros(self.rows) if self.count is None else self.count.cpu()
        if self.steps:
            numbers = sorted(self.steps)
            steps = torch.stack([self.steps[j] for j in numbers], dim=1).cpu()  # [B, steps]
            own = torch.ones_like(steps, dtype=torch.bool)
            if generated is not None:
                per_row = max(1, self.rows // len(generated))
                last = torch.as_tensor(list(generated)).repeat_interleave(per_row)[:, None]
                own = torch.as_tensor(numbers)[None] < last  # step j feeds token j: own while j < n
            inverse = inverse + torch.where(own, steps, torch.zeros_like(steps)).sum(dim=1)
            count = count + own.sum(dim=1).float()
        per_row = max(1, self.rows // (self.batch or self.rows))
        inverse = inverse.reshape(-1, per_row).sum(dim=1)
        count = count.reshape(-1, per_row).sum(dim=1)
        return torch.where(count > 0, inverse / count.clamp(min=1), torch.full_like(inverse, float("nan")))


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers a hook attaches to: the model's adapter's answer (`amps_eval.families.adapter_for`)."""
    return adapter_for(model).decoder_layers(model)


def hidden_size(model: nn.Module) -> int:
    """The width of a decoder layer's output: the model's adapter's answer."""
    return adapter_for(model).hidden_size(model)


def _layer(model: nn.Module, layer: int) -> nn.Module:
    layers = decoder_layers(model)
    if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < len(layers):
        raise IndexError(
            f"layer {layer!r} is out of range for {type(model).__name__}: "
            f"valid decoder layers are 0..{len(layers) - 1}"
        )
    return layers[layer]


@dataclass
class SteeringHandle:
    """What a steering context applied, for diagnostics (yielded by ``steer*``).

    ``vectors`` is [B, D] (or [1, D] for a broadcast vector) float32: the given vectors, or for
    ``steer_with_module`` the module's predictions, filled in at prefill. ``alpha`` is [B] or [1].
    """

    layer: int
    positions: str
    alpha: Tensor
    vectors: Tensor | None = None
    calls: int = 0
    meter: _NormMeter | None = field(default=None, repr=False)
    generated: list[int] | None = None  # tokens each row generated (set by the caller): see `relative_shift`

    @property
    def norms(self) -> Tensor:
        """Per-row L2 norm of v (before alpha)."""
        if self.vectors is None:
            raise RuntimeError("no vector yet: the model has not run inside the steering context")
        return self.vectors.norm(dim=-1)

    @property
    def shift_norms(self) -> Tensor:
        """Per-row L2 norm of the shift actually added, alpha * v."""
        return (self.alpha.to(self.norms.device) * self.norms).abs()

    @property
    def relative_shift(self) -> Tensor:
        """Per-row effective strength: ||alpha * v|| / ||h|| averaged over the row's steered
        positions, h the unsteered hidden state there (module docstring); NaN for a row never
        shifted (e.g. ``positions="generated"`` with no token generated). With ``generated`` set,
        a row's positions end at its own last token (not at the batch's)."""
        inverse = None if self.meter is None else self.meter.mean_inverse(self.generated)
        if inverse is None:
            raise RuntimeError("no hidden state seen yet: the model has not run inside the steering context")
        return self.shift_norms.cpu() * inverse


def _alpha_tensor(alpha: float | Tensor) -> Tensor:
    a = torch.as_tensor(alpha, dtype=torch.float32).detach().cpu().reshape(-1)
    if a.numel() == 0 or not torch.isfinite(a).all():
        raise ValueError(f"alpha must be a finite number that float32 holds (|alpha| < 3.4e38), got {alpha!r}")
    return a


def _check_batch(name: str, size: int, batch: int | None) -> int | None:
    if size == 1:
        return batch
    if batch is not None and batch != size:
        raise ValueError(f"batch size mismatch: {name} has {size} rows, expected {batch}")
    return size


def _prepare(model, layer, alpha, attention_mask, positions):
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
    module = _layer(model, layer)
    a = _alpha_tensor(alpha)
    batch = None if attention_mask is None else attention_mask.shape[0]
    batch = _check_batch("alpha", a.numel(), batch)
    return module, a, batch


@contextmanager
def _hooked(module: nn.Module, hook: Callable) -> Iterator[None]:
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def steer(
    model: nn.Module,
    layer: int,
    vectors: Tensor,
    alpha: float | Tensor,
    attention_mask: Tensor | None = None,
    positions: str = "all",
) -> Iterator[SteeringHandle]:
    """Add ``alpha * v`` to the output of decoder layer ``layer`` while the context is open.

    ``vectors`` is [D] (one vector for every row) or [B, D] (row i gets vectors[i]); ``alpha`` a
    float or a [B] tensor. Left-padding positions of the prompt (``attention_mask == 0``) are never
    touched. ``positions``: "all" (every prompt position and every generated token, as L2S),
    "generated" (generated tokens only), "from_last_prompt" (the last prompt token and after).
    When the block ends, raises :class:`SteeringNonFinite` if a steered state was unusable (see the
    module docstring).
    """
    module, a, batch = _prepare(model, layer, alpha, attention_mask, positions)
    v = torch.as_tensor(vectors).detach()
    if v.dim() == 1:
        v = v[None]
    d = hidden_size(model)
    if v.dim() != 2 or v.shape[-1] != d:
        raise ValueError(
            f"steering vector shape {tuple(vectors.shape)} does not match the model: expected "
            f"[{d}] or [B, {d}] (hidden size of {type(model).__name__} is {d})"
        )
    _check_batch("vectors", v.shape[0], batch)
    if a.numel() > 1 and v.shape[0] > 1 and a.numel() != v.shape[0]:
        raise ValueError(f"batch size mismatch: alpha has {a.numel()} rows, vectors {v.shape[0]}")
    v = v.float()
    if not torch.isfinite(v).all():
        raise ValueError("steering vectors contain non-finite values")
    shift = a[:, None].to(v.device) * v
    handle = SteeringHandle(layer=layer, positions=positions, alpha=a, vectors=v.cpu(), meter=_NormMeter(batch))
    tracker = _CallTracker(attention_mask=attention_mask, positions=positions)
    guard = _FiniteGuard(layer, a, batch)
    moved: dict[tuple, Tensor] = {}  # the shift on each (device, dtype) seen: one copy, not one per step

    def hook(_module, _args, output):
        h = _layer_output(output)
        where = tracker.next(h)
        handle.calls += 1
        key = (h.device, h.dtype)
        if key not in moved:
            moved[key] = shift.to(device=h.device, dtype=h.dtype)
        return _shift_and_observe(output, h, moved[key], where, guard, handle.meter, tracker.step)

    with _hooked(module, hook):
        yield handle
    guard.check()  # only when the block finished: an error inside it propagates as it is


@contextmanager
def steer_with_module(
    model: nn.Module,
    layer: int,
    module: nn.Module,
    alpha: float | Tensor,
    attention_mask: Tensor | None = None,
    positions: str = "all",
) -> Iterator[SteeringHandle]:
    """L2S / AMPS at inference: the shift is predicted from the hooked layer's own output.

    At prefill, v_i = module(h_i at the last prompt token) is computed once per row (from the
    unsteered output, the input the module was trained on) and cached; ``alpha * v_i`` is then
    added like in :func:`steer`, including at the position it was read from and at every generated
    token. The last prompt token is the last position with ``attention_mask == 1`` (index -1 under
    left padding). ``handle.vectors`` holds the predicted v after prefill. Non-finite steered states
    raise :class:`SteeringNonFinite` when the block ends, as in :func:`steer`.
    """
    layer_module, a, batch = _prepare(model, layer, alpha, attention_mask, positions)
    d = hidden_size(model)
    handle = SteeringHandle(layer=layer, positions=positions, alpha=a, meter=_NormMeter(batch))
    tracker = _CallTracker(attention_mask=attention_mask, positions=positions)
    guard = _FiniteGuard(layer, a, batch)
    state: dict[str, Tensor] = {}

    def hook(_module, _args, output):
        h = _layer_output(output)
        where = tracker.next(h)
        if "shift" not in state:
            rows = torch.arange(h.shape[0], device=h.device)
            last = h[rows, _expand_rows(tracker.last_index(h.device), h.shape[0])]
            param = next(module.parameters(), None)
            if param is not None:
                last = last.to(device=param.device, dtype=param.dtype)
            with torch.no_grad():
                v = module(last).detach().float()
            if v.shape != (h.shape[0], d):
                raise ValueError(
                    f"steering module returned shape {tuple(v.shape)}, expected ({h.shape[0]}, {d})"
                )
            if not torch.isfinite(v).all():
                raise ValueError("steering module predicted non-finite vectors")
            handle.vectors = v.cpu()
            shift = _expand_rows(a[:, None], h.shape[0]).to(v.device) * v
            state["shift"] = shift.to(device=h.device, dtype=h.dtype)  # moved once, not per step
        handle.calls += 1
        return _shift_and_observe(output, h, state["shift"], where, guard, handle.meter, tracker.step)

    with _hooked(layer_module, hook):
        yield handle
    guard.check()  # only when the block finished: an error inside it propagates as it is


@dataclass
class Capture:
    """Outputs of one decoder layer recorded inside :func:`capture` (detached).

    ``outputs[0]`` is the prefill ([B, T, D]); decode steps follow as [B, 1, D]. The capture sees the
    output as modified by hooks registered before it (e.g. an enclosing ``steer``).
    """

    layer: int
    outputs: list[Tensor] = field(default_factory=list)

    @property
    def first(self) -> Tensor:
        if not self.outputs:
            raise RuntimeError(f"nothing captured at layer {self.layer}: the model did not run")
        return self.outputs[0]

    def last_token(self, attention_mask: Tensor | None = None) -> Tensor:
        """[B, D] output at each row's last prompt token (last position with mask 1)."""
        h = self.first
        if attention_mask is None:
            return h[:, -1]
        tracker = _CallTracker(attention_mask=attention_mask, positions="all")
        tracker.next(h)
        return h[torch.arange(h.shape[0], device=h.device), tracker.last_index(h.device)]


@contextmanager
def capture(
    model: nn.Module,
    layer: int,
    *,
    first_only: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Iterator[Capture]:
    """Record the output of decoder layer ``layer`` (the HF ``hidden_states[layer + 1]``).

    ``first_only`` keeps only the prefill (saves memory during generation); ``dtype`` / ``device``
    convert what is kept (e.g. float32 on CPU for fitting).
    """
    module = _layer(model, layer)
    record = Capture(layer=layer)

    def hook(_module, _args, output):
        if first_only and record.outputs:
            return None
        h = _layer_output(output).detach()
        record.outputs.append(h.to(device=device or h.device, dtype=dtype or h.dtype))
        return None

    with _hooked(module, hook):
        yield record
