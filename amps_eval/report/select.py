"""Which run fills which cell, and which variant of a method a table row shows.

A *variant* is what produced a number: model, method, alpha and every other setting that changes
answers (not device, batch size, diagnostics folder: the wrappers' answers do not depend on them;
the steering file by its sha256 when the run pinned one, else by its path). Settings equal to the
wrappers' defaults are dropped, so ``alpha=1`` and no alpha are the same variant. A variant also
carries the run's data identity (``runs.DataId``: which data, how many items, any ``--limit``), so
runs on different data or with a different limit are different variants: never duplicates of each
other, never one row. ``ResultIndex.data_groups`` lists the data identities and ``ResultIndex.only``
keeps one of them (the report renders one set of tables per data).

Duplicates: when several runs give the same (variant, target, column), the newest (lmms-eval's
``date``; equal dates: the later path) is used and the others are listed as dropped.

Rows: a table row is one method of one model. When a steered method ran at several alphas (a
sweep), ``--alpha A`` picks alpha A. Otherwise, by default, alpha is chosen on items the row is not
scored on (`alpha_choice`: two halves of the items, each scored at the alpha chosen on the other
half); the row is a composite variant whose settings say which alphas were chosen. Among variants
that differ in other settings too, the group with the most alphas is used. Without per-item samples
(or with fewer than two items), and with ``alpha_choice="optimistic"``, the variant with the highest
Total target share is shown (ties: the smaller |alpha|, then the newest), labelled as a choice on the
evaluated items. Alpha 0 (the unsteered model) is never a steered row.

Training seeds: steering files that differ in nothing else (`ResultIndex.seed_groups`, ordered by the
seed in the file name, ``seeds.seed_order``) are one method's training seeds. A row averages them
(``seeds.seed_cells``): with the held-out choice each seed chooses its own alphas; with a fixed
alpha (``--alpha``, the best alpha, or one alpha per seed) the seeds are averaged at that alpha.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from amps_eval.report import STEERED
from amps_eval.report.alpha_choice import TIED, HeldOutChoice, held_out_choice
from amps_eval.report.cells import TOTAL, Cell, cells_from_records, run_cells
from amps_eval.report.runs import UNRECORDED, DataId, Problem, Run
from amps_eval.report.seeds import seed_cells, seed_order, steering_files

NOT_IDENTITY = {"pretrained", "method", "alpha", "steering", "steering_sha256", "device", "device_map",
                "diagnostics", "item_cache", "batch_size", "max_batch_size", "attn_implementation"}
"""Model arguments that do not make a run another variant: where things are read or written (a
cache, a diagnostics folder), how they are batched or placed, or what the row already shows."""
STEERING_ONLY = {"positions", "beta", "convention", "mcs_sigmas", "mcs_draws", "mcs_relative", "mcs_ratio",
                 "mcs_tolerance", "mcs_min_draws", "mcs_round_draws"}


@dataclass(frozen=True)
class Variant:
    model: str  # lmms-eval model name
    pretrained: str
    method: str
    alpha: float | None
    settings: tuple[tuple[str, str], ...]  # the other identity settings, defaults dropped
    orders: str  # "one" | "both"
    data: DataId = UNRECORDED  # which data and how many items (see runs.DataId)

    def describe(self) -> str:
        parts = [f"alpha={self.alpha:g}"] if self.alpha is not None else []
        parts += [f"{k}={v}" for k, v in self.settings]
        return ", ".join(parts) or "defaults"


@dataclass(frozen=True)
class Dropped:
    variant: Variant
    target: str
    columns: tuple[str, ...]
    used: Path
    dropped: Path
    dropped_date: str


@dataclass
class ResultIndex:
    """Every usable number of a results folder, one per (variant, target, column)."""

    cells: dict[tuple[Variant, str], dict[str, Cell]] = field(default_factory=dict)
    runs: list[Run] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    records: dict[tuple[Variant, str], tuple[dict, ...]] = field(default_factory=dict)  # per-item answers

    def data_groups(self) -> list[DataId]:
        """The data identities of the cells: the one with the most numbers first, then by description."""
        count: dict[DataId, int] = defaultdict(int)
        for (variant, _), cells in self.cells.items():
            count[variant.data] += len(cells)
        return sorted(count, key=lambda d: (-count[d], d.describe(), d.key, str(d.limit)))

    def only(self, data: DataId) -> "ResultIndex":
        """The part of the index on ``data`` (problems are kept whole: they concern files, not data)."""
        return ResultIndex({k: v for k, v in self.cells.items() if k[0].data == data},
                           [r for r in self.runs if r.data == data],
                           [d for d in self.dropped if d.variant.data == data], self.problems,
                           {k: v for k, v in self.records.items() if k[0].data == data})

    def models(self) -> list[str]:
        return sorted({v.pretrained for v, _ in self.cells})

    def lmms_model(self, pretrained: str) -> str:
        """The lmms-eval model a model's runs used (a guess from the name when there is none)."""
        for run in self.runs:
            if run.pretrained == pretrained:
                return run.model
        return _model_of_checkpoint(pretrained)

    def candidates(self, pretrained: str, method: str, target: str, orders: str) -> list[Variant]:
        return [v for (v, t) in self.cells if t == target and v.pretrained == pretrained and v.method == method
                and v.orders == orders]

    def choose(self, pretrained: str, method: str, target: str, orders: str, alpha: float | None = None,
               alpha_choice: str = "held-out") -> Variant | None:
        """The variant a row shows (see the module docstring for the rule)."""
        found = self.candidates(pretrained, method, target, orders)
        if method in STEERED:
            found = [v for v in found if v.alpha != 0]  # alpha 0 is the unsteered model
            if alpha is not None:
                found = [v for v in found if v.alpha is not None and abs(v.alpha - alpha) < 1e-9]
            elif alpha_choice == "held-out":
                composite = self._held_out(found, target)
                if composite is not None:
                    return composite
        if not found:
            return None

        def preference(v: Variant):  # higher is better: Total, then smaller |alpha|, then newer
            cells = self.cells[(v, target)]
            total = cells[TOTAL].target_acc if TOTAL in cells else -1.0
            return (total, -abs(v.alpha or 0.0), max(c.date for c in cells.values()))

        best = max(found, key=preference)
        return self._seed_mean_at(best, target) if method in STEERED else best

    def _seed_mean_at(self, variant: Variant, target: str) -> Variant:
        """``variant`` averaged with the other training seeds of its settings at its alpha (a composite
        with the setting ``training_seeds``, its cells from ``seeds.seed_cells``); ``variant`` itself
        when it has no other seed there or a seed lacks per-item records."""
        if variant.alpha is None:
            return variant
        same = [v for v in self.candidates(variant.pretrained, variant.method, target, variant.orders)
                if v.alpha is not None and abs(v.alpha - variant.alpha) < 1e-9]
        own = tuple(kv for kv in variant.settings if kv[0] != "steering")
        seeds = self.seed_groups(same).get(own, [])
        if len(seeds) < 2 or not all(len(members) == 1 and (members[0], target) in self.records
                                     for _, members in seeds):
            return variant
        members = [m[0] for _, m in seeds]
        composite = dataclasses.replace(variant, settings=tuple(sorted((*own, ("training_seeds", str(len(members)))))))
        newest = max((self.cells[(v, target)][TOTAL] for v in members if TOTAL in self.cells[(v, target)]),
                     key=lambda c: c.date)
        self.cells[(composite, target)] = seed_cells([self.records[(v, target)] for v in members], newest.run,
                                                     newest.date)
        return composite

    def seed_groups(self, variants: list[Variant]) -> dict[tuple, list[tuple[str, list[Variant]]]]:
        """Variants grouped by their settings without the steering file, each group split by steering
        file: settings -> [(steering id, variants), ...] in training-seed order (``seeds.seed_order``:
        the seed in the file's name, then its path; never the run date). The steering files of one
        group are the training seeds of one method and settings (``amps-eval study``: ``*_seed<k>``)."""
        files = steering_files(self.runs)
        groups: dict[tuple, dict[str, list[Variant]]] = defaultdict(lambda: defaultdict(list))
        for v in variants:
            settings = dict(v.settings)
            steering = settings.pop("steering", "")
            groups[tuple(sorted(settings.items()))][steering].append(v)
        return {settings: sorted(by_file.items(), key=lambda kv: seed_order(kv[0], files.get(kv[0])))
                for settings, by_file in groups.items()}

    def _held_out(self, found: list[Variant], target: str) -> Variant | None:
        """A composite variant scored with alphas chosen on held-out halves, its cells added to the
        index; None when it cannot be made (one alpha, no per-item records, too few items).

        The variants are grouped by `seed_groups`; the group with the most runs is used (ties: the
        newest). With one steering file (one training seed) in it, the composite's cells are that
        sweep's at the chosen alphas; with several, each seed chooses its own alphas on held-out
        halves and the cells are averaged over the seeds (``seeds.seed_cells``)."""
        groups = self.seed_groups(found)
        if not groups:
            return None
        settings, seeds = max(groups.items(), key=lambda kv: (sum(len(v) for _, v in kv[1]), max(
            c.date for _, members in kv[1] for v in members for c in self.cells[(v, target)].values())))
        choices, used = [], []
        for steering, members in seeds:
            with_records = {v.alpha: v for v in members if v.alpha is not None and (v, target) in self.records}
            if len(with_records) < 2:
                continue
            try:
                choices.append((steering, held_out_choice({a: list(self.records[(v, target)])
                                                           for a, v in with_records.items()})))
            except ValueError:
                continue
            used += list(with_records.values())
        if not choices:
            return None
        newest = max((self.cells[(v, target)][TOTAL] for v in used if TOTAL in self.cells[(v, target)]),
                     key=lambda c: c.date)
        if len(choices) == 1:
            steering, choice = choices[0]
            extra = (("steering", steering),) if steering else ()
            variant = dataclasses.replace(used[0], alpha=None, settings=tuple(sorted(
                (*settings, *extra, ("alpha_choice", choice.describe())))))
            self.cells[(variant, target)] = cells_from_records(choice.records, newest.run, newest.date)
            return variant
        variant = dataclasses.replace(used[0], alpha=None, settings=tuple(sorted(
            (*settings, ("alpha_choice", describe_seeds([c for _, c in choices]))))))
        self.cells[(variant, target)] = seed_cells([c.records for _, c in choices], newest.run, newest.date)
        return variant


