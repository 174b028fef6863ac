"""The table the bad-input test modules (`tests/test_bad_inputs_*.py`) are written in.

Each module lists `BadInput` rows: how to make the bad input in a fresh folder, what to run on it,
the words the error must contain (the input it names and the fix it points to) and which files must
or must not exist afterwards (nothing lost, nothing half-written that looks valid). `check` runs
one row; a module parametrises one test over its table, so every row is its own test id.

A row whose command works instead of failing (a bad input that is harmless) sets ``raises=None``
and says in ``why`` what makes it harmless.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest


@dataclass(frozen=True)
class BadInput:
    name: str
    make: Callable[[Path], Any]  # builds the bad input under the given folder; returns what `run` needs
    run: Callable[[Any], Any]  # the command, as a user would call it (a CLI main() or a library function)
    raises: type[BaseException] | tuple[type[BaseException], ...] | None = Exception
    says: tuple[str, ...] = ()  # substrings the error message must contain (case-sensitive)
    exists: tuple[str, ...] = ()  # paths, relative to the folder, that must exist afterwards
    absent: tuple[str, ...] = ()  # paths, relative to the folder, that must not exist afterwards
    why: str = ""
    marks: tuple = field(default_factory=tuple)


def params(table: list[BadInput]) -> list:
    """`pytest.param`s of a table, one per row, with the row's name as test id."""
    names = [row.name for row in table]
    assert len(set(names)) == len(names), "row names must be unique"
    return [pytest.param(row, id=row.name, marks=row.marks) for row in table]


def check(row: BadInput, folder: Path) -> None:
    """Make the input, run the command, check the error text and the files."""
    made = row.make(folder)
    if row.raises is None:
        row.run(made)
    else:
        with pytest.raises(row.raises) as info:
            row.run(made)
        message = str(info.value)
        missing = [text for text in row.says if text not in message]
        assert not missing, f"{row.name}: the error does not say {missing}:\n{message}"
    for rel in row.exists:
        assert (folder / rel).exists(), f"{row.name}: {rel} should exist afterwards"
    for rel in row.absent:
        assert not (folder / rel).exists(), f"{row.name}: {rel} should not exist afterwards"


def cli_exit(argv: list[str]) -> None:
    """Run `amps-eval` with ``argv`` and raise `CLIFailed` (carrying stderr) when it exits non-zero,
    so CLI rows read like library rows."""
    import contextlib
    import io

    from amps_eval.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    if code != 0:
        raise CLIFailed(f"exit {code}: {err.getvalue()}")


class CLIFailed(RuntimeError):
    """`amps-eval` exited non-zero; the message is its exit code and stderr."""
