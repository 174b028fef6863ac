"""``amps-eval leaderboard``: one row per (model, method), both targets side by side.

Writes ``leaderboard.md`` (for GitHub) and ``leaderboard.html``: one self-contained file (inline CSS,
an inline script, inline SVG charts, and a Content-Security-Policy that lets nothing load from
anywhere else), so it opens from disk with no server and no network.

Rows. A row is one method of one model (and one data identity, ``runs.DataId``: rows on different
data are never merged); the prompt methods and the unsteered model (MLLM-only) are rows too. Per
target (vision, text) the row shows the variant ``ResultIndex.choose`` picks, as Tables 1-3 do: for
a steered sweep, alpha chosen on held-out halves of the items (`alpha_choice`); with one alpha, that
alpha; without per-item samples, the best Total on the evaluated items (labelled optimistic). Alpha 0
is the unsteered model and never a steered row. Each target gives target share, collapse, standard
error, effective strength (``strength.py``), the chosen alpha; then how alpha was chosen, items,
data and date. The HTML row expands to the full settings and the results files (links relative to
the HTML file's folder, so the folder can be moved or published whole).

Dates. lmms-eval names and dates a run with ``utils.get_datetime_str``, whose time zone is its
``--timezone`` option, default "Asia/Singapore" (UTC+8, no daylight saving); ``amps_eval.runner``
calls it with that default. The results file does not record the zone, so a run's recorded date
is read as UTC+8 and shown in UTC (ISO 8601). A run made with lmms-eval's CLI and another
``--timezone`` would be off by the difference.

Comparison (``matched.py``). Per target, three more columns compare the steered methods at matched
effective strength: "best ≤5%" (the highest target share whose collapse stays at most 5 %, strength
chosen on held-out halves), "Δ L2S" (the paired difference to L2S with its 95 % bootstrap interval)
and "rank" (ties share a rank; "≈": not distinguishable from the best). Per model, the unsteered and
prompt rows come first, then the steered rows ranked by the sum of their two ranks (`rank_steered`).

Filter and layout. The filter keeps a row when every word of the query starts a word of its model
or of its method (`filter_keeps`; ``model:x`` / ``method:x`` say which, a bare word is a method word
when it starts one on the page), so "qwen amps" is the AMPS rows of the Qwen models. On a phone the
method moves under the model in the first column, which stays in view when the table scrolls.
Paths: links and file names are relative to the page's folder, and a setting that is an absolute
path is shown relative to it, or by its last component (`shown_value`): no machine path is written.

The HTML also has, per model, a small chart of every sweep point (``series.alpha_series``, the
points of Figures 1 and 6): target share and collapse against effective strength (against alpha
when the runs recorded no strength), in the methods' fixed colours (``style.py``).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote, unquote

from tabulate import tabulate

from amps_eval.report import STEERED
from amps_eval.report.cells import TOTAL, Cell
from amps_eval.report.matched import MatchedRow, MatchedTable, matched_table
from amps_eval.report.render import write_text_atomic
from amps_eval.report.runs import DataId, Run, discover, model_display_name
from amps_eval.report.select import ResultIndex, Variant, build_index, require_usable, seed_alphas
from amps_eval.report.series import SweepPoint, alpha_series
from amps_eval.report.style import method_color, method_label
from amps_eval.report.tables import TARGETS, methods_of

LMMS_EVAL_UTC_OFFSET = timedelta(hours=8)  # lmms-eval's default --timezone, Asia/Singapore
TEMPLATES = Path(__file__).parent  # leaderboard.html.j2 (package data)
_HELD_OUT = re.compile(r"^α (\S+)(?: / (\S+))?, chosen on (.+)$")


def iso_utc(date: str) -> str | None:
    """lmms-eval's ``YYYYMMDD_HHMMSS`` (UTC+8, see the module docstring) as ISO 8601 UTC, e.g.
    ``20261202_023924`` -> ``2026-12-01T18:39:24Z``; None when it is not such a date."""
    try:
        local = datetime.strptime(date, "%Y%m%d_%H%M%S")
    except (TypeError, ValueError):
        return None
    return (local - LMMS_EVAL_UTC_OFFSET).replace(tzinfo=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Side:
    """One target of a row: the variant shown, its Total cell and how its alpha was chosen."""

    target: str
    variant: Variant
    cell: Cell
    alphas: tuple[float, ...]  # the alpha(s) scored: two for held-out halves that chose differently; () unsteered
    choice: str  # short: "held-out", "single α", "best on all items", "" (no steering)
    choice_note: str  # a sentence
    runs: tuple[Path, ...]  # the results files the numbers come from
    alpha_label: str = ""  # with several training seeds: each seed's alpha(s), "1; 2 / 4; 1" (seed order)

    @property
    def alpha_text(self) -> str:
        return self.alpha_label or " / ".join(f"{a:g}" for a in self.alphas)


@dataclass(frozen=True)
class Row:
    data: DataId
    pretrained: str
    method: str
    orders: str  # "one" | "both"
    sides: dict[str, Side] = field(default_factory=dict)  # target -> Side (a target without a run is absent)
    matched: dict[str, MatchedRow] = field(default_factory=dict)  # target -> the row at matched strength (matched.py)
    ranks: dict[str, int] = field(default_factory=dict)  # target -> rank among the steered rows by the summary

    @property
    def model(self) -> str:
        return model_display_name(self.pretrained)

    @property
    def label(self) -> str:
        return method_label(self.method) + (" (both orders)" if self.orders == "both" else "")

    @property
    def date(self) -> str | None:
        """The newest run of the row, ISO UTC."""
        dates = [d for s in self.sides.values() if (d := iso_utc(s.cell.date))]
        return max(dates) if dates else None

    @property
    def choice(self) -> str:
        return " / ".join(dict.fromkeys(s.choice for s in self.sides.values() if s.choice))

    @property
    def items(self) -> str:
        """The item count (vision / text when they differ)."""
        counts = ["-" if s.cell.n_items is None else str(s.cell.n_items) for s in self.sides.values()]
        return " / ".join(dict.fromkeys(counts)) or "-"


def _side(index: ResultIndex, variant: Variant, target: str) -> Side:
    cell = index.cells[(variant, target)][TOTAL]
    if variant.method not in STEERED:
        return Side(target, variant, cell, (), "", "no steering", (cell.run,))
    settings = dict(variant.settings)
    per_seed = seed_alphas(settings.get("alpha_choice", "")) if variant.alpha is None else None
    if per_seed is not None:  # the seed-averaged composite of select._held_out
        base = {k: v for k, v in variant.settings if k != "alpha_choice"}
        groups = index.seed_groups([c for c in index.candidates(variant.pretrained, variant.method, target,
                                                                variant.orders) if c.alpha is not None])
        files = groups.get(tuple(sorted(base.items())), [])
        runs = sorted({index.cells[(c, target)][TOTAL].run for (_, members), alphas in zip(files, per_seed)
                       for c in members if any(abs(c.alpha - a) < 1e-12 for a in alphas)
                       and TOTAL in index.cells[(c, target)]}) or [cell.run]
        label = "; ".join(" / ".join(f"{a:g}" for a in alphas) for alphas in per_seed)
        return Side(target, variant, cell, tuple(a for alphas in per_seed for a in alphas),
                    f"held-out, {len(per_seed)} seeds",
                    f"mean over {len(per_seed)} training seeds (one steering file each), each seed's alpha chosen on "
                    f"held-out halves ({settings['alpha_choice']}): the highest target share with at most 5% "
                    "collapse, alpha 0 excluded; the share's range over the seeds is in brackets", tuple(runs), label)
    if variant.alpha is None and "alpha_choice" in settings:  # the composite of select._held_out
        description = settings["alpha_choice"]
        match = _HELD_OUT.match(description)
        texts = [t for t in (match.groups()[:2] if match else ()) if t]
        alphas = tuple(float(t) for t in texts)
        base = tuple((k, v) for k, v in variant.settings if k != "alpha_choice")
        runs = sorted({index.cells[(c, target)][TOTAL].run for c in index.candidates(
            variant.pretrained, variant.method, target, variant.orders)
            if c.settings == base and c.alpha is not None and f"{c.alpha:g}" in texts
            and TOTAL in index.cells[(c, target)]}) or [cell.run]
        return Side(target, variant, cell, alphas, "held-out",
                    f"each half of the items scored at the alpha chosen on the other half ({description}): the "
                    "highest target share with at most 5% collapse, alpha 0 excluded", tuple(runs))
    alphas = () if variant.alpha is None else (variant.alpha,)
    if "training_seeds" in settings:  # the seed mean at one alpha (select.ResultIndex._seed_mean_at)
        own = tuple(kv for kv in variant.settings if kv[0] != "training_seeds")
        seeds = [v for v in index.candidates(variant.pretrained, variant.method, target, variant.orders)
                 if v.alpha == variant.alpha and tuple(kv for kv in v.settings if kv[0] != "steering") == own]
        return Side(target, variant, cell, alphas, f"single α, {settings['training_seeds']} seeds",
                    f"the only non-zero alpha that ran, mean over {settings['training_seeds']} training seeds (one "
                    "steering file each); the share's range over the seeds is in brackets",
                    tuple(sorted({index.cells[(v, target)][TOTAL].run for v in seeds
                                  if TOTAL in index.cells[(v, target)]})) or (cell.run,))
    others = {c.alpha for c in index.candidates(variant.pretrained, variant.method, target, variant.orders)
              if c.settings == variant.settings and c.alpha not in (None, 0)}
    if len(others) <= 1:
        return Side(target, variant, cell, alphas, "single α", "the only non-zero alpha that ran", (cell.run,))
    return Side(target, variant, cell, alphas, "best on all items",
                f"the highest Total target share of {len(others)} alphas, chosen on the evaluated items themselves "
                "(no per-item samples to choose on held-out items): optimistic", (cell.run,))


def leaderboard_rows(index: ResultIndex) -> list[Row]:
    """Every (data, model, method, orders) with a result, in the tables' order: data (most numbers
    first), model, then method in the registry's order (pure: no files written)."""
    out = []
    for data in index.data_groups():
        part = index.only(data)  # choose() adds its composite cells to this copy, not to ``index``
        for pretrained in part.models():
            for orders in ("one", "both"):
                tables = {t: matched_table(part, pretrained, t, orders) for t in TARGETS}
                rows = []
                for method in methods_of(part, pretrained):
                    sides = {}
                    for target in TARGETS:
                        variant = part.choose(pretrained, method, target, orders)
                        if variant is not None and TOTAL in part.cells[(variant, target)]:
                            sides[target] = _side(part, variant, target)
                    if sides:
                        matched, ranks = _matched_of(tables, method)
                        rows.append(Row(data, pretrained, method, orders, sides, matched, ranks))
                out += rank_steered(rows)
    return out


