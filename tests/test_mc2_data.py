"""MC2 data layer: schema validation, synthetic set, prepare_mc2 on a fake COCO root, source resolution."""

from __future__ import annotations

import io
import json
import os
import re
from collections import Counter, deque
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from amps_eval.files import sha256_file
from amps_eval.mc2.prepare import MissingImagesError, OutputDirError, prepare_mc2
from amps_eval.mc2.schema import (
    CATEGORIES,
    CATEGORY_ABBREV,
    MANIFEST_NAME,
    PREPARED_COLUMNS,
    PREPARED_FEATURES,
    QUESTION_FIELDS,
    SKIPPED_NAME,
    MC2FormatError,
    validate_question_record,
)
from amps_eval.mc2.source import (
    ENV_VAR,
    HOME_VAR,
    MC2SourceError,
    default_data_dir,
    lmms_dataset_args,
    load_mc2,
    resolve_source,
)
from amps_eval.mc2.synthetic import (
    BASKETBALL_COLOR,
    FACE_COLOR,
    PALETTE,
    SPECS,
    STITCH_COLOR,
    TENNIS_COLOR,
    answer_pair,
    generate_synthetic_mc2,
    iter_synthetic_items,
    synthetic_item,
    write_synthetic_mc2,
)

QUESTIONS = Path(__file__).resolve().parents[2] / "shared" / "mc2" / "evaluate_final.json"
if not QUESTIONS.is_file():  # the checkout may live elsewhere; the shared folder does not move
    QUESTIONS = Path("/work/shared/mc2/evaluate_final.json")


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------


def test_schema_constants():
    assert CATEGORIES[0] == "activity_recognition" and len(CATEGORIES) == 8
    assert [CATEGORY_ABBREV[c] for c in CATEGORIES] == ["Act.", "Attr.", "Color", "Count.", "Obj.", "Pos.", "Sent.", "Sport"]
    assert QUESTION_FIELDS == ("image_id", "task", "question", "answer_vision", "answer_text", "context")
    assert isinstance(PREPARED_FEATURES, datasets.Features)
    assert tuple(PREPARED_FEATURES) == PREPARED_COLUMNS
    assert isinstance(PREPARED_FEATURES["image"], datasets.Image)


def _real_records() -> list[dict]:
    if not QUESTIONS.is_file():
        pytest.skip(f"the MC2 question file is not at {QUESTIONS}")
    return json.loads(QUESTIONS.read_text(encoding="utf-8"))


def test_every_real_record_validates():
    for index, record in enumerate(_real_records()):
        validate_question_record(record, index)


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda r: r.pop("context"), "context"),
        (lambda r: r.update(answer_text=""), "answer_text"),
        (lambda r: r.update(task="weather"), "task"),
        (lambda r: r.update(image_id="COCO_123"), "image_id"),
        (lambda r: r.update(question=7), "question"),
    ],
)
def test_validate_names_index_and_field(change, field):
    record = dict(_real_records()[0])
    change(record)
    with pytest.raises(MC2FormatError) as info:
        validate_question_record(record, 41)
    assert "41" in str(info.value) and field in str(info.value)


# --------------------------------------------------------------------------------------------
# Synthetic set
# --------------------------------------------------------------------------------------------


def _pixels(row) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")).astype(int)


def _mask(img: np.ndarray, color) -> np.ndarray:
    return np.all(img == np.asarray(color), axis=-1)


def _non_background(img: np.ndarray) -> np.ndarray:
    return ~_mask(img, (255, 255, 255))


def _palette_mask(img: np.ndarray) -> np.ndarray:
    return np.any([_mask(img, c) for c in PALETTE.values()], axis=0)


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


def _count_blobs(mask: np.ndarray) -> int:
    """4-connected components of a boolean mask (plain BFS flood fill)."""
    seen = np.zeros_like(mask, dtype=bool)
    blobs = 0
    height, width = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        blobs += 1
        seen[y0, x0] = True
        queue = deque([(y0, x0)])
        while queue:
            y, x = queue.popleft()
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
    return blobs


