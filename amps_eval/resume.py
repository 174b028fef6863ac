"""Finished units of a long run, kept where the next run with the same settings finds them.

A study is a list of units (the data, each MCS file, each fit, each lmms-eval run or sweep). Each
unit runs through `Units.run`, which records it as finished in ``<folder>/.units/<name>.json``
once (and only once) its outputs are complete. The record holds:

* its key: a sha256 over the unit's name, the run's whole settings (``context``: every setting,
  including those added later, so a unit is never reused across settings it might depend on), the
  unit's own arguments, and a fingerprint of each input (a file's sha256, or a folder's list of
  files with their sizes and modification times: a changed data folder or checkpoint is a
  different input);
* the sha256 of every output file it wrote.

The next run reuses a unit only when its record has the same key and every output is still there
with the same sha256; otherwise the unit's outputs are removed and it runs again (a unit killed half
way has no record, so it is the one that reruns). The records are bookkeeping of the staging
folder, removed before the folder is published (`discard`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from amps_eval.files import sha256_file

T = TypeVar("T")

RECORDS = ".units"


HASHED = 64 << 20
"""Files up to this size are identified by their sha256; larger ones (checkpoint shards) by their
size and modification time, so a resume does not read gigabytes."""


def _file_print(path: Path) -> Any:
    stat = path.stat()
    return sha256_file(path) if stat.st_size <= HASHED else [stat.st_size, stat.st_mtime_ns]


def fingerprint(path: str | os.PathLike | None) -> Any:
    """What identifies an input: a file's sha256 (see `HASHED`), a folder's files with theirs, or
    the text of a name that is not a local path (a hub id)."""
    if path is None:
        return None
    p = Path(path)
    if p.is_file():
        return _file_print(p)
    if p.is_dir():
        return sorted([str(f.relative_to(p)), _file_print(f)] for f in p.rglob("*") if f.is_file())
    return str(path)


def _files(paths: Iterable[Path]) -> list[Path]:
    found = []
    for path in paths:
        if path.is_dir():
            found += sorted(f for f in path.rglob("*") if f.is_file())
        elif path.is_file():
            found.append(path)
    return found


def _remove(paths: Iterable[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


class Units:
    """The unit records of one run folder (see the module docstring)."""

    def __init__(self, folder: Path, context: dict, say: Callable[[str], None] = print) -> None:
        self.folder = Path(folder)
        self.context = context
        self.say = say
        self.records = self.folder / RECORDS
        self.reused: list[str] = []
        self.computed: list[str] = []

    def found(self) -> int:
        """How many finished units earlier runs recorded here."""
        return len(list(self.records.glob("*.json"))) if self.records.is_dir() else 0

    def key(self, name: str, arguments: dict, inputs: dict) -> str:
        text = json.dumps({"unit": name, "context": self.context, "arguments": arguments,
                           "inputs": {k: fingerprint(v) for k, v in inputs.items()}}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def _record_path(self, name: str) -> Path:
        return self.records / (hashlib.sha256(name.encode("utf-8")).hexdigest()[:16] + ".json")

    def finished(self, name: str, key: str, outputs: list[Path]) -> bool:
        """Whether the unit ``name`` with ``key`` is recorded as finished and its outputs are intact."""
        try:
            record = json.loads(self._record_path(name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        if record.get("key") != key or record.get("name") != name:
            return False
        files = _files(outputs)
        recorded = record.get("outputs", {})
        if sorted(str(f.relative_to(self.folder)) for f in files) != sorted(recorded):
            return False
        return all(sha256_file(f) == recorded[str(f.relative_to(self.folder))] for f in files)

    def run(self, name: str, outputs: list[Path], compute: Callable[[], T], *, arguments: dict | None = None,
            inputs: dict | None = None) -> T | None:
        """Run ``compute`` (which writes ``outputs``, files or folders under the run folder) unless
        the unit is finished with the same key; returns its result, or None when it was reused."""
        arguments, inputs = arguments or {}, inputs or {}
        key = self.key(name, arguments, inputs)
        outputs = [Path(p) for p in outputs]
        if self.finished(name, key, outputs):
            self.reused.append(name)
            self.say(f"  reusing {name}: finished by an earlier run with the same settings and inputs")
            return None
        self._record_path(name).unlink(missing_ok=True)
        _remove(outputs)  # a half-written unit, or one of other settings
        result = compute()
        self.records.mkdir(exist_ok=True)
        record = {"name": name, "key": key,
                  "outputs": {str(f.relative_to(self.folder)): sha256_file(f) for f in _files(outputs)}}
        tmp = self._record_path(name).with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
        os.replace(tmp, self._record_path(name))  # the commit: written only once the unit is complete
        self.computed.append(name)
        return result

    def summary(self) -> str:
        total = len(self.reused) + len(self.computed)
        return f"{len(self.reused)} of {total} units reused from an earlier run, {len(self.computed)} computed"

    def discard(self) -> None:
        """Remove the records (before the folder is published)."""
        shutil.rmtree(self.records, ignore_errors=True)
