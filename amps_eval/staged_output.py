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
from collections.abc import Callable, Iterator
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
def staged_output(out: Path, owned: frozenset[str], resume: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a fresh staging folder for ``out``; publish it when the block succeeds.

    ``owned``: the top-level names this kind of output writes; entries of the old ``out`` with other
    names are kept. A stale staging folder from a killed run is removed first, unless ``resume``
    (given the staging folder) says the caller can resume it (`amps_eval.resume`): then it is
    yielded as it is, and a block that fails or is interrupted leaves it for the next run.
    """
    shown = Path(out)
    out = shown.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    recover(out)
    staging = staging_path(out)
    if staging.exists() and not (resume is not None and resume(staging)):
        shutil.rmtree(staging)
    staging.mkdir(exist_ok=True)
    try:
        yield staging
    except BaseException:
        if resume is None:
            shutil.rmtree(staging, ignore_errors=True)
            print(f"the run did not finish: {out} is unchanged (its partial output in {staging} was removed)",
                  flush=True)
        else:
            print(f"the run did not finish: {out} is unchanged; its finished parts are kept in {staging}: the same "
                  "command resumes from them (other settings start afresh)", flush=True)
        raise
    publish(staging, out, owned, shown)

COMMIT_NAME = ".commit"
"""In a `staged_files` staging folder: written once every file is complete, before the first one
moves; a staging folder that has it is rolled forward by the next run, one without it removed."""


def _move_files(staging: Path, folder: Path) -> list[Path]:
    """Move every file under ``staging`` (except the commit record) to the same place under
    ``folder``, replacing what is there; return the final paths."""
    moved = []
    for path in sorted(staging.rglob("*")):
        if path.is_file() and path.name != COMMIT_NAME:
            final = folder / path.relative_to(staging)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, final)
            moved.append(final)
    return moved


def recover_files(folder: Path) -> None:
    """Finish or undo the `staged_files` block a killed run left for ``folder``: with its commit
    record, the remaining files move in (the set is completed); without it, the staging folder goes."""
    staging = staging_path(Path(folder).absolute())
    if not staging.exists():
        return
    if (staging / COMMIT_NAME).is_file():
        _move_files(staging, Path(folder).absolute())
    shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def staged_files(folder: Path) -> Iterator[Path]:
    """Yield a fresh staging folder beside ``folder`` (``.<name>.staging``); when the block succeeds,
    every file written there replaces the file of the same name in ``folder``, as one set.

    Unlike `staged_output`, the folder itself is not replaced: its other files stay (a figures
    folder may hold a user's own). A file never appears at its final name half-written (each is a
    rename of a complete file), and the set never stays half-replaced: the moves start only once a
    commit record is in the staging folder, and a run killed during them is completed by the next
    run (`recover_files`); Ctrl-C during them is held until they are done. A block that fails or is
    interrupted replaces nothing. Text files have the staging folder's path replaced by ``folder``
    (as spelled) before they move, as in `publish`.
    """
    shown = Path(folder)
    folder = shown.absolute()
    folder.parent.mkdir(parents=True, exist_ok=True)
    recover_files(folder)
    staging = staging_path(folder)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        print(f"did not finish: nothing in {shown} was replaced", flush=True)
        raise
    rebase_text_paths(staging, staging, shown)
    (staging / COMMIT_NAME).write_text("", encoding="utf-8")
    interrupted = None
    while True:  # a Ctrl-C here must not leave the set half-moved: finish, then raise it
        try:
            _move_files(staging, folder)
            shutil.rmtree(staging, ignore_errors=True)
            break
        except KeyboardInterrupt as error:
            interrupted = error
    if interrupted is not None:
        raise interrupted
