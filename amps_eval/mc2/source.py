"""Which MC2 data the tasks read.

Resolution, decided once per task by `resolve_source()`:

1. an explicit folder (the study and `amps-eval fit/mcs --data` pass one; so does a task config
   with `dataset_path`);
2. `AMPS_MC2_DATA`, when set and non-empty: a folder written by `amps-eval prepare-mc2` (real MC2,
   the authors' questions joined with their COCO 2014 images) or `amps-eval synth-mc2` (the
   generated MC2-format set). A path that is not such a folder is an error, never a fallback, so a
   typo cannot quietly change which benchmark was measured;
3. the default folder `default_data_dir()` (`$AMPS_EVAL_HOME/mc2`, else `~/.cache/amps-eval/mc2`),
   which `amps-eval prepare-mc2 --download` fills, if it holds a prepared folder;
4. otherwise `MC2SourceError` at once, naming the one command that makes the data.

`load_mc2` then refuses a folder it cannot trust (`MC2DataError`, naming the folder, the items and
the commands that rebuild it): a manifest of an unknown ``format_version``, no dataset or a damaged
one, missing or mistyped columns, no items, and items that cannot measure a preference
(`validate_items`: duplicate ``mc2_id``s, exact duplicate records, identical options, a missing
field, an unknown category). The tasks and `amps-eval fit` / `mcs` all read data through it.

There is no hub fallback: no copy of MC2 with its images is published on a model or dataset hub
(the repository the MC2 authors host there holds their modified transformers, not the benchmark).

This module imports `datasets` only inside the functions that load data.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from amps_eval.mc2.schema import FORMAT_VERSION, MANIFEST_NAME

ENV_VAR = "AMPS_MC2_DATA"
HOME_VAR = "AMPS_EVAL_HOME"

DOWNLOAD_COMMAND = "amps-eval prepare-mc2 --download"


def default_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where `prepare-mc2 --download` writes and the tasks look last: `$AMPS_EVAL_HOME/mc2`, else
    `~/.cache/amps-eval/mc2`."""
    env = os.environ if environ is None else environ
    home = env.get(HOME_VAR, "").strip()
    base = Path(home).expanduser() if home else Path("~/.cache/amps-eval").expanduser()
    return (base / "mc2").absolute()


def _fix(environ: Mapping[str, str] | None = None) -> str:
    return (
        f"Make the MC2 data once with\n"
        f"  {DOWNLOAD_COMMAND}\n"
        f"(the authors' 2,000 questions and the 1,940 COCO 2014 images they use, a few hundred MB, into "
        f"{default_data_dir(environ)}, where the tasks find it), or from a local COCO 2014 copy with\n"
        f"  amps-eval prepare-mc2 --questions evaluate_final.json --images COCO2014_ROOT --out DIR\n"
        f"or the generated MC2-format set (no download) with\n"
        f"  amps-eval synth-mc2 --out DIR\n"
        f"and then `export {ENV_VAR}=DIR` for a folder other than the default."
    )


class MC2SourceError(RuntimeError):
    """The MC2 data cannot be found or loaded; the message says how to provide it."""


class MC2DataError(MC2SourceError, ValueError):
    """A prepared MC2 folder is broken or holds items that cannot be measured.

    The message names the folder (and the items, by ``mc2_id``) and the commands that rebuild it.
    Also a `ValueError`, as the data errors of `amps-eval fit` were before.
    """


MAX_LISTED = 5
"""How many offending items a data error lists before summarising the rest."""


def rebuild_hint(folder: str | Path) -> str:
    """The commands that rewrite a prepared folder (each replaces an earlier prepared folder)."""
    return (
        f"Rebuild the folder with this amps-eval:\n"
        f"  amps-eval prepare-mc2 --download --out {folder}\n"
        f"(the real MC2), or from a local COCO 2014 copy\n"
        f"  amps-eval prepare-mc2 --questions evaluate_final.json --images COCO2014_ROOT --out {folder}\n"
        f"or the generated MC2-format set\n"
        f"  amps-eval synth-mc2 --out {folder}"
    )


def listed(values: list) -> str:
    shown = ", ".join(map(str, values[:MAX_LISTED]))
    rest = len(values) - MAX_LISTED
    return shown + (f" and {rest} more" if rest > 0 else "")


