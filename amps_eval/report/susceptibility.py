"""Does the MCS predict which items steering moves and which it breaks? (pure analysis; no rendering)

The AMPS paper's premise is that an item's MCS says how susceptible it is to steering: an item that
relies little on the modality being steered away from should follow the target, and collapse, under
weaker steering. This module turns a sweep (one steered method of one model at several alphas, with
per-item answers) into per-item *event points* and measures how well the MCS ranks them.

Event points (`first_event`), per item, method and target, scanning the sweep in increasing alpha:

* flip point: the strength of the first sweep point at which the answer follows the target. An item
  that follows the target and later stops (flips, then un-flips or collapses) keeps that first
  strength. An item already following the target at the smallest strength (alpha 0: unsteered) has
  that strength (0): it needs no steering;
* collapse point: the strength of the first sweep point at which the answer follows neither option
  (``follows == "others"``);
* an item without the event in the sweep is *censored* at its strength at the largest alpha (the
  event, if any, lies beyond it), and flagged as such everywhere.

Strength: the item's effective strength ``relative_shift`` (||shift|| / ||h||, `strength`) at that
sweep point when every steered record of the sweep has one (alpha 0 counts as 0); otherwise alpha
(``Sweep.scale`` says which, and the table and figure axes are labelled accordingly).

Ranking (`spearman`): Spearman's rho, the Pearson correlation of average ranks (ties share their
mean rank). Censored points are ranked as ties at the top: above every observed point, whatever
their own strength (`rank_keys`), since their event lies beyond the sweep.

Predictors, per item (MCS from ``amps-eval mcs`` with the plain prompt, the prompt the steered runs
use):

* ``mcs``: the item's reliance on the modality steered away from (`reliance_away`, the "prose"
  convention of `amps_eval.steering.scaling.reliance_away`: 1 - r_v toward the image, r_v toward the
  text). The paper's claim predicts rho > 0 for both events;
* ``category``: the item's category alone, as the out-of-fold (leave-one-out) mean event point of
  the *other* items of its category (censored points at their censoring strength): the best a
  category-level rule can rank items, estimated without seeing the item;
* ``category_mcs``: the mean reliance of the item's category (what AMPS itself anchors on, Eq. 9);
  the gap between ``mcs`` and it is what the item-level MCS adds beyond its category.

Confidence intervals (`bootstrap_ci`): percentile bootstrap over items (seeded; the same resamples
for every predictor of a group, so predictors are compared on the same draws). Resamples in which
the predictor or the outcome is constant have no rho and are left out (their number is kept). A
scope in which fewer than `MIN_OFF_MODE` items differ from the most common event point (one collapse
among 128 censored items, say) gets rho without an interval.

MCS noise (`Row.redrawn`): with the MCS standard errors recorded, rho is recomputed on the same items
with every item's reliance redrawn from N(value, stderr), clipped to [0, 1]; the median and 95% range
over redraws say how much of the ranking survives re-measuring the MCS. (It is not folded into the
bootstrap interval: redrawing adds noise to already noisy values, which attenuates rho and would
shift the interval below the estimate.)

MCS reliability (`reliability`): 1 - mean(stderr^2) / var(reliance) over a group's items, the
share of the between-item spread of the MCS that is not measurement noise. It caps how well a
noisy MCS can rank anything (a correlation is attenuated by about its square root).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from amps_eval.correlation import average_ranks, pearson_rows
from amps_eval.correlation import spearman as rank_correlation
from amps_eval.vocabulary import TARGETS

EVENTS = ("flip", "collapse")
PREDICTORS = ("mcs", "category", "category_mcs")
MIN_OFF_MODE = 5
"""Intervals need at least this many items whose event point differs from the most common one."""


# --------------------------------------------------------------------------- event points

@dataclass(frozen=True)
class EventPoint:
    """When an item's event happened: ``value`` is the strength of the first sweep point with the
    event, or (``censored``) the item's strength at the largest alpha."""

    value: float
    censored: bool


def first_event(steps: Sequence[tuple[float, str]], event: str, target: str) -> EventPoint:
    """The event point of one item from its ``(strength, follows)`` steps in increasing alpha.

    ``event`` is "flip" (follows == target) or "collapse" (follows == "others")."""
    if not steps:
        raise ValueError("an item needs at least one sweep point")
    if event not in EVENTS:
        raise ValueError(f"event must be one of {EVENTS}, got {event!r}")
    wanted = target if event == "flip" else "others"
    for strength, follows in steps:
        if follows == wanted:
            return EventPoint(float(strength), False)
    return EventPoint(float(steps[-1][0]), True)


