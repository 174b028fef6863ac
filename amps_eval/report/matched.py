"""Methods compared at matched effective strength, with paired intervals (pure over a `ResultIndex`).

Each steered method's sweep gives, per alpha, every item's answer and the run's mean effective
strength s (``relative_shift``, ``strength.py``). Alphas do not match across methods (one alpha of
AMPS moves the hidden state more than one of L2S), so methods are compared at the same s:

1. **Curves.** Per method (one steering setup: the settings group with the most alphas, as the
   held-out alpha choice uses), the sweep points sorted by s; alpha 0 (the unsteered model, s = 0)
   included. Each point carries per-item values: ``share`` (1 when the item follows the target,
   ``mc2.metrics.item_decisions``), ``collapse`` (1 when it follows neither option) and every numeric
   per-record field named in ``fields`` that all its records carry (e.g. a log-odds; averaged over an
   item's records, `paired.item_means`). A method whose runs recorded no strength has no curve.
2. **Interpolation.** At a strength s between two points s_a <= s <= s_b of a curve, every item's
   value is ``w * x_a + (1 - w) * x_b`` with ``w = (s_b - s) / (s_b - s_a)``: linear interpolation of
   the curve, done item by item, so that the interpolated share is the mean of item values and a
   paired bootstrap over items applies to it unchanged. Outside a curve's range there is no value.
3. **Common strengths.** ``S_lo`` = the largest of the methods' smallest strengths, ``S_hi`` = the
   smallest of their largest: the range every method reaches. The grid is ``S_lo + (S_hi - S_lo) k / K``
   for k = 1..K (default K = 4): k = 0 is left out because it is the unsteered model when every sweep
   has alpha 0.
   With several training seeds of a method (one sweep per steering file of the same settings),
   every seed has its own curve; a method's value at a strength is the item-by-item mean over its
   seeds' interpolated values.
4. **Summary per method** ("best target share with collapse <= 5 %"): the items are split into the
   two halves of ``alpha_choice.halves``; for each half, the grid strength is chosen on the *other*
   half (highest share among the strengths whose collapse is at most 5 %, ties: the smaller
   strength; none qualifies: the lowest collapse), and the half is scored at it, as the alpha is
   chosen today. Every item is scored once, at a strength chosen without it. With several seeds
   the choice is made per seed, on that seed's curve; the summary is the item-by-item mean over
   the seeds, and the seeds' own summaries give its spread (`Summary.seed_range`).
5. **Differences.** Each method's summary is compared with L2S's (the paper's baseline) and with the
   best summary share, item by item (`paired.paired_difference`: paired bootstrap over items, 95 %,
   fixed seed); a row whose interval against the best contains 0 is "not distinguishable from the
   best". The grid columns are compared with L2S the same way. The interval is conditional on the
   strengths chosen in step 4 (they are not re-chosen in each resample).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from amps_eval.mc2.metrics import item_decisions
from amps_eval.report import STEERED
from amps_eval.report.alpha_choice import AlphaRule, halves
from amps_eval.report.paired import PairedDifference, item_means, paired_difference
from amps_eval.report.seeds import mean_values
from amps_eval.report.select import ResultIndex

BASELINE = "l2s"
GRID_POINTS = 4
EXTRA_FIELDS = ("image_logodds",)
"""Per-record numeric fields compared like the share where every record of a curve has them."""

Values = dict[int, float]  # mc2_id -> item value


@dataclass(frozen=True)
class CurvePoint:
    alpha: float
    strength: float
    values: dict[str, Values]  # quantity ("share", "collapse", a field) -> item values


@dataclass(frozen=True)
class Curve:
    method: str
    points: tuple[CurvePoint, ...]  # sorted by strength
    categories: dict[int, str]  # mc2_id -> category (for the held-out halves)

    @property
    def quantities(self) -> tuple[str, ...]:
        shared = set.intersection(*(set(p.values) for p in self.points))
        return tuple(q for q in ("share", "collapse", *sorted(shared - {"share", "collapse"})) if q in shared)

    @property
    def span(self) -> tuple[float, float]:
        return self.points[0].strength, self.points[-1].strength


def point_values(records, target: str, fields: tuple[str, ...] = EXTRA_FIELDS) -> dict[str, Values]:
    """The item values of one sweep point (module docstring, step 1)."""
    decisions = item_decisions(records)
    values = {"share": {i: float(d == target) for i, d in decisions.items()},
              "collapse": {i: float(d == "others") for i, d in decisions.items()}}
    for name in fields:
        found = item_means(records, name)
        if found and set(found) == set(decisions):
            values[name] = found
    return values


def make_curve(method: str, target: str, points: list[tuple[float, float, list[dict]]],
               fields: tuple[str, ...] = EXTRA_FIELDS) -> Curve | None:
    """A curve from (alpha, strength, records) per sweep point; None with fewer than two points."""
    usable = sorted(((a, s, r) for a, s, r in points if r and s is not None and math.isfinite(s)),
                    key=lambda p: (p[1], p[0]))
    if len(usable) < 2:
        return None
    categories = {int(r["mc2_id"]): str(r["category"]) for _, _, records in usable for r in records}
    return Curve(method, tuple(CurvePoint(a, s, point_values(r, target, fields)) for a, s, r in usable), categories)


def interpolate(curve: Curve, strength: float, quantity: str) -> Values | None:
    """Item values of ``quantity`` at ``strength`` (step 2); None outside the curve's range."""
    lo, hi = curve.span
    if not lo - 1e-12 <= strength <= hi + 1e-12:
        return None
    points = curve.points
    for a, b in zip(points, points[1:]):
        if a.strength - 1e-12 <= strength <= b.strength + 1e-12:
            if b.strength - a.strength <= 1e-15:
                return dict(b.values[quantity])
            w = min(1.0, max(0.0, (b.strength - strength) / (b.strength - a.strength)))
            xa, xb = a.values[quantity], b.values[quantity]
            return {i: w * xa[i] + (1 - w) * xb[i] for i in xa if i in xb}
    return dict(points[-1].values[quantity])  # a single-strength curve (guarded by make_curve)


