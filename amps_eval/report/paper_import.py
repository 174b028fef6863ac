"""The AMPS paper's Tables 1-3 (a CSV of printed cells) as ``paper_numbers.json`` entries and notes.

``paper_numbers.json`` is generated, not hand-typed: this module turns the transcription of the
paper's tables (``table,target,row,column,value``, one printed cell a line, rows and values exactly
as printed) into entries keyed the way the report looks them up (``paper.PaperNumbers``): model hub
id, method, target, column. The mapping from printed names to those keys is the data table just
below (``ROWS``, ``COLUMNS``); everything else is mechanical. The notes (why some published cells
cannot be compared cell for cell) are computed from the same rows, so they stay true to the CSV.

Regenerate the packaged file (entries not from the AMPS paper, e.g. the MC2 authors' baselines, and
their notes are kept as they are)::

    python -m amps_eval.report.paper_import ../shared/amps-paper/tables.csv amps_eval/report/paper_numbers.json

The packaged JSON is self-contained: nothing reads the CSV at run time.
"""

from __future__ import annotations

import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

from amps_eval.report import METHOD_LABELS

PAPER = "AMPS paper (arXiv 2602.12533)"
ORDER = ("Act.", "Attr.", "Color", "Count.", "Obj.", "Pos.", "Sent.", "Sport")  # Table 2's column order
QWEN3B, QWEN7B = "Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct"
LLAVA7B, LLAVA13B = "llava-hf/llava-1.5-7b-hf", "llava-hf/llava-1.5-13b-hf"
STATIC_STEERING = ("the static steering row, printed 'Qwen2VL-7B' in the vision block and 'Qwen2.5VL-7B' in the text "
                   "block, taken to be mean steering (an interpretation, not printed: the table compares AMPS with "
                   "'conventional steering' methods, mean steering is the paper's one static steering baseline and "
                   "has no other row here, and the row's cells equal no L2S row of Table 2; 'Qwen2VL' is read as "
                   "Qwen2.5-VL-7B, the model of Table 1)")
T3_TARGET = "target not printed: vision, because the row equals Table 2's Qwen-VL-3B vision row"

# ---- the mapping: printed name -> the report's keys --------------------------------------------
ROWS: dict[tuple[str, str], tuple[str, str, str]] = {
    # (table, row as printed): (model hub id, method, remark for the source; "" = none)
    ("1", "MLLM-only"): (QWEN7B, "none", ""),
    ("1", "Inst Design"): (QWEN7B, "inst", ""),
    ("1", "CoT Prompting"): (QWEN7B, "cot", ""),
    ("1", "Few shot"): (QWEN7B, "fewshot", ""),
    ("1", "Qwen2VL-7B"): (QWEN7B, "mean", STATIC_STEERING),
    ("1", "Qwen2.5VL-7B"): (QWEN7B, "mean", STATIC_STEERING),
    ("1", "Qwen2.5VL-7B-AMPS"): (QWEN7B, "amps", ""),
    ("2", "LLaVA-7B"): (LLAVA7B, "none", ""),
    ("2", "LLaVA-7B-l2s"): (LLAVA7B, "l2s", ""),
    ("2", "LLaVA-7B-AMPS"): (LLAVA7B, "amps", ""),
    ("2", "LLaVA-13B"): (LLAVA13B, "none", ""),
    ("2", "LLaVA-13B-l2s"): (LLAVA13B, "l2s", ""),
    ("2", "LLaVA-13B-AMPS"): (LLAVA13B, "amps", ""),
    ("2", "Qwen-VL-3B"): (QWEN3B, "none", ""),
    ("2", "Qwen-VL-3B-l2s"): (QWEN3B, "l2s", ""),
    ("2", "Qwen-VL-3B-AMPS"): (QWEN3B, "amps", ""),
    ("2", "Qwen-3B-l2s"): (QWEN3B, "l2s", "printed 'Qwen-3B-l2s' for Qwen-VL-3B-l2s"),
    ("2", "Qwen-3B-AMPS"): (QWEN3B, "amps", "printed 'Qwen-3B-AMPS' for Qwen-VL-3B-AMPS"),
    ("2", "Qwen-VL-7B"): (QWEN7B, "none", ""),
    ("2", "Qwen-VL-7B-l2s"): (QWEN7B, "l2s", ""),
    ("2", "Qwen-VL-7B-AMPS"): (QWEN7B, "amps", ""),
    ("3", "Qwen-VL-3B (w/o steering)"): (QWEN3B, "none", T3_TARGET),
    ("3", "Qwen-VL-3B-l2s (w/o scaling)"): (QWEN3B, "l2s", T3_TARGET),
    ("3", "Qwen-VL-3B-AMPS (full)"): (QWEN3B, "amps", T3_TARGET),
}
COLUMNS: dict[tuple[str, str], tuple[str, int | None]] = {
    # (table, column as printed): (the report's column, printed position of a column that is inferred)
    # Table 1's header is wrong (Sentiment twice, Attribute missing); its cells are taken to follow
    # Table 2's order, because its AMPS vision row equals Table 2's Qwen-VL-7B-AMPS row in that order.
    ("1", "Sport (as printed)"): ("Act.", 1),
    ("1", "Sentiment (as printed, 1st)"): ("Attr.", 2),
    ("1", "Positional (as printed)"): ("Color", 3),
    ("1", "Counting (as printed)"): ("Count.", 4),
    ("1", "Color (as printed)"): ("Obj.", 5),
    ("1", "Activity (as printed)"): ("Pos.", 6),
    ("1", "Object (as printed)"): ("Sent.", 7),
    ("1", "Sentiment (as printed, 2nd)"): ("Sport", 8),
    ("1", "Total"): ("Total", None),
    **{(t, c): (c, None) for t in ("2", "3") for c in (*ORDER, "Total")},
}
# the rows whose equality justifies a mapping: Table 1's columns, Table 3's target
T1_CHECK = (("1", "vision", "Qwen2.5VL-7B-AMPS"), ("2", "vision", "Qwen-VL-7B-AMPS"))
T3_CHECKS = ((("3", "vision", "Qwen-VL-3B (w/o steering)"), ("2", "vision", "Qwen-VL-3B")),
             (("3", "vision", "Qwen-VL-3B-l2s (w/o scaling)"), ("2", "vision", "Qwen-VL-3B-l2s")),
             (("3", "vision", "Qwen-VL-3B-AMPS (full)"), ("2", "vision", "Qwen-VL-3B-AMPS")))
