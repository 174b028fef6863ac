"""Which MC2 data the tasks read: a local prepared folder (AMPS_MC2_DATA) or the hub copy.

Resolution order, decided once per run by `resolve_source()`:

1. `AMPS_MC2_DATA` set (and non-empty): a folder written by `amps-eval prepare-mc2` (real MC2 joined
   with COCO 2014 images) or `amps-eval synth-mc2` (the download-free synthetic set). It must hold
   `mc2_manifest.json`; anything else is an error, never a silent fallback to the hub, so a typo in
   the path cannot quietly change which benchmark was measured.
2. Otherwise the authors' hub copy `271754echo/MC2`, normalised to the prepared schema. Whether the
   hub repository is a dataset with images is not settled (NOTES.md section 2), so every failure
   explains how to build a local folder instead.

This module imports `datasets` only inside the functions that load data.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

from amps_eval.mc2.schema import MANIFEST_NAME, PREPARED_COLUMNS, coco_image_id

ENV_VAR = "AMPS_MC2_DATA"
HUB_REPO = "271754echo/MC2"

_FIX = (
    "Build a local copy and point {env} at it: either\n"
    "  amps-eval prepare-mc2 --questions evaluate_final.json --images COCO2014_ROOT --out DIR\n"
    "(real MC2: the authors' question file plus the COCO 2014 train2014/ and val2014/ images), or\n"
    "  amps-eval synth-mc2 --out DIR\n"
    "(the synthetic MC2-style set, no download), then\n"
    "  export {env}=DIR"
).format(env=ENV_VAR)


class MC2SourceError(RuntimeError):
    """The MC2 data cannot be found or loaded; the message says how to provide it."""


@dataclass(frozen=True)
class DataSource:
    """Where the MC2 data comes from: kind "local" (a prepared folder) or "hub" (HUB_REPO)."""

    kind: Literal["local", "hub"]
    path: str
    description: str


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a prepared MC2 folder; `MC2SourceError` if there is none or it is broken."""
    manifest_path = Path(folder) / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise MC2SourceError(
            f"{folder} is not an MC2 data folder written by amps-eval (no {MANIFEST_NAME}).\n{_FIX}"
        ) from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise MC2SourceError(
            f"{manifest_path} cannot be read ({exc}). Rebuild the folder.\n{_FIX}"
        ) from exc
    if not isinstance(manifest, dict):
        raise MC2SourceError(f"{manifest_path} is not a JSON object. Rebuild the folder.\n{_FIX}")
    return manifest


def describe_local(folder: Path, manifest: dict[str, Any]) -> str:
    """One line saying what a prepared folder holds (for logs and results)."""
    source = manifest.get("source", "unknown source")
    n_items = manifest.get("n_items", "?")
    extra = f", seed {manifest['seed']}" if source == "synthetic" and "seed" in manifest else ""
    if source == "questions" and manifest.get("questions_sha256"):
        extra = f", questions sha256 {str(manifest['questions_sha256'])[:12]}"
    return f"local MC2 folder {folder} ({source}, {n_items} items{extra})"


def resolve_source(environ: Mapping[str, str] | None = None) -> DataSource:
    """The MC2 data source for this run: `AMPS_MC2_DATA` if set, else the hub copy.

    `environ` defaults to `os.environ` (a parameter so callers and tests can pass their own).
    """
    env = os.environ if environ is None else environ
    value = env.get(ENV_VAR, "").strip()
    if not value:
        return DataSource("hub", HUB_REPO, f"Hugging Face hub copy {HUB_REPO} ({ENV_VAR} is not set)")
    folder = Path(value).expanduser().absolute()
    if not folder.is_dir():
        raise MC2SourceError(f"{ENV_VAR}={value} but {folder} does not exist or is not a folder.\n{_FIX}")
    if not (folder / MANIFEST_NAME).is_file():
        raise MC2SourceError(
            f"{ENV_VAR}={value} but {folder} is not an MC2 data folder written by amps-eval "
            f"(no {MANIFEST_NAME}).\n{_FIX}"
        )
    return DataSource("local", str(folder), describe_local(folder, read_manifest(folder)))