def _read_image(row) -> str:
    """What a simple pixel rule says the image shows, in the category's answer vocabulary."""
    img = _pixels(row)
    category = row["category"]
    if category == "color":
        colors = Counter(map(tuple, img[_non_background(img)]))
        dominant = colors.most_common(1)[0][0]
        return next(name for name, rgb in PALETTE.items() if rgb == dominant)
    if category == "counting":
        return ("one", "two", "three", "four", "five")[_count_blobs(_non_background(img)) - 1]
    if category == "attribute":
        share = _non_background(img).mean()
        return "big" if share > 0.25 else "small" if share < 0.05 else "unclear"
    if category == "object_recognition":
        mask = _non_background(img)
        ys, xs = np.nonzero(mask)
        fill = mask.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
        prototypes = {"square": 1.0, "circle": np.pi / 4, "cross": 0.64, "triangle": 0.5, "star": 0.43}
        return min(prototypes, key=lambda name: abs(prototypes[name] - fill))
    if category == "activity_recognition":
        mask = _palette_mask(img)  # the arrow only, not the gray motion lines
        ys, xs = np.nonzero(mask)
        dx = xs.mean() - (xs.min() + xs.max()) / 2  # the head is the heavy end
        dy = ys.mean() - (ys.min() + ys.max()) / 2
        if abs(dx) > abs(dy):
            return "moving right" if dx > 0 else "moving left"
        return "moving down" if dy > 0 else "moving up"
    if category == "positional_reasoning":
        circle_color, square_color = re.match(r"Where is the (\w+) circle relative to the (\w+) square\?", row["question"]).groups()
        (cx, cy), (sx, sy) = _centroid(_mask(img, PALETTE[circle_color])), _centroid(_mask(img, PALETTE[square_color]))
        if abs(cx - sx) > abs(cy - sy):
            return "left" if cx < sx else "right"
        return "above" if cy < sy else "below"
    if category == "sentiment_understanding":
        face_y = _centroid(_mask(img, FACE_COLOR))[1]
        black = _mask(img, (0, 0, 0))
        black[: int(face_y)] = False  # keep the mouth, drop the eyes
        ys, xs = np.nonzero(black)
        height, width = np.ptp(ys) + 1, np.ptp(xs) + 1
        if height / width > 0.8:
            return "surprised"
        if height / width < 0.18:
            return "neutral"
        middle = np.abs(xs - xs.mean()) < 0.1 * width
        ends = np.abs(xs - xs.mean()) > 0.35 * width
        return "happy" if ys[middle].mean() > ys[ends].mean() else "sad"
    if category == "sport_recognition":
        ys, xs = np.nonzero(_non_background(img))
        cy, cx, radius = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2, (np.ptp(ys) + 1) / 2
        yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < (0.85 * radius) ** 2
        share = {name: _mask(img, color)[inside].mean() for name, color in
                 {"basketball": BASKETBALL_COLOR, "tennis": TENNIS_COLOR, "black": (0, 0, 0), "red": STITCH_COLOR}.items()}
        if share["basketball"] > 0.5:
            return "basketball"
        if share["tennis"] > 0.5:
            return "tennis"
        if share["black"] > 0.1:
            return "soccer"
        return "baseball" if share["red"] > 0.01 else "unclear"
    raise AssertionError(f"no reader for {category}")


@pytest.fixture(scope="module")
def synthetic_rows() -> list[dict]:
    return list(iter_synthetic_items(n_per_category=12, seed=3))


def test_synthetic_images_show_the_vision_answer(synthetic_rows):
    seen = [(r["mc2_id"], r["category"], r["answer_vision"], _read_image(r)) for r in synthetic_rows]
    assert [item for item in seen if item[2] != item[3]] == []


def test_synthetic_answers_conflict_and_do_not_overlap(synthetic_rows):
    for row in synthetic_rows:
        vision, text = row["answer_vision"].lower(), row["answer_text"].lower()
        assert vision != text and vision not in text and text not in vision, row
        assert text in row["context"].lower() and vision not in row["context"].lower(), row
        assert vision not in row["question"].lower() and text not in row["question"].lower(), row
        assert 1 <= row["context"].count(".") <= 2, row


