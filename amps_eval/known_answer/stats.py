"""Pure statistics of the known-answer tests: bootstrap intervals of a rank correlation and of a
paired difference. The rank correlation is `amps_eval.correlation`'s, the paired difference
`amps_eval.report.paired`'s (one implementation each); here they take and give what the
known-answer analysis records (lists in, a dict with ``ci95`` out)."""

from __future__ import annotations

import math
import random
from typing import Callable, Sequence

from amps_eval.correlation import spearman
from amps_eval.report import paired

__all__ = ["bootstrap_interval", "paired_difference", "spearman", "spearman_with_interval"]


def bootstrap_interval(
    n: int,
    statistic: Callable[[list[int]], float],
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of ``statistic(indices)`` over ``n_boot`` resamples of ``range(n)`` with
    replacement (NaN resamples are dropped; (nan, nan) if none is finite)."""
    if n < 1:
        return math.nan, math.nan
    rng = random.Random(seed)
    values = []
    for _ in range(n_boot):
        value = statistic([rng.randrange(n) for _ in range(n)])
        if not math.isnan(value):
            values.append(value)
    if not values:
        return math.nan, math.nan
    values.sort()
    lo = values[int(math.floor((1 - level) / 2 * (len(values) - 1)))]
    hi = values[int(math.ceil((1 + level) / 2 * (len(values) - 1)))]
    return lo, hi


def spearman_with_interval(x: Sequence[float], y: Sequence[float], n_boot: int = 1000, seed: int = 0) -> dict:
    """Spearman of (x, y) with a 95% bootstrap interval over items."""
    x, y = list(x), list(y)
    lo, hi = bootstrap_interval(len(x), lambda idx: spearman([x[i] for i in idx], [y[i] for i in idx]), n_boot, seed=seed)
    return {"spearman": spearman(x, y), "ci95": [lo, hi], "n": len(x)}


def paired_difference(a: Sequence[float], b: Sequence[float], n_boot: int = 1000, seed: int = 0) -> dict:
    """Mean of a - b over the same items (``a[i]`` and ``b[i]`` are item i's), with the 95% paired
    bootstrap interval of `amps_eval.report.paired.paired_difference` (items resampled); NaN without items."""
    if len(a) != len(b):
        raise ValueError(f"paired values differ in length ({len(a)} vs {len(b)})")
    if not a:
        return {"difference": math.nan, "ci95": [math.nan, math.nan], "n": 0}
    diff = paired.paired_difference(dict(enumerate(a)), dict(enumerate(b)), n_boot=n_boot, level=0.95, seed=seed)
    return {"difference": diff.difference, "ci95": [diff.low, diff.high], "n": diff.n_items}