def _matched_of(tables: dict[str, MatchedTable | None], method: str) -> tuple[dict, dict]:
    matched, ranks = {}, {}
    for target, table in tables.items():
        if table is None or not table.grid:
            continue
        shares = {r.method: r.summary.mean("share") for r in table.rows if r.summary is not None}
        for row in table.rows:
            if row.method == method and method in shares:  # ties share a rank
                matched[target] = row
                ranks[target] = 1 + sum(1 for v in shares.values() if v > shares[method] + 1e-12)
    return matched, ranks


def rank_steered(rows: list[Row]) -> list[Row]:
    """The rows of one model: the unsteered and prompt rows first (the tables' order), then the
    steered rows ranked by their summary at matched strength (the sum of their ranks over the
    targets, ties in the tables' order); steered rows without a matched-strength rank come last."""
    steered = [r for r in rows if r.method in STEERED]
    rest = [r for r in rows if r.method not in STEERED]
    order = {id(r): n for n, r in enumerate(steered)}
    ranked = sorted(steered, key=lambda r: (not r.ranks, sum(r.ranks.values()) if r.ranks else 0, order[id(r)]))
    return rest + ranked


# ---- shared by the Markdown and the HTML ---------------------------------------------------------
def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _strength(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _href(path: Path, folder: Path) -> str:
    """A link to ``path`` from a page in ``folder``: relative (URL-quoted) when one exists."""
    try:
        relative = os.path.relpath(os.path.abspath(path), os.path.abspath(folder))
    except ValueError:  # another drive (Windows)
        return Path(os.path.abspath(path)).as_uri()
    return quote(Path(relative).as_posix())


def short_data(data: DataId) -> str:
    """A few words for the data column (the full `DataId.describe` is the cell's tooltip and in the
    row's details): "generated, seed 3", "generated, graded, seed 3", "MC2 7fcb45ef6a49", a folder name; plus any --limit."""
    key = data.key
    if key.startswith(("synthetic:", "synthetic_graded:")):
        seed = re.search(r"seed=([^,]+)", key)
        kind = "generated, graded" if key.startswith("synthetic_graded:") else "generated"
        name = f"{kind}, seed {seed.group(1)}" if seed else kind
    elif key.startswith("mc2:"):
        name = f"MC2 {key[4:]}"
    elif key.startswith("path:"):
        name = ", ".join(Path(p).name or p for p in key[5:].split("|"))
    elif key == "unrecorded":
        name = "not recorded"
    else:
        name = key
    return name if data.limit is None else f"{name}, --limit {data.limit:g}"


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    kind: str  # "num" | "text"
    title: str
    first: bool = False  # starts a group (a border on its left)


TARGET_COLUMNS = (("share", "share", "target share: answers that follow the target modality (%)"),
                  ("se", "± s.e.", "standard error of the target share over items (%)"),
                  ("collapse", "collapse", "answers that follow neither option (%)"),
                  ("logodds", "log-odds", "mean image_logodds: log p(image option) - log p(text option) at the first "
                                          "answer position (+ favours the image; amps_eval.logodds)"),
                  ("strength", "strength", "effective strength: mean ‖shift‖ / ‖hidden state‖ over the steered "
                                           "positions and items"),
                  ("alpha", "α", "the steering strength shown (two values: one per half of the items; "
                                 "\"1; 2; 1\": one per training seed)"))
MATCHED_COLUMNS = (("matched", "best ≤5%", "at matched strength: the highest target share whose collapse stays at most "
                                         "5 %, the common strength chosen on held-out halves of the items (%)"),
                   ("vs_l2s", "Δ L2S", "difference to L2S at matched strength, percentage points, with the paired 95 % "
                                       "bootstrap interval over items"),
                   ("rank", "rank", "rank of the steered methods by 'best ≤5%' (ties share a rank); ≈: not "
                                    "distinguishable from the best, the interval of the difference contains 0"))
"""Per target, after `TARGET_COLUMNS`: the comparison at matched strength (``matched.py``)."""
MATCHED_NOTE = ("Steered methods are compared at matched effective strength (their alphas differ in strength): "
                "best ≤5%: the highest target share whose collapse stays at most 5 %, on the share-vs-strength curve "
                "interpolated at strengths every method reaches, chosen on held-out halves of the items; Δ L2S: the "
                "difference to L2S on the same items with a paired 95 % bootstrap interval; rank: by best ≤5% "
                "(≈: not distinguishable from the best). Per model the steered rows are in the order of these ranks "
                "(the sum over the two targets).")
TAIL_COLUMNS = (("choice", "α choice", "text", "how the alpha was chosen"),
                ("items", "items", "num", "items scored"),
                ("data", "data", "text", "the MC2 data the runs read"),
                ("date", "date (UTC)", "text", "the newest run of the row, ISO 8601 UTC"))


def columns() -> list[Column]:
    out = [Column("model", "model", "text", "model (checkpoint name)"),
           Column("method", "method", "text", "method (the tables' row name)")]
    for target in TARGETS:
        out += [Column(f"{target}_{key}", header, "num", f"target {target}: {title}", number == 0)
                for number, (key, header, title) in enumerate(TARGET_COLUMNS)]
        out += [Column(f"{target}_{key}", header, "num", f"target {target}: {title}") for key, header, title in MATCHED_COLUMNS]
    out += [Column(key, header, kind, title, number == 0)
            for number, (key, header, kind, title) in enumerate(TAIL_COLUMNS)]
    return out


def _target_values(side: Side | None) -> list[tuple[str, float | None]]:
    """(text, sort value) of the target columns."""
    if side is None:
        return [("-", None)] * len(TARGET_COLUMNS)
    cell = side.cell
    spread = "" if cell.seed_range is None else f" ({_pct(cell.seed_range[0])}–{_pct(cell.seed_range[1])})"
    return [(_pct(cell.target_acc) + spread, 100 * cell.target_acc),
            (_pct(cell.stderr), None if cell.stderr is None else 100 * cell.stderr),
            (_pct(cell.others), None if cell.others is None else 100 * cell.others),
            ("-" if cell.logodds is None else f"{cell.logodds:+.2f}", cell.logodds),
            (_strength(cell.strength), cell.strength),
            (side.alpha_text or "-", sum(side.alphas) / len(side.alphas) if side.alphas else None)]


def _matched_values(row: "Row", target: str) -> list[tuple[str, float | None]]:
    """(text, sort value) of the `MATCHED_COLUMNS` of one target."""
    matched = row.matched.get(target)
    if matched is None or matched.summary is None:
        return [("-", None)] * len(MATCHED_COLUMNS)
    share = matched.summary.mean("share")
    versus = matched.vs_baseline.get("share")
    if matched.method == "l2s":
        vs = ("baseline", 0.0)
    elif versus is None:
        vs = ("-", None)
    else:
        vs = (versus.describe(), 100 * versus.difference)
    rank = row.ranks.get(target)
    mark = "" if matched.best or not matched.indistinguishable_from_best else " ≈"
    spread = matched.summary.seed_range("share")
    text = _pct(share) + ("" if spread is None else f" ({_pct(spread[0])}–{_pct(spread[1])})")
    return [(text, 100 * share), vs, (f"{rank}{mark}" if rank else "-", rank)]


# ---- Markdown ------------------------------------------------------------------------------------
def to_markdown(rows: list[Row], index: ResultIndex, folder: Path) -> str:
    """The leaderboard as GitHub Markdown: the HTML's rows, in the same order; links relative to ``folder``."""
    headers = ["model", "method"]
    for target in TARGETS:
        headers += [f"{target} {h}" if n == 0 else h for n, (_, h, _) in enumerate(TARGET_COLUMNS)]
        headers += [h for _, h, _ in MATCHED_COLUMNS]
    headers += [h for _, h, _, _ in TAIL_COLUMNS] + ["results"]
    table = []
    for row in rows:
        line = [row.model, row.label]
        for target in TARGETS:
            line += [text for text, _ in _target_values(row.sides.get(target))]
            line += [text for text, _ in _matched_values(row, target)]
        used: dict[Path, list[str]] = {}  # results file -> the targets it gives
        for target, side in row.sides.items():
            for run in side.runs:
                used.setdefault(run, []).append(target)
        links = [f"[{', '.join(targets)}]({_href(run, folder)})" for run, targets in used.items()]
        line += [row.choice or "-", row.items, short_data(row.data), row.date or "-", " ".join(links)]
        table.append([text.replace("|", "\\|") for text in line])
    parts = ["# MC2 leaderboard", "",
             "One row per model and method; both targets side by side; shares in % of items. share: answers "
             "that follow the target modality; ± s.e.: its standard error over items; collapse: answers that follow "
             "neither option; log-odds: mean image_logodds, log p(image option) - log p(text option) at the first "
             "answer position (+ favours the image); strength: the effective strength, mean ‖shift‖ / ‖hidden "
             "state‖; α: the alpha shown "
             "(two values: each half of the items scored at the alpha chosen on the other half; \"1; 2 / 4; 1\": one "
             "per training seed, in seed order). A share with (lo–hi): the mean over a trained method's training "
             "seeds, each at its own chosen alpha, with the lowest and highest seed's share. "
             f"{MATCHED_NOTE} Dates are UTC. "
             "`leaderboard.html` (same folder) sorts, filters and charts the sweeps.", "",
             tabulate(table, headers=headers, tablefmt="github", disable_numparse=True) if table else "No runs.", ""]
    parts += ["## Data", ""] + [f"- {line}" for line in _data_lines(index, folder)] + [""]
    notes = _notes(index, folder)
    if notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(parts)


def _data_lines(index: ResultIndex, folder: Path) -> list[str]:
    lines = []
    for data in index.data_groups():
        runs = sum(1 for r in index.runs if r.data == data)
        where = f" (folder {shown_value(str(data.folder), folder)})" if data.folder else ""
        lines.append(f"{data.describe()}{where}: {runs} run(s)")
    return lines


def _notes(index: ResultIndex, folder: Path) -> list[str]:
    """Superseded runs and unreadable files, named relative to the page's folder. A problem's text
    may quote a path a run recorded (a diagnostics folder): absolute ones are cut to their last part."""
    notes = [f"Superseded by a newer run of the same settings: {_href_text(d.dropped, folder)}" for d in index.dropped]
    notes += [f"Problem: {_href_text(p.path, folder)}: {_no_absolute_paths(p.what, folder)}" for p in index.problems]
    return notes


def _no_absolute_paths(text: str, folder: Path) -> str:
    return re.sub(r"(?<![\w.])/[^\s,;:'\"()]+", lambda m: shown_value(m.group(0), folder), text)


# ---- HTML ----------------------------------------------------------------------------------------
def _settings_text(run: Run | None, path: Path, folder: Path) -> str:
    if run is None:
        return _href_text(path, folder)
    return ", ".join(f"{k}={shown_value(v, folder)}" for k, v in run.settings.items())


def _href_text(path: Path, folder: Path) -> str:
    """A results file as the page names it: relative to the page's folder (never an absolute path)."""
    return unquote(_href(path, folder))


def _html_row(number: int, row: Row, runs: dict[Path, Run], folder: Path) -> dict:
    cells = [dict(key="model", text=row.model, sort=row.model, css="model", title=shown_value(row.pretrained, folder),
                  color=None, sub=row.label),
             dict(key="method", text=row.label, sort=row.label, css="method", title=f"method={row.method}",
                  color=method_color(row.method))]
    for target in TARGETS:
        side = row.sides.get(target)
        for n, ((key, _, _), (text, value)) in enumerate(zip(TARGET_COLUMNS, _target_values(side))):
            css = "num" + (" first" if n == 0 else "") + (" share" if key == "share" else "")
            title = side.choice_note if side is not None and key == "alpha" and side.alphas else None
            cells.append(dict(key=f"{target}_{key}", text=text, css=css, title=title, color=None,
                              sort=None if value is None or math.isnan(value) else f"{value:.6g}"))
        for (key, _, title), (text, value) in zip(MATCHED_COLUMNS, _matched_values(row, target)):
            cells.append(dict(key=f"{target}_{key}", text=text, css="num", title=None, color=None,
                              sort=None if value is None or math.isnan(value) else f"{value:.6g}"))
    date = row.date
    cells += [dict(key="choice", text=row.choice or "-", sort=row.choice or None, css="first", color=None,
                   title="; ".join(f"{t}: {s.choice_note}" for t, s in row.sides.items())),
              dict(key="items", text=row.items, css="num", color=None, title=None,
                   sort=next((str(s.cell.n_items) for s in row.sides.values() if s.cell.n_items is not None), None)),
              dict(key="data", text=short_data(row.data), sort=short_data(row.data), css="data", color=None,
                   title=row.data.describe()),
              dict(key="date", text=f"{date[:16]}Z" if date else "-", sort=date, css="date", color=None, title=date)]
    details = [("model", shown_value(row.pretrained, folder)), ("method", f"{row.label} (method={row.method})"),
               ("data", row.data.describe() + (f" (folder {shown_value(str(row.data.folder), folder)})"
                                             if row.data.folder else ""))]
    for target, side in row.sides.items():
        cell = side.cell
        details.append((f"target {target}",
                        f"share {_pct(cell.target_acc)} % ± {_pct(cell.stderr)}"
                        + ("" if cell.seed_range is None else f" (mean over {cell.n_seeds} training seeds, "
                           f"{_pct(cell.seed_range[0])}–{_pct(cell.seed_range[1])})")
                        + f", collapse {_pct(cell.others)} %, "
                        f"effective strength {_strength(cell.strength)}, {cell.n_items or '?'} items "
                        f"(from the {cell.source} file{'s' if cell.source == 'samples' else ''}), "
                        f"run {iso_utc(cell.date) or cell.date}"))
        if side.alphas:
            details.append((f"α ({target})", f"{side.alpha_text}: {side.choice_note}"))
    used: dict[Path, list[str]] = {}  # results file -> the targets it gives (one file usually gives both)
    for target, side in row.sides.items():
        for run in side.runs:
            used.setdefault(run, []).append(target)
    links = [(", ".join(targets), [dict(href=_href(run, folder), text=_href_text(run, folder))])
             for run, targets in used.items()]
    settings = [(", ".join(targets) + (f", α={runs[run].alpha:g}" if run in runs and runs[run].alpha is not None
                                       and len(used) > 1 else ""), _settings_text(runs.get(run), run, folder))
                for run, targets in used.items()]
    search = " ".join([row.model, shown_value(row.pretrained, folder), row.method, row.label]).lower()
    model_words, method_words = row_words(row, folder)
    return dict(id=number, cells=cells, details=details, links=links, settings=settings, search=search,
                model_words=" ".join(model_words), method_words=" ".join(method_words))


# ---- the filter (the page's script applies the same rule: keep the two in step) ----------------------
WORD_SPLIT = r"[\s_\-/,()=+:]+"
"""What separates the words of a model or method name, for the filter (also in the page's script)."""


def words(text: str) -> list[str]:
    return [w for w in re.split(WORD_SPLIT, text.lower()) if w]


def row_words(row: "Row", folder: Path) -> tuple[list[str], list[str]]:
    """(model words, method words) the filter matches a row by."""
    model = list(dict.fromkeys(words(row.model) + words(shown_value(row.pretrained, folder))))
    method = list(dict.fromkeys(words(row.method) + words(row.label)))
    return model, method


def filter_keeps(query: str, rows: list[tuple[list[str], list[str]]]) -> list[bool]:
    """Which rows the filter keeps: every word of the query must start a word of the row's model or
    of its method. ``model:x`` / ``method:x`` say which; a bare word is a method word when it starts a
    method word of any row on the page, else a model word (so "qwen amps" is the AMPS rows of the
    Qwen models, although every organism's name contains "amps")."""
    method_vocabulary = {w for _, method in rows for w in method}
    terms = []
    for token in query.lower().split():  # a token's parts are words too: "Mean+MCS" is "mean" and "mcs"
        field, _, rest = token.partition(":")
        if rest and field in ("model", "method"):
            terms += [(field, part) for part in words(rest)]
        else:
            terms += [("method" if any(w.startswith(part) for w in method_vocabulary) else "model", part)
                      for part in words(token)]
    return [all(any(w.startswith(t) for w in (method if field == "method" else model)) for field, t in terms)
            for model, method in rows]


# ---- no absolute machine paths in what is written ----------------------------------------------------
def shown_value(value: str, folder: Path) -> str:
    """A setting as the page shows it: an absolute path becomes relative to the page's folder when it
    is inside that folder, else its last component (a checkpoint's name); other values unchanged."""
    if not isinstance(value, str) or not os.path.isabs(value):
        return value
    try:
        relative = os.path.relpath(os.path.abspath(value), os.path.abspath(folder))
    except ValueError:
        relative = ".."
    if not relative.startswith(".."):
        return Path(relative).as_posix()
    return Path(value).name or value


# ---- charts ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChartPoint:
    x: float
    y: float
    share: bool  # target share (else collapse)
    tip: str


def nice_ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    """Round tick values covering [lo, hi] (about ``n`` steps of 1, 2, 2.5 or 5 times a power of ten)."""
    if not hi > lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(s * magnitude for s in (1, 2, 2.5, 5, 10) if s * magnitude >= raw * (1 - 1e-9))
    first = math.floor(lo / step + 1e-9) * step
    ticks, k = [], 0
    while True:
        value = round(first + k * step, 10)
        ticks.append(value)
        if value >= hi - 1e-9 * step:
            return ticks
        k += 1


def _panel(target: str, found: list[tuple[str, str, list[SweepPoint]]], measured: bool) -> dict:
    width, height, left, right, top, bottom = 320, 200, 40, 310, 22, 166
    xs = [(p.strength if measured else p.alpha) for _, _, points in found for p in points]
    xt = nice_ticks(min(0.0, *xs), max(xs))
    x0, x1 = xt[0], xt[-1]

    def px(x: float) -> float:
        return round(left + (x - x0) / (x1 - x0) * (right - left), 1)

    def py(y: float) -> float:
        return round(bottom - max(0.0, min(100.0, y)) / 100 * (bottom - top), 1)

    series = []
    for method, name, points in found:
        points = sorted(points, key=lambda p: ((p.strength if measured else p.alpha), p.alpha))
        marks, share_line, collapse_line = [], [], []
        for p in points:
            x = p.strength if measured else p.alpha
            strength = "" if p.strength is None else f", effective strength {p.strength:.3g}"
            numbers = (f"{name}, α={p.alpha:g}{strength}: target share {p.share:.1f} %"
                       + ("" if p.stderr is None else f" ± {p.stderr:.1f}")
                       + ("" if p.collapse is None else f", collapse {p.collapse:.1f} %"))
            share_line.append(f"{px(x)},{py(p.share)}")
            marks.append(ChartPoint(px(x), py(p.share), True, numbers))
            if p.collapse is not None:
                collapse_line.append(f"{px(x)},{py(p.collapse)}")
                marks.append(ChartPoint(px(x), py(p.collapse), False, numbers))
        series.append(dict(method=method, color=method_color(method), share_points=" ".join(share_line),
                           collapse_points=" ".join(collapse_line) if len(collapse_line) == len(points) else "",
                           points=marks))
    return dict(target=target, width=width, height=height, left=left, right=right, top=top, bottom=bottom,
                xticks=[(px(t), f"{t:g}") for t in xt], yticks=[(py(t), f"{t:g}") for t in (0, 25, 50, 75, 100)],
                xlabel="effective strength ‖shift‖ / ‖h‖" if measured else "α (effective strength not recorded)",
                series=series)


def charts(index: ResultIndex) -> list[dict]:
    """Per (data, model) with a steered sweep: one SVG panel per target (see the module docstring)."""
    out = []
    groups = index.data_groups()
    for data in groups:
        part = index.only(data)
        for pretrained in part.models():
            found = {target: [(m, f"{method_label(m)}{'' if label == method_label(m) else f' [{label}]'}", points)
                              for m in methods_of(part, pretrained) if m in STEERED
                              for label, points in alpha_series(part, pretrained, m, target).items()]
                     for target in TARGETS}
            if not any(found.values()):
                continue
            measured = all(p.strength is not None for f in found.values() for _, _, points in f for p in points)
            title = model_display_name(pretrained) + (f" — {data.describe()}" if len(groups) > 1 else "")
            legend = list(dict.fromkeys((name, method_color(m)) for f in found.values() for m, name, _ in f))
            out.append(dict(title=title, measured=measured, legend=legend,
                            panels=[_panel(t, found[t], measured) for t in TARGETS if found[t]]))
    return out


def to_html(rows: list[Row], index: ResultIndex, folder: Path, source: str = "") -> str:
    """The leaderboard page (links relative to ``folder``, where it is written)."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(("html", "j2")),
                      undefined=StrictUndefined, trim_blocks=False, lstrip_blocks=False, keep_trailing_newline=True)
    runs = {run.path: run for run in index.runs}
    drawn = charts(index)
    return env.get_template("leaderboard.html.j2").render(
        rows=[_html_row(n, row, runs, folder) for n, row in enumerate(rows)], columns=columns(), targets=TARGETS,
        target_columns=TARGET_COLUMNS + MATCHED_COLUMNS, tail_columns=TAIL_COLUMNS, charts=drawn,
        all_measured=all(c["measured"] for c in drawn), several_data=len(index.data_groups()) > 1,
        data_lines=_data_lines(index, folder), notes=_notes(index, folder), source=source,
        matched_note=MATCHED_NOTE)


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
    rows = leaderboard_rows(index)
    out = Path(out or results_dir)
    out.mkdir(parents=True, exist_ok=True)
    html_path, md_path = out / "leaderboard.html", out / "leaderboard.md"
    source = Path(os.path.relpath(os.path.abspath(results_dir), os.path.abspath(out))).as_posix()
    write_text_atomic(html_path, to_html(rows, index, out, source))
    write_text_atomic(md_path, to_markdown(rows, index, out))
    return html_path, md_path
