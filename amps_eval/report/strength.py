"""The effective strength of a steered run, read from the wrappers' diagnostics files.

Alpha does not say how hard a run steered: a unit of alpha moves a model with small hidden states
more than one with large states, and AMPS's targets are (1 + gamma) times L2S's (Eq. 11), on average up to twice (less where a bound
on gamma binds, `amps_eval.methods.amps`). The
wrappers therefore record, per steered document, ``relative_shift`` = ||alpha gamma v|| / ||h||
averaged over the positions the shift was added to (``diagnostics=DIR``; `amps_eval.steering.hooks`),
and this module brings it to the report: every answer record of a steered run gets its item's
``relative_shift``, so every table cell, sweep point and held-out choice carries the mean effective
strength of exactly the items it scores.

Which diagnostics file belongs to which results file: lmms-eval records the run's ``model_args``,
including ``diagnostics=DIR``; each diagnostics file starts with the settings of the run that wrote
it. A file belongs to the run when every model argument of the run equals the file's setting of the
same name. Among the files that match (one per process of a multi-GPU run, or reruns with the same
settings, whose values are the same), each document's newest line is used; the run gets strengths
only when they cover every one of its scored items. A relative ``DIR`` is looked up from the working
directory, then from each folder above the results file.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from amps_eval.report.runs import Problem, Run, recorded_path_candidates

_STAMP = re.compile(r"^amps_diagnostics_(\d{8}_\d{6})_")


@dataclass(frozen=True)
class DiagnosticsFile:
    path: Path
    settings: dict
    stamp: str  # the file name's "YYYYMMDD_HHMMSS" (the wrapper's clock)
    rows: tuple[dict, ...]


def read_diagnostics(path: Path) -> DiagnosticsFile | None:
    """One diagnostics file; None when its first line is not a settings header. A torn last line
    (an interrupted run) is skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        header = json.loads(lines[0])["settings"] if lines else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, IndexError):
        return None
    if not isinstance(header, dict):
        return None
    rows = []
    for line in lines[1:]:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "task" in row and "mc2_id" in row:
            rows.append(row)
    match = _STAMP.match(path.name)
    return DiagnosticsFile(path, header, match.group(1) if match else "", tuple(rows))


def same_setting(recorded, given: str) -> bool:
    """Whether a diagnostics header value equals a ``model_args`` string."""
    if recorded is None:
        return given.strip().lower() in ("", "none")
    if isinstance(recorded, bool):
        return given.strip().lower() in (("true", "1") if recorded else ("false", "0"))
    if isinstance(recorded, (int, float)):
        try:
            return float(given) == float(recorded)
        except ValueError:
            return False
    return str(recorded) == given


def belongs_to(file: DiagnosticsFile, run: Run) -> bool:
    return all(same_setting(file.settings[k], v) for k, v in run.settings.items() if k in file.settings)


def _folder_files(folder: Path, cache: dict) -> list[DiagnosticsFile]:
    key = str(folder.resolve())
    if key not in cache:
        files = [read_diagnostics(p) for p in sorted(folder.glob("amps_diagnostics_*.jsonl"))]
        cache[key] = [f for f in files if f is not None]
    return cache[key]


def item_strengths(run: Run, cache: dict | None = None) -> dict[tuple[str, int], float] | None:
    """(task, mc2_id) -> mean relative shift of the item's steered documents in ``run``; None when
    the run recorded no diagnostics folder or no matching file covers it (module docstring)."""
    recorded = run.settings.get("diagnostics")
    if not recorded or recorded.lower() == "none":
        return None
    cache = {} if cache is None else cache
    folder = next((c for c in recorded_path_candidates(recorded, run.path) if c.is_dir()), None)
    if folder is None:
        return None
    latest: dict[tuple[str, object], dict] = {}  # (task, doc_id) -> its newest row
    matching = sorted((f for f in _folder_files(folder, cache) if belongs_to(f, run)), key=lambda f: (f.stamp, str(f.path)))
    for file in matching:
        for row in file.rows:
            latest[(row["task"], row.get("doc_id"))] = row
    per_item: dict[tuple[str, int], list[float]] = defaultdict(list)
    for (task, _doc), row in latest.items():
        value = row.get("relative_shift")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            per_item[(task, int(row["mc2_id"]))].append(float(value))
    if not per_item:
        return None
    return {key: sum(values) / len(values) for key, values in per_item.items()}


def with_strength(run: Run, problems: list[Problem], cache: dict | None = None) -> Run:
    """``run`` with ``relative_shift`` on every answer record, when its diagnostics cover them all;
    a steered run whose diagnostics were recorded but do not cover its items is a problem."""
    strengths = item_strengths(run, cache)
    if strengths is None:
        return run
    tasks = []
    for task in run.tasks:
        if not task.records:
            tasks.append(task)
            continue
        keys = [(task.name, int(r["mc2_id"])) for r in task.records]
        missing = [k for k in keys if k not in strengths]
        if missing:
            problems.append(Problem(run.path, f"{task.name}: the diagnostics in {run.settings['diagnostics']} have no "
                                              f"effective strength for {len(missing)} of its {len(keys)} items; its "
                                              "strength is not shown (were they written by another run?)"))
            tasks.append(task)
            continue
        records = tuple({**r, "relative_shift": strengths[k]} for r, k in zip(task.records, keys))
        tasks.append(dataclasses.replace(task, records=records))
    return dataclasses.replace(run, tasks=tuple(tasks))