SEEDS_CHOICE = re.compile(r"^(\d+) training seeds: α (.+), each chosen on held-out halves of (\d+)\+(\d+) items")
"""The ``alpha_choice`` text of a seed-averaged composite (`describe_seeds`)."""


def describe_seeds(choices: list[HeldOutChoice]) -> str:
    """e.g. "3 training seeds: α 2 / 1; 2; 4, each chosen on held-out halves of 64+64 items"."""
    alphas = "; ".join(" / ".join(dict.fromkeys(f"{a:g}" for a in c.alphas)) for c in choices)
    first = choices[0]
    text = (f"{len(choices)} training seeds: α {alphas}, each chosen on held-out halves of "
            f"{first.n_choosing[0]}+{first.n_choosing[1]} items")
    return text + (f"; {TIED}" if all(all(c.tied) for c in choices) else "")


def seed_alphas(description: str) -> list[tuple[float, ...]] | None:
    """Each seed's alphas of a `describe_seeds` text, in seed order; None for any other text."""
    match = SEEDS_CHOICE.match(description)
    if match is None:
        return None
    return [tuple(float(a) for a in part.split(" / ")) for part in match.group(2).split("; ")]


def _model_of_checkpoint(pretrained: str) -> str:
    """The lmms-eval model serving a checkpoint no run names: from its config's ``model_type`` when it
    is a local folder (`amps_eval.families`), else the choices (``amps_qwen|amps_llava|...``)."""
    from pathlib import Path

    from amps_eval.families import GENERIC, by_model_type, lmms_models

    if (Path(pretrained) / "config.json").is_file():
        try:
            model_type = json.loads((Path(pretrained) / "config.json").read_text()).get("model_type")
            return (by_model_type(model_type) or GENERIC).lmms_model
        except (OSError, ValueError, AttributeError):
            pass
    return "|".join(lmms_models())


