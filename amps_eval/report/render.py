"""Tables as text: github / markdown (tabulate), LaTeX (one ``tabular`` per table), CSV (long format).

Cells are the target share in percent with one decimal ("-": no run). Options add the standard
error ("52.2 ± 3.1"), the collapse rate, i.e. the share of answers that follow neither option
("52.2 / 35.4"), and published numbers with our difference ("52.2 [paper 50.0, Δ +2.2]"). With
published numbers, the notes on file for the publications a table shows (why some of its published
cells cannot be compared cell for cell) follow the table.

CSV is for machines: one line per (table, target, row, column) with plain numbers in separate
columns (shares in percent, empty when missing), whatever the display options.

Every block says which data its rows were evaluated on ("data: ..." under the block; a ``data``
column in CSV), since a report renders one set of tables per data identity.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from dataclasses import dataclass

from tabulate import tabulate

from amps_eval.report.cells import COLUMNS, HEADERS, TOTAL, Cell
from amps_eval.report.paper import PaperEntry, PaperNumbers, format_value
from amps_eval.report.tables import Row, Table

FORMATS = ("github", "markdown", "latex", "csv")
ROW_HEADERS = {"1": "Method", "2": "Model", "3": "Ablation"}
_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "α": r"$\alpha$", "±": r"$\pm$", "Δ": r"$\Delta$"}


@dataclass(frozen=True)
class RenderOptions:
    format: str = "github"
    collapse: bool = False
    stderr: bool = False
    paper: PaperNumbers | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r}; choose one of {', '.join(FORMATS)}")


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(c, c) for c in str(text))


def legend(options: RenderOptions) -> str:
    parts = ["target share %"]
    if options.stderr:
        parts[0] += " ± standard error"
    if options.collapse:
        parts.append("collapse (others) %")
    text = "cells: " + " / ".join(parts)
    if options.paper is not None:
        text += "; [paper: published value, Δ = ours - paper]"
    return text + ("; '-': no run (or no item of that category in it); s: a steered row's effective strength, "
                   "‖shift‖/‖hidden state‖ averaged over its items; log-odds: mean image_logodds of the Total "
                   "column's answers, log p(image option) - log p(text option) at the first answer position "
                   "(+ favours the image)" + (" ± standard error" if options.stderr else ""))


def paper_value(options: RenderOptions, table: Table, row: Row, target: str, column: str, metric: str = "target_acc"):
    if options.paper is None:
        return None
    entry = options.paper.lookup(table.number, row.pretrained, row.method, target, column, metric)
    return entry if entry is not None and entry.value is not None else None


def published_pair(options: RenderOptions, table: Table, row: Row, target: str, column: str):
    """The published target share and "others" share of a cell; the latter only from the same publication."""
    published = paper_value(options, table, row, target, column)
    others = paper_value(options, table, row, target, column, "others_rate")
    if published is not None and others is not None and others.publication != published.publication:
        others = None
    return published, others


def shown_entries(table: Table, paper: PaperNumbers) -> list[PaperEntry]:
    """The published target shares the table shows, one per cell (rows without a run included)."""
    shown = []
    for block in table.blocks:
        for row in block.rows:
            for column in COLUMNS:
                entry = paper.lookup(table.number, row.pretrained, row.method, block.target, column)
                if entry is not None and entry.value is not None:
                    shown.append(entry)
    return shown


def table_notes(table: Table, paper: PaperNumbers | None) -> list[str]:
    """The notes on file for the publications whose cells ``table`` shows."""
    if paper is None:
        return []
    return [n.text for n in paper.notes_for(table.number, {e.publication for e in shown_entries(table, paper)})]


def cell_text(cell: Cell | None, options: RenderOptions, published=None, published_others=None) -> str:
    if cell is None:
        return "-" if published is None else f"- [paper {format_value(published.value)}]"
    text = f"{100 * cell.target_acc:.1f}"
    if options.stderr:
        text += f" ± {100 * cell.stderr:.1f}" if cell.stderr is not None else " ± ?"
    if cell.seed_range is not None:  # several training seeds (seeds.py): their spread beside the item-level error
        text += f" (seeds {100 * cell.seed_range[0]:.1f}-{100 * cell.seed_range[1]:.1f})"
    if options.collapse:
        text += f" / {100 * cell.others:.1f}" if cell.others is not None else " / ?"
    if published is not None:
        diff = f"{100 * cell.target_acc - published.value:+.1f}"
        if options.collapse and published_others is not None and cell.others is not None:
            text += (f" [paper {format_value(published.value)} / {format_value(published_others.value)}, "
                     f"Δ {diff} / {100 * cell.others - published_others.value:+.1f}]")
        else:
            text += f" [paper {format_value(published.value)}, Δ {diff}]"
    return text


LOGODDS_HEADER = "log-odds"


def logodds_text(cell: Cell | None, options: RenderOptions) -> str:
    """The Total cell's mean image_logodds (two decimals), with its standard error if asked."""
    if cell is None or cell.logodds is None:
        return "-"
    text = f"{cell.logodds:+.2f}"
    if options.stderr:
        text += f" ± {cell.logodds_stderr:.2f}" if cell.logodds_stderr is not None else " ± ?"
    return text


