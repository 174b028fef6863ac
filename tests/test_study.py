"""The study's output folder: written in a staging folder, published only when the study finished;
a killed or failed study leaves the previous output whole; other people's files are kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from amps_eval.staged_output import previous_path, recover, staged_output, staging_path
from amps_eval.study import OWNED, SETTINGS_NAME, StudySettings, _data, check_output_folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def previous_study(out: Path) -> dict[str, bytes]:
    (out / "runs" / "amps_qwen" / "none").mkdir(parents=True)
    (out / "runs" / "amps_qwen" / "none" / "old_results.json").write_text('{"results": {}}')
    (out / SETTINGS_NAME).write_text("{}")
    (out / "tables.md").write_text("old tables\n")
    (out / "notes.txt").write_text("mine")
    return snapshot(out)


def test_a_finished_block_replaces_owned_entries_keeps_others_and_rebases_paths(tmp_path):
    out = tmp_path / "study"
    previous_study(out)
    with staged_output(out, OWNED) as staging:
        assert staging == staging_path(out.absolute()) and not any(staging.iterdir())
        (staging / SETTINGS_NAME).write_text("{}")
        (staging / "leaderboard.md").write_text(f"[results]({staging}/runs/x.json)\n")
        assert (out / "tables.md").read_text() == "old tables\n"  # untouched while staging
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "tables.md").exists() and not (out / "runs").exists()  # the old study's own
    assert (out / "leaderboard.md").read_text() == f"[results]({out}/runs/x.json)\n"
    assert not staging_path(out.absolute()).exists() and not previous_path(out.absolute()).exists()


def test_a_failed_block_leaves_the_previous_output_whole(tmp_path):
    out = tmp_path / "study"
    before = previous_study(out)
    with pytest.raises(RuntimeError, match="boom"):
        with staged_output(out, OWNED) as staging:
            (staging / "tables.md").write_text("half")
            raise RuntimeError("boom")
    assert snapshot(out) == before
    assert not staging_path(out.absolute()).exists()  # removed: a full disk must not stay full
    staging_path(out.absolute()).mkdir()  # as a killed run leaves it
    (staging_path(out.absolute()) / "tables.md").write_text("half")
    with staged_output(out, OWNED) as staging:  # the next run starts from an empty staging folder
        assert not any(staging.iterdir())


def test_recorded_paths_keep_the_spelling_of_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with staged_output(Path("results/demo"), OWNED) as staging:
        (staging / "tables.md").write_text(f"- wrote {staging}/figures/f.png\n")
    assert (tmp_path / "results/demo/tables.md").read_text() == "- wrote results/demo/figures/f.png\n"


def test_an_interrupted_swap_is_repaired(tmp_path):
    out = tmp_path / "study"
    before = previous_study(out)
    os.replace(out, previous_path(out))  # killed between the two renames
    recover(out)
    assert snapshot(out) == before and not previous_path(out).exists()


def test_a_folder_that_is_not_a_study_is_refused(tmp_path):
    (tmp_path / "runs" / "someone-elses").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not a study folder"):
        check_output_folder(tmp_path)
    assert (tmp_path / "runs" / "someone-elses").is_dir()
    check_output_folder(tmp_path / "new")


def test_generated_data_is_reused_only_with_the_same_settings(tmp_path):
    settings = StudySettings(out=tmp_path, n_per_category=1, image_size=56)
    folder = _data(settings, tmp_path / "a")
    stamp = (folder / "mc2_manifest.json").read_text()
    copied = _data(settings, tmp_path / "b", previous=tmp_path / "a")  # the previous study's data, copied
    assert (copied / "mc2_manifest.json").read_text() == stamp
    bigger = StudySettings(out=tmp_path, n_per_category=2, image_size=56)
    regenerated = _data(bigger, tmp_path / "c", previous=tmp_path / "a")
    manifest = json.loads((regenerated / "mc2_manifest.json").read_text())
    assert manifest["n_per_category"] == 2 and manifest["n_items"] == 16


@pytest.mark.slow
def test_a_killed_study_leaves_the_previous_output_whole(tmp_path, tiny_qwen_path):
    out = tmp_path / "study"
    before = previous_study(out)
    command = [sys.executable, "-m", "amps_eval.cli", "study", "--model", "amps_qwen", "--pretrained",
               str(tiny_qwen_path), "--out", str(out), "--n-per-category", "1", "--alphas", "0", "--epochs", "1",
               "--device", "cpu", "--synthetic"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    staging = staging_path(out.absolute())
    deadline = time.monotonic() + 120
    try:
        while not (staging / "mcs").is_dir():  # the study is under way: data written, MCS started
            assert process.poll() is None, "the study ended before it could be killed"
            assert time.monotonic() < deadline, "the study did not start writing in time"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert snapshot(out) == before
    assert (staging / "data" / "mc2_manifest.json").is_file()


def test_a_study_into_a_folder_below_a_file_stops_before_any_work(tmp_path):
    from amps_eval.files import OutputError
    from amps_eval.study import run_study

    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(OutputError, match="file.txt"):
        run_study(StudySettings(out=tmp_path / "file.txt" / "study"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_a_sweep_into_a_folder_below_a_file_stops_before_any_run(tmp_path):
    from amps_eval.files import OutputError
    from amps_eval.report.sweep import SweepSettings, run_sweep

    (tmp_path / "file.txt").write_text("x")
    steering = tmp_path / "steer.safetensors"
    steering.write_bytes(b"not used")
    settings = SweepSettings(model="amps_qwen", pretrained="/no/such/model", method="mean", steering=steering,
                             alphas=(0.0,), out=tmp_path / "file.txt" / "sweep")
    with pytest.raises(OutputError, match="file.txt"):
        run_sweep(settings, progress=lambda text: None)


def test_several_model_checkpoint_pairs_one_study():
    """`--model a,b,c --pretrained x,y,z`: one checkpoint per model, a distinct output name for each
    pair (numbered where a model repeats), and a clear error for unequal lists."""
    from amps_eval.study import stems

    settings = StudySettings(models=("amps_auto", "amps_qwen", "amps_auto"), pretrained=("a/x", "b/y", "c/z"))
    assert settings.pretrained == ("a/x", "b/y", "c/z")
    assert stems(settings) == ["amps_auto-1", "amps_qwen", "amps_auto-3"]
    assert StudySettings(pretrained="one/path").pretrained == ("one/path",)
    with pytest.raises(ValueError, match="one checkpoint per model"):
        StudySettings(models=("amps_auto", "amps_qwen"), pretrained=("a/x",))


def test_cli_study_takes_pretrained_pairs(tmp_path):
    from amps_eval.cli import build_parser, study_settings

    args = build_parser().parse_args(["study", "--out", str(tmp_path / "s"), "--model", "amps_auto,amps_auto",
                                      "--pretrained", "/ckpt/gemma-3,/ckpt/idefics3"])
    assert study_settings(args).pretrained == ("/ckpt/gemma-3", "/ckpt/idefics3")


def test_the_study_records_a_shipped_organism_relative_to_the_repository_and_hub_ids_as_given(tmp_path):
    from amps_eval.organism import organism_path
    from amps_eval.study import recorded_path

    assert recorded_path(str(organism_path("amps_qwen"))) == "amps_eval/organism/amps-organism-qwen2.5-vl"
    assert recorded_path("Qwen/Qwen2.5-VL-7B-Instruct") == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert recorded_path(str(tmp_path)) == str(tmp_path)  # a folder elsewhere: its own path


def test_seeds_must_be_a_positive_int():
    with pytest.raises(ValueError, match="seeds must be an int >= 1"):
        StudySettings(seeds=0)
    assert StudySettings().seeds == 3
