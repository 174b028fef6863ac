"""Finding and parsing lmms-eval result files (pure parsing; nothing here renders or raises).

lmms-eval writes ``<output_path>/<model folder>/<timestamp>_results.json`` and, with
``--log_samples``, ``<timestamp>_samples_<task>.jsonl`` next to it. A results folder collects many
such runs, some possibly broken (an interrupted run leaves a truncated file). Every defect becomes a
:class:`Problem` naming the file and what is wrong, so that a report shows what it could read and
lists the rest, instead of failing on the first bad file.

Every run also gets a *data identity* (:class:`DataId`): which MC2 data it read and how much of it.
The results file records the task config, whose ``dataset_path`` is the prepared folder; that
folder's ``mc2_manifest.json`` fingerprints the data (``questions_sha256`` for the real MC2,
``source``/``seed``/``image_size`` for the generated set), and lmms-eval's ``n-samples`` says how
many documents each task had and evaluated (fewer with ``--limit``). When the folder is gone (or was
rewritten since: its item count no longer matches the run's), the run is identified by the path as
recorded and the item count of its ``n-samples``. Runs with different data identities are never
duplicates of each other and never share a table row or a leaderboard section.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from amps_eval.mc2.schema import CATEGORIES, MANIFEST_NAME
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
class DataId:
    """Which MC2 data a run read, and how much of it: runs are comparable only when these are equal.

    ``key`` fingerprints the data (see the module docstring), ``n_items`` is the number of items in
    it and ``limit`` the documents per task of a run cut by ``--limit`` (None: every item was
    evaluated). ``description`` and ``folder`` are for people (not part of the identity).
    """

    key: str  # e.g. "mc2:7fcb45ef6a49", "synthetic:seed=3,image_size=84,v1", "path:/data/mc2"
    n_items: int | None = None
    limit: int | float | None = None
    description: str = field(default="MC2 data not recorded in the results file", compare=False)
    folder: str | None = field(default=None, compare=False)  # the prepared folder, when it was found

    def describe(self) -> str:
        """One line, e.g. "MC2 (questions sha256 7fcb45ef6a49), 2000 items"."""
        items = "? items" if self.n_items is None else f"{self.n_items} items"
        if self.limit is None:
            return f"{self.description}, {items}"
        if self.limit < 1:  # lmms-eval reads a limit below 1 as a fraction of each task's documents
            return (f"{self.description}, {items}, only a fraction {self.limit:g} of each task's documents "
                    f"(--limit {self.limit:g})")
        return f"{self.description}, {items}, only the first {self.limit:g} documents per task (--limit {self.limit:g})"


UNRECORDED = DataId("unrecorded")


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
    data: DataId = UNRECORDED  # which data, how many items (see DataId)

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
    from amps_eval.report.strength import with_strength

    runs, problems = [], []
    manifests: dict[str, dict | None] = {}
    diagnostics: dict = {}  # the diagnostics files of each folder, read once
    for path in sorted(Path(folder).rglob("*_results.json")):
        run = load_run(path, problems, manifests)
        if run is not None:
            runs.append(with_strength(run, problems, diagnostics) if run.method in STEERED else run)
    return sorted(runs, key=lambda r: (r.date, str(r.path))), problems


def load_run(path: Path, problems: list[Problem], manifests: dict[str, dict | None] | None = None) -> Run | None:
    """Parse one results file and its samples files; append what is wrong to ``problems``.

    ``manifests`` caches the data folders' manifests across runs (by resolved folder)."""
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
    try:
        return _parse_run(path, data, config, problems, {} if manifests is None else manifests)
    except (AttributeError, TypeError, ValueError, KeyError) as error:  # a field of the wrong type
        problems.append(Problem(path, f"malformed lmms-eval results file ({type(error).__name__}: {error}); "
                                      "rerun the evaluation, or delete the file"))
        return None


def _parse_run(path: Path, data: dict, config: dict, problems: list[Problem], manifests: dict) -> Run:
    date = str(data.get("date") or path.name.split("_results.json")[0])
    prefix = path.name[: -len("_results.json")]
    tasks = []
    configs = data.get("configs") or {}
    n_samples = data.get("n-samples") or {}
    for name, metrics in sorted(data["results"].items()):
        parsed = parse_task_name(name, (configs.get(name) or {}).get("metadata"))
        if parsed is None or not isinstance(metrics, dict):
            continue
        n_docs = _count((n_samples.get(name) or {}).get("effective"))
        samples = path.with_name(f"{prefix}_samples_{name}.jsonl")
        records = read_records(samples, n_docs, problems)
        tasks.append(TaskData(name, *parsed, metrics=metrics, n_docs=n_docs, records=records))
    settings = parse_model_args(config["model_args"])
    limit = config.get("limit")
    data_id = data_identity(path, tasks, configs, n_samples, limit, problems, manifests)
    return Run(path, str(config.get("model", "?")), str(config["model_args"]), settings, date, limit, tuple(tasks),
               data_id)