def reliance_away(r_v: float, target: str) -> float:
    """Reliance on the modality steered away from, "prose" convention (module docstring)."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    return 1.0 - r_v if target == "vision" else r_v


@dataclass(frozen=True)
class Sweep:
    """One (model, method, settings, target) sweep: per item, its (strength, follows) steps."""

    model: str  # display name
    pretrained: str
    method: str
    target: str
    setup: str  # the variant's other settings, for people
    alphas: tuple[float, ...]
    scale: str  # "strength" (relative shift) | "alpha"
    steps: dict[int, tuple[tuple[float, str], ...]]  # mc2_id -> steps in alpha order
    categories: dict[int, str]
    notes: tuple[str, ...] = ()


def sweep_steps(points: dict[float, Sequence[dict]]) -> tuple[dict[int, tuple[tuple[float, str], ...]], dict[int, str],
                                                               str, list[str]]:
    """Per item steps from ``alpha -> records`` (records with mc2_id, category, follows and, where
    measured, relative_shift): (steps, categories, scale, notes). Items missing at some alpha and
    negative alphas (steering away from the target) are left out, with a note."""
    notes = []
    negative = sorted(a for a in points if a < 0)
    if negative:
        notes.append(f"negative alphas {', '.join(f'{a:g}' for a in negative)} left out (they steer away from the target)")
    alphas = sorted(a for a in points if a >= 0)
    measured = all(isinstance(r.get("relative_shift"), (int, float)) for a in alphas if a != 0 for r in points[a])
    scale = "strength" if measured else "alpha"
    per_alpha: dict[float, dict[int, dict]] = {}
    for alpha in alphas:
        by_id: dict[int, dict] = {}
        for record in points[alpha]:
            by_id[int(record["mc2_id"])] = record
        per_alpha[alpha] = by_id
    ids = set.intersection(*(set(v) for v in per_alpha.values())) if per_alpha else set()
    every = set().union(*(set(v) for v in per_alpha.values())) if per_alpha else set()
    if len(every) > len(ids):
        notes.append(f"{len(every) - len(ids)} item(s) not answered at every alpha left out")
    steps, categories = {}, {}
    for mc2_id in sorted(ids):
        item = []
        for alpha in alphas:
            record = per_alpha[alpha][mc2_id]
            strength = (0.0 if alpha == 0 else float(record["relative_shift"])) if scale == "strength" else alpha
            item.append((strength, str(record["follows"])))
        steps[mc2_id] = tuple(item)
        categories[mc2_id] = str(per_alpha[alphas[-1]][mc2_id]["category"])
    return steps, categories, scale, notes


# --------------------------------------------------------------------------- ranks and rho

def rank_keys(points: Sequence[EventPoint]) -> list[float]:
    """Values to rank event points by: censored points become ties above every observed one."""
    return [math.inf if p.censored else p.value for p in points]


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho (`amps_eval.correlation.spearman`); None, shown as a dash, when either side is
    constant or n < 3."""
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length ({len(x)} != {len(y)})")
    if len(x) < 3:
        return None
    rho = rank_correlation(x, y)
    return None if math.isnan(rho) else rho


@dataclass(frozen=True)
class Interval:
    low: float | None
    high: float | None
    used: int  # resamples with a rho
    draws: int
    median: float | None = None