def wrapper_defaults() -> dict[str, object]:
    """The wrappers' default model arguments, read from their settings class (`amps_eval.settings.QwenSettings`,
    the one with every argument; a module without torch, so the report stays torch-free)."""
    from amps_eval.settings import QwenSettings

    return {f.name: f.default for f in dataclasses.fields(QwenSettings) if f.default is not dataclasses.MISSING}


def _is_default(value: str, default: object) -> bool:
    if default is None:
        return value.lower() in ("", "none")
    try:
        return float(value) == float(default)  # also bools: "True" -> error, handled below
    except (TypeError, ValueError):
        return value.lower() == str(default).lower()


def variant_of(run: Run, orders: str, defaults: dict[str, object]) -> Variant:
    settings = {}
    for key, value in run.settings.items():
        if key in NOT_IDENTITY or (run.method not in STEERED and key in STEERING_ONLY):
            continue
        if key in defaults and _is_default(value, defaults[key]):
            continue
        settings[key] = value
    if run.steering_id is not None:
        settings["steering"] = run.steering_id
    return Variant(run.model, run.pretrained, run.method, run.alpha, tuple(sorted(settings.items())), orders, run.data)


def build_index(runs: list[Run], problems: list[Problem], defaults: dict[str, object] | None = None) -> ResultIndex:
    """Index every run's cells; the newest run wins each cell, the others are recorded as dropped."""
    defaults = wrapper_defaults() if defaults is None else defaults
    index = ResultIndex(runs=list(runs), problems=problems)
    dropped: dict[tuple, list[str]] = defaultdict(list)
    for run in sorted(runs, key=lambda r: (r.date, str(r.path))):
        for task in run.tasks:
            if task.category is None and task.records:
                index.records[(variant_of(run, task.orders, defaults), task.target)] = task.records
        for (target, orders), cells in run_cells(run, problems).items():
            key = (variant_of(run, orders, defaults), target)
            held = index.cells.setdefault(key, {})
            for column, cell in cells.items():
                if column in held and held[column].run != cell.run:
                    old = held[column]
                    dropped[(key, old.run, old.date)].append(column)
                held[column] = cell
    for ((variant, target), old_run, old_date), columns in dropped.items():
        used = {index.cells[(variant, target)][c].run for c in columns}
        index.dropped.append(Dropped(variant, target, tuple(columns), sorted(used)[-1], old_run, old_date))
    return index


class NoUsableResults(ValueError):
    """A results folder in which not one MC2 number could be read; the message names the bad files."""


def require_usable(index: ResultIndex, results_dir: Path, limit: int = 5) -> None:
    """Raise `NoUsableResults` when ``index`` holds no number at all (every file corrupt, say)."""
    if index.cells:
        return
    if index.problems:
        bad = sorted({str(p.path) for p in index.problems})
        listed = "; ".join(str(p) for p in index.problems[:limit])
        more = f"; and {len(index.problems) - limit} more" if len(index.problems) > limit else ""
        raise NoUsableResults(f"no usable MC2 result under {results_dir}; {len(bad)} file(s) could not be read: "
                              f"{listed}{more}")
    raise NoUsableResults(f"no usable MC2 result under {results_dir}: its {len(index.runs)} results file(s) hold no "
                          "MC2 task (mc2_visual, mc2_text, their categories or both orders)")
