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

from amps_eval.mc2.schema import MANIFEST_NAME

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
    except (OSError, json.JSONDecodeError) as exc:
        raise MC2SourceError(f"{manifest_path} cannot be read ({exc}). Rebuild the folder.\n{_fix()}") from exc
    if not isinstance(manifest, dict):
        raise MC2SourceError(f"{manifest_path} is not a JSON object. Rebuild the folder.\n{_fix()}")
    return manifest


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
    """The MC2 test split in the prepared schema, from `source` (default: `resolve_source()`)."""
    import datasets

    source = resolve_source() if source is None else source
    loaded = datasets.load_from_disk(source.path)
    if isinstance(loaded, datasets.DatasetDict):
        if "test" not in loaded:
            raise MC2SourceError(f"{source.path} has no 'test' split (splits: {', '.join(loaded)}).\n{_fix()}")
        loaded = loaded["test"]
    return loaded
