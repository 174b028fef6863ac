"""Training seeds of a trained method: which seed a steering file is, and numbers averaged over seeds (pure).

A trained method (L2S, AMPS, AMPS beta=0, the AMPS oracle) fitted with several seeds has one
steering file per seed (``amps-eval study``: ``<stem>_<method>.safetensors`` for seed 0,
``<stem>_<method>_seed<k>.safetensors`` for seed k, `amps_eval.study.seed_suffix`), and one sweep
per file. The report reads a file's seed from its name (`training_seed`): results files record the
steering file's path in ``model_args``, not the seed it was fitted with. Files are put in order by
seed, then by path (`seed_order`), never by run date, so every choice among them is the same
whatever order the runs finished in.

Seed-averaged cells (`seed_cells`), for Tables 1-3 and the leaderboard: each seed is scored on its
own, at the alpha chosen on held-out halves of the items for that seed (``alpha_choice``); then,
per column:

* item values per seed: 1 when the item follows the target (``share``), 1 when it follows neither
  option (``collapse``), the item's mean ``image_logodds`` (``paired.item_means``);
* the cell's share, collapse and log-odds are the means over items of the item-by-item means over
  the seeds (`mean_values`; over the items every seed answered), which equals the mean of the
  seeds' own shares;
* the standard error is over items of those item means: ``sqrt(mean((x_i - p)^2) / n)`` for the
  share and the collapse (with one seed this is the binomial ``sqrt(p(1-p)/n)`` of a single run),
  the sample standard deviation over ``sqrt(n)`` for the log-odds. It carries the items' noise,
  not the training's: that is
* the seed spread, the lowest and highest of the seeds' own shares (``Cell.seed_range``), shown
  beside it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePath

from amps_eval.mc2.metrics import item_decisions
from amps_eval.report.paired import item_means

SEED_NAME = re.compile(r"_seed(\d+)$")

Values = dict[int, float]  # mc2_id -> item value


def training_seed(steering: str) -> int:
    """The training seed of a steering file by its name: ``..._seed<k>.safetensors`` is seed k, a
    name without the suffix is seed 0 (`amps_eval.study.seed_suffix`)."""
    name = PurePath(str(steering).replace("\\", "/")).name
    stem = name[: -len(".safetensors")] if name.endswith(".safetensors") else PurePath(name).stem
    match = SEED_NAME.search(stem)
    return int(match.group(1)) if match else 0


def seed_order(steering: str, path: str | None = None) -> tuple[int, str, str]:
    """Sort key of a steering file: its training seed, then its path (``path``: the file a steering
    id such as ``sha256:...`` stands for, when known), then the id itself."""
    where = str(path if path is not None else steering)
    return training_seed(where), where, str(steering)


def steering_files(runs: Iterable) -> dict[str, str]:
    """steering id (``Run.steering_id``) -> the path its runs recorded (the smallest, if several)."""
    out: dict[str, str] = {}
    for run in runs:
        sid = run.steering_id
        path = run.settings.get("steering")
        if sid is not None and path and (sid not in out or str(path) < out[sid]):
            out[sid] = str(path)
    return out


def mean_values(parts: Sequence[Mapping]) -> Values:
    """Item by item, the mean over ``parts`` (the items every part has)."""
    shared = set.intersection(*(set(p) for p in parts)) if parts else set()
    return {i: sum(p[i] for p in parts) / len(parts) for i in shared}


def _mean(values: Mapping) -> float:
    return sum(values.values()) / len(values) if values else float("nan")


def seed_numbers(per_seed: Sequence[Sequence[dict]]) -> dict:
    """The seed-averaged numbers of one cell (module docstring) from each seed's answer records of it.

    Returns share, collapse, stderr, n_items, seed_shares (each seed's own share over the shared
    items), logodds and logodds_stderr (None unless every seed's records carry ``image_logodds``)."""
    if not per_seed or any(not records for records in per_seed):
        raise ValueError("seed-averaged numbers need answer records from every seed")
    targets = {r["target"] for records in per_seed for r in records}
    if len(targets) != 1:
        raise ValueError(f"answers of different targets cannot be averaged together: {sorted(targets)}")
    target = targets.pop()
    decisions = [item_decisions(records) for records in per_seed]
    share = mean_values([{i: float(d == target) for i, d in found.items()} for found in decisions])
    if not share:
        raise ValueError("the seeds' runs share no item: they cannot be averaged item by item")
    collapse = mean_values([{i: float(d == "others") for i, d in found.items()} for found in decisions])
    n = len(share)
    p = _mean(share)
    stderr = math.sqrt(sum((x - p) ** 2 for x in share.values()) / n / n)
    seed_shares = [sum(float(found[i] == target) for i in share) / n for found in decisions]
    logodds = [item_means(records, "image_logodds") for records in per_seed]
    mean_lo = se_lo = None
    if all(logodds):
        both = mean_values(logodds)
        if both:
            mean_lo = _mean(both)
            if len(both) > 1:
                var = sum((x - mean_lo) ** 2 for x in both.values()) / (len(both) - 1)
                se_lo = math.sqrt(var / len(both))
    return {"share": p, "collapse": _mean(collapse), "stderr": stderr, "n_items": n, "seed_shares": seed_shares,
            "logodds": mean_lo, "logodds_stderr": se_lo}


def seed_cells(per_seed: Sequence[Sequence[dict]], run: Path, date: str) -> dict:
    """Column -> seed-averaged `Cell` (the eight categories present, and Total) from each seed's
    answer records (at that seed's chosen alphas)."""
    from amps_eval.mc2.schema import CATEGORIES
    from amps_eval.report.cells import TOTAL, Cell, mean_strength

    def cell(parts: list[list[dict]]) -> Cell:
        numbers = seed_numbers(parts)
        strengths = [mean_strength(records) for records in parts]
        strength = None if any(s is None for s in strengths) else sum(strengths) / len(strengths)
        shares = numbers["seed_shares"]
        return Cell(numbers["share"], numbers["collapse"], numbers["stderr"], numbers["n_items"], "samples", run,
                    date, strength, numbers["logodds"], numbers["logodds_stderr"], len(parts),
                    (min(shares), max(shares)))

    out = {}
    for category in CATEGORIES:
        parts = [[r for r in records if r["category"] == category] for records in per_seed]
        if all(parts):
            out[category] = cell(parts)
    out[TOTAL] = cell([list(records) for records in per_seed])
    return out
