"""``amps-eval report``: tables (and figures) from a results folder, with everything it could not show.

Besides the tables, the report always says what a reader needs to trust them: which rows have no
run (with the command that makes one), which runs were superseded by a newer run of the same
settings, which files could not be read, how steered rows chose their alpha, and, with ``--paper``,
which published numbers are on file (the notes on why some of them cannot be compared cell for
cell follow each table; with CSV they are among the notes). In github/markdown these are sections
after the tables, in LaTeX ``%`` comments; CSV output stays pure data and the notes go to
``Report.notes`` (the CLI prints them on stderr).

Data: runs on different data (another MC2 folder, the generated set with another seed) or on a
different number of items (``--limit``) are never mixed. The report renders one set of tables per
data identity (``runs.DataId``), the one with the most numbers first, and says under every block
which data it shows; the "Data" section lists them all. A folder in which not one MC2 number could
be read is an error (`select.NoUsableResults`, naming the files), not an empty report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from amps_eval.report.cells import COLUMNS
from amps_eval.report.paper import PaperNumbers
from amps_eval.report.render import RenderOptions, render_csv, render_table, shown_entries, table_notes
from amps_eval.report.runs import discover, model_display_name
from amps_eval.report.select import ResultIndex, build_index, require_usable
from amps_eval.report.tables import Table, TableOptions, pick_models, table1, table2, table3

TABLES = ("1", "2", "3")


@dataclass(frozen=True)
class ReportOptions:
    results_dir: Path
    tables: tuple[str, ...] = TABLES
    format: str = "github"
    collapse: bool = False
    stderr: bool = False
    paper: bool = False
    model: str | None = None
    alpha: float | None = None
    alpha_choice: str = "held-out"  # without --alpha: "held-out" or "optimistic" (see alpha_choice.py)
    orders: str = "one"
    figures: Path | None = None
    mcs: tuple[Path, ...] = ()


@dataclass
class Report:
    text: str  # the tables, plus the notes unless the format is csv
    notes: list[str]
    tables: list[Table]
    index: ResultIndex
    figures: list[Path] = field(default_factory=list)


def build_tables(index: ResultIndex, options: ReportOptions) -> list[Table]:
    """The requested tables, once per data identity (see the module docstring)."""
    picked = pick_models(index, options.model)
    tables = []
    for data in index.data_groups():
        part = index.only(data)
        models = [m for m in picked if m in part.models()]
        if not models:
            continue
        table_options = TableOptions(options.alpha, options.orders, str(options.results_dir), data,
                                     options.alpha_choice)
        for number in options.tables:
            if number == "2":
                tables.append(table2(part, models, table_options))
            else:
                for pretrained in models:
                    tables.append((table1 if number == "1" else table3)(part, pretrained, table_options))
    return tables


def notes_for(index: ResultIndex, tables: list[Table], options: ReportOptions, paper: PaperNumbers | None) -> list[str]:
    """The report's sections after the tables, as markdown lines."""
    lines = ["## Rows and alphas", "",
             f"Steered rows show alpha={options.alpha:g} (--alpha)." if options.alpha is not None else
             "Steered rows of a sweep show alpha chosen on items they are not scored on: the items are split into "
             "two halves stratified by category, and each half is scored at the alpha chosen on the other half (the "
             "highest target share with at most 5% collapse; alpha 0 is never chosen); the row says which alphas and "
             "on how many items. Rows with one alpha, or without per-item samples, show that alpha."
             if options.alpha_choice == "held-out" else
             "Steered rows show the alpha with the highest Total target share among the runs (ties: smaller |alpha|, "
             "then newer); this selects on the evaluated items, so it is optimistic (--alpha-choice optimistic).",
             "Per-category cells and the item-level standard error come from the samples files "
             "(amps_eval.mc2.metrics.score); without them, Total comes from lmms-eval's results file.", ""]
    groups = index.data_groups()
    lines += ["## Data", ""]
    for data in groups:
        runs = sum(1 for r in index.runs if r.data == data)
        where = f" (folder {data.folder})" if data.folder else ""
        lines.append(f"- {data.describe()}{where}: {runs} run(s)")
    if len(groups) > 1:
        lines.append("")
        lines.append(f"The runs are on {len(groups)} different data sets or item counts; they are never mixed: "
                     "each has its own tables, with a 'data:' line under every block.")
    lines.append("")
    missing = [m for t in tables for m in t.missing]
    lines += ["## Missing runs", ""]
    if not missing:
        lines.append("None: every row has a run.")
    seen = set()
    for m in missing:
        if (m.command, m.data) in seen:
            continue
        seen.add((m.command, m.data))
        on = ""
        if len(groups) > 1 and m.data is not None:
            on = f" on {m.data.describe()}" + (f" (AMPS_MC2_DATA={m.data.folder})" if m.data.folder else "")
        lines.append(f"- {model_display_name(m.pretrained)} / {m.method} / target {', '.join(m.targets)}{on}:")
        if m.fit_command:
            lines.append(f"  `{m.fit_command}` then")
        lines.append(f"  `{m.command}`")
    lines += ["", "## Duplicate runs (newest used)", ""]
    if not index.dropped:
        lines.append("None.")
    for d in index.dropped:
        on = f" on {d.variant.data.describe()}" if len(groups) > 1 else ""
        lines.append(f"- {model_display_name(d.variant.pretrained)} / {d.variant.method} ({d.variant.describe()}) / "
                     f"target {d.target}{on}: used {d.used}, dropped {d.dropped} ({d.dropped_date}; "
                     f"{len(d.columns)} cell(s))")
    lines += ["", "## Problems", ""]
    if not index.problems:
        lines.append("None.")
    lines += [f"- {p}" for p in index.problems]
    if paper is not None:
        lines += ["", "## Published numbers", ""] + _paper_notes(tables, paper)
        if options.format == "csv":  # CSV has no place under a table for them
            for table in tables:
                lines += [f"- {table.title}, not comparable cell for cell: {n}" for n in table_notes(table, paper)]
    return lines