def test_synthetic_categories_ids_and_balance(synthetic_rows):
    assert Counter(r["category"] for r in synthetic_rows) == {c: 12 for c in CATEGORIES}
    assert [r["mc2_id"] for r in synthetic_rows] == list(range(len(synthetic_rows)))
    assert synthetic_rows[5]["image_id"] == "synthetic-000005"
    for category, spec in SPECS.items():
        k_answers = len(spec.answers)
        pairs = [answer_pair(category, k, seed=3) for k in range(k_answers * (k_answers - 1))]
        assert len(set(pairs)) == len(pairs) and all(v != t for v, t in pairs)
        assert Counter(v for v, _ in pairs) == {a: k_answers - 1 for a in spec.answers}


def test_synthetic_is_deterministic():
    first, again = generate_synthetic_mc2(2, seed=7), generate_synthetic_mc2(2, seed=7)
    raw = lambda ds: ds.cast_column("image", datasets.Image(decode=False)).to_list()  # noqa: E731
    assert raw(first) == raw(again)
    assert raw(first) != raw(generate_synthetic_mc2(2, seed=8))
    # Item i depends only on (seed, index): a larger set extends a smaller one.
    assert raw(first)[9] == synthetic_item(9, seed=7)
    assert first.features == PREPARED_FEATURES and first.column_names == list(PREPARED_COLUMNS)
    assert first[0]["image"].size == (224, 224)


def test_write_synthetic_and_resolve(tmp_path, monkeypatch):
    out = tmp_path / "synth"
    report = write_synthetic_mc2(out, n_per_category=2, seed=1, progress=False)
    assert report.n_items == 16
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["source"] == "synthetic" and manifest["seed"] == 1 and manifest["n"] == 16
    assert manifest["per_category"] == {c: 2 for c in CATEGORIES}
    monkeypatch.setenv(ENV_VAR, str(out))
    source = resolve_source()
    assert Path(source.path) == out.absolute() and "synthetic" in source.description
    assert lmms_dataset_args(source) == (str(out.absolute()), {"load_from_disk": True})
    ds = load_mc2()
    assert ds.column_names == list(PREPARED_COLUMNS) and ds["mc2_id"] == list(range(16))
    assert ds[3]["answer_vision"] == synthetic_item(3, seed=1)["answer_vision"]
    # Writing again over an earlier output is allowed and replaces it.
    write_synthetic_mc2(out, n_per_category=1, seed=1, progress=False)
    assert len(load_mc2(resolve_source())) == 8


# --------------------------------------------------------------------------------------------
# prepare_mc2 on a fake COCO root
# --------------------------------------------------------------------------------------------

def _picked_records() -> list[dict]:
    """10 real records: the first of each category, then the next two of the file."""
    real = _real_records()
    firsts = [next(i for i, r in enumerate(real) if r["task"] == c) for c in CATEGORIES]
    extra = [i for i in range(len(real)) if i not in firsts][:2]
    return [dict(real[i]) for i in firsts + extra]


@pytest.fixture()
def fake_mc2(tmp_path):
    """(questions.json, COCO root) with 10 real MC2 records and tiny JPEGs split over train/val."""
    records = _picked_records()
    questions = tmp_path / "questions.json"
    questions.write_text(json.dumps(records), encoding="utf-8")
    root = tmp_path / "coco"
    for n, record in enumerate(records):
        split = "train2014" if n % 2 == 0 else "val2014"
        (root / split).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 6), (20 * n, 100, 200)).save(root / split / f"COCO_{split}_{record['image_id']}.jpg")
    return questions, root, records


def _image_path(root: Path, image_id: str) -> Path:
    return next(root.glob(f"*/COCO_*_{image_id}.jpg"))


