"""The amps-eval command line as a user runs it."""

import json
from pathlib import Path

import pytest
from PIL import Image

from amps_eval.cli import main
from amps_eval.mc2.schema import CATEGORIES

MC2_FILE = Path(__file__).resolve().parents[2] / "shared" / "mc2" / "evaluate_final.json"


@pytest.fixture
def fake_coco(tmp_path):
    if not MC2_FILE.exists():
        pytest.skip(f"the MC2 question file is not at {MC2_FILE}")
    records = json.loads(MC2_FILE.read_text())[:4]
    questions = tmp_path / "questions.json"
    questions.write_text(json.dumps(records))
    root = tmp_path / "coco"
    (root / "train2014").mkdir(parents=True)
    (root / "val2014").mkdir()
    for i, record in enumerate(records[:3]):  # the 4th image is missing
        folder, prefix = ("train2014", "COCO_train2014_") if i % 2 else ("val2014", "COCO_val2014_")
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(root / folder / f"{prefix}{record['image_id']}.jpg")
    return questions, root, records[3]["image_id"]


def test_prepare_mc2_with_a_missing_image_fails_naming_it(fake_coco, tmp_path, capsys):
    questions, root, missing_id = fake_coco
    code = main(["prepare-mc2", "--questions", str(questions), "--images", str(root), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert missing_id in err and "--skip-missing" in err
    assert not (tmp_path / "out").exists()


def test_prepare_mc2_skip_missing_records_what_was_skipped(fake_coco, tmp_path, capsys):
    questions, root, missing_id = fake_coco
    out = tmp_path / "out"
    assert main(["prepare-mc2", "--questions", str(questions), "--images", str(root), "--out", str(out), "--skip-missing"]) == 0
    assert "wrote 3 MC2 items" in capsys.readouterr().out
    skipped = json.loads((out / "skipped.json").read_text())
    assert [s["image_id"] for s in skipped] == [missing_id] and skipped[0]["mc2_id"] == 3


def test_synth_mc2_writes_a_folder_the_tasks_read(tmp_path, capsys):
    from amps_eval.mc2.source import load_mc2, resolve_source

    out = tmp_path / "synth"
    assert main(["synth-mc2", "--out", str(out), "--n-per-category", "2"]) == 0
    assert f"export AMPS_MC2_DATA={out.resolve()}" in capsys.readouterr().out
    data = load_mc2(resolve_source({"AMPS_MC2_DATA": str(out)}))
    assert len(data) == 16 and set(data["category"]) == set(CATEGORIES)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_study_refuses_a_table_alpha_that_is_not_finite(value, capsys):
    from amps_eval.cli import main

    with pytest.raises(SystemExit) as info:
        main(["study", "--out", "unused", f"--table-alpha={value}"])
    assert info.value.code == 2 and "finite" in capsys.readouterr().err
