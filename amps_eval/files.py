"""Files: content hashes, and writing outputs so that nothing is lost or half-written.

* `ensure_writable` / `ensure_folder`: every command checks the paths it will write *before* it
  computes anything (a fit that trains for an hour and then cannot save loses the hour), and says
  which path and why;
* `replace_together`: write several files that belong together (the rows, the metadata and the
  summary of `amps-eval mcs`) to temp files in their folder, then rename them into place;
* `output_error`: a write that failed with an OSError (disk full, read-only file system) becomes an
  `OutputError` naming the file and the fix; the temp files are removed first.

An `OutputError` is both a RuntimeError and an OSError, so the CLI reports it as one line and code
that catches OSError still does.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import tempfile
from pathlib import Path

__all__ = ["OutputError", "ensure_folder", "ensure_writable", "output_error", "replace_together", "sha256_file",
           "tmp_path"]


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class OutputError(RuntimeError, OSError):
    """An output cannot be written (before the run: the path is unusable; during it: the write failed)."""


_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or write somewhere else",
    errno.EDQUOT: "the disk quota is exhausted: free some space or write somewhere else",
    errno.EROFS: "the file system is read-only: write somewhere else",
    errno.EACCES: "permission denied: write somewhere else or fix the folder's permissions",
    errno.EPERM: "not permitted: write somewhere else or fix the folder's permissions",
}


def _errno(error: BaseException) -> int | None:
    """The errno of an OSError, or the one a library's message quotes (safetensors: "(os error 28)")."""
    if isinstance(error, OSError):
        return error.errno
    found = re.search(r"os error (\d+)", str(error))
    return int(found.group(1)) if found else None


def _reason(error: BaseException) -> str:
    code = _errno(error)
    text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return text + (f" ({_HINTS[code]})" if code in _HINTS else "")


def output_error(path: str | os.PathLike, what: str, error: BaseException, note: str = "") -> OutputError:
    """The error to raise when writing ``what`` to ``path`` failed with ``error`` (an OSError, or a
    library's wrapper of one, such as safetensors' SafetensorError)."""
    out = OutputError(f"could not write {what} {path}: {_reason(error)}" + (f"; {note}" if note else ""))
    out.errno = _errno(error)
    return out


def _nearest_existing(folder: Path) -> Path:
    """``folder`` or its closest ancestor that exists (as anything: a file is reported by the caller)."""
    current = folder
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def _check_folder(folder: Path, what: str, path: Path) -> None:
    """``folder`` exists as a writable folder or can be created; raise an OutputError naming ``path``."""
    existing = _nearest_existing(folder.absolute())
    if not existing.is_dir():
        raise OutputError(f"cannot write {what} {path}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".amps-eval-probe-")
    except OSError as error:
        raise OutputError(f"cannot write {what} {path}: the folder {existing} does not take new files: "
                          f"{_reason(error)}") from error
    os.close(fd)
    os.unlink(probe)


def ensure_writable(path: str | os.PathLike, what: str) -> Path:
    """Check, before any compute, that the file ``path`` can be written: its folder exists (or can be
    created: its nearest existing ancestor is a folder) and takes new files (a temp file is created
    and removed there), and ``path`` is not an existing folder. Creates nothing. Returns the path.

    ``what`` names the output in the error: "the steering file (--out)"."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {what} {path}: it is an existing folder; pass a file path")
    _check_folder(path.parent, what, path)
    return path


def ensure_folder(path: str | os.PathLike, what: str) -> Path:
    """Check, before any compute, that the folder ``path`` exists and takes new files, or can be
    created. Creates nothing. Returns the path."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"cannot use {what} {path}: it is a file, not a folder")
    _check_folder(path, what, path)
    return path


def tmp_path(path: Path) -> Path:
    """The temp file a write of ``path`` goes through: same folder (a rename never crosses file
    systems), a fixed name (a rerun overwrites what a killed run left)."""
    return path.with_name(path.name + ".tmp")


def _write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and flush it to the disk (the one low-level write of this module)."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_folder(folder: Path) -> None:
    """Make the renames in ``folder`` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_together(files: list[tuple[Path, str | bytes, str]]) -> None:
    """Put ``files`` ((path, content, what) each) in place, all or none of them.

    Every file is first written in full to its temp file (``<name>.tmp`` in the same folder); a
    failure there (disk full, read-only file system) removes the temp files and raises an
    `OutputError`, leaving every old file untouched. Then the temp files are renamed over the old
    files in the given order. The LAST file is the commit record (the metadata that names what the
    others are): its old version is removed before the first rename and the new one renamed in last,
    so the others are never next to a record that does not describe them; for the few microseconds of
    the renames the record is absent, which a reader sees as "unlabelled", never as mislabelled.
    """
    staged: list[tuple[Path, Path, str]] = []
    try:
        for path, content, what in files:
            tmp = tmp_path(Path(path))
            staged.append((tmp, Path(path), what))
            data = content.encode("utf-8") if isinstance(content, str) else content
            try:
                _write_file(tmp, data)
            except OSError as error:
                raise output_error(path, what, error, "the previous files are unchanged") from error
        record = staged[-1][1]
        try:
            record.unlink(missing_ok=True)
        except OSError as error:
            raise output_error(record, staged[-1][2], error, "the previous files are unchanged") from error
        for tmp, path, what in staged:
            try:
                os.replace(tmp, path)
            except OSError as error:
                raise output_error(path, what, error) from error
    except BaseException:
        for tmp, _, _ in staged:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
        raise
    for folder in {path.parent for _, path, _ in staged}:
        _fsync_folder(folder)
