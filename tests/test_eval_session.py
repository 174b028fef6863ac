"""Many lmms-eval runs in one process over one load of the model (`amps_eval.runner.EvalSession`):
the same files as a run by model name, nothing of one run left in the next."""

import json
import re

import pytest

from amps_eval.runner import EvalSession, run_lmms_eval
from amps_eval.steering import hooks

from test_steered_wrappers import write_file
from wrapper_helpers import mc2_task_dict

pytestmark = pytest.mark.slow

TIMES = {"date", "start_time", "end_time", "total_evaluation_time_seconds"}


def _normal(value):
    """A results file without its times and with function addresses blanked."""
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items() if k not in TIMES}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    if isinstance(value, str):
        return re.sub(r" at 0x[0-9a-f]+>", ">", value)
    if isinstance(value, float) and value != value:
        return "nan"
    return value


def _files(folder):
    """(results without times, {samples file name without its time: text}, diagnostics lines without the file name)."""
    results = sorted(folder.rglob("*_results.json"))
    assert len(results) == 1, results
    samples = {re.sub(r"^\d{8}_\d{6}_", "", p.name): p.read_text() for p in folder.rglob("*_samples_*.jsonl")}
    diagnostics = [p.read_text() for p in sorted(folder.rglob("amps_diagnostics_*.jsonl"))]
    return _normal(json.loads(results[0].read_text())), samples, diagnostics


def _args(path, method, steering=None, alpha=None, diagnostics=None):
    args = {"pretrained": path, "method": method, "steering": steering, "alpha": alpha, "diagnostics": diagnostics,
            "device": "cpu"}
    return ",".join(f"{k}={v}" for k, v in args.items() if v is not None)


@pytest.fixture
def steering_files(tiny_qwen_path, synthetic_mc2_dir, tmp_path):
    task_dict = mc2_task_dict(synthetic_mc2_dir)
    return {m: write_file(tmp_path / f"{m}.safetensors", tiny_qwen_path, m, task_dict) for m in ("mean", "l2s")}


def test_a_session_run_writes_the_files_of_a_run_by_model_name(tiny_qwen_path, synthetic_mc2_dir, steering_files,
                                                              tmp_path):
    kwargs = {"data": synthetic_mc2_dir, "limit": 4, "batch_size": 2}
    for name, args in {"inst": _args(tiny_qwen_path, "inst"),
                       "l2s": _args(tiny_qwen_path, "l2s", steering_files["l2s"], 4, "{out}/diag")}.items():
        alone, shared = tmp_path / f"{name}_by_name", tmp_path / f"{name}_session"
        run_lmms_eval("amps_qwen", args.format(out=alone), ["mc2_visual"], alone, **kwargs)
        with EvalSession() as session:
            run = session.run("amps_qwen", args.format(out=shared), ["mc2_visual"], shared, **kwargs)
        by_name, in_session = _files(alone), _files(shared)
        assert run.results["config"]["model"] == "amps_qwen"
        # identical but for the folder names inside model_args and the diagnostics' settings line
        assert json.loads(json.dumps(in_session[0]).replace(str(shared), str(alone))) == by_name[0]
        assert in_session[1] == by_name[1]
        assert [d.replace(str(shared), str(alone)) for d in in_session[2]] == by_name[2]
        assert len(by_name[2]) == (name == "l2s")


