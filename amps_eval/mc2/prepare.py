"""Build a local MC2 dataset from the authors' question file and a COCO 2014 image folder.

The MC2 question file carries only COCO image ids; the images are COCO 2014 images that every user
downloads separately. `prepare_mc2` joins the two once, embeds the image bytes, and writes a
`datasets` folder (`save_to_disk`) with a manifest, so that evaluation runs read one self-contained
folder (point `AMPS_MC2_DATA` at it) and never touch the COCO tree again.

The folder format (shared with `synthetic.write_synthetic_mc2`)::

    OUT/
      dataset_dict.json, test/...   DatasetDict({"test": ...}) in the prepared schema (schema.py)
      mc2_manifest.json             format version, source, counts, creation time, amps_eval version
      skipped.json                  questions dropped for missing/unreadable images (may be [])

Writing goes to a staging folder next to OUT that is renamed into place at the end, so an
interrupted run never leaves a half-written folder that looks valid.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from amps_eval.files import sha256_file
from amps_eval.mc2.schema import (
    CATEGORIES,
    FORMAT_VERSION,
    MANIFEST_NAME,
    PREPARED_COLUMNS,
    SKIPPED_NAME,
    MC2FormatError,
    coco_image_id,
    prepared_features,
    validate_question_record,
)

COCO_SPLITS: tuple[str, ...] = ("train2014", "val2014")
"""The COCO 2014 image folders MC2 images come from, in the order they are searched."""

MAX_LISTED_IDS = 20
"""How many missing image ids an error message lists before summarising the rest."""


class MissingImagesError(FileNotFoundError):
    """Some MC2 questions have no readable COCO image; `problems` lists (mc2_id, image_id, reason)."""

    def __init__(self, message: str, problems: Sequence[tuple[int, str, str]] = ()):
        super().__init__(message)
        self.problems = list(problems)


class OutputDirError(FileExistsError):
    """The output folder exists and is not something prepare-mc2 / synth-mc2 may overwrite."""


@dataclass(frozen=True)
class SkippedItem:
    """One question left out of the prepared dataset and why."""

    mc2_id: int
    image_id: str
    reason: str


@dataclass(frozen=True)
class PrepareReport:
    """What `prepare_mc2` wrote."""

    out: Path
    n_items: int
    per_category: dict[str, int]
    skipped: list[SkippedItem] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)


# --------------------------------------------------------------------------------------------
# Question file and images
# --------------------------------------------------------------------------------------------


def load_question_records(questions: Path) -> list[dict[str, str]]:
    """Read and validate an MC2 question file (a JSON list of records); raise `MC2FormatError`."""
    questions = Path(questions)
    if not questions.is_file():
        raise FileNotFoundError(
            f"MC2 question file {questions} does not exist. Download evaluate_final.json from the MC2 "
            f"authors (EchoDreamer/Modality-Preference, data/evaluate_final.json) and pass its path."
        )
    try:
        records = json.loads(questions.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MC2FormatError(f"MC2 question file {questions} is not valid JSON ({exc}). Pass the "
                             f"authors' evaluate_final.json (a JSON list of question objects).") from exc
    if not isinstance(records, list):
        raise MC2FormatError(
            f"MC2 question file {questions} holds a JSON {type(records).__name__}, not a list of "
            f"question objects. Pass the authors' evaluate_final.json."
        )
    if not records:
        raise MC2FormatError(f"MC2 question file {questions} is an empty list; it needs at least one question.")
    for index, record in enumerate(records):
        validate_question_record(record, index)
    return records


def find_coco_image(images: Path, image_id: str) -> Path | None:
    """The COCO 2014 file of `image_id` under `images` (train2014 first, then val2014), or None."""
    cid = coco_image_id(image_id)
    for split in COCO_SPLITS:
        candidate = images / split / f"COCO_{split}_{cid}.jpg"
        if candidate.is_file():
            return candidate
    return None


def check_image(path: Path | None) -> str | None:
    """None when `path` is a whole image (fully decoded; a truncated JPEG is caught), else a reason."""
    from amps_eval.mc2.images import image_problem

    return image_problem(path)


def _format_problem_ids(problems: Sequence[tuple[int, str, str]]) -> str:
    shown = ", ".join(f"{image_id} (question {mc2_id}, {reason})" for mc2_id, image_id, reason in problems[:MAX_LISTED_IDS])
    rest = len(problems) - MAX_LISTED_IDS
    return shown + (f", ... and {rest} more" if rest > 0 else "")


# --------------------------------------------------------------------------------------------
# Output folder handling (shared with synthetic.py)
# --------------------------------------------------------------------------------------------


def is_prepared_dir(path: Path) -> bool:
    """True if `path` is a folder written by `prepare_mc2` or `write_synthetic_mc2`."""
    return (Path(path) / MANIFEST_NAME).is_file()


def check_output_dir(out: Path) -> None:
    """Refuse an output path that cannot be written (a read-only or missing location: the usual
    "cannot write ..." before any work) or that exists and is neither empty nor an earlier prepared
    folder."""
    from amps_eval.files import ensure_folder

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"Output path {out} exists and is not a folder. Choose a new folder for the MC2 data.")
    ensure_folder(out.parent, f"the MC2 folder (--out) {out} into")
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputDirError(f"Output path {out} exists and is not a folder. Choose a new folder for the MC2 data.")
    if any(out.iterdir()) and not is_prepared_dir(out):
        raise OutputDirError(
            f"Output folder {out} is not empty and was not written by prepare-mc2 / synth-mc2 "
            f"(it has no {MANIFEST_NAME}). Refusing to write into it: choose a new or empty folder."
        )


def base_manifest(source: str, n_items: int, per_category: Mapping[str, int], n_skipped: int) -> dict[str, Any]:
    """The manifest fields every prepared folder has; callers add source-specific ones."""
    from amps_eval import __version__

    return {
        "format": "amps-eval-mc2",
        "format_version": FORMAT_VERSION,
        "source": source,
        "n_items": int(n_items),
        "per_category": {name: int(per_category.get(name, 0)) for name in CATEGORIES},
        "n_skipped": int(n_skipped),
        "columns": list(PREPARED_COLUMNS),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "amps_eval_version": __version__,
    }


def new_folder(parent: Path, prefix: str) -> Path:
    """A new folder ``parent/<prefix><unique>`` whose mode follows the umask (``tempfile.mkdtemp``
    makes ``drwx------``, which a prepared folder keeps once renamed into place: a group sharing
    the data on a cluster could not read it)."""
    import secrets

    while True:
        path = Path(parent) / f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            path.mkdir()  # mode 0o777 minus the umask
        except FileExistsError:
            continue
        return path


def build_folder(out: Path) -> Path:
    """A fresh build folder for the `datasets` cache of a prepare run, beside ``out`` (same file
    system as the result, and found again: the build folders a killed run left are removed here)."""
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.build-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return new_folder(out.parent, f".{out.name}.build-")


def write_prepared_dir(dataset, out: Path, manifest: Mapping[str, Any], skipped: Sequence[SkippedItem] = ()) -> Path:
    """Write `dataset` as `DatasetDict({"test": dataset})` + manifest + skipped.json into `out`.

    The folder is assembled in a staging folder beside `out` and swapped into place only once
    everything is written: the earlier folder (checked by `check_output_dir`) is renamed aside, the
    new one renamed in, then the old one deleted, so a kill at any moment leaves a complete folder
    at `out` or beside it (`.<name>.previous`, put back by the next run). Staging folders left by a
    killed run are removed first.
    """
    import datasets

    from amps_eval.staged_output import previous_path, recover

    out = Path(out).absolute()
    check_output_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    recover(out)
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = new_folder(out.parent, f".{out.name}.partial-")
    try:
        datasets.DatasetDict({"test": dataset}).save_to_disk(str(staging))
        (staging / SKIPPED_NAME).write_text(
            json.dumps([vars(item) for item in skipped], indent=2) + "\n", encoding="utf-8"
        )
        # The manifest goes last: its presence is what marks the folder as complete.
        (staging / MANIFEST_NAME).write_text(json.dumps(dict(manifest), indent=2) + "\n", encoding="utf-8")
        previous = previous_path(out)
        if out.exists():
            os.replace(out, previous)
        os.replace(staging, out)
        shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


@contextlib.contextmanager
def datasets_progress(enabled: bool) -> Iterator[None]:
    """Silence the `datasets` progress bars inside the block when `enabled` is False.

    `datasets` keeps this switch process-wide; the previous setting is restored on exit.
    """
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    if not enabled and not was_disabled:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and not was_disabled:
            datasets.enable_progress_bars()


# --------------------------------------------------------------------------------------------
# prepare_mc2
# --------------------------------------------------------------------------------------------


def _prepared_rows(items: Sequence[tuple[int, Mapping[str, str], str]]) -> Iterator[dict[str, Any]]:
    """Rows of the prepared schema; image bytes are read here so they are never all in memory."""
    for mc2_id, record, image_path in items:
        path = Path(image_path)
        yield {
            "mc2_id": mc2_id,
            "category": record["task"],
            "image_id": coco_image_id(record["image_id"]),
            "question": record["question"],
            "context": record["context"],
            "answer_vision": record["answer_vision"],
            "answer_text": record["answer_text"],
            "image": {"bytes": path.read_bytes(), "path": path.name},
        }


def invalid_records(records: Sequence[Mapping[str, str]]) -> list[tuple[int, str, str]]:
    """The questions every later command would refuse (`amps_eval.mc2.folder_check`), as (index in
    the question file, image id, reason): an exact repeat of an earlier question (same image,
    question, context and answers: it would count twice), and a question whose two options are the
    same answer after strip and casefold (it cannot show which modality the model followed)."""
    first: dict[tuple, int] = {}
    found = []
    for index, record in enumerate(records):
        image_id = coco_image_id(record["image_id"])
        key = (image_id, record["question"], record["context"], record["answer_vision"], record["answer_text"])
        if key in first:
            found.append((index, image_id, f"repeats question {first[key]} (same image, question, context and answers)"))
            continue
        first[key] = index
        if record["answer_vision"].strip().casefold() == record["answer_text"].strip().casefold():
            found.append((index, image_id, f"its two options are the same answer ({record['answer_vision']!r})"))
    return found


def prepare_mc2(
    questions: Path,
    images: Path,
    out: Path,
    skip_missing: bool = False,
    progress: bool = True,
    skip_invalid: bool = False,
) -> PrepareReport:
    """Join the MC2 question file with COCO 2014 images and write a prepared dataset folder.

    questions: the authors' evaluate_final.json. images: the COCO 2014 root holding train2014/ and/or
    val2014/. out: the folder to write (new, empty, or an earlier prepare-mc2/synth-mc2 output).
    Every record is validated first (`MC2FormatError` names the index and field). A missing or
    unreadable image raises `MissingImagesError` unless `skip_missing`, which drops those questions
    and lists them in out/skipped.json. `mc2_id` stays the index in the question file either way.
    Questions that every later command would refuse (`invalid_records`: repeats, equal options)
    raise `MC2FormatError` naming them, unless `skip_invalid`, which drops and lists them the same way.
    """
    import datasets
    from tqdm.auto import tqdm

    questions, images, out = Path(questions), Path(images), Path(out)
    check_output_dir(out)
    records = load_question_records(questions)
    invalid = invalid_records(records)
    if invalid and not skip_invalid:
        shown = "; ".join(f"question {index} (image {image_id}): {reason}" for index, image_id, reason in invalid[:10])
        more = f"; and {len(invalid) - 10} more" if len(invalid) > 10 else ""
        raise MC2FormatError(
            f"MC2 question file {questions} has {len(invalid)} question(s) every later command would refuse: "
            f"{shown}{more}. Fix the file, or pass --skip-invalid (skip_invalid=True) to leave them out "
            f"(listed in <out>/{SKIPPED_NAME})."
        )
    dropped = {index: (image_id, reason) for index, image_id, reason in invalid}
    if not images.is_dir():
        raise MissingImagesError(
            f"COCO image folder {images} does not exist. Download the COCO 2014 train and val images "
            f"(train2014/, val2014/) and pass the folder that contains them."
        )
    if not any((images / split).is_dir() for split in COCO_SPLITS):
        raise MissingImagesError(
            f"COCO image folder {images} has neither train2014/ nor val2014/. Pass the COCO 2014 root, "
            f"the folder that contains train2014/ and val2014/."
        )

    kept: list[tuple[int, Mapping[str, str], str]] = []
    problems: list[tuple[int, str, str]] = []
    for mc2_id, record in enumerate(
        tqdm(records, desc="Checking COCO images", unit="img", disable=not progress)
    ):
        if mc2_id in dropped:
            continue
        path = find_coco_image(images, record["image_id"])
        reason = check_image(path)
        if reason is None:
            kept.append((mc2_id, record, str(path)))
        else:
            problems.append((mc2_id, coco_image_id(record["image_id"]), reason))

    if problems and (not skip_missing or not kept):
        n_ids = len({image_id for _, image_id, _ in problems})
        lead = (
            f"None of the {len(records)} MC2 questions has a readable image under {images}"
            if not kept
            else f"{len(problems)} of {len(records)} MC2 questions ({n_ids} COCO images) have no readable image under {images}"
        )
        raise MissingImagesError(
            f"{lead}: {_format_problem_ids(problems)}. Images are looked up as "
            f"train2014/COCO_train2014_<id>.jpg or val2014/COCO_val2014_<id>.jpg. Fix the COCO root "
            f"(download the missing COCO 2014 images) or pass --skip-missing (skip_missing=True) "
            f"to leave those questions out.",
            problems,
        )

    per_category = dict(Counter(record["task"] for _, record, _ in kept))
    skipped = sorted([SkippedItem(mc2_id, image_id, reason) for mc2_id, image_id, reason in problems]
                     + [SkippedItem(index, image_id, reason) for index, (image_id, reason) in dropped.items()],
                     key=lambda item: item.mc2_id)
    manifest = base_manifest("questions", len(kept), per_category, len(skipped))
    manifest.update(
        {
            "questions_file": questions.name,
            "questions_sha256": sha256_file(questions),
            "n_questions": len(records),
        }
    )
    cache_dir = build_folder(out)  # beside out, removed by the next run if this one is killed
    try:
        with datasets_progress(progress):
            dataset = datasets.Dataset.from_generator(
                _prepared_rows,
                features=prepared_features(),
                cache_dir=str(cache_dir),
                gen_kwargs={"items": kept},
                split=datasets.Split.TEST,
            )
            write_prepared_dir(dataset, out, manifest, skipped)
            del dataset  # release the cache files before the build folder is removed
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return PrepareReport(
        out=out,
        n_items=len(kept),
        per_category={name: manifest["per_category"][name] for name in CATEGORIES},
        skipped=skipped,
        manifest=manifest,
    )
