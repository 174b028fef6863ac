"""Write an output folder in full beside the old one, then swap: a failed run never destroys results.

`staged_output(out, owned)` yields a staging folder next to ``out`` (``.<name>.staging``). The caller
writes everything there. Only when the block finishes without an exception does the staging folder
replace ``out``: one rename moves the old folder aside (``.<name>.previous``), one moves the new one
in, the entries of the old folder that the caller does not own (a user's notes, anything not named
in ``owned``) are moved across, and the old folder is deleted. Crashed or killed at any point before
that, ``out`` is exactly as it was: a failed block removes its staging folder (a full disk must not
stay full), and the staging folder of a killed run is removed by the next run. A crash between the
two renames is repaired at the next start (``.<name>.previous`` goes back).

Paths written into text outputs while staging (results files, reports) name the staging folder;
`publish` rewrites them to ``out`` as the caller spelled it (a relative ``results/demo`` stays
relative) in the text files it moves (JSON, JSONL, Markdown, HTML, LaTeX, CSV), so links and
recorded paths point where the files are. Binary files are left as written: a steering file's
metadata names the data folder it was fitted on inside the staging folder, and rewriting it would
change the sha256 that the runs pinned.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

TEXT_SUFFIXES = frozenset({".json", ".jsonl", ".md", ".html", ".tex", ".csv", ".txt"})


def staging_path(out: Path) -> Path:
    return out.parent / f".{out.name}.staging"


def previous_path(out: Path) -> Path:
    return out.parent / f".{out.name}.previous"


def recover(out: Path) -> None:
    """Undo an interrupted swap: a ``.previous`` folder with no ``out`` goes back in place; one
    beside a published ``out`` hands over the entries the new folder lacks, then goes."""
    previous = previous_path(out)
    if not previous.exists():
        return
    if not out.exists():
        os.replace(previous, out)
        return
    _carry_over(previous, out, owned=frozenset())
    shutil.rmtree(previous)


def _carry_over(old: Path, new: Path, owned: frozenset[str]) -> None:
    """Move the entries of ``old`` that are not ``owned`` and not in ``new`` into ``new``."""
    for entry in old.iterdir():
        if entry.name not in owned and not (new / entry.name).exists():
            os.replace(entry, new / entry.name)


def rebase_text_paths(folder: Path, old: Path, new: Path) -> int:
    """Replace the absolute path ``old`` by ``new`` (as spelled) in the text files under ``folder``;
    returns how many files changed."""
    old_text, new_text = str(old.absolute()), str(new)
    changed = 0
    for path in folder.rglob("*"):
        if path.suffix in TEXT_SUFFIXES and path.is_file():
            text = path.read_text(encoding="utf-8", errors="surrogateescape")
            if old_text in text:
                path.write_text(text.replace(old_text, new_text), encoding="utf-8", errors="surrogateescape")
                changed += 1
    return changed


def publish(staging: Path, out: Path, owned: frozenset[str], shown: Path | None = None) -> None:
    """Replace ``out`` by ``staging`` (see the module docstring); recorded paths become ``shown``
    (default: ``out``)."""
    rebase_text_paths(staging, staging, out if shown is None else shown)
    previous = previous_path(out)
    if out.exists():
        os.replace(out, previous)
    os.replace(staging, out)
    if previous.exists():
        _carry_over(previous, out, owned)
        shutil.rmtree(previous)


@contextlib.contextmanager
def staged_output(out: Path, owned: frozenset[str]) -> Iterator[Path]:
    """Yield a fresh staging folder for ``out``; publish it when the block succeeds.

    ``owned``: the top-level names this kind of output writes; entries of the old ``out`` with other
    names are kept. A stale staging folder from a killed run is removed first.
    """
    shown = Path(out)
    out = shown.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    recover(out)
    staging = staging_path(out)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        print(f"the run did not finish: {out} is unchanged (its partial output in {staging} was removed)", flush=True)
        raise
    publish(staging, out, owned, shown)
