"""The points of a steering sweep, per model, method and target (pure: shared by the figures and
the leaderboard's charts, so both draw the same numbers).

A sweep point is one alpha's Total cell (the newest run of that alpha; see ``select.py``): target
share, collapse rate and standard error in %, the item count and the mean effective strength of
its items (``strength.py``; None when the run recorded no diagnostics). Composite rows (alpha
chosen on held-out items) are not sweep points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from amps_eval.report.cells import TOTAL
from amps_eval.report.seeds import seed_order, steering_files, training_seed
from amps_eval.report.select import ResultIndex
from amps_eval.report.style import method_label


@dataclass(frozen=True)
class SweepPoint:
    """One alpha of a sweep (Total cell): shares in %, effective strength None when not recorded."""

    alpha: float
    strength: float | None
    share: float
    collapse: float | None
    stderr: float | None
    n_items: int | None = None
    logodds: float | None = None  # mean image_logodds of the answers (None: the runs did not record it)
    logodds_stderr: float | None = None

    @property
    def collapse_stderr(self) -> float | None:
        """Binomial standard error of the collapse rate (%), like the target share's."""
        if self.collapse is None or not self.n_items:
            return None
        c = self.collapse / 100
        return 100 * math.sqrt(c * (1 - c) / self.n_items)


def alpha_series(index: ResultIndex, pretrained: str, method: str, target: str) -> dict[str, list[SweepPoint]]:
    """label -> points sorted by alpha, of one method; one series per steering setup (and per steering
    file when several share the other settings: training seeds, "(seed k)" with k the seed in the
    file's name, ``seeds.training_seed``; files whose names give no distinct seeds are numbered in
    ``seeds.seed_order``)."""
    series: dict[str, list[SweepPoint]] = {}
    several_data = len(index.data_groups()) > 1  # runs on different data are separate series
    steering: dict[str, list[str]] = {}  # label -> its steering files (several: training seeds), in order seen
    for (variant, t), cells in sorted(index.cells.items(), key=lambda kv: min(c.date for c in kv[1].values())):
        if t != target or variant.pretrained != pretrained or variant.method != method or TOTAL not in cells:
            continue
        if variant.alpha is None or "training_seeds" in dict(variant.settings):  # a composite row (alpha
            continue  # chosen on held-out items, or a mean over training seeds), not a sweep point
        base = ", ".join(f"{k}={v}" for k, v in variant.settings if k != "steering") or method_label(method)
        steering.setdefault(base, [])
        if dict(variant.settings).get("steering", "") not in steering[base]:
            steering[base].append(dict(variant.settings).get("steering", ""))
    paths = steering_files(index.runs)
    number: dict[tuple[str, str], int] = {}  # (label, steering id) -> the seed shown
    for base, files in steering.items():
        ordered = sorted(files, key=lambda f: seed_order(f, paths.get(f)))
        seeds = [training_seed(paths.get(f, f)) for f in ordered]
        distinct = len(set(seeds)) == len(seeds)
        number.update({(base, f): (seeds[k] if distinct else k) for k, f in enumerate(ordered)})
    for (variant, t), cells in index.cells.items():
        if t != target or variant.pretrained != pretrained or variant.method != method or TOTAL not in cells:
            continue
        if variant.alpha is None or "training_seeds" in dict(variant.settings):
            continue
        label = ", ".join(f"{k}={v}" for k, v in variant.settings if k != "steering") or method_label(method)
        files = steering[label]
        if len(files) > 1:  # one series per steering file: the training seeds of a method
            label += f" (seed {number[(label, dict(variant.settings).get('steering', ''))]})"
        if variant.orders == "both":
            label += " (both orders)"
        if several_data:
            label += f" [data: {variant.data.describe()}]"
        cell = cells[TOTAL]
        series.setdefault(label, []).append(SweepPoint(
            variant.alpha, cell.strength, 100 * cell.target_acc, None if cell.others is None else 100 * cell.others,
            None if cell.stderr is None else 100 * cell.stderr, cell.n_items, cell.logodds, cell.logodds_stderr))
    return {k: sorted(v, key=lambda p: p.alpha) for k, v in series.items()}
