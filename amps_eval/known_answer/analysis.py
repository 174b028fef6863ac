"""The known-answer tests on a study of a graded organism (pure analysis; ``report.py`` renders it).

On a graded organism (`amps_eval.organism.graded`) each item's probability of following the image,
``planted_p_vision`` (p), is known by construction. Three tests compare what the tool measures with it:

1. **MCS validity** (:func:`mcs_validity`): Spearman of the MCS ``r_v`` (plain prompt) with p, over
   all items and within each category, with 95% bootstrap intervals over items.
2. **AMPS premise, with an oracle** (:func:`premise`): the steered methods ``amps_oracle`` (gamma from
   p), ``amps`` (gamma from the MCS), ``amps_beta0`` (gamma = 1) and ``l2s`` compared at *matched
   effective strength*. Per method and target, the sweep gives the mean effective strength S(alpha)
   (``relative_shift``, ||shift|| / ||h||; alpha 0 counts as 0) and per item, at each alpha, whether
   the answer follows the target (0/1) and its ``image_logodds`` toward the target (the log-odds
   signed so that positive favours the target). Each item's outcome at strength s is linearly
   interpolated between the two alphas whose S bracket s (:func:`interpolate`). The strengths
   compared are ``MATCH_FRACTIONS`` of the largest strength every method (every training seed of it)
   reaches. With several training seeds (``amps-eval study --seeds``) each seed's sweep is
   interpolated at s and an item's outcome is the mean over the seeds (:func:`seed_mean`).
   Differences between methods are paired over the same items (mean difference, 95% paired
   bootstrap interval).
3. **Susceptibility** (:func:`susceptibility`): per item, method and target, the slope of the
   toward-target ``image_logodds`` against the item's own effective strength (least squares through
   its sweep points) and its flip point (first strength at which the answer follows the target;
   items that never flip are censored at their largest strength and ranked above every observed
   flip, as in `amps_eval.report.susceptibility`); each against the planted margin ``|logit p|``,
   against the signed margin away from the target (``logit p`` toward the text, ``-logit p`` toward
   the image: how strongly the item prefers the other modality) and against the MCS reliance on the
   modality steered away from. Spearman with 95% bootstrap intervals. With several training seeds,
   on the first seed's sweep (one fitted module's response; the seed is read from the steering
   file's name, so the choice does not depend on run dates).

Whatever the numbers are, they are reported as measured; no claim is drawn here.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from amps_eval.known_answer.stats import paired_difference, spearman_with_interval

PREMISE_METHODS: tuple[str, ...] = ("amps_oracle", "amps", "amps_beta0", "l2s")
COMPARISONS: tuple[tuple[str, str], ...] = (
    ("amps_oracle", "amps_beta0"),
    ("amps", "amps_beta0"),
    ("amps_oracle", "amps"),
    ("amps", "l2s"),
    ("amps_oracle", "l2s"),
)
"""(a, b): a - b at matched strength. oracle vs beta0: can per-item scaling help on this model;
amps vs beta0: does it with the MCS; oracle vs amps: is the MCS the bottleneck."""
MATCH_FRACTIONS: tuple[float, ...] = (0.5, 1.0)
TARGETS = ("vision", "text")


def logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def toward(image_logodds: float | None, target: str) -> float | None:
    """``image_logodds`` signed so that positive favours ``target``."""
    if image_logodds is None:
        return None
    return image_logodds if target == "vision" else -image_logodds


def margin_away(p: float, target: str) -> float:
    """How strongly the item prefers the modality steered away from, in logits."""
    return -logit(p) if target == "vision" else logit(p)


# ----------------------------------------------------------------------------- 1. MCS validity


def mcs_validity(r_v: dict[int, float], planted: dict[int, float], categories: dict[int, str], n_boot: int = 1000,
                 seed: int = 0) -> dict[str, Any]:
    """Spearman(r_v, planted p) over all items and per category, with bootstrap intervals."""
    ids = sorted(set(r_v) & set(planted))
    out = {"all": spearman_with_interval([r_v[i] for i in ids], [planted[i] for i in ids], n_boot, seed)}
    for category in sorted({categories[i] for i in ids}):
        members = [i for i in ids if categories[i] == category]
        out[category] = spearman_with_interval([r_v[i] for i in members], [planted[i] for i in members], n_boot, seed)
    return out


# ----------------------------------------------------------------------------- sweeps


@dataclasses.dataclass(frozen=True)
class SweepData:
    """One (method, target) sweep of one model: alpha -> mc2_id -> record (follows, image_logodds,
    relative_shift, category)."""

    method: str
    target: str
    points: dict[float, dict[int, dict]]

    @property
    def alphas(self) -> list[float]:
        return sorted(a for a in self.points if a >= 0)

    def items(self) -> list[int]:
        sets = [set(self.points[a]) for a in self.alphas]
        return sorted(set.intersection(*sets)) if sets else []

    def item_strength(self, alpha: float, mc2_id: int) -> float | None:
        if alpha == 0:
            return 0.0
        value = self.points[alpha][mc2_id].get("relative_shift")
        return float(value) if isinstance(value, (int, float)) else None

    def mean_strength(self, alpha: float) -> float | None:
        values = [self.item_strength(alpha, i) for i in self.items()]
        if not values or any(v is None for v in values):
            return None
        return sum(values) / len(values)

    def outcome(self, alpha: float, mc2_id: int, kind: str) -> float | None:
        record = self.points[alpha][mc2_id]
        if kind == "share":
            return float(record["follows"] == self.target)
        return toward(record.get("image_logodds"), self.target)


def interpolate(xs: Sequence[float], ys: Sequence[float | None], x: float) -> float | None:
    """Linear interpolation of (xs increasing) at ``x``; None outside [xs[0], xs[-1]] or where a
    needed y is None."""
    if not xs or x < xs[0] - 1e-12 or x > xs[-1] + 1e-12:
        return None
    for k in range(len(xs) - 1):
        if xs[k] - 1e-12 <= x <= xs[k + 1] + 1e-12:
            y0, y1 = ys[k], ys[k + 1]
            if y0 is None or y1 is None:
                return None
            span = xs[k + 1] - xs[k]
            w = 0.0 if span <= 0 else (x - xs[k]) / span
            return y0 + w * (y1 - y0)
    y = ys[-1]
    return None if y is None else float(y)


def at_strength(sweep: SweepData, s: float, kind: str) -> dict[int, float]:
    """mc2_id -> the item's outcome interpolated at mean effective strength ``s``."""
    alphas = sweep.alphas
    strengths = [sweep.mean_strength(a) for a in alphas]
    if any(v is None for v in strengths):
        return {}
    order = sorted(range(len(alphas)), key=lambda k: strengths[k])
    xs = [strengths[k] for k in order]
    out = {}
    for i in sweep.items():
        value = interpolate(xs, [sweep.outcome(alphas[k], i, kind) for k in order], s)
        if value is not None:
            out[i] = value
    return out


