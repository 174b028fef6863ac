"""What a prepared MC2 folder must hold, checked before anything reads it (the tasks and `fit` alike).

`check_dataset_files` refuses a folder without the files `save_to_disk` writes; `validate_items`
refuses missing or mistyped columns, an empty dataset, and item by item a missing or empty field, an
unknown category, duplicate `mc2_id`s, exact duplicate records and items whose two options are the
same answer. Every error is `MC2DataError`, naming the folder, the items and the rebuild commands.
Columns are read with pyarrow; images are never decoded.
"""

from __future__ import annotations

import json
from pathlib import Path

from amps_eval.mc2.schema import CATEGORIES, PREPARED_COLUMNS
from amps_eval.mc2.source import MC2DataError, listed, rebuild_hint

def check_dataset_files(folder: Path) -> None:
    """Refuse a prepared folder without the dataset files `save_to_disk` writes (named in the error).

    A prepared folder holds ``DatasetDict({"test": ...})``: ``dataset_dict.json`` naming the split and
    ``test/`` with ``state.json``, ``dataset_info.json`` and the ``.arrow`` files ``state.json`` lists.
    A single saved ``Dataset`` (``state.json`` at the top) is accepted as well.
    """
    folder = Path(folder)
    top = folder / "dataset_dict.json"
    if not top.is_file():
        if (folder / "state.json").is_file():
            return _check_split_files(folder, folder)
        raise MC2DataError(
            f"The MC2 data folder {folder} has a manifest but no dataset (no dataset_dict.json and no "
            f"test/ folder): it was not written completely, or its files were removed.\n{rebuild_hint(folder)}"
        )
    try:
        splits = json.loads(top.read_text(encoding="utf-8"))["splits"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise MC2DataError(
            f"The MC2 data folder {folder} has a damaged dataset_dict.json (not a JSON object with "
            f"'splits').\n{rebuild_hint(folder)}"
        ) from exc
    if not isinstance(splits, list) or "test" not in splits:
        raise MC2DataError(
            f"The MC2 data folder {folder} has no 'test' split (dataset_dict.json lists {splits!r})."
            f"\n{rebuild_hint(folder)}"
        )
    _check_split_files(folder, folder / "test")


def _check_split_files(folder: Path, split: Path) -> None:
    where = "" if split == folder else f"{split.name}/"
    lacking = [f"{where}{name}" for name in ("state.json", "dataset_info.json") if not (split / name).is_file()]
    if not lacking:
        try:
            state = json.loads((split / "state.json").read_text(encoding="utf-8"))
            files = [entry["filename"] for entry in state["_data_files"]]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise MC2DataError(
                f"The MC2 data folder {folder} has a damaged {where}state.json.\n{rebuild_hint(folder)}"
            ) from exc
        if not files:  # an empty dataset (`datasets` cannot load one back)
            raise MC2DataError(
                f"The MC2 data folder {folder} holds no items ({where}state.json lists no data file)."
                f"\n{rebuild_hint(folder)}"
            )
        lacking = [f"{where}{name}" for name in files if not (split / name).is_file()]
    if lacking:
        raise MC2DataError(
            f"The MC2 data folder {folder} lacks {', '.join(lacking)}: its dataset is incomplete."
            f"\n{rebuild_hint(folder)}"
        )


_STRING_DTYPES = ("string", "large_string")
_INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
_NEEDED_TEXT = ("category", "question", "context", "answer_vision", "answer_text")


def _column_problem(name: str, feature) -> str | None:
    """Why ``feature`` is not the prepared schema's type of column ``name`` (None if it is)."""
    import datasets

    if name == "image":
        return None if isinstance(feature, datasets.Image) else f"image is {_type_name(feature)}, not an image"
    wanted = _INT_DTYPES if name == "mc2_id" else _STRING_DTYPES
    if isinstance(feature, datasets.Value) and feature.dtype in wanted:
        return None
    return f"{name} is {_type_name(feature)}, not {'an integer' if name == 'mc2_id' else 'a string'}"


def _type_name(feature) -> str:
    import datasets

    if isinstance(feature, datasets.Value):
        return feature.dtype
    return type(feature).__name__


def validate_items(dataset, folder: str | Path) -> None:
    """Refuse prepared MC2 items that the tasks or a fit would score wrongly; `MC2DataError` otherwise.

    ``folder`` names the data in the message (a prepared folder, or any description). Refused:

    * a column of `PREPARED_COLUMNS` missing or of the wrong type (``image`` must be an image);
    * no items at all;
    * an item with a missing (None) field, an empty question, context or answer, no image bytes or
      path, or a category that is not one of `CATEGORIES` (named by ``mc2_id``);
    * two items with the same ``mc2_id`` (the tasks key answers by it: two items would be scored
      as one item asked in two option orders);
    * two items that are the same record (same ``image_id``, question, context and both answers);
    * an item whose two options are the same answer (after strip and casefold): it cannot tell
      which modality the model followed.
    """
    import pyarrow.compute as pc

    missing = [name for name in PREPARED_COLUMNS if name not in dataset.column_names]
    if missing:
        raise MC2DataError(
            f"The MC2 data folder {folder} lacks column(s) {', '.join(missing)} (it has "
            f"{', '.join(dataset.column_names) or 'none'}; a prepared folder has {', '.join(PREPARED_COLUMNS)})."
            f"\n{rebuild_hint(folder)}"
        )
    wrong = [p for p in (_column_problem(name, dataset.features[name]) for name in PREPARED_COLUMNS) if p]
    if wrong:
        raise MC2DataError(
            f"The MC2 data folder {folder} has column(s) of the wrong type: {'; '.join(wrong)}."
            f"\n{rebuild_hint(folder)}"
        )
    if len(dataset) == 0:
        raise MC2DataError(f"The MC2 data folder {folder} holds no items.\n{rebuild_hint(folder)}")

    text_columns = ["mc2_id", "image_id", *_NEEDED_TEXT]
    # Arrow, not Python rows: the images are only checked for presence, never read or decoded.
    table = dataset.select_columns([*text_columns, "image"]).with_format("arrow")[:]
    rows = table.select(text_columns).to_pylist()

    def item(index: int) -> str:
        mc2_id = rows[index]["mc2_id"]
        return f"row {index} (no mc2_id)" if mc2_id is None else f"mc2_id={mc2_id}"

    image = table.column("image")
    no_image = pc.or_kleene(
        image.is_null(),
        pc.and_kleene(pc.struct_field(image, "bytes").is_null(), pc.struct_field(image, "path").is_null()),
    ).to_pylist()
    lacking: list[str] = []
    for index, row in enumerate(rows):
        absent = [name for name in text_columns if row[name] is None]
        absent += [name for name in _NEEDED_TEXT if row[name] is not None and not row[name].strip()]
        if no_image[index] is not False:
            absent.append("image")
        if absent:
            lacking.append(f"{item(index)} ({', '.join(absent)})")
    if lacking:
        raise MC2DataError(
            f"The MC2 data folder {folder} has items with a missing or empty field: {listed(lacking)}."
            f"\n{rebuild_hint(folder)}"
        )
    unknown = [f"{item(i)} ({row['category']!r})" for i, row in enumerate(rows) if row["category"] not in CATEGORIES]
    if unknown:
        raise MC2DataError(
            f"The MC2 data folder {folder} has items of an unknown category: {listed(unknown)}; the MC2 "
            f"categories are {', '.join(CATEGORIES)}.\n{rebuild_hint(folder)}"
        )

    seen: dict[int, int] = {}
    duplicated: list[int] = []
    for row in rows:
        seen[row["mc2_id"]] = seen.get(row["mc2_id"], 0) + 1
        if seen[row["mc2_id"]] == 2:
            duplicated.append(row["mc2_id"])
    if duplicated:
        raise MC2DataError(
            f"The MC2 data folder {folder} has duplicate mc2_ids (each used by more than one item): "
            f"{listed(sorted(duplicated))}. Every item needs its own mc2_id: the tasks would score two "
            f"items as one item asked in two option orders.\n{rebuild_hint(folder)}"
        )
    records: dict[tuple, int] = {}
    repeated: list[str] = []
    for row in rows:
        key = (row["image_id"], row["question"], row["context"], row["answer_vision"], row["answer_text"])
        if key in records:
            repeated.append(f"mc2_id={row['mc2_id']} repeats mc2_id={records[key]}")
        else:
            records[key] = row["mc2_id"]
    if repeated:
        raise MC2DataError(
            f"The MC2 data folder {folder} has exact duplicate items (same image_id, question, context "
            f"and answers): {listed(repeated)}; a duplicate would count twice.\n{rebuild_hint(folder)}"
        )
    same = [
        f"mc2_id={row['mc2_id']} ({row['answer_vision']!r})"
        for row in rows
        if row["answer_vision"].strip().casefold() == row["answer_text"].strip().casefold()
    ]
    if same:
        raise MC2DataError(
            f"The MC2 data folder {folder} has items whose two options are the same answer: {listed(same)}; "
            f"such an item cannot show which modality the model followed.\n{rebuild_hint(folder)}"
        )