def common_grid(curves: list[Curve], k: int = GRID_POINTS) -> tuple[float, ...]:
    """The strengths every curve reaches (step 3); () when their ranges do not overlap."""
    if not curves or k < 1:
        return ()
    lo = max(c.span[0] for c in curves)
    hi = min(c.span[1] for c in curves)
    if not hi > lo:
        return ()
    return tuple(lo + (hi - lo) * j / k for j in range(1, k + 1))


def _mean(values: Values, items) -> float:
    chosen = [values[i] for i in items if i in values]
    return sum(chosen) / len(chosen) if chosen else float("nan")


@dataclass(frozen=True)
class Summary:
    """A method's best share with collapse <= the rule's limit, strengths chosen on held-out halves."""

    values: dict[str, Values]  # quantity -> item values, each half at the strength chosen on the other
    strengths: tuple[float, float]  # the strength each half is scored at (the first seed's with several)
    equal_choice: bool  # every candidate strength gave the same share and collapse on both choosing halves
    per_seed: tuple["Summary", ...] = ()  # with several training seeds: each seed's own summary

    def mean(self, quantity: str) -> float:
        return _mean(self.values[quantity], self.values[quantity])

    def seed_range(self, quantity: str = "share") -> tuple[float, float] | None:
        """(lowest, highest) of the seeds' own means; None with one seed."""
        if len(self.per_seed) < 2:
            return None
        means = [s.mean(quantity) for s in self.per_seed]
        return min(means), max(means)


def seed_summary(summaries: list[Summary]) -> Summary | None:
    """The summary of several training seeds: item values averaged over the seeds, each seed's
    strengths chosen on held-out halves of its own curve (step 4 per seed)."""
    if not summaries:
        return None
    if len(summaries) == 1:
        return summaries[0]
    values = {q: mean_values([s.values[q] for s in summaries]) for q in summaries[0].values
              if all(q in s.values for s in summaries)}
    return Summary(values, summaries[0].strengths, all(s.equal_choice for s in summaries), tuple(summaries))


def held_out_summary(curve: Curve, grid: tuple[float, ...], rule: AlphaRule | None = None) -> Summary | None:
    """Step 4 of the module docstring; None without a grid."""
    rule = rule or AlphaRule()
    if not grid:
        return None
    split = halves({"mc2_id": i, "category": c} for i, c in curve.categories.items())
    members = [{int(i) for i, h in split.items() if h == k} for k in (0, 1)]
    if not all(members):
        return None
    at = {s: {q: interpolate(curve, s, q) for q in curve.quantities} for s in grid}
    chosen, flat = [], True
    for k in (0, 1):
        other = members[1 - k]
        scored = [(s, _mean(at[s]["share"], other), _mean(at[s]["collapse"], other)) for s in grid]
        flat = flat and len({(round(sh, 12), round(co, 12)) for _, sh, co in scored}) == 1
        allowed = [c for c in scored if c[2] <= rule.max_collapse + 1e-12]
        pick = min(allowed, key=lambda c: (-c[1], c[0])) if allowed else min(scored, key=lambda c: (c[2], c[0]))
        chosen.append(pick[0])
    values = {q: {i: v for k in (0, 1) for i, v in at[chosen[k]][q].items() if i in members[k]}
              for q in curve.quantities}
    return Summary(values, (chosen[0], chosen[1]), flat and len(grid) > 1)


