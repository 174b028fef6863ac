"""What made a study's output: a fingerprint of the code, data recipe and settings, to check that a
committed output (``results/demo``) is what the current code produces.

Training on the organisms is deterministic but chaotic (a rounding change anywhere upstream moves
the trained MLPs, docs/comparison.md), so "the demo is what HEAD produces" can only be checked by
recording what produced it. `fingerprint` hashes, file by file (sha256 of the content):

* ``runs``: every file that decides the runs' answers: the package's sources and package data
  outside ``amps_eval/report/``, the lmms-eval task files (``tasks/``), the shipped organisms'
  weights and configs, the lock of the dependencies (``requirements-cpu.lock``);
* ``report``: ``amps_eval/report/`` (tables, figures, leaderboard: cheap to rerun).

The study writes ``provenance.json`` (these hashes and the study's settings) into its output; the
test ``tests/test_demo_provenance.py`` recomputes them and names the files that changed since, so
a change that makes the committed demo stale fails the tests until the demo is regenerated
(``make demo``). Reading hashes costs well under a second: the check does not slow CI.
"""

from __future__ import annotations

import json
from pathlib import Path

from amps_eval.files import sha256_file

NAME = "provenance.json"
PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parent
SKIP_PARTS = {"__pycache__", ".cache"}
SUFFIXES = {".py", ".j2", ".json", ".yaml", ".yml", ".safetensors", ".txt", ".model", ".jsonl", ".lock"}


def _files(folder: Path) -> list[Path]:
    if not folder.exists():
        return []
    if folder.is_file():
        return [folder]
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in SUFFIXES
                  and not SKIP_PARTS & set(p.relative_to(folder).parts))


def fingerprint(root: Path = ROOT) -> dict[str, dict[str, str]]:
    """part ("runs", "report") -> relative path -> sha256 (module docstring)."""
    package = root / "amps_eval"
    report = package / "report"
    runs = [p for p in _files(package) if report not in p.parents]
    runs += _files(root / "tasks") + _files(root / "requirements-cpu.lock")
    return {"runs": {p.relative_to(root).as_posix(): sha256_file(p) for p in runs},
            "report": {p.relative_to(root).as_posix(): sha256_file(p) for p in _files(report)}}


def write_provenance(out: Path, settings: dict, root: Path = ROOT) -> Path:
    """Write ``out/provenance.json``: the fingerprint of the code that made ``out`` and its settings."""
    path = Path(out) / NAME
    path.write_text(json.dumps({"settings": settings, "files": fingerprint(root)}, indent=1, sort_keys=True) + "\n")
    return path


def changed_files(recorded: dict[str, dict[str, str]], current: dict[str, dict[str, str]]) -> dict[str, list[str]]:
    """part -> the files added, removed or changed since ``recorded`` (sorted)."""
    out = {}
    for part in sorted(set(recorded) | set(current)):
        old, new = recorded.get(part, {}), current.get(part, {})
        changed = sorted(f for f in set(old) | set(new) if old.get(f) != new.get(f))
        if changed:
            out[part] = changed
    return out