def _rows(table: Table, options: RenderOptions, block) -> list[list[str]]:
    return [[row.label] + [cell_text(row.cells.get(c), options, *published_pair(options, table, row, block.target, c))
                           for c in COLUMNS] + [logodds_text(row.cells.get(TOTAL), options)] for row in block.rows]


def render_table(table: Table, options: RenderOptions) -> str:
    if options.format == "csv":
        return render_csv([table], options)
    headers = [ROW_HEADERS.get(table.number, "Row")] + [HEADERS[c] for c in COLUMNS] + [LOGODDS_HEADER]
    if options.format == "latex":
        return _latex(table, options, headers)
    fmt = "github" if options.format == "github" else "pipe"
    parts = [f"### {table.title}", "", f"_{legend(options)}_", ""]
    for block in table.blocks:
        parts += [f"**{block.title}**", "", tabulate(_rows(table, options, block), headers=headers, tablefmt=fmt,
                                                     disable_numparse=True), ""]
        if block.data is not None:
            parts += [f"data: {block.data.describe()}", ""]
        parts += [f"{note}  " for note in block.footnotes] + ([""] if block.footnotes else [])
    notes = table_notes(table, options.paper)
    if notes:
        parts += ["Published cells that cannot be compared cell for cell:", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(parts)


def _latex(table: Table, options: RenderOptions, headers: list[str]) -> str:
    width = len(headers)
    lines = [f"% {table.title}", f"% {legend(options)}", r"\begin{tabular}{l" + "r" * (width - 1) + "}", r"\hline",
             " & ".join(latex_escape(h) for h in headers) + r" \\", r"\hline"]
    for block in table.blocks:
        lines.append(rf"\multicolumn{{{width}}}{{l}}{{\textit{{{latex_escape(block.title)}}}}} \\")
        for row in _rows(table, options, block):
            lines.append(" & ".join(latex_escape(x) for x in row) + r" \\")
        if block.data is not None:
            data = latex_escape(block.data.describe())
            lines.append(rf"\multicolumn{{{width}}}{{l}}{{\footnotesize data: {data}}} \\")
        for note in block.footnotes:
            lines.append(rf"\multicolumn{{{width}}}{{p{{0.95\linewidth}}}}{{\footnotesize {latex_escape(note)}}} \\")
        lines.append(r"\hline")
    lines.append(r"\end{tabular}")
    lines += [f"% published cells that cannot be compared cell for cell: {n}"
              for n in table_notes(table, options.paper)]
    return "\n".join(lines) + "\n"


CSV_HEADER = ["table", "target", "row", "method", "alpha", "column", "target_acc", "others_rate", "stderr", "n_items",
              "source_file", "paper", "paper_diff", "data", "data_key", "data_items", "data_limit", "image_logodds",
              "image_logodds_stderr", "n_seeds", "seed_low", "seed_high"]


def render_csv(tables: list[Table], options: RenderOptions) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)

    def pct(x):
        return "" if x is None else f"{100 * x:.4f}"

    for table in tables:
        for block in table.blocks:
            data = block.data
            about = ["", "", "", ""] if data is None else [
                data.describe(), data.key, "" if data.n_items is None else data.n_items,
                "" if data.limit is None else f"{data.limit:g}"]
            for row in block.rows:
                alpha = "" if row.variant is None or row.variant.alpha is None else f"{row.variant.alpha:g}"
                for column in COLUMNS:
                    cell = row.cells.get(column)
                    published = paper_value(options, table, row, block.target, column)
                    paper = "" if published is None else format_value(published.value)
                    diff = "" if published is None or cell is None else f"{100 * cell.target_acc - published.value:.4f}"
                    writer.writerow([table.number, block.target, row.label, row.method, alpha, column,
                                     pct(cell and cell.target_acc), pct(cell and cell.others),
                                     pct(cell and cell.stderr), "" if cell is None else cell.n_items,
                                     "" if cell is None else str(cell.run), paper, diff, *about,
                                     _plain(cell and cell.logodds), _plain(cell and cell.logodds_stderr),
                                     "" if cell is None else cell.n_seeds,
                                     pct(cell.seed_range[0]) if cell and cell.seed_range else "",
                                     pct(cell.seed_range[1]) if cell and cell.seed_range else ""])
    return out.getvalue()


def _plain(x) -> str:
    return "" if x is None else f"{x:.4f}"


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``path`` in full or not at all: a temporary file beside it, then one rename."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
