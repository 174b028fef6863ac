"""Tables 1-3 of the AMPS paper as data (rendering is ``render.py``).

* Table 1 (one model): one row per method, MLLM-only ... AMPS, then any other method that ran;
* Table 2 (every model): base, L2S and AMPS rows per model;
* Table 3 (one model, ablation): w/o steering (none), w/o scaling (L2S), full (AMPS): the paper's
  three rows; plus "AMPS β=0 (added ablation)", this project's ablation (every gamma 1), which
  the paper's Table 3 does not have.

Each table has one block per target (vision, text); columns are the eight MC2 categories in the
paper's order and Total. Which variant fills a row is ``ResultIndex.choose`` (newest run per cell,
``--alpha`` or the best alpha); the row label shows the alpha and any setting that tells the chosen
variant apart from the other variants of the same method.

A table shows runs on one data identity (``runs.DataId``: the data and how many items); the report
builds one set of tables per data identity (``build.py``) and every block says which data it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from amps_eval.methods.registry import METHODS
from amps_eval.report import METHOD_LABELS, STEERED
from amps_eval.report.cells import TOTAL, Cell
from amps_eval.report.commands import MissingRun, missing_run
from amps_eval.report.runs import DataId, model_display_name
from amps_eval.report.alpha_choice import TIED
from amps_eval.report.select import SEEDS_CHOICE, ResultIndex, Variant
from amps_eval.vocabulary import TARGETS

BLOCK_TITLES = {"vision": "target: vision (answers that follow the image)",
                "text": "target: text (answers that follow the text context)"}


@dataclass(frozen=True)
class Row:
    label: str
    pretrained: str
    method: str
    variant: Variant | None
    cells: dict[str, Cell] = field(default_factory=dict)


@dataclass(frozen=True)
class Block:
    target: str
    title: str
    rows: tuple[Row, ...]
    data: DataId | None = None  # the data every row of the block was evaluated on
    footnotes: tuple[str, ...] = ()  # what the marks in the row labels mean (FOOTNOTES)


HELD_OUT = re.compile(r"^α (\S+)(?: / (\S+))?, chosen on held-out halves of (\d+)\+(\d+) items")
FOOTNOTES = {
    "ᵃ": "ᵃ α chosen on held-out halves: the items are split into two halves (stratified by category) and each half "
         "is scored at the alpha chosen on the other half (highest target share with at most 5% collapse); "
         "\"α 2 / 4\": the first half at alpha 2, the second at 4; one value: both halves chose it.",
    "ᵇ": "ᵇ α tied: every alpha of the sweep gave the same target share and collapse on both choosing halves, so no "
         "alpha was really chosen (the row shows the smallest).",
    "ᶜ": "ᶜ mean over training seeds: the method was fitted with several seeds (one steering file each, *_seed<k>); "
         "each cell is the mean over the seeds, ± the standard error over items of the items' seed means, and "
         "(seeds lo-hi) the lowest and highest of the seeds' own shares; where the alpha is chosen (ᵃ) each seed "
         "chooses its own (\"α 2/1; 2; 4\": seed 0 split between alpha 2 and 1, seeds 1 and 2 at 2 and 4; as many "
         "parts as seeds).",
}

@dataclass(frozen=True)
class Table:
    number: str
    title: str
    blocks: tuple[Block, ...]
    missing: tuple[MissingRun, ...]


@dataclass(frozen=True)
class TableOptions:
    alpha: float | None = None  # None: the best alpha per row (see select.py)
    orders: str = "one"  # "both": the *_both_orders tasks
    output_path: str = "results"  # where the suggested commands write
    data: DataId | None = None  # the data identity the index was restricted to (``ResultIndex.only``)
    alpha_choice: str = "held-out"  # how a sweep's alpha is chosen without --alpha (alpha_choice.py)


def short_choice(description: str) -> tuple[str, str | None]:
    """A held-out choice's row-label text and footnote marks: "α 2 / 4ᵃ", "α tiedᵇ", "α 2; 2/1; 4ᵃᶜ"
    (seeds 0, 1, 2 in order; footnote ᶜ), else unchanged."""
    seeds = SEEDS_CHOICE.match(description)
    if seeds is not None:
        if TIED in description:
            return f"{seeds.group(1)} seeds, α tiedᵇᶜ", "ᵇᶜ"
        return f"α {seeds.group(2).replace(' / ', '/')}ᵃᶜ", "ᵃᶜ"
    match = HELD_OUT.match(description)
    if match is None:
        return description, None
    if "no real choice" in description:
        return "α tiedᵇ", "ᵇ"
    a, b = match.group(1), match.group(2)
    return f"α {a}{'' if b is None else f' / {b}'}ᵃ", "ᵃ"


def row_label(base: str, index: ResultIndex, variant: Variant | None, target: str,
              marks: set[str] | None = None) -> str:
    """``base``, plus the alpha of a steered row and the settings that set its variant apart (a held-out
    choice short, with a footnote mark added to ``marks``)."""
    if variant is None:
        return base
    marks = set() if marks is None else marks
    extras = [f"α={variant.alpha:g}"] if variant.method in STEERED and variant.alpha is not None else []
    for key, value in variant.settings:
        if key == "alpha_choice":
            text, mark = short_choice(value)
            extras.append(text)
            if mark:
                marks.update(mark)
        elif key == "training_seeds":  # the seed mean at one alpha (select.ResultIndex._seed_mean_at)
            extras.append(f"{value} seedsᶜ")
            marks.add("ᶜ")
    total = index.cells.get((variant, target), {}).get(TOTAL)
    if total is not None and total.strength is not None:
        extras.append(f"s={total.strength:.3g}")
    others = index.candidates(variant.pretrained, variant.method, target, variant.orders)
    for key, value in variant.settings:
        if key in ("alpha_choice", "training_seeds"):
            continue
        if any(dict(o.settings).get(key) != value for o in others if o.alpha == variant.alpha):
            extras.append(f"{key}={value}")
    return f"{base} ({', '.join(extras)})" if extras else base


def build_table(number: str, title: str, index: ResultIndex, specs: list[tuple[str, str, str]],
                options: TableOptions) -> Table:
    """``specs``: (pretrained, method, label) per row, in order."""
    blocks, missing = [], {}
    for target in TARGETS:
        rows, marks = [], set()
        for pretrained, method, label in specs:
            variant = index.choose(pretrained, method, target, options.orders, options.alpha, options.alpha_choice)
            cells = dict(index.cells[(variant, target)]) if variant else {}
            rows.append(Row(row_label(label, index, variant, target, marks), pretrained, method, variant, cells))
            if variant is None:
                missing.setdefault((pretrained, method), []).append(target)
        footnotes = tuple(text for mark, text in FOOTNOTES.items() if mark in marks)
        blocks.append(Block(target, BLOCK_TITLES[target], tuple(rows), options.data, footnotes))
    commands = tuple(missing_run(index.runs, index.lmms_model(p), p, m, tuple(targets), options.orders, options.alpha,
                                 options.output_path, options.data) for (p, m), targets in missing.items())
    return Table(number, title, tuple(blocks), commands)


def methods_of(index: ResultIndex, pretrained: str) -> list[str]:
    """The paper's eight methods and any ablation this model ran, in the registry's order, then any
    other method it ran (alphabetically)."""
    ran = {v.method for v, _ in index.cells if v.pretrained == pretrained}
    known = [m.name for m in METHODS if not m.ablation or m.name in ran]
    return known + sorted(ran - set(METHOD_LABELS))


def table1(index: ResultIndex, pretrained: str, options: TableOptions) -> Table:
    specs = [(pretrained, m, METHOD_LABELS.get(m, m)) for m in methods_of(index, pretrained)]
    return build_table("1", f"Table 1: methods on {model_display_name(pretrained)} (target share, %)", index,
                       specs, options)


def table2(index: ResultIndex, models: list[str], options: TableOptions) -> Table:
    specs = []
    for pretrained in models:
        name = model_display_name(pretrained)
        specs += [(pretrained, "none", f"{name} base"), (pretrained, "l2s", f"{name}-L2S"),
                  (pretrained, "amps", f"{name}-AMPS")]
    return build_table("2", "Table 2: models x {base, L2S, AMPS} (target share, %)", index, specs, options)


def table3(index: ResultIndex, pretrained: str, options: TableOptions) -> Table:
    specs = [(pretrained, "none", "w/o steering (MLLM-only)"), (pretrained, "l2s", "w/o scaling (L2S)"),
             (pretrained, "amps_beta0", "AMPS β=0 (added ablation)"),
             (pretrained, "amps", "full (AMPS)")]
    return build_table("3", f"Table 3: ablation on {model_display_name(pretrained)} (target share, %)", index,
                       specs, options)


def pick_models(index: ResultIndex, name: str | None) -> list[str]:
    """Models matching ``--model`` (exact pretrained or display name, else a substring); all if None."""
    models = index.models()
    if name is None:
        return models
    exact = [m for m in models if name in (m, model_display_name(m))]
    found = exact or [m for m in models if name.lower() in m.lower()]
    if not found:
        raise ValueError(f"--model {name!r} matches no model in the results; models found: "
                         f"{', '.join(models) or 'none'}")
    return found
