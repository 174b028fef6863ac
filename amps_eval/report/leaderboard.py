"""``amps-eval leaderboard``: every (model, method, settings) ranked by target share, per target.

Writes ``leaderboard.md`` and a self-contained ``leaderboard.html`` (inline CSS; no script, font or
image from elsewhere, so it opens offline and can be attached to a report as one file). A row is a
variant (see ``select.py``) with its Total cell: target share, collapse rate, standard error, item
count, the settings that produced it, the date and the results file. Ties share the better rank.

Runs on different data (``runs.DataId``: another data folder, or ``--limit``) are ranked separately:
one section per data identity, each saying which data it is. A folder in which not one MC2 number
could be read is an error naming the files (nothing is written then).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

from amps_eval.report.cells import TOTAL
from amps_eval.report.render import write_text_atomic
from amps_eval.report.runs import DataId, discover, model_display_name
from amps_eval.report.select import ResultIndex, build_index, require_usable
from amps_eval.report.tables import TARGETS

COLUMNS = ("rank", "model", "method", "settings", "target %", "collapse %", "± stderr", "items", "date", "results file")
CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 2em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) { background: #fafafa; }
.note { color: #666; font-size: 0.85em; }
"""


@dataclass(frozen=True)
class Entry:
    target: str
    rank: int
    values: tuple[str, ...]  # in the order of COLUMNS
    data: DataId | None = None  # the data the entry was evaluated on (entries are ranked per data)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def entries(index: ResultIndex) -> list[Entry]:
    """Ranked entries of every (data, target) (pure: no files written)."""
    out = []
    for data in index.data_groups():
        out += _ranked(index.only(data), data)
    return out


def _ranked(index: ResultIndex, data: DataId) -> list[Entry]:
    out = []
    for target in TARGETS:
        found = [(variant, cells[TOTAL]) for (variant, t), cells in index.cells.items() if t == target and TOTAL in cells]
        found.sort(key=lambda vc: (-vc[1].target_acc, model_display_name(vc[0].pretrained), vc[0].method))
        rank, previous = 0, None
        for position, (variant, cell) in enumerate(found, 1):
            if cell.target_acc != previous:
                rank, previous = position, cell.target_acc
            settings = variant.describe() + (", both orders" if variant.orders == "both" else "")
            out.append(Entry(target, rank, (str(rank), model_display_name(variant.pretrained), variant.method, settings,
                                            _pct(cell.target_acc), _pct(cell.others), _pct(cell.stderr),
                                            "-" if cell.n_items is None else str(cell.n_items), cell.date,
                                            str(cell.run)), data))
    return out


def _sections(rows: list[Entry]) -> list[DataId | None]:
    return list(dict.fromkeys(e.data for e in rows)) or [None]


def to_markdown(rows: list[Entry], index: ResultIndex) -> str:
    parts = ["# MC2 leaderboard", ""]
    for data in _sections(rows):
        if data is not None:
            parts += [f"## data: {data.describe()}", ""]
        for target in TARGETS:
            table = [e.values for e in rows if e.target == target and e.data == data]
            parts += [f"### target: {target}", "", tabulate(table, headers=COLUMNS, tablefmt="github",
                                                            disable_numparse=True) if table else "No runs.", ""]
    parts += _notes(index)
    return "\n".join(parts) + "\n"


def _notes(index: ResultIndex) -> list[str]:
    notes = [f"Superseded by a newer run of the same settings: {d.dropped}" for d in index.dropped]
    notes += [f"Problem: {p}" for p in index.problems]
    return notes


def to_html(rows: list[Entry], index: ResultIndex) -> str:
    e = html.escape
    numeric = {"rank", "target %", "collapse %", "± stderr", "items"}
    body = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', "<title>MC2 leaderboard</title>",
            f"<style>{CSS}</style></head><body>", "<h1>MC2 leaderboard</h1>",
            '<p class="note">Target share: items whose answer follows the target modality. Collapse: items whose '
            "answer follows neither option. Standard error over items.</p>"]
    for number, data in enumerate(_sections(rows)):
        if data is not None:
            body.append(f"<h2>data: {e(data.describe())}</h2>")
        suffix = "" if number == 0 else f"-{number + 1}"  # unique ids; the first data keeps the plain ones
        for target in TARGETS:
            body.append(f"<h3>target: {e(target)}</h3>")
            table = [x for x in rows if x.target == target and x.data == data]
            if not table:
                body.append("<p>No runs.</p>")
                continue
            body.append(f'<table id="leaderboard-{e(target)}{suffix}"><thead><tr>'
                        + "".join(f"<th>{e(c)}</th>" for c in COLUMNS) + "</tr></thead><tbody>")
            for entry in table:
                cells = "".join(f'<td class="num">{e(v)}</td>' if c in numeric else f"<td>{e(v)}</td>"
                                for c, v in zip(COLUMNS, entry.values))
                body.append(f"<tr>{cells}</tr>")
            body.append("</tbody></table>")
    body += [f'<p class="note">{e(n)}</p>' for n in _notes(index)]
    body.append("</body></html>")
    return "\n".join(body) + "\n"


def write_leaderboard(results_dir: Path, out: Path | None = None) -> tuple[Path, Path]:
    """Write ``leaderboard.html`` and ``leaderboard.md`` into ``out`` (default: ``results_dir``)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results folder {results_dir} does not exist")
    runs, problems = discover(results_dir)
    if not runs and not problems:
        raise ValueError(f"no *_results.json under {results_dir}; run lmms-eval with --output_path {results_dir}")
    index = build_index(runs, problems)
    require_usable(index, results_dir)
    rows = entries(index)
    out = Path(out or results_dir)
    out.mkdir(parents=True, exist_ok=True)
    html_path, md_path = out / "leaderboard.html", out / "leaderboard.md"
    write_text_atomic(html_path, to_html(rows, index))
    write_text_atomic(md_path, to_markdown(rows, index))
    return html_path, md_path