@dataclass(frozen=True)
class MatchedRow:
    method: str
    at: dict[float, dict[str, float]]  # grid strength -> quantity -> mean
    vs_baseline_at: dict[float, PairedDifference]  # grid strength -> share difference to L2S
    summary: Summary | None
    vs_baseline: dict[str, PairedDifference] = field(default_factory=dict)  # quantity -> summary difference to L2S
    vs_best: PairedDifference | None = None  # summary share difference to the best row
    best: bool = False

    @property
    def indistinguishable_from_best(self) -> bool:
        return self.best or (self.vs_best is not None and not self.vs_best.distinguishable)


@dataclass(frozen=True)
class MatchedTable:
    pretrained: str
    target: str
    grid: tuple[float, ...]
    quantities: tuple[str, ...]  # compared in every row (share, collapse, and fields every method has)
    rows: tuple[MatchedRow, ...]  # ranked: summary share, highest first
    skipped: tuple[str, ...]  # "method: why" for steered methods without a curve


def seed_sweeps(index: ResultIndex, pretrained: str, method: str, target: str, orders: str = "one"):
    """The sweeps of a method, one per training seed: [(alpha, strength, records), ...] each.

    Variants are grouped by their settings without the steering file; the group with the most runs
    is used, and within it every steering file is one sweep (the files of one method and settings
    fitted with different seeds: ``amps-eval study --seeds``)."""
    groups = index.seed_groups([v for v in index.candidates(pretrained, method, target, orders)
                                if v.alpha is not None and (v, target) in index.records])
    if not groups:
        return []
    chosen = max(groups.values(), key=lambda seeds: sum(len(members) for _, members in seeds))
    sweeps = []
    for _, members in chosen:  # training-seed order (ResultIndex.seed_groups)
        sweep = []
        for variant in members:
            records = list(index.records[(variant, target)])
            strength = _record_strength(records)
            if strength is None and variant.alpha == 0:
                strength = 0.0  # the unsteered model: no shift, whatever the diagnostics say
            sweep.append((variant.alpha, strength, records))
        sweeps.append(sweep)
    return sweeps


def sweep_points(index: ResultIndex, pretrained: str, method: str, target: str, orders: str = "one"):
    """(alpha, strength, records) of a method's sweep with the most alphas (one seed)."""
    sweeps = seed_sweeps(index, pretrained, method, target, orders)
    return max(sweeps, key=len) if sweeps else []


def _record_strength(records) -> float | None:
    values = [r.get("relative_shift") for r in records]
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        return None
    return sum(values) / len(values)


def matched_table(index: ResultIndex, pretrained: str, target: str, orders: str = "one",
                  methods: tuple[str, ...] | None = None, k: int = GRID_POINTS, seed: int = 0,
                  n_boot: int = 2000, fields: tuple[str, ...] = EXTRA_FIELDS) -> MatchedTable | None:
    """The matched-strength comparison of one model and target; None with fewer than two curves."""
    methods = methods if methods is not None else tuple(m for m in STEERED if index.candidates(
        pretrained, m, target, orders))
    seeds, skipped = {}, []
    for method in methods:
        found = [c for sweep in seed_sweeps(index, pretrained, method, target, orders)
                 if (c := make_curve(method, target, sweep, fields)) is not None]
        if not found:
            skipped.append(f"{method}: fewer than two sweep points with per-item answers and a recorded strength")
        else:
            seeds[method] = found
    if len(seeds) < 2:
        return None
    every = [c for found in seeds.values() for c in found]
    grid = common_grid(every, k)
    quantities = tuple(q for q in every[0].quantities if all(q in c.quantities for c in every))
    curves = [found[0] for found in seeds.values()]  # one per method, for the order below
    summaries = {m: (seed_summary([s for s in (held_out_summary(c, grid) for c in found) if s is not None])
                     if grid else None) for m, found in seeds.items()}
    at = {m: {s: {q: mean_values([interpolate(c, s, q) for c in found]) for q in quantities} for s in grid}
          for m, found in seeds.items()}
    ranked = sorted(curves, key=lambda c: -(summaries[c.method].mean("share") if summaries[c.method] else -1))
    best = ranked[0].method if grid else None
    base = BASELINE if BASELINE in summaries else None
    rows = []
    for curve in ranked:
        m, summary = curve.method, summaries[curve.method]
        vs_at = {}
        if base is not None and m != base:
            vs_at = {s: paired_difference(at[m][s]["share"], at[base][s]["share"], n_boot, seed=seed) for s in grid}
        vs_base = {}
        if base is not None and m != base and summary is not None and summaries[base] is not None:
            vs_base = {q: paired_difference(summary.values[q], summaries[base].values[q], n_boot, seed=seed)
                       for q in quantities}
        vs_best = None
        if best is not None and m != best and summary is not None:
            vs_best = paired_difference(summary.values["share"], summaries[best].values["share"], n_boot, seed=seed)
        rows.append(MatchedRow(m, {s: {q: _mean(v, v) for q, v in at[m][s].items()} for s in grid}, vs_at, summary,
                               vs_base, vs_best, m == best))
    return MatchedTable(pretrained, target, grid, quantities, tuple(rows), tuple(skipped))
