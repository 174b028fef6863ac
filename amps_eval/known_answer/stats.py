"""Pure statistics of the known-answer tests: rank correlation and bootstrap intervals."""

from __future__ import annotations

import math
import random
from typing import Callable, Sequence


def ranks(values: Sequence[float]) -> list[float]:
    """Average ranks (1-based; ties share the mean of their ranks)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; NaN when fewer than 2 points or either side is constant."""
    n = len(x)
    if n != len(y):
        raise ValueError(f"x and y differ in length ({n} vs {len(y)})")
    if n < 2:
        return math.nan
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return math.nan
    return sxy / math.sqrt(sxx * syy)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson of average ranks, so ties are handled)."""
    return pearson(ranks(list(x)), ranks(list(y)))


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
    """Mean of a - b over the same items, with a 95% paired bootstrap interval (items resampled)."""
    if len(a) != len(b):
        raise ValueError(f"paired values differ in length ({len(a)} vs {len(b)})")
    d = [u - v for u, v in zip(a, b)]
    mean = sum(d) / len(d) if d else math.nan
    lo, hi = bootstrap_interval(len(d), lambda idx: sum(d[i] for i in idx) / len(idx), n_boot, seed=seed)
    return {"difference": mean, "ci95": [lo, hi], "n": len(d)}