@dataclass(frozen=True)
class DataSource:
    """A prepared MC2 folder (written by prepare-mc2 or synth-mc2) and how it was found."""

    path: str
    description: str


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a prepared MC2 folder; `MC2SourceError` if there is none or it is broken."""
    manifest_path = Path(folder) / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise MC2SourceError(
            f"{folder} is not an MC2 data folder written by amps-eval (no {MANIFEST_NAME}).\n{_fix()}"
        ) from exc
    except json.JSONDecodeError as exc:
        raise MC2DataError(
            f"The manifest {manifest_path} is not valid JSON ({exc}): the folder is damaged or was not "
            f"written by amps-eval.\n{rebuild_hint(folder)}"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise MC2DataError(f"The manifest {manifest_path} cannot be read ({exc}).\n{rebuild_hint(folder)}") from exc
    if not isinstance(manifest, dict):
        raise MC2DataError(
            f"The manifest {manifest_path} is not a JSON object (it holds a {type(manifest).__name__}).\n"
            f"{rebuild_hint(folder)}"
        )
    check_format_version(manifest, manifest_path)
    return manifest


def check_format_version(manifest: Mapping[str, Any], manifest_path: Path) -> None:
    """Refuse a manifest whose ``format_version`` this amps-eval does not read (`FORMAT_VERSION`)."""
    version = manifest.get("format_version")
    folder = Path(manifest_path).parent
    if version == FORMAT_VERSION and not isinstance(version, bool):
        return
    from amps_eval import __version__

    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise MC2DataError(
            f"The MC2 data folder {folder} was made by a newer amps-eval (format_version {version} in "
            f"{manifest_path.name}; this amps-eval {__version__} reads format_version {FORMAT_VERSION}): "
            f"upgrade amps-eval, or rebuild with this version.\n{rebuild_hint(folder)}"
        )
    raise MC2DataError(
        f"The MC2 data folder {folder} has format_version {version!r} in {manifest_path.name}, which "
        f"this amps-eval {__version__} does not know (it reads format_version {FORMAT_VERSION}): rebuild "
        f"with this version.\n{rebuild_hint(folder)}"
    )


def describe_local(folder: Path, manifest: dict[str, Any]) -> str:
    """One line saying what a prepared folder holds (for logs and results)."""
    source = manifest.get("source", "unknown source")
    n_items = manifest.get("n_items", "?")
    extra = f", seed {manifest['seed']}" if source == "synthetic" and "seed" in manifest else ""
    if source == "questions" and manifest.get("questions_sha256"):
        extra = f", questions sha256 {str(manifest['questions_sha256'])[:12]}"
    return f"local MC2 folder {folder} ({source}, {n_items} items{extra})"


def local_source(folder: str | Path, how: str = "given") -> DataSource:
    """The prepared folder ``folder``, checked; `MC2SourceError` naming ``how`` it was chosen."""
    path = Path(folder).expanduser().absolute()
    if not path.is_dir():
        raise MC2SourceError(f"The MC2 data folder {path} ({how}) does not exist or is not a folder.\n{_fix()}")
    if not (path / MANIFEST_NAME).is_file():
        raise MC2SourceError(
            f"{path} ({how}) is not an MC2 data folder written by amps-eval (no {MANIFEST_NAME}).\n{_fix()}"
        )
    return DataSource(str(path), describe_local(path, read_manifest(path)))


def resolve_source(environ: Mapping[str, str] | None = None, folder: str | Path | None = None) -> DataSource:
    """The MC2 data for this run: ``folder`` if given, else `AMPS_MC2_DATA`, else the default folder.

    `environ` defaults to `os.environ` (a parameter so callers and tests can pass their own).
    """
    if folder is not None and str(folder).strip():
        return local_source(folder)
    env = os.environ if environ is None else environ
    value = env.get(ENV_VAR, "").strip()
    if value:
        return local_source(value, f"{ENV_VAR}={value}")
    default = default_data_dir(env)
    if (default / MANIFEST_NAME).is_file():
        return local_source(default, f"the default folder; {ENV_VAR} is not set")
    raise MC2SourceError(
        f"No MC2 data: {ENV_VAR} is not set and the default folder {default} holds none.\n{_fix(env)}"
    )


def lmms_dataset_args(source: DataSource) -> tuple[str, dict[str, Any]]:
    """(dataset_path, dataset_kwargs) for an lmms-eval task reading `source`."""
    return source.path, {"load_from_disk": True}


def load_mc2(source: DataSource | None = None):
    """The MC2 test split in the prepared schema, from `source` (default: `resolve_source()`).

    The folder is checked first (`check_dataset_files`) and the items after (`validate_items`), so a
    broken folder is reported as `MC2DataError` naming the folder and the fix, never as the
    `datasets` library's own error.
    """
    import datasets

    from amps_eval.mc2.folder_check import check_dataset_files, validate_items

    source = resolve_source() if source is None else source
    folder = Path(source.path)
    check_dataset_files(folder)
    try:
        loaded = datasets.load_from_disk(str(folder))
    except Exception as exc:  # noqa: BLE001  (any failure here means damaged files; the cause is chained)
        raise MC2DataError(
            f"The MC2 data folder {folder} has a dataset that cannot be read (damaged or incomplete "
            f"files under {folder}: {type(exc).__name__}).\n{rebuild_hint(folder)}"
        ) from exc
    if isinstance(loaded, datasets.DatasetDict):
        if "test" not in loaded:
            raise MC2DataError(
                f"The MC2 data folder {folder} has no 'test' split (splits: {', '.join(loaded) or 'none'})."
                f"\n{rebuild_hint(folder)}"
            )
        loaded = loaded["test"]
    validate_items(loaded, folder)
    return loaded
