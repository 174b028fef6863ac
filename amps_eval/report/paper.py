"""Published numbers to compare against (``paper_numbers.json``), each with its source, and the notes
that say where they cannot be compared cell for cell.

The file holds two publications' numbers, in percent:

* every printed cell of the AMPS paper's (arXiv 2602.12533) Tables 1-3: 351 entries generated from a
  transcription of the paper by ``paper_import.py`` (``python -m amps_eval.report.paper_import CSV
  OUT.json``; never edit them by hand), keyed by the report's own names: model hub id, method (row),
  target, column (Act. ... Sport, Total). The mapping from the printed names, including its two
  interpretations (Table 1's columns follow Table 2's order although its header says otherwise;
  Table 1's static steering row is mean steering), is the data table at the top of that module and
  is written into each entry's source;
* the MC2 authors' baselines (arXiv 2505.20977; see docs/mc2.md, "Published baselines"), kept by
  the importer: MLLM-only Totals for every table (``table`` "*"), with their "others" share.

A lookup returns the most specific entry: one with a value wins over a "not published" entry
(value null), and among those with a value the one with the fewest wildcards wins, so an AMPS
table's own cell beats an MC2 baseline that holds for every table. None means no entry covers the
cell at all. Each entry names its ``publication``; a target share and an "others" share are shown
together only when they come from the same publication.

``notes`` (one per caveat: the tables it concerns, the publication, the text) are printed under a
table that shows at least one cell of that publication (``PaperNumbers.notes_for``).

Models are matched on the last component of their name, case-insensitively, so a local copy at
``/models/Qwen2.5-VL-7B-Instruct`` matches ``Qwen/Qwen2.5-VL-7B-Instruct``. Columns are matched by
their header ("Act.") or the MC2 category ("activity_recognition").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from amps_eval.mc2.schema import CATEGORY_ABBREV

FIELDS = ("table", "model", "row", "target", "column", "metric")


def _name(model: str) -> str:
    parts = [p for p in str(model).replace("\\", "/").split("/") if p]
    for part in parts:
        if part.startswith("models--"):  # a Hugging Face cache folder
            return part.split("--")[-1].lower()
    return parts[-1].lower() if parts else ""


def _column(column: str) -> str:
    return CATEGORY_ABBREV.get(column, column)


def format_value(value: float) -> str:
    """A published number as printed: one decimal, two where the paper prints two (82.85)."""
    return f"{value:.1f}" if round(value, 1) == value else f"{value:.2f}"


@dataclass(frozen=True)
class PaperEntry:
    table: str
    model: str
    row: str
    target: str
    column: str
    metric: str
    value: float | None
    source: str
    publication: str = ""

    def matches(self, table: str, pretrained: str, row: str, target: str, column: str, metric: str) -> bool:
        wanted = {"table": table, "row": row, "target": target, "metric": metric}
        if any(getattr(self, k) not in ("*", v) for k, v in wanted.items()):
            return False
        if self.column != "*" and _column(self.column) != _column(column):
            return False
        return self.model == "*" or _name(self.model) == _name(pretrained)

    @property
    def specificity(self) -> int:
        return sum(getattr(self, k) != "*" for k in FIELDS)


@dataclass(frozen=True)
class PaperNote:
    """Why some published cells cannot be compared cell for cell: shown under tables ``tables``."""

    tables: tuple[str, ...]  # "*": every table
    publication: str
    text: str


@dataclass(frozen=True)
class PaperNumbers:
    entries: tuple[PaperEntry, ...]
    notes: tuple[PaperNote, ...] = ()

    @classmethod
    def load(cls, path: str | Path | None = None) -> "PaperNumbers":
        """The packaged file, or ``path``; a malformed entry or note is an error naming it."""
        if path is None:
            text = resources.files("amps_eval.report").joinpath("paper_numbers.json").read_text(encoding="utf-8")
            path = "amps_eval/report/paper_numbers.json"
        else:
            text = Path(path).read_text(encoding="utf-8")
        data = json.loads(text)
        entries = []
        for i, raw in enumerate(data["entries"]):
            missing = [k for k in (*FIELDS, "value", "source") if k not in raw]
            value = raw.get("value")
            if missing or not raw.get("source") or not (value is None or isinstance(value, (int, float))):
                raise ValueError(f"{path}: entry {i} needs {FIELDS + ('value', 'source')} with a non-empty source "
                                 f"and a numeric or null value (missing: {missing or 'none'}); fix the entry")
            entries.append(PaperEntry(*(str(raw[k]) for k in FIELDS), None if value is None else float(value),
                                      str(raw["source"]), str(raw.get("publication", ""))))
        notes = []
        for i, raw in enumerate(data.get("notes", [])):
            tables = raw.get("tables") if isinstance(raw, dict) else None
            if not isinstance(tables, list) or not tables or not str(raw.get("text", "")).strip():
                raise ValueError(f"{path}: note {i} needs 'tables' (a non-empty list of table numbers or '*') and a "
                                 "non-empty 'text'; fix the note")
            notes.append(PaperNote(tuple(str(t) for t in tables), str(raw.get("publication", "")), str(raw["text"])))
        return cls(tuple(entries), tuple(notes))

    def lookup(self, table: str, pretrained: str, row: str, target: str, column: str,
               metric: str = "target_acc") -> PaperEntry | None:
        found = [e for e in self.entries if e.matches(table, pretrained, row, target, column, metric)]
        pool = [e for e in found if e.value is not None] or found
        return max(pool, key=lambda e: e.specificity) if pool else None  # ties: the first on file

    def notes_for(self, table: str, publications: set[str] | list[str]) -> list[PaperNote]:
        """The notes about ``table`` for the publications whose cells it shows."""
        return [n for n in self.notes if n.publication in publications and ("*" in n.tables or table in n.tables)]

    def models(self, publication: str | None = None) -> list[str]:
        return sorted({e.model for e in self.entries if e.value is not None and e.model != "*"
                       and (publication is None or e.publication == publication)})

    def publications(self) -> list[str]:
        """The publications with numbers on file, in file order."""
        return list(dict.fromkeys(e.publication for e in self.entries if e.value is not None))