def test_prepare_round_trip(fake_mc2, tmp_path):
    questions, root, records = fake_mc2
    out = tmp_path / "prepared"
    report = prepare_mc2(questions, root, out, progress=False)
    assert report.n_items == 10 and report.n_skipped == 0
    loaded = datasets.load_from_disk(str(out))
    assert list(loaded) == ["test"]
    ds = loaded["test"]
    assert ds.column_names == list(PREPARED_COLUMNS) and ds.features == PREPARED_FEATURES
    assert ds["mc2_id"] == list(range(10))
    assert ds["image_id"] == [r["image_id"] for r in records]
    assert ds["category"] == [r["task"] for r in records]
    assert ds["answer_text"] == [r["answer_text"] for r in records]
    assert ds[3]["image"].size == (8, 6)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["questions_sha256"] == sha256_file(questions)
    assert manifest["n_items"] == 10 and manifest["n_skipped"] == 0 and manifest["format_version"] == 1
    assert manifest["per_category"] == dict(Counter(r["task"] for r in records))
    assert set(manifest["per_category"]) == set(CATEGORIES)
    assert {"created", "amps_eval_version"} <= set(manifest)
    assert json.loads((out / SKIPPED_NAME).read_text()) == []
    # Re-running into the earlier output is allowed.
    prepare_mc2(questions, root, out, progress=False)


def test_prepare_missing_image_is_an_error(fake_mc2, tmp_path):
    questions, root, records = fake_mc2
    _image_path(root, records[4]["image_id"]).unlink()
    out = tmp_path / "prepared"
    with pytest.raises(MissingImagesError) as info:
        prepare_mc2(questions, root, out, progress=False)
    message = str(info.value)
    assert records[4]["image_id"] in message and "--skip-missing" in message and "1 of 10" in message
    assert not out.exists()


def test_prepare_skip_missing_records_skipped(fake_mc2, tmp_path):
    questions, root, records = fake_mc2
    _image_path(root, records[4]["image_id"]).unlink()
    _image_path(root, records[7]["image_id"]).write_bytes(b"not a jpeg")
    out = tmp_path / "prepared"
    report = prepare_mc2(questions, root, out, skip_missing=True, progress=False)
    assert report.n_items == 8 and report.n_skipped == 2
    skipped = json.loads((out / SKIPPED_NAME).read_text())
    assert [(s["mc2_id"], s["image_id"]) for s in skipped] == [(4, records[4]["image_id"]), (7, records[7]["image_id"])]
    assert skipped[0]["reason"] == "missing" and skipped[1]["reason"].startswith("unreadable")
    ds = datasets.load_from_disk(str(out))["test"]
    assert ds["mc2_id"] == [0, 1, 2, 3, 5, 6, 8, 9]
    assert json.loads((out / MANIFEST_NAME).read_text())["n_skipped"] == 2


def test_prepare_refuses_a_truncated_jpeg_even_when_pil_would_pad_it(fake_mc2, tmp_path, monkeypatch):
    """lmms-eval sets LOAD_TRUNCATED_IMAGES process-wide; PIL then decodes a cut JPEG with grey rows.
    prepare-mc2 must still see that the file is cut."""
    from PIL import Image, ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    questions, root, records = fake_mc2
    path = _image_path(root, records[2]["image_id"])
    noise = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, format="JPEG", quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.9)])
    with Image.open(path) as img:
        img.load()  # what the tasks would have done: no error, grey rows
    with pytest.raises(MissingImagesError) as info:
        prepare_mc2(questions, root, tmp_path / "prepared", progress=False)
    assert records[2]["image_id"] in str(info.value) and "truncated" in str(info.value)


def test_prepare_lists_at_most_twenty_missing_ids(tmp_path):
    records = _real_records()[:25]
    questions = tmp_path / "questions.json"
    questions.write_text(json.dumps(records))
    (tmp_path / "coco" / "val2014").mkdir(parents=True)
    with pytest.raises(MissingImagesError) as info:
        prepare_mc2(questions, tmp_path / "coco", tmp_path / "out", skip_missing=True, progress=False)
    message = str(info.value)
    assert "and 5 more" in message and records[0]["image_id"] in message and records[24]["image_id"] not in message