def _count(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _expected_docs(task: TaskData, n_items: int, per_category: dict) -> int | None:
    """Documents a task has on data of ``n_items`` items (both orders: two per item)."""
    items = n_items if task.category is None else per_category.get(task.category)
    if not isinstance(items, int):
        return None
    return items * (2 if task.orders == "both" else 1)


def _items_from_counts(tasks: list[TaskData], n_samples: dict) -> int | None:
    """The data's item count from lmms-eval's "original" document counts (before --limit)."""
    full = []
    for task in tasks:
        original = _count((n_samples.get(task.name) or {}).get("original"))
        if task.category is None and original is not None:
            full.append(original // (2 if task.orders == "both" else 1))
    if full:
        return max(full)
    best = None
    for target in {t.target for t in tasks}:
        per = {t.category: _count((n_samples.get(t.name) or {}).get("original")) for t in tasks
               if t.target == target and t.category is not None and t.orders == "one"}
        if set(per) == set(CATEGORIES) and all(n is not None for n in per.values()):
            best = max(best or 0, sum(per.values()))
    return best


def recorded_path_candidates(recorded: str, results_file: Path) -> list[Path]:
    """Where a path recorded in a results file may be now: as it is when absolute; a relative one
    from the working directory, then from each folder above the results file (results committed
    inside a project record paths relative to its root)."""
    path = Path(recorded).expanduser()
    return [path] if path.is_absolute() else [path, *(parent / path for parent in results_file.parent.parents)]


def _find_folder(recorded: str, results_file: Path) -> Path | None:
    """The prepared folder a recorded ``dataset_path`` names, if it still has a manifest."""
    for candidate in recorded_path_candidates(recorded, results_file):
        try:
            if (candidate / MANIFEST_NAME).is_file():
                return candidate
        except OSError:
            continue
    return None


def _read_manifest(folder: Path, manifests: dict) -> dict | None:
    key = str(folder.resolve())
    if key not in manifests:
        try:
            manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            manifest = None
        manifests[key] = manifest if isinstance(manifest, dict) else None
    return manifests[key]


def fingerprint(manifest: dict, folder: Path) -> tuple[str, str]:
    """(key, description) of a prepared folder from its manifest."""
    source = manifest.get("source")
    sha = manifest.get("questions_sha256")
    if source == "questions" and isinstance(sha, str) and sha:
        return f"mc2:{sha[:12]}", f"MC2 (questions sha256 {sha[:12]})"
    if source in ("synthetic", "synthetic_graded") and "seed" in manifest:
        parts = [f"seed={manifest['seed']}", f"image_size={manifest.get('image_size', '?')}",
                 f"v{manifest.get('synthetic_version', '?')}"]
        graded = source == "synthetic_graded"  # planted per-item preferences (amps_eval.mc2.graded)
        return (f"{source}:{','.join(parts)}",
                f"generated {'graded ' if graded else ''}MC2-format set, seed {manifest['seed']}")
    stable = {k: v for k, v in manifest.items() if k not in ("created", "amps_eval_version")}
    digest = hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"manifest:{digest}", f"MC2-format folder {folder} ({source or 'unknown source'})"


def data_identity(path: Path, tasks: list[TaskData], configs: dict, n_samples: dict, limit, problems: list[Problem],
                  manifests: dict) -> DataId:
    """The DataId of a run (see the module docstring); mismatches are appended to ``problems``."""
    if not tasks:
        return UNRECORDED
    recorded = sorted({str(p) for t in tasks if (p := (configs.get(t.name) or {}).get("dataset_path"))})
    counts = {t.name: (_count((n_samples.get(t.name) or {}).get("effective")),
                       _count((n_samples.get(t.name) or {}).get("original"))) for t in tasks}
    known = [t for t in tasks if None not in counts[t.name]]
    cut = [t for t in known if counts[t.name][0] < counts[t.name][1]]
    given = limit if isinstance(limit, (int, float)) and not isinstance(limit, bool) and math.isfinite(limit) else None
    run_limit = None  # a --limit that cut nothing (as large as the data) is no limit
    if cut:
        run_limit = given if given is not None else max(counts[t.name][0] for t in cut)
    elif not known:  # no document counts recorded: trust the recorded limit
        run_limit = given
    counted = _items_from_counts(tasks, n_samples)
    if not recorded:
        return DataId("unrecorded", counted, run_limit)
    if len(recorded) > 1:
        problems.append(Problem(path, f"its MC2 tasks read different data folders ({', '.join(recorded)}); "
                                      "the run is identified by all of them"))
        return DataId("path:" + "|".join(recorded), counted, run_limit, f"MC2 folders {', '.join(recorded)}")
    folder = _find_folder(recorded[0], path)
    manifest = _read_manifest(folder, manifests) if folder is not None else None
    if manifest is None:
        why = "not found now" if folder is None else "its manifest is unreadable"
        return DataId(f"path:{recorded[0]}", counted, run_limit,
                      f"MC2 folder {recorded[0]} ({why}; identified by its path)")
    n_items = _count(manifest.get("n_items"))
    per_category = manifest.get("per_category") if isinstance(manifest.get("per_category"), dict) else {}
    for task in tasks:
        original = _count((n_samples.get(task.name) or {}).get("original"))
        expected = None if n_items is None else _expected_docs(task, n_items, per_category)
        if original is not None and expected is not None and original != expected:
            problems.append(Problem(path, f"{task.name} had {original} documents, but the data folder {folder} "
                                          f"would now give it {expected}: it was rewritten since this run, so the "
                                          "run is identified by the folder's path, not its manifest"))
            return DataId(f"path:{recorded[0]}", counted, run_limit,
                          f"MC2 folder {recorded[0]} (rewritten since the run; identified by its path)")
    key, description = fingerprint(manifest, folder)
    return DataId(key, n_items if n_items is not None else counted, run_limit, description, str(folder))


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