def _paper_notes(tables: list[Table], paper: PaperNumbers) -> list[str]:
    lines, shown_by = [], {}
    for table in tables:
        shown = shown_entries(table, paper)
        absent = set()
        for block in table.blocks:
            for row in block.rows:
                for column in COLUMNS:
                    entry = paper.lookup(table.number, row.pretrained, row.method, block.target, column)
                    if entry is not None and entry.value is None:
                        absent.add(entry.source)
        for entry in shown:
            shown_by.setdefault(entry.publication or entry.source, {})[entry.source] = True
        if shown:
            lines.append(f"- {table.title}: {len(shown)} published cell(s) shown beside ours"
                         + (f"; the other cells: {'; '.join(a.rstrip('.') for a in sorted(absent))}" if absent else "") + ".")
        else:
            lines.append(f"- {table.title}: no published numbers on file for these rows"
                         + (f" ({'; '.join(a.rstrip('.') for a in sorted(absent))})" if absent else "") + ".")
    for publication, sources in shown_by.items():
        if len(sources) <= 3:
            lines += [f"- source: {s}" for s in sources]
        else:
            lines.append(f"- {publication}: {len(sources)} cells shown, each with its source in "
                         f"amps_eval/report/paper_numbers.json (e.g. \"{next(iter(sources))}\").")
    for publication in paper.publications():
        models = paper.models(publication)
        lines.append(f"- on file from {publication or 'unnamed sources'}: "
                     f"{sum(1 for e in paper.entries if e.value is not None and e.publication == publication)} "
                     f"number(s) for {', '.join(models) or 'every model'}.")
    return lines


def build_report(options: ReportOptions) -> Report:
    results_dir = Path(options.results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results folder {results_dir} does not exist; pass the --output_path of your lmms-eval runs")
    runs, problems = discover(results_dir)
    if not runs and not problems:
        raise ValueError(f"no *_results.json under {results_dir}; run lmms-eval with --output_path {results_dir} "
                         "--log_samples first")
    index = build_index(runs, problems)
    require_usable(index, results_dir)
    tables = build_tables(index, options)
    paper = PaperNumbers.load() if options.paper else None
    render = RenderOptions(options.format, options.collapse, options.stderr, paper)
    figures = []
    if options.figures is not None:
        from amps_eval.report.figures import write_figures

        figures, figure_notes = write_figures(index, Path(options.figures), options.model, list(options.mcs) or [results_dir])
    else:
        figure_notes = []
    notes = notes_for(index, tables, options, paper)
    if options.alpha is None:  # with --alpha every row is at a fixed alpha, not at matched strength
        from amps_eval.report.matched_render import matched_section, matched_tables

        matched = matched_section(matched_tables(index, pick_models(index, options.model), options.orders))
        notes = (matched + [""] + notes) if matched else notes
    if figure_notes or figures:
        notes += ["", "## Figures", ""] + [f"- wrote {p}" for p in figures] + [f"- {n}" for n in figure_notes]
    if options.format == "csv":
        return Report(render_csv(tables, render), notes, tables, index, figures)
    body = [render_table(t, render) for t in tables]
    if options.format == "latex":
        text = "\n".join(body + ["% " + line for line in notes])
    else:
        text = "\n".join(body + notes)
    return Report(text.rstrip() + "\n", notes, tables, index, figures)
