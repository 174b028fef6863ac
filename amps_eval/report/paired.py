"""Paired bootstrap intervals for the difference of two methods on the same items (pure, numpy only).

Every method answers every item of a target, so two methods' numbers differ by item-level
differences, which are far less noisy than the two numbers' own standard errors suggest. Given,
per method, one number per item (an *item value*: 1/0 "the item follows the target", 1/0 "the item
collapsed", a per-item log-odds, or the same interpolated at a matched strength, see
``matched.py``), the difference of two methods is ``mean(a) - mean(b)`` over the items both have.

The interval: the items are the resampling unit. An item is one ``mc2_id``; when both option orders
are asked, its two answers are already one item (``mc2.metrics.item_decisions``: the item follows
a modality only if both answers do), and a per-record number is averaged over the item's records
first (`item_means`), so resampling ``mc2_id``s is the cluster bootstrap over the item's answers.
``n_boot`` resamples of the items with replacement (the same draw for both methods: paired), each
giving ``mean(a*) - mean(b*)``; the interval is the percentile interval of those differences at
``level`` (default 95 %). The draw is ``numpy.random.default_rng(seed)`` (default seed 0), so the
same inputs give the same interval every time.

What the interval does not carry: the choice of strength (``matched.py`` makes it on held-out items
and keeps it fixed under resampling) and the training seed of a fitted method (the seed spread is
reported beside it). Two rows are "not distinguishable" when the interval of their difference
contains 0.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

N_BOOT = 2000
LEVEL = 0.95
SEED = 0


@dataclass(frozen=True)
class PairedDifference:
    """``mean(a) - mean(b)`` over the shared items, with its paired bootstrap interval."""

    difference: float
    low: float
    high: float
    n_items: int
    n_boot: int
    level: float

    @property
    def distinguishable(self) -> bool:
        """Whether the interval excludes 0 (the two methods differ at this level)."""
        return self.low > 0 or self.high < 0

    def describe(self, scale: float = 100.0, digits: int = 1) -> str:
        """e.g. ``+4.7 [-1.6, +10.9]`` (scaled to % by default)."""
        f = f"{{:+.{digits}f}}"
        return f"{f.format(scale * self.difference)} [{f.format(scale * self.low)}, {f.format(scale * self.high)}]"


def item_means(records: Iterable[dict], field: str) -> dict[int, float]:
    """mc2_id -> mean of ``field`` over the item's records; an item is left out when any of its
    records lacks a finite number there (a per-item numeric field such as a log-odds)."""
    values: dict[int, list[float]] = defaultdict(list)
    bad: set[int] = set()
    for record in records:
        item = int(record["mc2_id"])
        value = record.get(field)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            bad.add(item)
        else:
            values[item].append(float(value))
    return {item: sum(v) / len(v) for item, v in values.items() if item not in bad}


def paired_difference(a: Mapping, b: Mapping, n_boot: int = N_BOOT, level: float = LEVEL,
                      seed: int = SEED) -> PairedDifference:
    """The difference of the means of two item-value maps (item -> number) over the items both have,
    with the paired percentile bootstrap interval (module docstring)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot!r}")
    items = sorted(set(a) & set(b), key=str)
    if not items:
        raise ValueError("the two methods share no item: a paired difference needs the same items answered by both")
    d = np.array([float(a[i]) - float(b[i]) for i in items])
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(d), size=(n_boot, len(d)))
    boot = d[draws].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(boot, [tail, 1 - tail])
    return PairedDifference(float(d.mean()), float(low), float(high), len(d), n_boot, level)
