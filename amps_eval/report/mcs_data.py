"""Per-item visual MCS ratios r_v for Figures 4 and 5, from either of the two files that hold them.

* ``amps-eval mcs --out FILE.jsonl`` (``amps_eval.mcs_run``): one line per item with ``mc2_id``,
  ``category``, ``prompt`` (none | visual | text), ``c_v``, ``c_t``, ``r_v``; the model is in the
  sidecar ``FILE.jsonl.meta.json`` (``pretrained``, else ``model``), else the file name stands in;
* the wrappers' steering diagnostics (``diagnostics=DIR``, ``amps_diagnostics_*.jsonl``): a first
  line ``{"settings": {...}}`` and one line per steered sample, which carries ``r_v`` for the
  MCS-scaled methods. Those scores are taken on the plain prompt, so their prompt is "none".

The same item can appear twice (a diagnostics file has a line per task, vision and text); points
are unique per (model, prompt, mc2_id), the last one read wins. lmms-eval samples files are skipped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from amps_eval.report.runs import Problem, model_display_name

PROMPTS = ("none", "visual", "text")


@dataclass(frozen=True)
class MCSPoint:
    model: str  # display name of the checkpoint
    prompt: str  # "none" | "visual" | "text"
    category: str
    mc2_id: str
    r_v: float


def candidate_files(paths: list[Path]) -> list[Path]:
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*.jsonl") if "_samples_" not in p.name)
        elif path.exists():
            files.append(path)
    return files


def _model_from_meta(path: Path) -> str:
    meta = Path(str(path) + ".meta.json")
    try:
        data = json.loads(meta.read_text())
        return model_display_name(data.get("pretrained") or data["model"])
    except (OSError, ValueError, KeyError, TypeError):
        return path.stem


def read_file(path: Path, problems: list[Problem]) -> list[MCSPoint]:
    """The points of one file; [] for a JSONL file that holds no MCS ratios."""
    try:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        problems.append(Problem(path, f"not readable as JSONL ({error}); rerun `amps-eval mcs` for it"))
        return []
    if not lines or not all(isinstance(x, dict) for x in lines):
        return []
    if "settings" in lines[0]:
        model = model_display_name(str(lines[0]["settings"].get("pretrained", path.stem)))
        rows, prompt_default = lines[1:], "none"
    else:
        model, rows, prompt_default = _model_from_meta(path), lines, "none"
    points = []
    for row in rows:
        r_v = row.get("r_v")
        if not isinstance(r_v, (int, float)) or math.isnan(r_v) or "category" not in row:
            continue
        prompt = str(row.get("prompt", prompt_default))
        points.append(MCSPoint(model, prompt, str(row["category"]), str(row.get("mc2_id")), float(r_v)))
    return points


def load_mcs(paths: list[Path], problems: list[Problem]) -> list[MCSPoint]:
    """Every point under ``paths`` (files or folders, searched recursively), unique per item."""
    unique: dict[tuple[str, str, str], MCSPoint] = {}
    for path in candidate_files(paths):
        for point in read_file(path, problems):
            unique[(point.model, point.prompt, point.mc2_id)] = point
    return list(unique.values())
