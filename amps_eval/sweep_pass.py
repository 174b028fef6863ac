"""A sweep's alphas in one pass over the items: the answers of every alpha from the same batches.

A sweep (`amps_eval.report.sweep.run_sweep`) evaluates one steered method on the same items at
several strengths. lmms-eval writes one results file per run, so the sweep stays one run per alpha;
but the runs of a sweep share a `SweepPass` (`amps_eval.runner.EvalSession.sweep`). The first run
that meets a batch of items generates it once for its own alpha and every alpha of the sweep not
yet answered: the batch's rows are repeated once per alpha (alpha-major: row ``k * n + i`` is item
``i`` at the ``k``-th alpha, the run's own alpha first) and each row is steered with its own alpha
(the steering hook already takes one strength per row). The answers and diagnostics rows of the
other alphas are kept here, keyed by `answer_key` (the run's settings but alpha, the task, the
document and its request), and the later runs of the sweep take them instead of generating.

Why the files are those of one run per alpha:

* the batches are those a run alone makes (the same items, sorted and cut by the same rule), only
  repeated per alpha, so every row has the left padding it has alone;
* a row's answer depends only on its own tokens (left padding, per-row positions and attention
  mask), its per-row strength and its own steering vector;
* what depends on the whole batch is computed on the items once and repeated (the MCS of
  ``mean_mcs``, the fold of each item, the prompt's prefill), and the effective strength of the
  diagnostics counts each row's own tokens only (`amps_eval.steering.hooks.SteeringHandle.generated`);
* a run whose positions leave the prompt unsteered (``generated``, ``from_last_prompt``) prefills
  the prompt once, unsteered, and every alpha's rows continue from copies of that prefill; a run of
  one alpha takes the same path, so the two are the same computation (but for the last-bit
  rounding of matrix products over more rows, which moves the diagnostics' float measurements by
  ~1e-8 and no answer of the tests; docs/sweeps.md).

A batch in which some alpha makes the hidden state non-finite is generated again without that
alpha; its own run then generates it alone and fails as it would have alone (the alphas before it
keep their results). An answer is taken once: the pass holds only answers still to be written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

__all__ = ["NOT_IN_KEY", "Answer", "SweepPass", "answer_key", "expand_inputs", "expand_prefill", "generated_lengths"]


@dataclass(frozen=True)
class Answer:
    """One row's answer at one alpha and its steering diagnostics row (None: not recorded)."""

    text: str
    diagnostics: dict | None = None


NOT_IN_KEY = ("alpha", "diagnostics")
"""The settings an answer does not depend on: the strength (the pass varies it) and the diagnostics
folder (every answer is kept with its diagnostics row, written by the run that takes it)."""


def answer_key(settings: dict, task: str, doc_id: int, item_id: str, context: str, gen_kwargs) -> tuple:
    """What decides an answer but alpha: the run's settings (its model arguments but `NOT_IN_KEY`),
    the task document and its request (the question text and the generation arguments)."""
    setting = tuple(sorted((k, json.dumps(v, sort_keys=True, default=str)) for k, v in settings.items()
                           if k not in NOT_IN_KEY))
    request = json.dumps(dict(gen_kwargs or {}), sort_keys=True, default=str)
    return setting, task, int(doc_id), str(item_id), str(context), request


@dataclass
class SweepPass:
    """The alphas of one sweep and the answers its runs computed for the alphas still to run."""

    alphas: tuple[float, ...]
    _answers: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        alphas = tuple(float(a) for a in self.alphas)
        if not alphas or len(set(alphas)) != len(alphas):
            raise ValueError(f"a sweep pass needs distinct alphas, got {self.alphas}")
        self.alphas = alphas

    def __len__(self) -> int:
        """How many answers are kept (waiting for their run)."""
        return len(self._answers)

    def take(self, keys: list[tuple], alpha: float) -> list[Answer] | None:
        """The kept answers of every key at ``alpha`` (and forget them), or None when one is missing
        (then none is taken: the batch is generated as a whole)."""
        if any((key, float(alpha)) not in self._answers for key in keys):
            return None
        return [self._answers.pop((key, float(alpha))) for key in keys]

    def others(self, keys: list[tuple], alpha: float) -> tuple[float, ...]:
        """The sweep's alphas but ``alpha`` for which some key has no kept answer: those to generate
        with the run's own alpha."""
        return tuple(a for a in self.alphas if a != float(alpha) and any((key, a) not in self._answers for key in keys))

    def keep(self, keys: list[tuple], alpha: float, answers: list[Answer]) -> None:
        if len(keys) != len(answers):
            raise ValueError(f"{len(answers)} answers for {len(keys)} keys")
        for key, answer in zip(keys, answers):
            self._answers[(key, float(alpha))] = answer

    def clear(self) -> None:
        self._answers.clear()


def expand_inputs(inputs: dict, copies: int) -> dict:
    """A processor's batch repeated ``copies`` times along the batch (alpha-major): every tensor is
    concatenated with itself along its first dimension, which is the row, or for the flattened image
    patches and image grids of the Qwen families the patch / image in row order, so the copies stay
    aligned. Other entries are kept as they are."""
    import torch

    if copies == 1:
        return inputs
    return {k: torch.cat([v] * copies, dim=0) if torch.is_tensor(v) and v.dim() > 0 else v for k, v in inputs.items()}


def expand_prefill(prefill, copies: int):
    """A `Prefill` of a batch repeated ``copies`` times along the batch, like `expand_inputs`."""
    import torch

    from amps_eval.mcs.kv_cache import Prefill

    if prefill is None or copies == 1:
        return prefill
    positions = prefill.position_ids
    batch_dim = positions.dim() - 2  # [3, B, T] (mrope) or [B, T]
    return Prefill(torch.cat([prefill.logits] * copies, dim=0),
                   [torch.cat([k] * copies, dim=0) for k in prefill.keys],
                   [torch.cat([v] * copies, dim=0) for v in prefill.values],
                   torch.cat([positions] * copies, dim=batch_dim))


def generated_lengths(new_tokens, stop_ids: list[int]) -> list[int]:
    """Per row of ``generate``'s new tokens [B, N] (a tensor), how many it generated through its
    first stop token (all N when it has none): after it, ``generate`` only pads the row while others
    go on."""
    import torch

    if new_tokens.shape[1] == 0:
        return [0] * new_tokens.shape[0]
    stops = torch.isin(new_tokens, torch.as_tensor(list(stop_ids), device=new_tokens.device))
    first = torch.where(stops.any(dim=1), stops.int().argmax(dim=1) + 1, torch.full_like(stops[:, 0], new_tokens.shape[1], dtype=torch.long))
    return [int(n) for n in first.tolist()]
