"""A killed study resumes (issue 25, section 1): finished units are kept, checked, reused.

The unit records (`amps_eval.resume.Units`) are tested on their own first (fast); then a tiny study
is interrupted at several points by a hook that stops it inside a chosen unit, after the unit has
left part of its output (as a kill leaves it), and resumed: each rerun recomputes only what was not
finished and the published study equals an uninterrupted one's.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from amps_eval.resume import RECORDS, Units, fingerprint
from amps_eval.staged_output import staging_path


def _writer(path: Path, text: str, calls: list):
    def compute():
        calls.append(path.name)
        path.write_text(text)
        return text
    return compute


def test_a_finished_unit_is_reused_only_with_the_same_key_and_intact_outputs(tmp_path):
    calls: list = []
    data = tmp_path / "input.txt"
    data.write_text("v1")
    units = Units(tmp_path, {"settings": 1}, say=lambda text: None)
    out = tmp_path / "a.txt"
    assert units.run("a", [out], _writer(out, "A", calls), inputs={"data": data}) == "A"
    assert units.run("a", [out], _writer(out, "A", calls), inputs={"data": data}) is None  # reused
    assert calls == ["a.txt"] and units.reused == ["a"] and units.computed == ["a"]
    # another setting of the run, another argument of the unit, a changed input: computed again
    assert Units(tmp_path, {"settings": 2}, say=print).run("a", [out], _writer(out, "A", calls), inputs={"data": data}) == "A"
    assert units.run("a", [out], _writer(out, "A", calls), inputs={"data": data}) == "A"  # back to settings 1
    assert units.run("a", [out], _writer(out, "A", calls), arguments={"alpha": 2}, inputs={"data": data}) == "A"
    data.write_text("v2")
    assert units.run("a", [out], _writer(out, "A", calls), arguments={"alpha": 2}, inputs={"data": data}) == "A"
    assert len(calls) == 5
    # an output changed or removed after it was recorded: computed again
    out.write_text("tampered")
    assert units.run("a", [out], _writer(out, "A", calls), arguments={"alpha": 2}, inputs={"data": data}) == "A"
    out.unlink()
    assert units.run("a", [out], _writer(out, "A", calls), arguments={"alpha": 2}, inputs={"data": data}) == "A"
    assert len(calls) == 7


def test_a_unit_that_did_not_finish_has_no_record_and_its_partial_output_goes(tmp_path):
    units = Units(tmp_path, {}, say=lambda text: None)
    folder = tmp_path / "run"

    def killed():
        folder.mkdir()
        (folder / "half.json").write_text("{")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        units.run("run", [folder], killed)
    assert units.found() == 0 and (folder / "half.json").exists()

    def whole():
        folder.mkdir()
        (folder / "results.json").write_text("{}")

    units.run("run", [folder], whole)
    assert sorted(p.name for p in folder.iterdir()) == ["results.json"]  # the partial file was removed first
    assert units.found() == 1
    units.discard()
    assert not (tmp_path / RECORDS).exists()


def test_fingerprints_follow_the_content(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("1")
    before = fingerprint(tmp_path / "d")
    assert fingerprint(tmp_path / "d") == before
    (tmp_path / "d" / "x").write_text("2")
    assert fingerprint(tmp_path / "d") != before
    assert fingerprint("org/hub-id") == "org/hub-id" and fingerprint(None) is None


# --- the study, interrupted and resumed -------------------------------------------------------------


class Stop(KeyboardInterrupt):
    """What the hook raises inside the unit it interrupts (a KeyboardInterrupt: Ctrl-C)."""


@pytest.fixture
def record_units(monkeypatch):
    """Record which units each study computes and reuses; ``stop_in`` interrupts a unit after it
    wrote part of its output."""
    state = {"computed": [], "reused": [], "stop_in": None}
    real = Units.run

    def run(self, name, outputs, compute, **keys):
        def hooked():
            if name == state["stop_in"]:
                for output in outputs:  # a partial output, as a kill half-way leaves it
                    Path(output).parent.mkdir(parents=True, exist_ok=True)
                    if not Path(output).suffix:
                        Path(output).mkdir(exist_ok=True)
                        (Path(output) / "partial.json").write_text("{")
                    else:
                        Path(output).write_text("partial")
                raise Stop
            state["computed"].append(name)
            return compute()

        result = real(self, name, outputs, hooked, **keys)
        if name in self.reused and name not in state["computed"]:
            state["reused"].append(name)
        return result

    monkeypatch.setattr(Units, "run", run)

    def reset(stop_in=None):
        state.update(computed=[], reused=[], stop_in=stop_in)
        return state

    return reset


def _settings(out: Path, pretrained: Path, **changes):
    from amps_eval.study import StudySettings

    given = {"out": out, "models": ("amps_qwen",), "pretrained": str(pretrained), "n_per_category": 1,
             "alphas": (0.0,), "epochs": 1, "device": "cpu", "image_size": 56, "limit": 4,
             "synthetic": True}
    return StudySettings(**{**given, **changes})


def _published(out: Path) -> dict[str, bytes]:
    """The study's outputs that must not depend on the interruptions (lmms-eval's results files and
    the summary carry dates and timings; the steering files the data folder's absolute path, and so
    the reports' steering_sha256 of each run)."""
    stamp = re.compile(rb"\d{8}_\d{6}(\.\d+)?")  # lmms-eval's file names: the time of the run
    sha = re.compile(rb"steering_sha256=[0-9a-f]{64}")
    date = re.compile(rb"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?Z?")  # the leaderboard's run dates
    # (a missing run's suggested command names the lowest training seed's steering file, whatever the
    # runs' dates: amps_eval.report.commands.steering_of; so the seed files are compared unmasked)
    keep = {}
    for path in sorted(out.rglob("*")):
        rel = str(path.relative_to(out))
        if not path.is_file() or rel.endswith("_results.json") or rel == "study_summary.json" or "diagnostics" in rel:
            continue
        data = _content(path)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data = repr(sorted((k, v.tolist()) for k, v in load_file(path).items())).encode()
        keep[stamp.sub(b"STAMP", rel.encode()).decode()] = date.sub(b"DATE", sha.sub(b"steering_sha256=SHA",
                                                                                stamp.sub(b"STAMP", data)))
    return keep


