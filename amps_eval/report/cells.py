"""The numbers of one run: target share, collapse rate and standard error per target and column.

Columns are the eight MC2 categories and "Total" (every item of the target). Numbers come from the
samples files whenever they are usable, scored by ``amps_eval.mc2.metrics.score`` (the same item
rule as the tasks: with both option orders an item counts only if both answers agree); the results
file's aggregates are the fallback, which gives Total (and category cells only for the per-category
tasks). The standard error from samples is the binomial one over items, sqrt(p(1-p)/n); from the
results file it is lmms-eval's CLT error (clustered by mc2_id), the closest it records.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from amps_eval.mc2.metrics import score
from amps_eval.mc2.schema import CATEGORIES, CATEGORY_ABBREV
from amps_eval.report.runs import Problem, Run, TaskData

TOTAL = "Total"
COLUMNS: tuple[str, ...] = (*CATEGORIES, TOTAL)
HEADERS: dict[str, str] = {**CATEGORY_ABBREV, TOTAL: TOTAL}


@dataclass(frozen=True)
class Cell:
    """One table cell: shares in [0, 1], and the run it came from."""

    target_acc: float
    others: float | None
    stderr: float | None
    n_items: int | None
    source: str  # "samples" | "results"
    run: Path
    date: str
    strength: float | None = None  # mean effective strength of the items (steered runs with diagnostics)
    logodds: float | None = None  # mean image_logodds of the answers that have one (amps_eval.logodds)
    logodds_stderr: float | None = None  # its standard error over those answers
    n_seeds: int = 1  # training seeds averaged (``seeds.seed_cells``); 1: one run
    seed_range: tuple[float, float] | None = None  # with several seeds: the lowest and highest seed's share


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def mean_strength(records) -> float | None:
    """The mean ``relative_shift`` of the records (`report.strength`); None unless every one has it."""
    values = [r.get("relative_shift") for r in records]
    if not values or any(not isinstance(v, (int, float)) for v in values):
        return None
    return sum(values) / len(values)


def logodds_summary(records) -> tuple[float | None, float | None]:
    """(mean, standard error) of the records' ``image_logodds`` (answers without one left out)."""
    values = [float(r["image_logodds"]) for r in records if _number(r.get("image_logodds")) is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance / len(values))


def _scored(records, run: Path, date: str) -> Cell:
    scores = score(records)
    p, n = scores.target_acc, scores.n_items
    return Cell(p, scores.others, math.sqrt(p * (1 - p) / n), n, "samples", run, date, mean_strength(records),
                *logodds_summary(records))


def _from_records(records, run: Run) -> Cell:
    return _scored(records, run.path, run.date)


def _from_results(task: TaskData, run: Run, problems: list[Problem] | None = None) -> Cell | None:
    """The cell of a task without a samples file, from its results file; None when the share is
    missing or NaN (then, with ``problems``, a note says that the cell was left out and why)."""
    p = _number(task.metrics.get("target_acc,none"))
    if p is not None and math.isnan(p) and problems is not None:
        problems.append(Problem(run.path, f"{task.name}: target_acc is NaN in the results file and there is no "
                                          "samples file to score it from: left out of the tables (rerun it with "
                                          "--log_samples, or look for the failure that produced no answers)"))
    if p is None or math.isnan(p):
        return None
    n = task.n_docs // (2 if task.orders == "both" else 1) if task.n_docs else None
    logodds = _number(task.metrics.get("image_logodds,none"))
    return Cell(p, _number(task.metrics.get("others_rate,none")), _number(task.metrics.get("target_acc_stderr_clt,none")),
                n, "results", run.path, run.date, None,
                None if logodds is None or math.isnan(logodds) else logodds,
                _number(task.metrics.get("image_logodds_stderr_clt,none")))


def cells_from_records(records, run: Path, date: str) -> dict[str, Cell]:
    """Column -> Cell of a set of answer records (the eight categories present, and Total)."""
    groups = defaultdict(list)
    for record in records:
        groups[record["category"]].append(record)
    columns = [*((c, groups[c]) for c in CATEGORIES if groups.get(c)), (TOTAL, list(records))]
    return {column: _scored(rows, run, date) for column, rows in columns}


def run_cells(run: Run, problems: list[Problem]) -> dict[tuple[str, str], dict[str, Cell]]:
    """(target, orders) -> column -> Cell for one run; inconsistencies are appended to ``problems``."""
    out: dict[tuple[str, str], dict[str, Cell]] = defaultdict(dict)
    by_category: dict[tuple[str, str], list] = defaultdict(list)
    for task in run.tasks:
        key = (task.target, task.orders)
        cells = out[key]
        if task.category is None:
            if task.records:
                scored = cells_from_records(task.records, run.path, run.date)
                for column, cell in scored.items():
                    if column == TOTAL:
                        cells[TOTAL] = cell
                    else:
                        cells.setdefault(column, cell)  # a dedicated per-category task wins
                _check(task, cells[TOTAL], run, problems)
            elif (cell := _from_results(task, run, problems)) is not None:
                cells[TOTAL] = cell
        else:
            cell = _from_records(task.records, run) if task.records else _from_results(task, run, problems)
            if cell is not None:
                cells[task.category] = cell  # the dedicated task wins over a slice of the full one
                by_category[key].append(task)
    for key, tasks in by_category.items():
        if TOTAL not in out[key] and {t.category for t in tasks} == set(CATEGORIES):
            out[key][TOTAL] = _union_total(tasks, run)
    return {key: cells for key, cells in out.items() if cells}


def _union_total(tasks: list[TaskData], run: Run) -> Cell | None:
    """Total from the eight per-category tasks: scored over their records, else size-weighted."""
    if all(t.records for t in tasks):
        return _from_records([r for t in tasks for r in t.records], run)
    cells = [_from_results(t, run) for t in tasks]
    if any(c is None or not c.n_items for c in cells):
        return None
    n = sum(c.n_items for c in cells)
    p = sum(c.target_acc * c.n_items for c in cells) / n
    others = None if any(c.others is None for c in cells) else sum(c.others * c.n_items for c in cells) / n
    return Cell(p, others, math.sqrt(p * (1 - p) / n), n, "results", run.path, run.date)


def _check(task: TaskData, cell: Cell, run: Run, problems: list[Problem]) -> None:
    reported = _number(task.metrics.get("target_acc,none"))
    if reported is not None and not math.isnan(reported) and abs(reported - cell.target_acc) > 1e-9:
        problems.append(Problem(run.path, f"{task.name}: target_acc {reported:.4f} in the results file but "
                                          f"{cell.target_acc:.4f} from its samples file (the samples are used); "
                                          "were the files of two runs mixed?"))
