"""Rank correlation, one implementation (numpy only, no torch: the report and the known-answer
tests both use it): average ranks, the Pearson correlation of rows, Spearman's rho.

Spearman's rho is the Pearson correlation of the average ranks (ties share the mean of their
ranks), so ties are handled as `scipy.stats.spearmanr` handles them. `average_ranks` and
`pearson_rows` work along the last axis of 1-D or 2-D arrays, so a bootstrap ranks all of its
resamples at once (`amps_eval.report.susceptibility.bootstrap_ci`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["average_ranks", "pearson", "pearson_rows", "spearman"]


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks along the last axis, ties sharing their mean rank (works on 1-D or 2-D arrays)."""
    values = np.asarray(values, dtype=float)
    flat = values.reshape(-1, values.shape[-1])
    n = flat.shape[1]
    order = np.argsort(flat, axis=1, kind="stable")
    ordered = np.take_along_axis(flat, order, axis=1)
    same = ordered[:, 1:] == ordered[:, :-1]
    index = np.broadcast_to(np.arange(n), flat.shape)
    starts = np.where(np.concatenate([np.ones((flat.shape[0], 1), bool), ~same], axis=1), index, 0)
    first = np.maximum.accumulate(starts, axis=1)
    ends = np.where(np.concatenate([~same, np.ones((flat.shape[0], 1), bool)], axis=1), index, n - 1)
    last = np.minimum.accumulate(ends[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty_like(flat)
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=1)
    return ranks.reshape(values.shape)


def pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The Pearson correlation of each row of ``a`` with the same row of ``b`` (last axis); NaN
    where either row is constant."""
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    denominator = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (a * b).sum(axis=-1) / denominator
    return np.where(denominator > 1e-12, rho, np.nan)


def _pair(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be two sequences of the same length, got {len(x)} and {len(y)} values")
    return x, y


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """The Pearson correlation of two sequences; NaN with fewer than 2 points or a constant side."""
    x, y = _pair(x, y)
    return float(pearson_rows(x, y)) if len(x) >= 2 else float("nan")


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho (the Pearson correlation of average ranks); NaN with fewer than 2 points or a
    constant side."""
    x, y = _pair(x, y)
    return float(pearson_rows(average_ranks(x), average_ranks(y))) if len(x) >= 2 else float("nan")