@pytest.fixture
def cheap_study(monkeypatch):
    """The study's steps with every model computation replaced by a fake that writes deterministic
    files from its arguments (the orchestration, the data and the resume logic stay real): fast."""
    import amps_eval.families
    import amps_eval.fit
    import amps_eval.mcs_run
    import amps_eval.report.sweep
    import amps_eval.runner
    import amps_eval.study as study

    def run_mcs(model, pretrained, out, **kwargs):
        for path in (out, Path(f"{out}.meta.json"), out.with_name(f"{out.stem}.summary.json")):
            path.write_text(f"{model} {kwargs['prompt']} {path.name}")

    def fit(settings, out, progress=True):
        Path(out).write_text(f"{settings.method} {settings.train}")

    class Session:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def run(self, model, args, tasks, output, **kwargs):
            output.mkdir(parents=True)
            (output / "results.json").write_text(f"{args} {tasks}")
            return type("Run", (), {"results": {"results": {t: {"target_acc,none": 0.5} for t in tasks}}})()

    def run_sweep(settings, session=None):
        for alpha in settings.alphas:
            (settings.out / f"alpha_{alpha}").mkdir(parents=True)
            (settings.out / f"alpha_{alpha}" / "results.json").write_text(f"{settings.method} {alpha}")
        folder = Path(settings.extra_model_args["diagnostics"])
        folder.mkdir(parents=True)
        (folder / "d.jsonl").write_text(Path(settings.steering).read_text())

    def report(out, table_alpha):
        files = sorted(str(p.relative_to(out)) for p in (out / "runs").rglob("*") if p.is_file())
        (out / "tables.md").write_text("\n".join(files))
        return type("Report", (), {"text": "tables", "figures": []})()

    monkeypatch.setattr(amps_eval.mcs_run, "run_mcs", run_mcs)
    monkeypatch.setattr(amps_eval.fit, "fit", fit)
    monkeypatch.setattr(amps_eval.runner, "EvalSession", Session)
    monkeypatch.setattr(amps_eval.report.sweep, "run_sweep", run_sweep)
    monkeypatch.setattr(study, "write_study_report", report)
    monkeypatch.setattr(study, "_layer", lambda settings, pretrained: 1)
    monkeypatch.setattr(amps_eval.families, "check_pretrained", lambda pretrained, model: None)


