"""Published numbers to compare against (``paper_numbers.json``), each with its source.

The file holds only numbers that are written down in a source this repository has (the MC2 paper's
baseline table, arXiv 2505.20977; see docs/mc2.md, "Published baselines"); the AMPS paper's own
cells are marked not available by wildcard entries rather than guessed. A lookup returns the most
specific entry: one with a value wins over a wildcard "not available" entry; None means no entry
covers the cell at all.

Models are matched on the last component of their name, case-insensitively, so a local copy at
``/models/Qwen2.5-VL-7B-Instruct`` matches ``Qwen/Qwen2.5-VL-7B-Instruct``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

FIELDS = ("table", "model", "row", "target", "column", "metric")


def _name(model: str) -> str:
    parts = [p for p in str(model).replace("\\", "/").split("/") if p]
    for part in parts:
        if part.startswith("models--"):  # a Hugging Face cache folder
            return part.split("--")[-1].lower()
    return parts[-1].lower() if parts else ""


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

    def matches(self, table: str, pretrained: str, row: str, target: str, column: str, metric: str) -> bool:
        wanted = {"table": table, "row": row, "target": target, "column": column, "metric": metric}
        if any(getattr(self, k) not in ("*", v) for k, v in wanted.items()):
            return False
        return self.model == "*" or _name(self.model) == _name(pretrained)


@dataclass(frozen=True)
class PaperNumbers:
    entries: tuple[PaperEntry, ...]

    @classmethod
    def load(cls, path: str | Path | None = None) -> "PaperNumbers":
        """The packaged file, or ``path``; a malformed entry is an error naming it."""
        if path is None:
            text = resources.files("amps_eval.report").joinpath("paper_numbers.json").read_text()
            path = "amps_eval/report/paper_numbers.json"
        else:
            text = Path(path).read_text()
        entries = []
        for i, raw in enumerate(json.loads(text)["entries"]):
            missing = [k for k in (*FIELDS, "value", "source") if k not in raw]
            value = raw.get("value")
            if missing or not raw.get("source") or not (value is None or isinstance(value, (int, float))):
                raise ValueError(f"{path}: entry {i} needs {FIELDS + ('value', 'source')} with a non-empty source "
                                 f"and a numeric or null value (missing: {missing or 'none'}); fix the entry")
            entries.append(PaperEntry(*(str(raw[k]) for k in FIELDS), None if value is None else float(value),
                                      str(raw["source"])))
        return cls(tuple(entries))

    def lookup(self, table: str, pretrained: str, row: str, target: str, column: str,
               metric: str = "target_acc") -> PaperEntry | None:
        found = [e for e in self.entries if e.matches(table, pretrained, row, target, column, metric)]
        with_value = [e for e in found if e.value is not None]
        return (with_value or found or [None])[0]

    def models(self) -> list[str]:
        return sorted({e.model for e in self.entries if e.value is not None})