def test_a_run_after_others_in_one_session_equals_it_alone(tiny_qwen_path, synthetic_mc2_dir, steering_files,
                                                          tmp_path):
    """One load serves every run; steering hooks, diagnostics and seeds of a run do not reach the next."""
    kwargs = {"data": synthetic_mc2_dir, "limit": 4, "batch_size": 2}
    last = _args(tiny_qwen_path, "mean_mcs", steering_files["mean"], 2, "{out}/diag")
    with EvalSession() as session:
        session.run("amps_qwen", _args(tiny_qwen_path, "l2s", steering_files["l2s"], 8, str(tmp_path / "d1")),
                    ["mc2_visual", "mc2_text"], tmp_path / "first", **kwargs)
        session.run("amps_qwen", _args(tiny_qwen_path, "fewshot"), ["mc2_text"], tmp_path / "second", **kwargs)
        after = tmp_path / "after"
        session.run("amps_qwen", last.format(out=after), ["mc2_visual", "mc2_text"], after, **kwargs)
        assert session.loads == 1
        (loaded,) = session.models
        assert sum(len(layer._forward_hooks) for layer in hooks.decoder_layers(loaded.model)) == 0
    alone = tmp_path / "alone"
    run_lmms_eval("amps_qwen", last.format(out=alone), ["mc2_visual", "mc2_text"], alone, **kwargs)
    results_after, samples_after, diagnostics_after = _files(after)
    results_alone, samples_alone, diagnostics_alone = _files(alone)
    assert json.loads(json.dumps(results_after).replace(str(after), str(alone))) == results_alone
    assert samples_after == samples_alone and len(samples_alone) == 2
    assert [d.replace(str(after), str(alone)) for d in diagnostics_after] == diagnostics_alone
    assert len(diagnostics_alone[0].splitlines()) == 1 + 8  # the settings, then one line per steered sample


def test_a_session_loads_once_per_checkpoint_and_loading_settings(tiny_qwen_path, tiny_llava_path):
    from amps_eval.model_wrappers.loaded import LoadedModel

    with EvalSession() as session:
        one = session.wrapper("amps_qwen", _args(tiny_qwen_path, "none"), batch_size=2)
        two = session.wrapper("amps_qwen", _args(tiny_qwen_path, "cot"), batch_size=4)
        assert one.model is two.model and one is not two and session.loads == 1
        assert (one.settings.method, two.settings.method, two.batch_size) == ("none", "cot", 4)
        other_dtype = session.wrapper("amps_qwen", _args(tiny_qwen_path, "none") + ",dtype=float16")
        assert other_dtype.model is not one.model and session.loads == 2
        session.wrapper("amps_llava", _args(tiny_llava_path, "none"))
        assert session.loads == 3
        with pytest.raises(ValueError, match="amps-eval models"):
            session.wrapper("qwen2_5_vl", f"pretrained={tiny_qwen_path}")
    with pytest.raises(ValueError, match=r"dtype='auto' \(loaded\) vs 'float16' \(asked\)"):
        type(one)(loaded=one.loaded, pretrained=str(tiny_qwen_path), device="cpu", dtype="float16")
    with pytest.raises(TypeError, match="LoadedModel"):
        type(one)(loaded="x", pretrained=str(tiny_qwen_path))
    assert isinstance(one.loaded, LoadedModel)


def test_a_sweep_loads_the_model_once(tiny_qwen_path, synthetic_mc2_dir, steering_files, tmp_path):
    from amps_eval.report.sweep import SweepSettings, run_sweep

    settings = SweepSettings(model="amps_qwen", pretrained=str(tiny_qwen_path), method="mean",
                             steering=steering_files["mean"], alphas=(0.0, 2.0), tasks=("mc2_visual",),
                             out=tmp_path / "sweep", limit=2, device="cpu", data=synthetic_mc2_dir)
    with EvalSession() as session:
        files = run_sweep(settings, progress=lambda _: None, session=session)
        assert session.loads == 1
    assert [f.parent.parent.name for f in files] == ["alpha_0", "alpha_2"]
    recorded = [json.loads(f.read_text())["config"]["model_args"] for f in files]
    assert [dict(kv.split("=", 1) for kv in r.split(","))["alpha"] for r in recorded] == ["0", "2"]


def test_lmms_evals_clean_up_frees_only_a_load_the_wrapper_owns(tiny_qwen_path, monkeypatch):
    """lmms-eval calls ``lm.clean()`` after every run: a wrapper over a session's load leaves the
    shared weights (and skips the full garbage collections); one that loaded them frees them."""
    import lmms_eval.api.model

    cleaned = []
    monkeypatch.setattr(lmms_eval.api.model.lmms, "clean", lambda self: cleaned.append(self))
    with EvalSession() as session:
        shared = session.wrapper("amps_qwen", _args(tiny_qwen_path, "none"))
        shared.clean()
        assert cleaned == [] and shared.model is session.models[0].model and not shared.owns_load
    alone = type(shared)(pretrained=str(tiny_qwen_path), device="cpu")
    assert alone.owns_load
    alone.clean()
    assert cleaned == [alone]