def _content(path: Path) -> bytes:
    """A file's bytes, without the creation times two identical studies differ in: the data
    manifest's ``created`` and a PDF figure's ``/CreationDate``."""
    if path.name == "mc2_manifest.json":
        return json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "created"}).encode()
    if path.suffix == ".pdf":
        return re.sub(rb"/CreationDate \(D:[^)]*\)", b"", path.read_bytes())
    return path.read_bytes()


def _tree(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): _content(p) for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "study_summary.json"}


def test_the_study_interrupted_in_each_kind_of_unit_resumes_and_publishes_the_same(
        tmp_path, cheap_study, record_units, monkeypatch, capsys):
    from amps_eval.study import run_study

    checkpoint = tmp_path / "model"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "a")
    state = record_units()
    run_study(_settings(Path("study"), checkpoint))
    everything = list(state["computed"])
    assert everything[0] == "data" and len(everything) == len(set(everything)) > 10
    reference = _tree(tmp_path / "a" / "study")

    monkeypatch.chdir(tmp_path / "b")
    out = Path("study")
    cuts = [next(u for u in everything if u.startswith(kind)) for kind in ("data", "mcs ", "fit ", "run ", "sweep ")]
    cuts.append(everything[-1])
    done = 0
    for cut in cuts:
        state = record_units(stop_in=cut)
        with pytest.raises(Stop):
            run_study(_settings(out, checkpoint))
        at = everything.index(cut)
        assert state["reused"] == everything[:done] and state["computed"] == everything[done:at], cut
        assert not out.exists()
        done = at
    capsys.readouterr()
    state = record_units()
    run_study(_settings(out, checkpoint))
    printed = capsys.readouterr().out
    assert state["reused"] == everything[:done] and state["computed"] == everything[done:]
    assert f"{done} of {len(everything)} units reused" in printed and "reusing fit " in printed
    assert _tree(tmp_path / "b" / "study") == reference  # no record, no partial output of a killed unit

    # a changed input (the checkpoint) or another setting: nothing is reused
    state = record_units(stop_in=everything[3])
    with pytest.raises(Stop):
        run_study(_settings(out, checkpoint))
    (checkpoint / "config.json").write_text('{"changed": 1}')
    state = record_units(stop_in=everything[4])
    with pytest.raises(Stop):
        run_study(_settings(out, checkpoint))
    assert state["reused"] == ["data"] and state["computed"] == everything[1:4]  # the data does not read it
    state = record_units()
    run_study(_settings(out, checkpoint, epochs=3))
    assert state["reused"] == [] and state["computed"] == everything


RESUMED_METHODS = ("none", "inst", "mean", "l2s", "amps")
"""Every kind of unit (prompt baseline, mean and trained fits, sweeps), without ``cot`` and
``fewshot`` (a tiny random model never stops: cot's 512 tokens per answer would dominate the test)."""