def bootstrap_ci(x: Sequence[float], y: Sequence[float], draws: int = 1000, seed: int = 0, level: float = 0.95,
                 x_stderr: Sequence[float] | None = None, clip: tuple[float, float] | None = (0.0, 1.0),
                 rng: np.random.Generator | None = None, resamples: np.ndarray | None = None) -> Interval:
    """Percentile bootstrap interval of Spearman's rho over items (module docstring).

    ``x_stderr`` (optional): each resample redraws x from N(x, stderr), clipped to ``clip``.
    ``resamples`` (draws x n item indices) lets several predictors share the same draws."""
    x_arr, y_arr = np.asarray(x, float), np.asarray(y, float)
    n = len(x_arr)
    if n != len(y_arr):
        raise ValueError("x and y differ in length")
    if n < 3 or draws < 1:
        return Interval(None, None, 0, draws)
    rng = np.random.default_rng(seed) if rng is None else rng
    index = rng.integers(0, n, size=(draws, n)) if resamples is None else resamples
    xs = x_arr[index]
    if x_stderr is not None:
        se = np.nan_to_num(np.asarray(x_stderr, float), nan=0.0)
        xs = xs + rng.standard_normal(xs.shape) * se[index]
        if clip is not None:
            xs = np.clip(xs, *clip)
    rho = pearson_rows(average_ranks(xs), average_ranks(y_arr[index]))
    valid = rho[~np.isnan(rho)]
    if len(valid) < max(10, len(index) // 2):  # mostly constant resamples: no interval worth showing
        return Interval(None, None, len(valid), len(index))
    tail = (1 - level) / 2
    low, median, high = np.quantile(valid, [tail, 0.5, 1 - tail])
    return Interval(float(low), float(high), len(valid), len(index), float(median))


def leave_one_out_means(values: Sequence[float], groups: Sequence[str]) -> list[float | None]:
    """Each item's group mean over the *other* items of its group (None: alone in its group)."""
    total: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for v, g in zip(values, groups):
        total[g] += v
        count[g] += 1
    return [None if count[g] < 2 else (total[g] - v) / (count[g] - 1) for v, g in zip(values, groups)]


def group_means(values: Sequence[float], groups: Sequence[str]) -> list[float]:
    total: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for v, g in zip(values, groups):
        total[g] += v
        count[g] += 1
    return [total[g] / count[g] for g in groups]


def reliability(values: Sequence[float], stderr: Sequence[float | None]) -> float | None:
    """1 - mean(stderr^2) / var(values) (module docstring); None without stderrs or spread."""
    se = [s for s in stderr if s is not None and math.isfinite(s)]
    if len(values) < 2 or len(se) != len(values):
        return None
    var = float(np.var(np.asarray(values, float), ddof=1))
    if var <= 0:
        return None
    return 1.0 - float(np.mean(np.square(se))) / var


# --------------------------------------------------------------------------- the analysis

@dataclass(frozen=True)
class MCSItem:
    mc2_id: int
    category: str
    r_v: float
    r_v_stderr: float | None


@dataclass(frozen=True)
class Correlation:
    rho: float | None
    interval: Interval


@dataclass(frozen=True)
class Row:
    """One scope (every item, or one category) of one event of one sweep."""

    scope: str  # "all" or a category
    n: int
    at_start: int  # items with the event already at the smallest strength
    observed: int  # items with the event in the sweep (not censored)
    correlations: dict[str, Correlation]  # predictor -> rho with its interval
    reliability: float | None
    redrawn: Interval | None = None  # rho of the item MCS with r_v redrawn from its stderr (docstring)


@dataclass
class Analysis:
    sweep: Sweep
    event_points: dict[str, dict[int, EventPoint]]  # event -> mc2_id -> point
    mcs: dict[int, MCSItem]
    rows: dict[str, list[Row]]  # event -> rows ("all" first, then categories)
    missing_mcs: int = 0
    notes: list[str] = field(default_factory=list)


def analyse(sweep: Sweep, mcs: dict[int, MCSItem], draws: int = 1000, seed: int = 0,
            categories: Iterable[str] | None = None) -> Analysis:
    """Event points of every item of ``sweep`` with an MCS, and their rho with each predictor."""
    ids = [i for i in sweep.steps if i in mcs]
    missing = len(sweep.steps) - len(ids)
    analysis = Analysis(sweep, {}, {i: mcs[i] for i in ids}, {}, missing, list(sweep.notes))
    if missing:
        analysis.notes.append(f"{missing} item(s) of the sweep have no MCS and are left out")
    cats = [sweep.categories[i] for i in ids]
    reliance = [reliance_away(mcs[i].r_v, sweep.target) for i in ids]
    stderr = [mcs[i].r_v_stderr for i in ids]
    have_se = all(s is not None and math.isfinite(s) for s in stderr) and bool(ids)
    order = list(categories) if categories is not None else sorted(set(cats))
    for event in EVENTS:
        points = {i: first_event(sweep.steps[i], event, sweep.target) for i in ids}
        analysis.event_points[event] = points
        values = [points[i].value for i in ids]
        keys = rank_keys([points[i] for i in ids])
        predictors = {"mcs": reliance, "category": leave_one_out_means(values, cats),
                      "category_mcs": group_means(reliance, cats)}
        rows = [_row("all", list(range(len(ids))), ids, points, keys, predictors, reliance, stderr, have_se,
                     sweep, draws, seed)]
        for category in order:
            members = [k for k, c in enumerate(cats) if c == category]
            if members:
                rows.append(_row(category, members, ids, points, keys, {"mcs": reliance}, reliance, stderr, have_se,
                                 sweep, draws, seed))
        analysis.rows[event] = rows
    return analysis


def _row(scope, members, ids, points, keys, predictors, reliance, stderr, have_se, sweep, draws, seed) -> Row:
    first = {i: sweep.steps[i][0][0] for i in ids}
    y = [keys[k] for k in members]
    rng = np.random.default_rng([seed, len(members)])
    resamples = rng.integers(0, len(members), size=(draws, len(members))) if len(members) >= 3 else None
    mode = max(Counter(y).values()) if y else 0
    if len(members) - mode < MIN_OFF_MODE:  # nearly every item has the same point: no interval worth showing
        resamples = None
    correlations = {}
    for name, values in predictors.items():
        x = [values[k] for k in members]
        if any(v is None for v in x):  # e.g. a category with a single item: no out-of-fold mean
            correlations[name] = Correlation(None, Interval(None, None, 0, draws))
            continue
        interval = (bootstrap_ci(x, y, draws=draws, rng=rng, resamples=resamples)
                    if resamples is not None else Interval(None, None, 0, draws))
        correlations[name] = Correlation(spearman(x, y), interval)
    redrawn = None
    if have_se and resamples is not None:
        same_items = np.tile(np.arange(len(members)), (draws, 1))
        redrawn = bootstrap_ci([reliance[k] for k in members], y, draws=draws, rng=rng, resamples=same_items,
                               x_stderr=[stderr[k] for k in members])
    at_start = sum(1 for k in members if not points[ids[k]].censored and points[ids[k]].value == first[ids[k]])
    observed = sum(1 for k in members if not points[ids[k]].censored)
    rel = reliability([reliance[k] for k in members], [stderr[k] for k in members]) if have_se else None
    return Row(scope, len(members), at_start, observed, correlations, rel, redrawn)
