"""The README's demo results are the committed demo's: every cell of its results table is read back
from `results/demo/tables.md` (a prompt baseline: Table 1's Total; a steered method: the
matched-strength table's "best ≤5%" and its mark), and every number its known-answer lines quote
is in `results/demo/known_answer.md`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from report_helpers import table_rows

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "results" / "demo"
MODELS = {"Qwen": "amps-organism-graded-qwen2.5-vl", "LLaVA": "amps-organism-graded-llava-1.5"}
BLOCKS = {"vision": "target: vision", "text": "target: text"}
PROMPTS = {"MLLM-only": "MLLM-only", "Inst Design": "Inst Design", "CoT": "CoT", "Few shot": "Few shot"}

pytestmark = pytest.mark.skipif(not (DEMO / "tables.md").is_file(), reason="no committed demo")


def _section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 3)
    return text[start:end if end != -1 else None]


def _readme_table(section: str) -> tuple[list[str], dict[str, list[str]]]:
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return header[1:], rows


def _matched(tables: str, model: str, target: str) -> dict[str, tuple[str, str]]:
    """method label -> (best ≤5% cell, vs-best mark) of the matched-strength table."""
    start = tables.index(f"#### {model}, target {target}")
    lines = tables[start:].splitlines()[1:]
    header = next(line for line in lines if line.startswith("| method"))
    names = [c.strip() for c in header.strip("|").split("|")]
    out = {}
    for line in lines[lines.index(header) + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0]] = (cells[names.index("best ≤5%")], cells[names.index("vs best")])
    return out


def test_the_readme_results_table_is_the_committed_demos():
    tables = (DEMO / "tables.md").read_text()
    columns, rows = _readme_table(_section("Results of the demo"))
    assert len(columns) == 4 and rows, "the README's results table"
    steered_seen = 0
    for column, header in enumerate(columns):
        model_word, target = (w.strip() for w in header.split(","))
        model = MODELS[model_word]
        table1 = table_rows(tables, BLOCKS[target], table=f"Table 1: methods on {model}")
        matched = _matched(tables, model, target)
        for label, cells in rows.items():
            value = cells[column]
            if label in PROMPTS:
                total = table1[PROMPTS[label]][-1]  # "46.9 ± 4.4 / 0.8"
                share, collapse = re.match(r"([\d.]+) ± [\d.]+ / ([\d.]+)", total).groups()
                assert value == f"{share} ({collapse})", (label, header, value, total)
            else:
                best, mark = matched[label]
                shown = best.split(" (seeds")[0]
                assert value == shown + (f" {mark}" if mark else ""), (label, header, value, best, mark)
                steered_seen += 1
    assert steered_seen >= 4 * 5


def test_the_known_answer_numbers_the_readme_quotes_are_in_the_committed_report():
    section = _section("Known-answer tests")
    report = (DEMO / "known_answer.md").read_text()
    quoted = re.findall(r"(?<![\w.])[+-]?\d+\.\d+(?![\w.])", section)
    assert quoted, "the README quotes the known-answer results"
    missing = [q for q in quoted if q not in report]
    assert not missing, f"numbers in the README's known-answer section not in results/demo/known_answer.md: {missing}"
