"""The MC2 record format and the "prepared" dataset schema shared by every MC2 data source.

Two shapes of data exist:

* **Question records**, as published by the MC2 authors (`evaluate_final.json`): a JSON list of
  objects with the fields in `QUESTION_FIELDS`. They carry no id (the list index is the id) and no
  image (only a 12-digit COCO 2014 image id).
* **Prepared datasets**, what the lmms-eval tasks read: one row per question with the columns of
  `PREPARED_COLUMNS` and the image embedded as bytes. `prepare_mc2` (real MC2 + COCO) and
  `write_synthetic_mc2` (the embedded, download-free default) both write this shape, so the tasks
  never need to know where the data came from.

This module imports nothing heavy: `datasets` is only imported when `PREPARED_FEATURES` (or
`prepared_features()`) is asked for, so light modules such as `source.py` can use the constants.
"""

from __future__ import annotations

from typing import Any, Mapping

CATEGORIES: tuple[str, ...] = (
    "activity_recognition",
    "attribute",
    "color",
    "counting",
    "object_recognition",
    "positional_reasoning",
    "sentiment_understanding",
    "sport_recognition",
)
"""The eight MC2 tasks, in the column order of the AMPS tables."""

CATEGORY_ABBREV: dict[str, str] = {
    "activity_recognition": "Act.",
    "attribute": "Attr.",
    "color": "Color",
    "counting": "Count.",
    "object_recognition": "Obj.",
    "positional_reasoning": "Pos.",
    "sentiment_understanding": "Sent.",
    "sport_recognition": "Sport",
}
"""Short column headers used by the AMPS paper's tables."""

QUESTION_FIELDS: tuple[str, ...] = ("image_id", "task", "question", "answer_vision", "answer_text", "context")
"""The fields of one record of the authors' question file; all are strings."""

PREPARED_COLUMNS: tuple[str, ...] = (
    "mc2_id",
    "category",
    "image_id",
    "question",
    "context",
    "answer_vision",
    "answer_text",
    "image",
)
"""The columns of a prepared dataset, in order. `mc2_id` is the index in the question file."""

MANIFEST_NAME = "mc2_manifest.json"
"""The file that marks a folder as written by `prepare_mc2` / `write_synthetic_mc2`."""

SKIPPED_NAME = "skipped.json"
"""The list of questions `prepare_mc2 --skip-missing` dropped, next to the manifest."""

FORMAT_VERSION = 1
"""Version of the prepared-folder layout; bump when columns or the manifest change incompatibly."""

COCO_ID_DIGITS = 12


class MC2FormatError(ValueError):
    """A question record does not have the MC2 format (missing field, wrong type, unknown task)."""


def validate_question_record(record: Any, index: int) -> None:
    """Check one record of an MC2 question file; raise `MC2FormatError` naming index, field and fix.

    Checked: the record is an object; every field of `QUESTION_FIELDS` is present and a non-empty
    string; `task` is one of `CATEGORIES`; `image_id` is a COCO image id written as digits (the
    authors write 12 digits, e.g. "000000046962"; shorter digit strings are accepted and padded by
    `coco_image_id`).
    """
    where = f"MC2 question record {index}"
    if not isinstance(record, Mapping):
        raise MC2FormatError(
            f"{where} is a {type(record).__name__}, not an object. The question file must be a JSON "
            f"list of objects with the fields {', '.join(QUESTION_FIELDS)} (the format of the MC2 "
            f"authors' evaluate_final.json)."
        )
    for field in QUESTION_FIELDS:
        if field not in record:
            raise MC2FormatError(
                f"{where} has no field {field!r} (it has: {', '.join(map(str, record)) or 'nothing'}). "
                f"Every record needs {', '.join(QUESTION_FIELDS)}; fix or remove record {index}."
            )
        value = record[field]
        if not isinstance(value, str) or not value.strip():
            raise MC2FormatError(
                f"{where}: field {field!r} must be a non-empty string, got {value!r}. "
                f"Fix record {index} in the question file."
            )
    if record["task"] not in CATEGORIES:
        raise MC2FormatError(
            f"{where}: field 'task' is {record['task']!r}, which is not an MC2 task. "
            f"Use one of: {', '.join(CATEGORIES)}."
        )
    image_id = record["image_id"]
    if not image_id.isdigit() or len(image_id) > COCO_ID_DIGITS:
        raise MC2FormatError(
            f"{where}: field 'image_id' is {image_id!r}; it must be a COCO 2014 image id written as "
            f"digits (at most {COCO_ID_DIGITS}), e.g. '000000046962'. Fix record {index}."
        )


def coco_image_id(image_id: str | int) -> str:
    """The canonical 12-digit, zero-padded form of a COCO image id (as in the COCO file names)."""
    return str(int(image_id)).zfill(COCO_ID_DIGITS)


def prepared_features():
    """A fresh `datasets.Features` for the prepared schema (imports `datasets`)."""
    import datasets

    return datasets.Features(
        {
            "mc2_id": datasets.Value("int64"),
            "category": datasets.Value("string"),
            "image_id": datasets.Value("string"),
            "question": datasets.Value("string"),
            "context": datasets.Value("string"),
            "answer_vision": datasets.Value("string"),
            "answer_text": datasets.Value("string"),
            "image": datasets.Image(),
        }
    )


def __getattr__(name: str):
    # `PREPARED_FEATURES` is built on first access so that importing this module stays light.
    if name == "PREPARED_FEATURES":
        return prepared_features()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