def lmms_dataset_args(source: DataSource) -> tuple[str, dict[str, Any]]:
    """(dataset_path, dataset_kwargs) for an lmms-eval task reading `source`."""
    if source.kind == "local":
        return source.path, {"load_from_disk": True}
    return HUB_REPO, {}


def normalise_hub_columns(ds):
    """Bring a hub copy of MC2 to the prepared schema (columns and order of `PREPARED_COLUMNS`).

    Renames `task` to `category`, adds `mc2_id` (the row index, as in the question file) when
    missing, writes `image_id` as the 12-digit COCO id, and requires an image column: the authors'
    question file has none, and such a copy cannot be evaluated without COCO.
    """
    import datasets

    if "task" in ds.column_names and "category" not in ds.column_names:
        ds = ds.rename_column("task", "category")
    if "image" not in ds.column_names:
        raise MC2SourceError(
            f"The hub copy {HUB_REPO} has no image column (columns: {', '.join(ds.column_names)}); "
            f"MC2 images are COCO 2014 images that must be downloaded separately. Download the COCO "
            f"2014 train and val images and the MC2 question file (evaluate_final.json), then run\n"
            f"  amps-eval prepare-mc2 --questions evaluate_final.json --images COCO2014_ROOT --out DIR\n"
            f"  export {ENV_VAR}=DIR"
        )
    if "mc2_id" not in ds.column_names:
        ds = ds.add_column("mc2_id", list(range(len(ds))))
    missing = [name for name in PREPARED_COLUMNS if name not in ds.column_names]
    if missing:
        raise MC2SourceError(
            f"The hub copy {HUB_REPO} lacks the column(s) {', '.join(missing)} "
            f"(columns: {', '.join(ds.column_names)}).\n{_FIX}"
        )
    if not isinstance(ds.features["image"], datasets.Image):
        ds = ds.cast_column("image", datasets.Image())
    original_ids = list(ds["image_id"])
    image_ids = [_normal_image_id(image_id) for image_id in original_ids]
    if image_ids != original_ids:
        ds = ds.remove_columns("image_id").add_column("image_id", image_ids)
    ds = ds.select_columns(list(PREPARED_COLUMNS))
    from amps_eval.mc2.schema import prepared_features

    return ds.cast(prepared_features())


def _normal_image_id(image_id: Any) -> str:
    text = str(image_id)
    return coco_image_id(text) if text.isdigit() else text


def _load_hub_split():
    """The hub copy's test split (or its first split when it has no "test")."""
    import datasets

    try:
        return datasets.load_dataset(HUB_REPO, split="test")
    except ValueError as exc:
        if "split" not in str(exc).lower():
            raise
    loaded = datasets.load_dataset(HUB_REPO)
    return loaded[next(iter(loaded))]


def load_mc2(source: DataSource | None = None):
    """The MC2 test split in the prepared schema, from `source` (default: `resolve_source()`)."""
    import datasets

    source = resolve_source() if source is None else source
    if source.kind == "local":
        loaded = datasets.load_from_disk(source.path)
        if isinstance(loaded, datasets.DatasetDict):
            if "test" not in loaded:
                raise MC2SourceError(f"{source.path} has no 'test' split (splits: {', '.join(loaded)}).\n{_FIX}")
            loaded = loaded["test"]
        return loaded
    try:
        ds = _load_hub_split()
    except Exception as exc:  # offline, missing repo, not a dataset repo, ...
        raise MC2SourceError(
            f"No {ENV_VAR} is set and the hub copy {HUB_REPO} could not be loaded "
            f"({type(exc).__name__}: {exc}).\n{_FIX}"
        ) from exc
    return normalise_hub_columns(ds)
