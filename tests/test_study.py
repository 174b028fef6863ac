"""The study's output folder: a rerun replaces the previous study's outputs, never someone else's."""

from __future__ import annotations

import json

import pytest

from amps_eval.study import SETTINGS_NAME, STUDY_OUTPUTS, StudySettings, _data, clear_previous_outputs


def test_a_rerun_replaces_the_previous_study_and_keeps_other_files(tmp_path):
    (tmp_path / SETTINGS_NAME).write_text("{}")
    for name in ("runs", "figures"):
        (tmp_path / name / "old").mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("mine")
    assert clear_previous_outputs(tmp_path) == ["runs", "figures"]
    assert not any((tmp_path / name).exists() for name in STUDY_OUTPUTS)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_folder_that_is_not_a_study_is_left_alone(tmp_path):
    (tmp_path / "runs" / "someone-elses").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not a study folder"):
        clear_previous_outputs(tmp_path)
    assert (tmp_path / "runs" / "someone-elses").is_dir()
    assert clear_previous_outputs(tmp_path / "new") == []


def test_generated_data_is_reused_only_with_the_same_settings(tmp_path):
    settings = StudySettings(out=tmp_path, n_per_category=1, image_size=56)
    folder = _data(settings, tmp_path)
    stamp = (folder / "mc2_manifest.json").stat().st_mtime_ns
    assert _data(settings, tmp_path) == folder and (folder / "mc2_manifest.json").stat().st_mtime_ns == stamp
    bigger = StudySettings(out=tmp_path, n_per_category=2, image_size=56)
    _data(bigger, tmp_path)
    manifest = json.loads((folder / "mc2_manifest.json").read_text())
    assert manifest["n_per_category"] == 2 and manifest["n_items"] == 16
