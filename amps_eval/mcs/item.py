"""The MCS of MC2 items, in one place: look each item up in the item cache, compute the missing ones,
store them. `amps-eval mcs`, the fit's extraction and the ``mean_mcs`` wrapper all go through
`item_mcs`, so they key, seed and record an item's MCS the same way:

* the noise of an item is seeded by `noise_key` (mc2_id, prompt variant), whatever its batch;
* its cache entry is `entry_key` = the prompt's content digest and that noise key, in the namespace
  of the model and the MCS settings that change the values (`amps_eval.item_cache.MCSCache`);
* its record is `VALUES`: c_v, c_t, r_v, their Monte Carlo standard errors (None with one draw) and
  the number of perturbations it took (`MCSResult.perturbations`; sequential settings stop each item
  at its own count).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from amps_eval.item_cache import MCSCache, mcs_entry_key
from amps_eval.mcs.score import MCSResult
from amps_eval.mcs.seeding import noise_key

__all__ = ["VALUES", "entry_key", "item_mcs", "result_records"]

VALUES = ("c_v", "c_t", "r_v", "c_v_stderr", "c_t_stderr", "r_v_stderr", "perturbations")


def entry_key(prompt_digest: str, mc2_id, prompt: str) -> str:
    """The item cache entry of an item's MCS on one prompt variant."""
    return mcs_entry_key(prompt_digest, noise_key(mc2_id, prompt))


def result_records(result: MCSResult) -> list[dict]:
    """The `VALUES` of each row of an `MCSResult` (non-finite standard errors as None)."""
    def finite(x: float) -> float | None:
        return x if math.isfinite(x) else None

    return [{"c_v": float(result.c_v[j]), "c_t": float(result.c_t[j]), "r_v": float(result.r_v[j]),
             "c_v_stderr": finite(float(result.c_v_stderr[j])), "c_t_stderr": finite(float(result.c_t_stderr[j])),
             "r_v_stderr": finite(float(result.r_v_stderr[j])), "perturbations": int(result.perturbations[j])}
            for j in range(len(result))]


def item_mcs(
    ids: Sequence[str],
    compute: Callable[[list[int]], MCSResult],
    cache: MCSCache | None = None,
    keys: Sequence[str] | None = None,
    batch_size: int | None = None,
    progress: Callable[[int], object] | None = None,
) -> list[dict]:
    """The MCS record (`VALUES`) of every item of ``ids``: from ``cache`` where it has the item's
    ``keys`` entry, else ``compute(rows)`` (the `MCSResult` of exactly the items at those indices,
    in that order, at most ``batch_size`` of them per call; None: all missing items in one call),
    stored in the cache. ``progress(n)`` is called after each computed batch of n items."""
    if cache is not None and (keys is None or len(keys) != len(ids)):
        raise ValueError("item_mcs needs one cache key per item")
    records: list[dict | None] = [cache.get(key) if cache is not None else None for key in keys or [None] * len(ids)]
    missing = [i for i, record in enumerate(records) if record is None]
    size = batch_size or max(len(missing), 1)
    for start in range(0, len(missing), size):
        rows = missing[start : start + size]
        result = compute(rows)
        if len(result) != len(rows):
            raise RuntimeError(f"the MCS computation returned {len(result)} rows for {len(rows)} items")
        fresh = result_records(result)
        if cache is not None:
            fresh = cache.put([keys[i] for i in rows], [str(ids[i]) for i in rows], fresh)
        for i, record in zip(rows, fresh):
            records[i] = record
        if progress is not None:
            progress(len(rows))
    return [{key: record.get(key) for key in VALUES} for record in records]
