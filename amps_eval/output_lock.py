"""One writer per output: every command that writes an output holds a lock on it while it runs.

Two runs into the same output (two studies into one ``--out``, two fits to one steering file, a job
array that reuses a path) would otherwise delete each other's staging folders or silently replace
each other's results. `output_lock(path, command)` takes a lock beside the output before any work:

* the lock is ``.<name>.lock`` in the output's folder, an OS file lock (``filelock.FileLock``: the
  kernel releases it when its process ends, however it ends); on a file system without OS locks it
  falls back to ``filelock.SoftFileLock`` (the file's existence is the lock);
* beside it, ``.<name>.lock.owner`` (JSON) names the holder: pid, host, command line, start time.
  Both files are removed when the lock is released (the lock file while still held: a waiter
  then finds its file unlinked and starts over on a new one, which filelock checks);
* a second writer stops at once with one line naming the holder and the path (`OutputLocked`), or,
  with ``wait=True`` (``--wait-for-lock``), says whom it waits for and waits;
* a stale lock is recognised: an owner file whose process is gone (same host, pid not running) is a
  killed run's; the lock is taken over with a note naming the killed run (a soft lock file is
  removed first). A holder on another host cannot be checked from here: it is reported, not broken.

`command_locks(args, name)` is what the CLI wraps every command in: it finds the outputs of a parsed
command line (`command_outputs`) and locks each, in a fixed order (two commands with two common
outputs cannot each hold one and wait for the other).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from amps_eval.files import OutputError, _reason, output_error

__all__ = ["OutputLocked", "Owner", "add_lock_option", "command_locks", "command_outputs", "lock_path",
           "output_lock", "owner_path"]

WAIT_OPTION = "--wait-for-lock"


class OutputLocked(OutputError):
    """Another process holds the lock on an output."""


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def owner_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock.owner"


@dataclass(frozen=True)
class Owner:
    pid: int
    host: str
    command: str
    since: float

    @classmethod
    def me(cls, command: str) -> "Owner":
        return cls(os.getpid(), socket.gethostname(), command, time.time())

    @classmethod
    def read(cls, path: Path) -> "Owner | None":
        """The owner recorded in ``path``; None if there is none or it is unreadable (half-written)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(int(data["pid"]), str(data["host"]), str(data["command"]), float(data["since"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, path: Path) -> None:
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(self)), encoding="utf-8")
        os.replace(tmp, path)

    def describe(self) -> str:
        since = time.strftime("%H:%M:%S UTC", time.gmtime(self.since))
        return f"pid {self.pid} on {self.host} (`{self.command}`, since {since})"

    def is_dead(self) -> bool:
        """True only when the process is known to be gone: same host, and no process has its pid."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # it exists, under another user
            return False
        return False


def _holder_text(owner: Owner | None) -> str:
    return owner.describe() if owner is not None else "another process (it has not recorded who it is yet)"


def _new_lock(path: Path, soft: bool):
    import filelock

    return (filelock.SoftFileLock if soft else filelock.FileLock)(str(path))


def _is_soft(lock) -> bool:
    import filelock

    return isinstance(lock, filelock.SoftFileLock)


def _try_acquire(lock, wait: bool) -> bool:
    import filelock

    try:
        lock.acquire(timeout=-1 if wait else 0)
    except filelock.Timeout:
        return False
    return True


@contextlib.contextmanager
def output_lock(out: str | os.PathLike, command: str, *, wait: bool = False, what: str = "the output") -> Iterator[Path]:
    """Hold the lock on the output ``out`` (a file or a folder) for the block; see the module
    docstring. ``command`` names this run in the owner file (the command line). Raises
    `OutputLocked` when another live process holds it and ``wait`` is False, and an `OutputError`
    ("cannot write ...") when the lock cannot be created (a read-only or missing location): before
    any work, as the commands check their outputs."""
    out = Path(out).absolute()
    created = [folder for folder in (out.parent, *out.parent.parents) if not folder.exists()]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot write {what} {out}: {_reason(error)}") from error
    try:
        with _held(out, command, wait):
            yield out
    finally:
        for folder in created:  # the folders made for the lock alone (the command wrote nothing there)
            try:
                folder.rmdir()
            except OSError:
                break


@contextlib.contextmanager
def _held(out: Path, command: str, wait: bool) -> Iterator[None]:
    me = Owner.me(command)
    lock = _new_lock(lock_path(out), soft=False)
    try:
        got = _try_acquire(lock, wait=False)
    except NotImplementedError:  # no OS locks on this file system
        lock = _new_lock(lock_path(out), soft=True)
        got = _try_acquire(lock, wait=False)
    except OSError as error:
        raise OutputError(f"cannot write {what} {out}: {_reason(error)}") from error
    if not got:
        owner = Owner.read(owner_path(out))
        if _is_soft(lock) and owner is not None and owner.is_dead():  # a killed run's soft lock: break it
            print(f"note: a killed run, {owner.describe()}, left its lock on {out}: taking it over", file=sys.stderr)
            lock_path(out).unlink(missing_ok=True)
            got = _try_acquire(lock, wait=False)
        if not got and not wait:
            raise OutputLocked(f"{out} is being written by {_holder_text(owner)}: wait for it to finish, or pass "
                               f"{WAIT_OPTION} to wait; lock file {lock_path(out)}")
        if not got:
            print(f"waiting for {_holder_text(owner)} to finish writing {out}", file=sys.stderr, flush=True)
            _try_acquire(lock, wait=True)
    try:
        left = Owner.read(owner_path(out))
        if left is not None and left.pid != me.pid:
            print(f"note: a run that was killed, {left.describe()}, had been writing {out}; its lock is taken over",
                  file=sys.stderr)
        try:
            me.write(owner_path(out))
        except OSError as error:
            raise output_error(owner_path(out), "the lock's owner file of", error) from error
        try:
            yield
        finally:
            owner_path(out).unlink(missing_ok=True)
            # removed while still held: a waiter that opened it finds it unlinked once it gets the
            # lock and starts over on the new file (filelock checks st_nlink), so no dot file stays
            if not _is_soft(lock):
                lock_path(out).unlink(missing_ok=True)
    finally:
        lock.release()


# Where each command writes: the parsed options that name an output, and the defaults of commands
# whose output option may be left out.
OUTPUT_OPTIONS = {"out": "--out", "figures": "--figures", "susceptibility": "--susceptibility",
                  "output_path": "--output-path"}


def command_outputs(args) -> list[Path]:
    """The outputs a parsed ``amps-eval`` command line writes (absolute, sorted, no duplicates)."""
    found = [getattr(args, name, None) for name in OUTPUT_OPTIONS]
    command = getattr(args, "command", None)
    if command == "prepare-mc2" and getattr(args, "out", None) is None:
        from amps_eval.mc2.source import default_data_dir

        found.append(default_data_dir())
    if command == "leaderboard" and getattr(args, "out", None) is None:
        found.append(getattr(args, "results_dir", None))
    return sorted({Path(p).expanduser().absolute() for p in found if p})


def add_lock_option(subparsers) -> None:
    """Add ``--wait-for-lock`` to every subcommand that has an output option."""
    for parser in dict.fromkeys(subparsers.choices.values()):
        dests = {action.dest for action in parser._actions}
        if dests & set(OUTPUT_OPTIONS) and "wait_for_lock" not in dests:
            parser.add_argument(WAIT_OPTION, action="store_true",
                                help="if another run is writing the same output, wait for it to finish (default: "
                                "stop at once, naming it)")


@contextlib.contextmanager
def command_locks(args, command: str) -> Iterator[list[Path]]:
    """Hold the locks on every output of the parsed command line ``args`` for the block;
    ``command``: the command line, recorded for a second writer to read."""
    wait = bool(getattr(args, "wait_for_lock", False))
    outputs = command_outputs(args)
    with contextlib.ExitStack() as stack:
        for out in outputs:
            try:
                stack.enter_context(output_lock(out, command, wait=wait, what="the output"))
            except OutputLocked:
                raise
            except OutputError:  # an unusable location: the command's own check names it, before any work
                continue
        yield outputs

