"""Broken MC2 data folders, refused by the tasks and by `amps-eval fit` alike (`load_mc2` checks).

Every row starts from a good generated folder (`write_synthetic_mc2`, 8 items, mc2_id 0..7), breaks
one thing and is run through both readers: the lmms-eval task (`mc2_visual` built by lmms-eval's
TaskManager with the folder as ``dataset_path``, as the study does) and fit's `load_items`. The
error must be ours (`MC2SourceError`, never the `datasets` library's), name the folder (or the
items) and give the commands that rebuild it.

Plus: `prepare-mc2` killed while it writes leaves the earlier folder as it was, and a rerun completes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import datasets
import pytest

from amps_eval.mc2.schema import CATEGORIES, MANIFEST_NAME
from amps_eval.mc2.source import MC2SourceError, load_mc2, resolve_source
from amps_eval.mc2.synthetic import write_synthetic_mc2
from bad_inputs import BadInput, check, cli_exit, params

FOLDER = "bad-mc2-folder"  # every row's folder; the errors must name it
FIX = ("amps-eval prepare-mc2 --download", "amps-eval synth-mc2 --out")
N_ITEMS = 8

_good: dict[str, Path] = {}
_task_manager: list = []


@pytest.fixture(scope="module", autouse=True)
def good_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("good") / "mc2"
    write_synthetic_mc2(folder, n_per_category=1, seed=0, progress=False)
    _good["folder"] = folder
    return folder


# --------------------------------------------------------------------------------------------
# Making the bad folders
# --------------------------------------------------------------------------------------------


def copy_good(tmp: Path) -> Path:
    folder = tmp / FOLDER
    shutil.copytree(_good["folder"], folder)
    return folder


def rewritten(change, splits=("test",)):
    """A maker: the good items changed by ``change(dataset)``, saved anew, the manifest copied."""

    def make(tmp: Path) -> Path:
        from amps_eval.mc2.prepare import datasets_progress

        folder = tmp / FOLDER
        with datasets_progress(False):
            dataset = change(datasets.load_from_disk(str(_good["folder"]))["test"])
            datasets.DatasetDict({split: dataset for split in splits}).save_to_disk(str(folder))
        shutil.copy(_good["folder"] / MANIFEST_NAME, folder / MANIFEST_NAME)
        return folder

    return make


def set_row(index: int, **fields):
    """A change: row ``index`` gets ``fields`` (a callable value is applied to the row)."""

    def change(dataset):
        def edit(row, i):
            if i != index:
                return row
            return {**row, **{k: v(row) if callable(v) else v for k, v in fields.items()}}

        return dataset.map(edit, with_indices=True, features=dataset.features, keep_in_memory=True)

    return change


def copy_row(source: int, target: int):
    """A change: row ``target`` becomes a copy of row ``source`` except for its mc2_id."""

    def change(dataset):
        raw = dataset.cast_column("image", datasets.Image(decode=False))
        original = raw[source]

        def edit(row, i):
            return {**row, **{k: v for k, v in original.items() if k != "mc2_id"}} if i == target else row

        changed = raw.map(edit, with_indices=True, features=raw.features, keep_in_memory=True)
        return changed.cast_column("image", datasets.Image())

    return change


def cast(column: str, dtype: str):
    return lambda dataset: dataset.cast_column(column, datasets.Value(dtype))


def image_as_text(dataset):
    return dataset.remove_columns("image").add_column("image", [f"img{i}.png" for i in range(len(dataset))])


def edit_manifest(**fields):
    def make(tmp: Path) -> Path:
        folder = copy_good(tmp)
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        for key, value in fields.items():
            if value is None:
                manifest.pop(key, None)
            else:
                manifest[key] = value
        (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
        return folder

    return make


def remove(*names: str):
    def make(tmp: Path) -> Path:
        folder = copy_good(tmp)
        for name in names:
            for path in folder.glob(name):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        return folder

    return make


def damaged_arrow(tmp: Path) -> Path:
    folder = copy_good(tmp)
    (arrow,) = (folder / "test").glob("data-*.arrow")
    data = arrow.read_bytes()
    arrow.write_bytes(data[: len(data) // 3])
    return folder


def manifest_text(text: str):
    def make(tmp: Path) -> Path:
        folder = copy_good(tmp)
        (folder / MANIFEST_NAME).write_text(text)
        return folder

    return make


# --------------------------------------------------------------------------------------------
# The two readers
# --------------------------------------------------------------------------------------------


def through_task(folder: Path) -> None:
    """Build `mc2_visual` on ``folder`` the way the study asks lmms-eval to."""
    from lmms_eval.tasks import TaskManager, get_task_dict

    from amps_eval.plugin import task_dir

    if not _task_manager:
        _task_manager.append(TaskManager("ERROR", include_path=task_dir(), include_defaults=False))
    tasks = get_task_dict([{"task": "mc2_visual", "dataset_path": str(folder)}], _task_manager[0])
    assert len(tasks["mc2_visual"].test_docs()) == N_ITEMS


def through_fit(folder: Path) -> None:
    """Read ``folder`` as `amps-eval fit --data` / `amps-eval mcs --data` do."""
    from amps_eval.fit_data import load_items

    assert len(load_items(folder)) == N_ITEMS


READERS = {"task": through_task, "fit": through_fit}


def row(name: str, make, *says: str, raises=MC2SourceError, fix=FIX, why: str = "") -> BadInput:
    """A row refused by both readers; the message names the folder, ``says`` and the fix."""
    words = (*says, *fix) if raises is None else (FOLDER, *says, *fix)
    return BadInput(name, make, through_task, raises=raises, says=() if raises is None else words, why=why)


TABLE = [
    # items the tasks would score wrongly
    row("duplicate_mc2_id", rewritten(set_row(1, mc2_id=0)), "duplicate mc2_ids", ": 0.",
        why="two items with one id were scored as one item asked in two option orders"),
    row("duplicate_mc2_ids_listed", rewritten(set_row(3, mc2_id=2)), "duplicate mc2_ids", ": 2."),
    row("exact_duplicate_record", rewritten(copy_row(0, 1)), "exact duplicate items", "mc2_id=1 repeats mc2_id=0"),
    row("identical_options", rewritten(set_row(2, answer_text=lambda r: f" {r['answer_vision'].upper()} ")),
        "mc2_id=2", "two options are the same answer"),
    row("missing_field", rewritten(set_row(3, question=None)), "mc2_id=3 (question)"),
    row("empty_answer", rewritten(set_row(5, answer_vision="   ")), "mc2_id=5 (answer_vision)"),
    row("missing_image", rewritten(set_row(4, image=None)), "mc2_id=4 (image)"),
    row("unknown_category", rewritten(set_row(6, category="weather")), "mc2_id=6 ('weather')", CATEGORIES[0]),
    # the manifest
    row("manifest_newer_format", edit_manifest(format_version=99), "made by a newer amps-eval",
        "upgrade amps-eval, or rebuild with this version"),
    row("manifest_unknown_format", edit_manifest(format_version="one"), "format_version 'one'", "does not know"),
    row("manifest_without_format", edit_manifest(format_version=None), "format_version None", "does not know"),
    row("manifest_not_json", manifest_text("{written halfway"), "is not valid JSON"),
    row("manifest_not_an_object", manifest_text("[1, 2]"), "is not a JSON object"),
    row("no_manifest", remove(MANIFEST_NAME), f"no {MANIFEST_NAME}", fix=("amps-eval prepare-mc2 --download", "synth-mc2")),
    # the dataset files
    row("manifest_without_dataset", remove("dataset_dict.json", "test"), "has a manifest but no dataset"),
    row("no_test_split", rewritten(lambda d: d, splits=("train",)), "no 'test' split"),
    row("missing_arrow_file", remove("test/data-*.arrow"), "lacks test/data-00000-of-00001.arrow"),
    row("missing_state_file", remove("test/state.json"), "lacks test/state.json"),
    row("damaged_arrow_file", damaged_arrow, "cannot be read", "damaged or incomplete"),
    row("empty_dataset", rewritten(lambda d: d.select([])), "holds no items"),
    # the columns
    row("missing_column", rewritten(lambda d: d.remove_columns("context")), "lacks column(s) context"),
    row("renamed_column", rewritten(lambda d: d.rename_column("answer_text", "answer_txt")),
        "lacks column(s) answer_text", "it has mc2_id"),
    row("mc2_id_as_text", rewritten(cast("mc2_id", "string")), "mc2_id is string, not an integer"),
    row("question_as_number",
        rewritten(lambda d: d.remove_columns("question").add_column("question", [1.5] * len(d))),
        "question is float64, not a string"),
    row("image_not_an_image", rewritten(image_as_text), "image is string, not an image"),
    # harmless
    row("extra_column", rewritten(lambda d: d.add_column("note", ["x"] * len(d))), raises=None, fix=(),
        why="a column the schema does not name is ignored; every prepared column is there and typed"),
    row("mc2_id_as_int32", rewritten(cast("mc2_id", "int32")), raises=None, fix=(),
        why="any integer type holds an mc2_id"),
]


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("bad", params(TABLE))
def test_bad_data_folder(bad: BadInput, reader: str, tmp_path: Path) -> None:
    check(replace(bad, run=READERS[reader]), tmp_path)


def test_the_table_has_at_least_12_refusals_each_naming_the_folder():
    refused = [r for r in TABLE if r.raises is not None]
    assert len(refused) >= 12 and all(FOLDER in r.says for r in refused)


# --------------------------------------------------------------------------------------------
# prepare-mc2 killed while it writes
# --------------------------------------------------------------------------------------------


def _question_file(base: Path, n: int, size: int) -> tuple[Path, Path]:
    """An MC2 question file of ``n`` valid records and a COCO root with noisy ``size``-px JPEGs."""
    from PIL import Image

    root = base / "coco"
    (root / "train2014").mkdir(parents=True)
    records = []
    for i in range(n):
        image_id = f"{i + 1:012d}"
        noise = random.Random(i).randbytes(size * size * 3)
        image = Image.frombytes("RGB", (size, size), noise)
        image.save(root / "train2014" / f"COCO_train2014_{image_id}.jpg", quality=95)
        records.append({"image_id": image_id, "task": CATEGORIES[i % len(CATEGORIES)], "question": f"Question {i}?",
                        "context": f"Context {i}.", "answer_vision": f"seen {i}", "answer_text": f"told {i}"})
    questions = base / "questions.json"
    questions.write_text(json.dumps(records), encoding="utf-8")
    return questions, root


def _snapshot(folder: Path) -> dict[str, str]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_prepare_mc2_killed_while_writing_keeps_the_earlier_folder_and_a_rerun_completes(tmp_path: Path) -> None:
    n = 400
    questions, images = _question_file(tmp_path, n, size=128)
    out = tmp_path / "prepared"
    write_synthetic_mc2(out, n_per_category=1, seed=0, progress=False)  # the earlier folder
    before = _snapshot(out)
    argv = ["prepare-mc2", "--questions", str(questions), "--images", str(images), "--out", str(out)]
    log = tmp_path / "prepare.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "amps_eval.cli", *argv], stdout=sink, stderr=sink)
        try:
            deadline = time.monotonic() + 300
            # Kill as soon as the staging folder appears: the dataset is being written into it.
            while proc.poll() is None and time.monotonic() < deadline:
                if any(entry.name.startswith(".prepared.partial-") for entry in os.scandir(tmp_path)):
                    proc.send_signal(signal.SIGKILL)
                    break
        finally:
            if proc.poll() is None and time.monotonic() >= deadline:
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, (
        f"prepare-mc2 was not killed while writing (exit {proc.returncode}); it may have finished first:\n"
        f"{log.read_text(errors='replace')[-2000:]}"
    )

    assert _snapshot(out) == before, "the killed run changed the earlier folder"
    assert len(load_mc2(resolve_source(folder=out))) == N_ITEMS
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".prepared.partial-")]
    assert leftovers, "the staging folder the run was killed in"
    for staging in leftovers:  # half-written, and it does not look like a data folder
        with pytest.raises(MC2SourceError, match=f"no {MANIFEST_NAME}"):
            resolve_source(folder=staging)

    cli_exit(argv)  # the rerun
    data = load_mc2(resolve_source(folder=out))
    assert len(data) == n and data["mc2_id"] == list(range(n))
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["source"] == "questions" and manifest["n_items"] == n