ITEMS_PER_CATEGORY = 250
ABOUT = ("Published numbers for the rows of the AMPS tables, in percent, each with its source: every printed cell "
         "of the AMPS paper's (arXiv 2602.12533) Tables 1-3, generated from a transcription by "
         "amps_eval/report/paper_import.py (do not edit those entries by hand), and the MC2 authors' baselines "
         "(Zhang et al. 2025, arXiv 2505.20977; docs/mc2.md, 'Published baselines'). Keys: table ('*' = every "
         "table with that row), model (hub id; matched on its last path component), row (method), target, column "
         "(Act. ... Sport, Total), metric (target_acc | others_rate), value (null = not published for that row), "
         "publication, source. A lookup takes the most specific entry with a value, so an AMPS table's own cell "
         "wins over an MC2 baseline for every table. 'notes' say, per table and publication, why published cells "
         "cannot be compared cell for cell; the report prints them under each table that shows such a cell.")


def _ordinal(n: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")


def _num(value: float) -> str:
    return f"{value:.1f}" if round(value, 1) == value else f"{value:.2f}"


def _key(row: dict) -> tuple[str, str, str]:
    return str(row["table"]).strip(), str(row["target"]).strip(), str(row["row"]).strip()


def _grouped(rows: list[dict]) -> dict[tuple[str, str, str], dict[str, float]]:
    """(table, target, printed row) -> the report's column -> value."""
    out: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
    for row in rows:
        out[_key(row)][COLUMNS[(_key(row)[0], row["column"])][0]] = float(row["value"])
    return out


def entries_from_rows(rows: list[dict]) -> list[dict]:
    """One entry per printed cell, in the CSV's order; an unknown row/column or a duplicate is an error."""
    entries, seen = [], {}
    for i, row in enumerate(rows, start=2):  # line 1 is the header
        table, target, printed = _key(row)
        column = str(row["column"]).strip()
        if (table, printed) not in ROWS or (table, column) not in COLUMNS or target not in ("vision", "text"):
            raise ValueError(f"line {i}: table {table!r}, target {target!r}, row {printed!r}, column {column!r} is "
                             "not in the mapping of amps_eval/report/paper_import.py (ROWS, COLUMNS); add it there")
        model, method, remark = ROWS[(table, printed)]
        ours, position = COLUMNS[(table, column)]
        key = (table, model, method, target, ours)
        if key in seen:
            raise ValueError(f"line {i}: the same cell as line {seen[key]} (table {table}, {model}, {method}, "
                             f"{target}, {ours})")
        seen[key] = i
        try:
            value = float(row["value"])
        except (TypeError, ValueError):
            raise ValueError(f"line {i}: value {row['value']!r} is not a number") from None
        source = f"{PAPER}, Table {table}, row '{printed}' as printed" + (f" ({remark})" if remark else "")
        source += f", target {target}"
        if position is not None:
            source += (f", column {ours} inferred, not printed: the {_ordinal(position)} of the 8 printed columns "
                       f"(header '{column}'), mapped by Table 2's column order")
        else:
            source += f", column {ours}"
        source += f": {row['value'].strip()}"
        entries.append({"table": table, "model": model, "row": method, "target": target, "column": ours,
                        "metric": "target_acc", "value": value, "publication": PAPER, "source": source})
    return entries


def wildcard_entries(rows: list[dict]) -> list[dict]:
    """Per table, a "not published" entry for the rows and models the paper does not print."""
    out = []
    for table in sorted({_key(r)[0] for r in rows}):
        printed = [(ROWS[(t, p)], tg) for (t, tg, p) in dict.fromkeys(_key(r) for r in rows) if t == table]
        models = list(dict.fromkeys(m for (m, _, _), _ in printed))
        methods = list(dict.fromkeys(METHOD_LABELS.get(m, m) for (_, m, _), _ in printed))
        targets = list(dict.fromkeys(tg for _, tg in printed))
        out.append({"table": table, "model": "*", "row": "*", "target": "*", "column": "*", "metric": "*",
                    "value": None, "publication": PAPER,
                    "source": f"{PAPER}, Table {table}: not published for this row (Table {table} prints "
                              f"{', '.join(methods)}; target {' and '.join(targets)}; for {', '.join(models)} only; "
                              "no 'others' share)"})
    return out


def _checked_equal(groups, a, b, what: str) -> None:
    if groups.get(a) != groups.get(b) or not groups.get(a):
        raise ValueError(f"{what}: {a} and {b} are no longer equal cell for cell in the CSV, so the mapping in "
                         "amps_eval/report/paper_import.py that rests on it must be reconsidered")


def notes_from_rows(rows: list[dict]) -> list[dict]:
    """Why published cells cannot be compared cell for cell, computed from the CSV rows."""
    groups = _grouped(rows)
    _checked_equal(groups, *T1_CHECK, "Table 1's column order")
    for a, b in T3_CHECKS:
        _checked_equal(groups, a, b, "Table 3's target")
    notes = []

    def note(tables, text):
        notes.append({"tables": list(tables), "publication": PAPER, "text": text})

    t1_text = groups.get(("1", "text", "Qwen2.5VL-7B-AMPS"), {})
    t2_text = groups.get(("2", "text", "Qwen-VL-7B-AMPS"), {})
    differ = sum(t1_text.get(c) != t2_text.get(c) for c in ORDER)
    note("1", "Table 1's columns are inferred, not printed: its header reads Sport, Sentiment, Positional, Counting, "
              "Color, Activity, Object, Sentiment, Total (Sentiment twice, Attribute missing). Its cells are shown "
              "in Table 2's order (Act., Attr., Color, Count., Obj., Pos., Sent., Sport) because its AMPS vision "
              "row equals Table 2's Qwen-VL-7B-AMPS vision row in that order, cell for cell; its AMPS text row "
              f"differs from Table 2's in {differ} of 8 cells, so nothing confirms the order there.")
    note("1", f"Table 1's 'Mean steering' row is {STATIC_STEERING}.")
    t1 = [groups[("1", tg, "MLLM-only")]["Total"] for tg in ("vision", "text")]
    t2 = [groups[("2", tg, "Qwen-VL-7B")]["Total"] for tg in ("vision", "text")]
    note("1", f"Table 1's MLLM-only is not Table 2's base model for the same checkpoint (Qwen2.5-VL-7B-Instruct, no "
              f"intervention): Total {_num(t1[0])} / {_num(t1[1])} (vision / text) in Table 1, {_num(t2[0])} / "
              f"{_num(t2[1])} in Table 2; the two tables' protocols evidently differ, so a run of ours can match at "
              "most one of them.")
    # Totals that are not the mean of their eight cells (250 items each), within rounding
    for table in sorted({k[0] for k in groups}):
        bad = []
        for (t, target, printed), cells in groups.items():
            if t != table or "Total" not in cells or len(cells) != 9:
                continue
            mean = sum(cells[c] for c in ORDER) / len(ORDER)
            if abs(mean - cells["Total"]) > 0.05 + 1e-9:
                bad.append(f"{target} {printed} (its cells give {mean:.1f}, printed {_num(cells['Total'])})")
        if bad:
            note(table, f"Totals of Table {table} that do not equal the mean of their row's eight cells (250 items "
                        f"per category) within rounding: {'; '.join(bad)}. The cell shows the printed Total.")
    # granularity: with 250 items per category a cell moves in steps of 0.4
    step = 100 / ITEMS_PER_CATEGORY
    for table in sorted({k[0] for k in groups}):
        whole, off_cells, odd = defaultdict(list), [], []
        for (t, target, printed), cells in groups.items():
            if t != table:
                continue
            values = [cells[c] for c in ORDER if c in cells]
            off = [c for c in ORDER if c in cells and abs(cells[c] / step - round(cells[c] / step)) > 1e-6]
            if off and all(v == int(v) for v in values):
                whole[printed].append(target)
                off_cells += [_num(cells[c]) for c in off]
            else:
                odd += [f"{target} {printed} {c} ({_num(cells[c])})" for c in off]
        parts = []
        if whole:
            rows_text = "; ".join(f"{p} ({', '.join(ts)})" for p, ts in whole.items())
            parts.append(f"every cell of the rows {rows_text} is a whole number ({len(off_cells)} of "
                         f"{8 * sum(map(len, whole.values()))} off those steps: {', '.join(off_cells)}), consistent "
                         f"with 100 items per category rather than {ITEMS_PER_CATEGORY}: another item set than the "
                         "other rows'")
        if odd:
            parts.append(f"{'; '.join(odd)} is not a multiple of {step:g}")
        if parts:
            note(table, f"Granularity in Table {table}: with {ITEMS_PER_CATEGORY} items per category a cell moves "
                        f"in steps of {step:g}; {'; and '.join(parts)}.")
    sums = []
    for printed in dict.fromkeys(p for (t, _, p) in groups if t == "2"):
        model, method, _ = ROWS[("2", printed)]
        v = groups.get(("2", "vision", printed), {}).get("Total")
        t = groups.get(("2", "text", printed), {}).get("Total")
        if method == "none" and v is not None and t is not None:
            sums.append(f"{printed} {_num(v)} + {_num(t)} = {_num(round(v + t, 2))}")
    note("2", "Table 2 is one option order: for every base model vision + text is about 100 "
              f"({'; '.join(sums)}), so a cell is the share of items whose answer follows the target, asked in one "
              "order, and compares with runs of the one-order tasks (mc2_visual, mc2_text). The MC2 authors' "
              "baselines for the same models used both orders and publish a large 'others' share (Qwen2.5-VL-7B "
              "35.4, LLaVA-1.5-7B 77.2): the two papers' numbers are not comparable cell for cell.")
    note("3", "Table 3 repeats Table 2's Qwen-VL-3B vision rows cell for cell (w/o steering = base, w/o scaling = "
              "L2S, full = AMPS); the paper does not name its target, so its cells are shown in the vision block by "
              "that equality, and the text block has no published cells.")
    return notes


def is_ours(item: dict) -> bool:
    """An entry or note this importer writes (everything from the AMPS paper)."""
    return item.get("publication") == PAPER or str(item.get("source", "")).startswith("AMPS paper")


def build_document(rows: list[dict], existing: dict | None = None) -> dict:
    """The whole ``paper_numbers.json``: the kept entries and notes of ``existing``, then the AMPS ones."""
    existing = existing or {}
    kept = [e for e in existing.get("entries", []) if not is_ours(e)]
    kept_notes = [n for n in existing.get("notes", []) if not is_ours(n)]
    cells = entries_from_rows(rows)  # first: it names a row the mapping lacks
    return {"about": ABOUT, "notes": kept_notes + notes_from_rows(rows),
            "entries": kept + wildcard_entries(rows) + cells}


def dumps(document: dict) -> str:
    """One entry or note a line, so that a diff shows which cells changed."""
    def line(item):
        return "    " + json.dumps(item, ensure_ascii=False)

    return ("{\n" f'  "about": {json.dumps(document["about"], ensure_ascii=False)},\n'
            '  "notes": [\n' + ",\n".join(line(n) for n in document["notes"]) + "\n  ],\n"
            '  "entries": [\n' + ",\n".join(line(e) for e in document["entries"]) + "\n  ]\n}\n")


def read_rows(path: str | Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    wanted = {"table", "target", "row", "column", "value"}
    if not rows or not wanted <= set(rows[0]):
        raise ValueError(f"{path}: expected a CSV with the header {','.join(sorted(wanted))} and at least one row")
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m amps_eval.report.paper_import TABLES.csv OUT.json\n"
              "  regenerates OUT.json (e.g. amps_eval/report/paper_numbers.json) from the AMPS paper's cells, "
              "keeping its other entries", file=sys.stderr)
        return 2
    source, out = Path(argv[0]), Path(argv[1])
    existing = json.loads(out.read_text(encoding="utf-8")) if out.exists() else None
    document = build_document(read_rows(source), existing)
    out.write_text(dumps(document), encoding="utf-8")
    n = sum(1 for e in document["entries"] if is_ours(e) and e["value"] is not None)
    print(f"wrote {out}: {n} AMPS cells, {len(document['entries']) - n} other entries, {len(document['notes'])} notes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