def test_prepare_bad_coco_root(fake_mc2, tmp_path):
    questions, _, _ = fake_mc2
    with pytest.raises(MissingImagesError, match="train2014"):
        prepare_mc2(questions, tmp_path, tmp_path / "out", progress=False)


def test_prepare_malformed_record(fake_mc2, tmp_path):
    questions, root, records = fake_mc2
    del records[3]["answer_vision"]
    questions.write_text(json.dumps(records))
    with pytest.raises(MC2FormatError, match=r"record 3 .*'answer_vision'"):
        prepare_mc2(questions, root, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_prepare_refuses_foreign_nonempty_dir(fake_mc2, tmp_path):
    questions, root, _ = fake_mc2
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="not empty"):
        prepare_mc2(questions, root, out, progress=False)
    with pytest.raises(OutputDirError):
        write_synthetic_mc2(out, n_per_category=1)
    assert (out / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------------------------
# Source resolution
# --------------------------------------------------------------------------------------------


def test_without_data_the_error_names_the_download_command_and_the_default_folder(tmp_path):
    env = {HOME_VAR: str(tmp_path / "home")}
    with pytest.raises(MC2SourceError) as info:
        resolve_source(env)
    message = str(info.value)
    assert "amps-eval prepare-mc2 --download" in message and str(tmp_path / "home" / "mc2") in message
    with pytest.raises(MC2SourceError):
        resolve_source({**env, ENV_VAR: "  "})  # blank counts as unset


def test_the_default_folder_is_found_without_any_variable(tmp_path):
    env = {HOME_VAR: str(tmp_path)}
    assert default_data_dir(env) == tmp_path / "mc2"
    assert default_data_dir({}) == Path("~/.cache/amps-eval/mc2").expanduser().absolute()
    write_synthetic_mc2(default_data_dir(env), n_per_category=1, seed=1, progress=False)
    source = resolve_source(env)
    assert Path(source.path) == tmp_path / "mc2" and len(load_mc2(source)) == 8


def test_an_explicit_folder_wins_over_the_variable(tmp_path):
    write_synthetic_mc2(tmp_path / "a", n_per_category=1, seed=1, progress=False)
    source = resolve_source({ENV_VAR: str(tmp_path / "missing")}, folder=tmp_path / "a")
    assert Path(source.path) == tmp_path / "a"
    with pytest.raises(MC2SourceError, match="missing"):
        resolve_source({ENV_VAR: str(tmp_path / "missing")})


@pytest.mark.parametrize("make_bad", [lambda p: p / "nope", lambda p: p])
def test_resolve_source_bad_folder(monkeypatch, tmp_path, make_bad):
    monkeypatch.setenv(ENV_VAR, str(make_bad(tmp_path)))
    with pytest.raises(MC2SourceError) as info:
        resolve_source()
    message = str(info.value)
    assert ENV_VAR in message and "prepare-mc2" in message and "synth-mc2" in message


def test_building_task_documents_writes_nothing_into_the_data_folder(tmp_path):
    from amps_eval.mc2.docs import TaskSpec, task_docs

    folder = tmp_path / "synth"
    write_synthetic_mc2(folder, n_per_category=2, seed=0, progress=False)
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    docs = task_docs(load_mc2(resolve_source(folder=folder)), TaskSpec("text", "color", "both"))
    assert len(docs) == 4 and set(docs["order"]) == {"vision_first", "text_first"}
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before


def test_a_prepared_folder_left_beside_its_place_by_a_kill_is_put_back_then_replaced(tmp_path):
    from amps_eval.staged_output import previous_path

    out = tmp_path / "data"
    write_synthetic_mc2(out, n_per_category=1, seed=1, progress=False)
    os.replace(out, previous_path(out))  # killed between "old aside" and "new in"
    (tmp_path / ".data.partial-stale").mkdir()  # and a staging folder of an earlier kill
    write_synthetic_mc2(out, n_per_category=2, seed=1, progress=False)
    assert len(load_mc2(resolve_source(folder=out))) == 16
    assert not previous_path(out).exists() and not (tmp_path / ".data.partial-stale").exists()
