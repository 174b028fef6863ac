"""Finding and parsing lmms-eval result files (pure parsing; nothing here renders or raises).

lmms-eval writes ``<output_path>/<model folder>/<timestamp>_results.json`` and, with
``--log_samples``, ``<timestamp>_samples_<task>.jsonl`` next to it. A results folder collects many
such runs, some possibly broken (an interrupted run leaves a truncated file). Every defect becomes a
:class:`Problem` naming the file and what is wrong, so that a report shows what it could read and
lists the rest, instead of failing on the first bad file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from amps_eval.mc2.schema import CATEGORIES
from amps_eval.report import STEERED

_TASK = re.compile(r"^mc2_(visual|text)(?:_(.+))?$")
_TARGETS = {"visual": "vision", "text": "text"}


@dataclass(frozen=True)
class Problem:
    """A file that could not be read (fully): where, and what to do about it."""

    path: Path
    what: str

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


@dataclass(frozen=True)
class TaskData:
    """One MC2 task of a run: lmms-eval's aggregate numbers and, if logged, the per-answer records."""

    name: str
    target: str  # "vision" | "text"
    category: str | None  # None: every category (mc2_visual, mc2_text, *_both_orders)
    orders: str  # "one" | "both"
    metrics: dict  # the task's entry of results.json "results"
    n_docs: int | None
    records: tuple[dict, ...] | None  # the "target_acc" record of every sample line; None: not usable


@dataclass(frozen=True)
class Run:
    """One ``*_results.json`` file: the settings that produced it and its MC2 tasks."""

    path: Path
    model: str  # the lmms-eval model name, e.g. amps_qwen
    model_args: str
    settings: dict[str, str]
    date: str  # lmms-eval's "YYYYMMDD_HHMMSS"; sorts chronologically
    limit: int | float | None
    tasks: tuple[TaskData, ...] = field(default=())

    @property
    def pretrained(self) -> str:
        return self.settings.get("pretrained", "?")

    @property
    def model_name(self) -> str:
        """Short display name: the last path component of ``pretrained``."""
        return model_display_name(self.pretrained)

    @property
    def method(self) -> str:
        return self.settings.get("method", "none")

    @property
    def steering_id(self) -> str | None:
        """The steering file by content (sha256 prefix) when the run pinned it, else by file name."""
        if self.method not in STEERED:
            return None
        sha = self.settings.get("steering_sha256")
        return f"sha256:{sha[:12]}" if sha else Path(self.settings.get("steering", "?")).name

    @property
    def alpha(self) -> float | None:
        """The steering strength (wrapper default 1.0); None for methods that do not steer."""
        if self.method not in STEERED:
            return None
        try:
            return float(self.settings.get("alpha", 1.0))
        except ValueError:
            return None


def model_display_name(pretrained: str) -> str:
    parts = [p for p in str(pretrained).replace("\\", "/").split("/") if p]
    return parts[-1] if parts else str(pretrained)


def parse_model_args(text: str | dict) -> dict[str, str]:
    """lmms-eval's ``--model_args`` string ("k=v,k=v") as a dict of strings (a dict is taken as is)."""
    if isinstance(text, dict):
        return {str(k): str(v) for k, v in text.items()}
    settings = {}
    for part in str(text or "").split(","):
        if part.strip():
            key, _, value = part.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def parse_task_name(name: str, metadata: dict | None = None) -> tuple[str, str | None, str] | None:
    """(target, category, orders) of an MC2 task name; None for groups and other benchmarks."""
    match = _TASK.match(name)
    if not match:
        return None
    target, rest = _TARGETS[match.group(1)], match.group(2)
    metadata = metadata or {}
    target = metadata.get("target", target)
    if rest is None:
        return target, None, metadata.get("orders", "one")
    if rest == "both_orders":
        return target, None, "both"
    if rest in CATEGORIES:
        return target, rest, metadata.get("orders", "one")
    return None  # e.g. the *_categories groups: their subtasks are read instead


def discover(folder: Path) -> tuple[list[Run], list[Problem]]:
    """Every run under ``folder`` (recursively), oldest first, and the problems met reading them."""
    runs, problems = [], []
    for path in sorted(Path(folder).rglob("*_results.json")):
        run = load_run(path, problems)
        if run is not None:
            runs.append(run)
    return sorted(runs, key=lambda r: (r.date, str(r.path))), problems


def load_run(path: Path, problems: list[Problem]) -> Run | None:
    """Parse one results file and its samples files; append what is wrong to ``problems``."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        problems.append(Problem(path, f"not a readable JSON results file ({error}); the run was probably "
                                      "interrupted: rerun it, or delete the file"))
        return None
    config = data.get("config") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict) or not isinstance(config, dict) \
            or "model_args" not in config:
        problems.append(Problem(path, "missing 'results' or 'config.model_args': not an lmms-eval results file, "
                                      "or a truncated one; rerun the evaluation"))
        return None
    date = str(data.get("date") or path.name.split("_results.json")[0])
    prefix = path.name[: -len("_results.json")]
    tasks = []
    configs = data.get("configs") or {}
    n_samples = data.get("n-samples") or {}
    for name, metrics in sorted(data["results"].items()):
        parsed = parse_task_name(name, (configs.get(name) or {}).get("metadata"))
        if parsed is None or not isinstance(metrics, dict):
            continue
        n_docs = (n_samples.get(name) or {}).get("effective")
        samples = path.with_name(f"{prefix}_samples_{name}.jsonl")
        records = read_records(samples, n_docs, problems)
        tasks.append(TaskData(name, *parsed, metrics=metrics, n_docs=n_docs, records=records))
    settings = parse_model_args(config["model_args"])
    return Run(path, str(config.get("model", "?")), str(config["model_args"]), settings, date,
               config.get("limit"), tuple(tasks))


def read_records(path: Path, n_docs: int | None, problems: list[Problem]) -> tuple[dict, ...] | None:
    """The per-answer records of a samples file, or None (with a problem) if it is absent or damaged."""
    if not path.exists():
        problems.append(Problem(path, "no samples file (run without --log_samples?): per-category cells and the "
                                      "item-level standard error need it; Total comes from the results file"))
        return None
    records = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        problems.append(Problem(path, f"unreadable ({error}); numbers taken from the results file"))
        return None
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)["target_acc"]
            if not {"mc2_id", "category", "target", "follows"} <= set(record):
                raise KeyError("mc2_id/category/target/follows")
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            problems.append(Problem(path, f"line {number} is not a complete MC2 sample ({type(error).__name__}: "
                                          f"{error}); truncated? numbers taken from the results file"))
            return None
        records.append(record)
    if n_docs is not None and len(records) != n_docs:
        problems.append(Problem(path, f"{len(records)} sample lines, but the results file says {n_docs} documents "
                                      "(truncated or from another run); numbers taken from the results file"))
        return None
    return tuple(records)