# ----------------------------------------------------------------------------- 2. premise


def premise(sweeps: dict[tuple[str, str], SweepData], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Per target: the matched strengths, each method's mean outcome there and the paired
    differences of :data:`COMPARISONS` (target share in points, toward-target log-odds)."""
    out: dict[str, Any] = {}
    for target in TARGETS:
        present = {m: seed_sweeps(sweeps[(m, target)]) for m in PREMISE_METHODS
                   if (m, target) in sweeps and seed_sweeps(sweeps[(m, target)])}
        maxima = {m: min(max((sw.mean_strength(a) or 0.0) for a in sw.alphas) for sw in seeds)
                  for m, seeds in present.items()
                  if all(sw.mean_strength(a) is not None for sw in seeds for a in sw.alphas)}
        if len(maxima) < 2:
            out[target] = {"note": f"fewer than two of {PREMISE_METHODS} have a sweep with effective strengths"}
            continue
        common = min(maxima.values())
        points = []
        for fraction in MATCH_FRACTIONS:
            s = fraction * common
            outcomes = {kind: {m: seed_mean([at_strength(sw, s, kind) for sw in present[m]]) for m in maxima}
                        for kind in ("share", "logodds")}
            entry: dict[str, Any] = {"strength": s, "fraction_of_common_max": fraction, "methods": {}, "differences": []}
            for m in maxima:
                share, lo = outcomes["share"][m], outcomes["logodds"][m]
                entry["methods"][m] = {"target_share_pct": 100 * _mean(share.values()), "toward_logodds": _mean(lo.values()),
                                       "n": len(share), "seeds": len(present[m])}
            for a, b in COMPARISONS:
                if a not in maxima or b not in maxima:
                    continue
                row = {"a": a, "b": b}
                for kind, scale in (("share", 100.0), ("logodds", 1.0)):
                    ids = sorted(set(outcomes[kind][a]) & set(outcomes[kind][b]))
                    diff = paired_difference([scale * outcomes[kind][a][i] for i in ids],
                                             [scale * outcomes[kind][b][i] for i in ids], n_boot, seed)
                    row["target_share_pct" if kind == "share" else "toward_logodds"] = diff
                entry["differences"].append(row)
            points.append(entry)
        out[target] = {"max_strength": maxima, "common_max": common, "points": points}
    return out


def seed_mean(per_seed: Sequence[dict[int, float]]) -> dict[int, float]:
    """Item by item, the mean over the training seeds of an outcome (the items every seed has)."""
    shared = set.intersection(*(set(p) for p in per_seed)) if per_seed else set()
    return {i: sum(p[i] for p in per_seed) / len(per_seed) for i in sorted(shared)}


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan


# ----------------------------------------------------------------------------- 3. susceptibility


def slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ys on xs; None with fewer than two distinct xs."""
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def item_response(sweep: SweepData, mc2_id: int) -> tuple[float | None, float, bool]:
    """(slope of toward-target log-odds per unit of the item's effective strength, flip point,
    censored) of one item."""
    xs, ys, flip, censored = [], [], None, True
    for alpha in sweep.alphas:
        s = sweep.item_strength(alpha, mc2_id)
        if s is None:
            continue
        y = sweep.outcome(alpha, mc2_id, "logodds")
        if y is not None:
            xs.append(s)
            ys.append(y)
        if flip is None and sweep.points[alpha][mc2_id]["follows"] == sweep.target:
            flip, censored = s, False
    if flip is None:
        last = [sweep.item_strength(a, mc2_id) for a in sweep.alphas]
        flip = max((v for v in last if v is not None), default=0.0)
    return slope(xs, ys), flip, censored


def susceptibility(sweeps: dict[tuple[str, str], SweepData], planted: dict[int, float], r_v: dict[int, float],
                   n_boot: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """Per (method, target): Spearman of the slope and of the flip point with |logit p|, the signed
    margin away from the target and the MCS reliance away from the target."""
    rows = []
    for (method, target), value in sorted(sweeps.items()):
        seeds = seed_sweeps(value)
        if not seeds:
            continue
        sweep = seeds[0]  # the first training seed's module (the premise averages the seeds)
        if not sweep.alphas or any(sweep.mean_strength(a) is None for a in sweep.alphas):
            continue  # no effective strengths recorded (a run without diagnostics)
        ids = [i for i in sweep.items() if i in planted]
        responses = {i: item_response(sweep, i) for i in ids}
        predictors = {
            "|logit p|": {i: abs(logit(planted[i])) for i in ids},
            "margin away": {i: margin_away(planted[i], target) for i in ids},
        }
        if r_v:
            predictors["MCS reliance away"] = {i: (1 - r_v[i]) if target == "vision" else r_v[i] for i in ids if i in r_v}
        row: dict[str, Any] = {"method": method, "target": target, "n": len(ids), "seed_sweeps": len(seeds),
                               "flipped": sum(not responses[i][2] for i in ids), "slope": {}, "flip": {}}
        for name, values in predictors.items():
            with_slope = [i for i in ids if i in values and responses[i][0] is not None]
            row["slope"][name] = spearman_with_interval([responses[i][0] for i in with_slope],
                                                        [values[i] for i in with_slope], n_boot, seed)
            keyed = [i for i in ids if i in values]
            flips = [math.inf if responses[i][2] else responses[i][1] for i in keyed]
            finite_top = max([f for f in flips if f != math.inf], default=0.0) + 1.0
            row["flip"][name] = spearman_with_interval([finite_top if f == math.inf else f for f in flips],
                                                       [values[i] for i in keyed], n_boot, seed)
        row["mean_slope"] = _mean(r[0] for r in responses.values() if r[0] is not None)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- reading a study


def read_sweeps(runs_dir: Path, pretrained: str | None = None) -> dict[str, dict[tuple[str, str], list[SweepData]]]:
    """pretrained -> (method, target) -> one SweepData per training seed (in seed order: the seed in
    the steering file's name, never the run date), from the runs (with diagnostics) of a folder."""
    from amps_eval.methods.registry import STEERING_METHODS
    from amps_eval.report.runs import discover
    from amps_eval.report.seeds import seed_order, steering_files
    from amps_eval.report.select import build_index

    problems: list = []
    runs, found = discover(Path(runs_dir))
    index = build_index(runs, problems + found)
    files = steering_files(runs)
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    for (variant, target), records in index.records.items():
        if variant.method not in STEERING_METHODS or variant.alpha is None or variant.orders != "one":
            continue
        if pretrained is not None and variant.pretrained != pretrained:
            continue
        steering = str(dict(variant.settings).get("steering", ""))
        out[variant.pretrained][(variant.method, target)][steering][variant.alpha] = {
            int(r["mc2_id"]): r for r in records}
    return {p: {k: [SweepData(k[0], k[1], dict(by_seed[steering]))
                    for steering in sorted(by_seed, key=lambda f: seed_order(f, files.get(f)))
                    if len(by_seed[steering]) >= 2]
                for k, by_seed in by.items()}
            for p, by in out.items()}


def seed_sweeps(value: SweepData | Sequence[SweepData]) -> list[SweepData]:
    """A (method, target)'s sweeps, one per training seed (a single sweep: one seed)."""
    return [value] if isinstance(value, SweepData) else list(value)


def read_r_v(mcs_dir: Path, pretrained: str) -> dict[int, float]:
    from amps_eval.report.susceptibility_report import match_mcs, read_mcs

    found = match_mcs(pretrained, read_mcs([Path(mcs_dir)], []))
    return {} if found is None else {i: item.r_v for i, item in found.items()}


def analyse_study(out: Path, data: Path, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The three tests for every model of the study in ``out`` (runs/, mcs/) on the graded data ``data``."""
    from amps_eval.mc2.graded import planted_p_of

    planted = planted_p_of(data)
    result: dict[str, Any] = {"data": str(data), "n_items": len(planted), "n_boot": n_boot, "seed": seed, "models": {}}
    for pretrained, sweeps in sorted(read_sweeps(Path(out) / "runs").items()):
        r_v = read_r_v(Path(out) / "mcs", pretrained)
        categories = {}
        for sweep in (sw for value in sweeps.values() for sw in seed_sweeps(value)):
            for points in sweep.points.values():
                categories.update({i: r["category"] for i, r in points.items()})
        result["models"][pretrained] = {
            "mcs_validity": mcs_validity(r_v, planted, categories, n_boot, seed) if r_v else None,
            "premise": premise(sweeps, n_boot, seed),
            "susceptibility": susceptibility(sweeps, planted, r_v, n_boot, seed),
        }
    return result