@pytest.mark.slow
def test_a_study_interrupted_at_several_points_resumes_and_publishes_what_an_uninterrupted_one_does(
        tmp_path, tiny_qwen_path, record_units, monkeypatch, capsys):
    from amps_eval.study import run_study

    # 2 training seeds: each seed still has its own fit and sweep units, and there are fewer than with 3
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    state = record_units()
    run_study(_settings(Path("study"), tiny_qwen_path, seeds=2, methods=RESUMED_METHODS))
    everything = list(state["computed"])
    reference = _published(tmp_path / "a" / "study")
    assert state["reused"] == [] and everything[0] == "data" and len(everything) == len(set(everything))

    monkeypatch.chdir(tmp_path / "b")
    out = Path("study")
    staging = staging_path(out.absolute())
    cuts = [u for u in everything if u.startswith("fit ")][1], [u for u in everything if u.startswith("sweep ")][-1]
    done = 0
    for cut in cuts:
        state = record_units(stop_in=cut)
        with pytest.raises(Stop):
            run_study(_settings(out, tiny_qwen_path, seeds=2, methods=RESUMED_METHODS))
        at = everything.index(cut)
        assert state["reused"] == everything[:done] and state["computed"] == everything[done:at]
        assert not out.exists() and staging.is_dir()  # nothing published, the finished units kept
        done = at
    capsys.readouterr()
    state = record_units()
    run_study(_settings(out, tiny_qwen_path, seeds=2, methods=RESUMED_METHODS))
    printed = capsys.readouterr().out
    assert state["reused"] == everything[:done] and state["computed"] == everything[done:]  # only the rest
    assert "resuming the interrupted study" in printed and f"{done} of {len(everything)} units reused" in printed
    got = _published(tmp_path / "b" / "study")
    if got != reference:  # name the differing lines of the text outputs
        import difflib

        lines = [f"{name}: {line}" for name in sorted(reference) if got.get(name) != reference[name]
                 and name.endswith((".md", ".tex", ".html", ".json")) for line in difflib.unified_diff(
                     reference[name].decode(errors="replace").splitlines(), got.get(name, b"").decode(
                         errors="replace").splitlines(), lineterm="", n=0)][:40]
        raise AssertionError("the resumed study published other outputs:\n" + "\n".join(lines))
    assert not (tmp_path / "b" / "study" / RECORDS).exists() and not staging.exists()


def test_a_staging_folder_of_other_settings_is_not_resumed_but_emptied(tmp_path, capsys):
    from amps_eval.staged_output import staged_output
    from amps_eval.study import CONTEXT_NAME, OWNED, StudySettings, resumable, resume_context

    out = tmp_path / "study"
    staging = staging_path(out.absolute())
    (staging / RECORDS).mkdir(parents=True)
    (staging / "tables.md").write_text("from the interrupted study")
    interrupted = resume_context(StudySettings(out=out, epochs=1))
    (staging / RECORDS / CONTEXT_NAME).write_text(json.dumps(interrupted))
    assert resumable(staging, resume_context(StudySettings(out=out, epochs=1)))  # the same settings
    assert "resuming the interrupted study" in capsys.readouterr().out
    other = resume_context(StudySettings(out=out, epochs=2))
    assert not resumable(staging, other)
    assert "not resuming" in capsys.readouterr().out
    with pytest.raises(RuntimeError):
        with staged_output(out, OWNED, resume=lambda folder: resumable(folder, other)) as folder:
            assert not any(folder.iterdir())  # emptied: nothing of the other settings is reused
            raise RuntimeError("stop")
    assert staging.is_dir()  # a resumable study's failure keeps its staging folder for the next run
    assert "finished parts are kept" in capsys.readouterr().out
    with staged_output(out, OWNED) as folder:  # without resume (a sweep): a stale staging folder goes
        assert not any(folder.iterdir())


@pytest.mark.slow
def test_a_study_killed_with_sigkill_resumes_from_its_finished_units(tmp_path, tiny_qwen_path, record_units, capsys):
    """A real SIGKILL (no exception handler runs): the records written so far are what the next run reuses."""
    import signal
    import subprocess
    import sys
    import time

    from amps_eval.study import run_study

    out = tmp_path / "study"
    staging = staging_path(out.absolute())
    command = [sys.executable, "-m", "amps_eval.cli", "study", "--model", "amps_qwen", "--pretrained",
               str(tiny_qwen_path), "--out", str(out), "--n-per-category", "1", "--alphas", "0", "--epochs", "1",
               "--device", "cpu", "--limit", "4", "--synthetic"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 300
    try:
        while len(list((staging / RECORDS).glob("*.json"))) < 2:  # the data and the first MCS file are done
            assert process.poll() is None, "the study ended before it could be killed"
            assert time.monotonic() < deadline, "the study did not get far enough in time"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not out.exists()
    state = record_units(stop_in="fit amps_qwen mean")
    with pytest.raises(Stop):
        run_study(_settings(out, tiny_qwen_path, image_size=84))
    assert "resuming the interrupted study" in capsys.readouterr().out
    assert state["reused"][:2] == ["data", "mcs amps_qwen none"]
    assert "data" not in state["computed"] and "mcs amps_qwen none" not in state["computed"]
