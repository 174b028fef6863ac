"""The "at matched strength" section of the report: ``matched.py``'s tables as Markdown lines.

One table per (data, model, target) with a steered sweep of two methods or more: rows = methods,
ranked by their summary; columns = the common strengths (target share, collapse in brackets), the
summary (best target share with collapse <= 5 %, strength chosen on held-out halves), and each
method's paired difference to L2S with its 95 % interval. ``≈`` marks rows not distinguishable
from the best (the interval of their difference to the best contains 0).
"""

from __future__ import annotations

from amps_eval.report.matched import BASELINE, MatchedTable, matched_table
from amps_eval.report.runs import model_display_name
from amps_eval.report.select import ResultIndex
from amps_eval.report.style import method_label
from amps_eval.vocabulary import TARGETS

EXPLANATION = (
    "Each steered method's sweep gives target share and collapse as curves of the effective strength s "
    "(mean ‖shift‖ / ‖hidden state‖); they are interpolated linearly, item by item, at common strengths "
    "spread over the range every method reaches. Cells: target share % (collapse % in brackets). "
    "**best ≤5%**: the highest target share whose collapse is at most 5 %, each half of the items scored at "
    "the common strength chosen on the other half (s chosen: one value per half). **Δ vs L2S**: the method's "
    "difference to L2S on the same items, in percentage points, with a paired 95 % bootstrap interval over "
    "items (2000 resamples, seed 0); with several training seeds, a method's curve is the item-by-item mean over "
    "its seeds, and \"seeds a–b\" is the range of the seeds' own summaries. **≈**: not distinguishable from the best row (the interval of the "
    "difference to it contains 0); **best**: the best row. Procedure: docs/comparison.md.")


def _pp(x: float) -> str:
    return f"{100 * x:.1f}"


def matched_lines(table: MatchedTable) -> list[str]:
    """One table as GitHub Markdown lines (heading, table, notes)."""
    name = model_display_name(table.pretrained)
    extras = [q for q in table.quantities if q not in ("share", "collapse")]
    header = (["method"] + [f"s={s:.3g}" for s in table.grid] + ["best ≤5%", "collapse", "s chosen",
              "Δ share vs L2S", "Δ collapse vs L2S"] + [f"Δ {q} vs L2S" for q in extras] + ["vs best"])
    lines = [f"#### {name}, target {table.target}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 2) + [":---:"]) + "|"]
    for row in table.rows:
        cells = [method_label(row.method)]
        for s in table.grid:
            at = row.at[s]
            cells.append(f"{_pp(at['share'])} ({_pp(at['collapse'])})")
        summary = row.summary
        if summary is None:
            cells += ["-", "-", "-"]
        else:
            a, b = summary.strengths
            chosen = f"{a:.3g}" if a == b else f"{a:.3g} / {b:.3g}"
            if summary.equal_choice:
                chosen += " (all equal)"
            spread = summary.seed_range("share")
            best = _pp(summary.mean("share"))
            if spread is not None:  # several training seeds: their own summaries' range beside the mean
                best += f" (seeds {_pp(spread[0])}–{_pp(spread[1])}, n={len(summary.per_seed)})"
            cells += [best, _pp(summary.mean("collapse")), chosen]
        if row.method == BASELINE:
            cells += ["(baseline)", "(baseline)"] + ["(baseline)"] * len(extras)
        else:
            cells += [row.vs_baseline[q].describe() if q in row.vs_baseline else "-"
                      for q in ("share", "collapse")]
            cells += [row.vs_baseline[q].describe(scale=1.0, digits=2) if q in row.vs_baseline else "-" for q in extras]
        cells.append("best" if row.best else ("≈" if row.indistinguishable_from_best else ""))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines.append("")
    if table.skipped:
        lines += [f"Not compared: {'; '.join(table.skipped)}.", ""]
    return lines


def matched_tables(index: ResultIndex, models: list[str], orders: str = "one") -> list[MatchedTable]:
    """Every model's and target's matched-strength table (data groups apart, as the tables)."""
    out = []
    for data in index.data_groups():
        part = index.only(data)
        for pretrained in models:
            if pretrained not in part.models():
                continue
            for target in TARGETS:
                table = matched_table(part, pretrained, target, orders)
                if table is not None and table.grid:
                    out.append(table)
    return out


def matched_section(tables: list[MatchedTable]) -> list[str]:
    """The report's "At matched strength" section (empty without tables)."""
    if not tables:
        return []
    lines = ["## At matched strength", "", EXPLANATION, ""]
    for table in tables:
        lines += matched_lines(table)
    return lines
