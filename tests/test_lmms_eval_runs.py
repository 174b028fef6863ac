"""End to end through lmms-eval: the CLI, the Python API and `accelerate launch` with 2 processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SAMPLE_KEYS = {"mc2_id", "category", "target", "order", "follows"}

# 8 new tokens an answer, not the task's 64: the tiny random models never stop on their own, and what
# these runs check (files, metrics, samples, batching, 2 processes = 1, diagnostics) needs no more.
# The budget is max(task's, wrapper's), so both are lowered: `--gen_kwargs` and the model argument.
TOKENS = 8
SHORT = ["--gen_kwargs", f"max_new_tokens={TOKENS}"]


def _env(data_dir):
    return {**os.environ, "AMPS_MC2_DATA": str(data_dir), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def _outputs(out: Path, task: str):
    results = sorted(out.rglob("*_results.json"))
    assert len(results) == 1, results
    samples = sorted(out.rglob(f"*_samples_{task}.jsonl"))
    assert len(samples) == 1, samples
    lines = [json.loads(line) for line in samples[0].read_text().splitlines()]
    return json.loads(results[0].read_text()), sorted(lines, key=lambda s: s["doc_id"])


def test_cli_amps_llava_mc2_text_writes_results_and_samples(tiny_llava_path, synthetic_mc2_dir, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "amps_llava",
           "--model_args", f"pretrained={tiny_llava_path},device=cpu,max_new_tokens={TOKENS}", "--tasks", "mc2_text",
           "--limit", "8", "--output_path", str(out), "--log_samples", *SHORT]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(synthetic_mc2_dir), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results, samples = _outputs(out, "mc2_text")
    metrics = results["results"]["mc2_text"]
    for name in ("target_acc", "vision_rate", "text_rate", "others_rate", "vision_ratio", "image_logodds"):
        assert f"{name},none" in metrics
    assert metrics["vision_rate,none"] + metrics["text_rate,none"] + metrics["others_rate,none"] == pytest.approx(1.0)
    assert len(samples) == 8
    follows = [s["target_acc"]["follows"] for s in samples]
    assert metrics["others_rate,none"] == pytest.approx(follows.count("others") / 8)
    for sample in samples:
        assert SAMPLE_KEYS <= set(sample["target_acc"]), sample
        assert sample["target_acc"]["target"] == "text"
        assert "image_logodds" in sample["target_acc"] and "image_logodds_kind" in sample["target_acc"]
    measured = [s["image_logodds"]["score"] for s in samples if "score" in s["image_logodds"]]
    assert measured and metrics["image_logodds,none"] == pytest.approx(sum(measured) / len(measured))


def test_accelerate_two_processes_match_one(tiny_qwen_path, synthetic_mc2_dir, tmp_path):
    common = ["--model", "amps_qwen", "--model_args", f"pretrained={tiny_qwen_path},method=inst,max_new_tokens={TOKENS}",
              "--tasks", "mc2_visual", "--limit", "10", "--log_samples", "--batch_size", "2", *SHORT]
    env = _env(synthetic_mc2_dir)
    one = subprocess.run([sys.executable, "-m", "lmms_eval", *common, "--output_path", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lmms_eval"]
    two = subprocess.run([*launch, *common, "--output_path", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    results_one, samples_one = _outputs(tmp_path / "one", "mc2_visual")
    results_two, samples_two = _outputs(tmp_path / "two", "mc2_visual")
    assert len(samples_two) == len(samples_one) == 10
    assert [s["filtered_resps"] for s in samples_two] == [s["filtered_resps"] for s in samples_one]
    assert [s["target_acc"]["mc2_id"] for s in samples_two] == [s["target_acc"]["mc2_id"] for s in samples_one]
    assert results_two["results"]["mc2_visual"]["target_acc,none"] == results_one["results"]["mc2_visual"]["target_acc,none"]


def test_cli_amps_qwen2_mc2_visual(tiny_qwen2_path, synthetic_mc2_dir, tmp_path):
    """The third family (Qwen2-VL) end to end through lmms-eval."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "amps_qwen2",
           "--model_args", f"pretrained={tiny_qwen2_path},device=cpu,max_new_tokens={TOKENS}", "--tasks", "mc2_visual",
           "--limit", "8", "--output_path", str(out), "--log_samples", "--batch_size", "4", *SHORT]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(synthetic_mc2_dir), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results, samples = _outputs(out, "mc2_visual")
    metrics = results["results"]["mc2_visual"]
    assert metrics["vision_rate,none"] + metrics["text_rate,none"] + metrics["others_rate,none"] == pytest.approx(1.0)
    assert len(samples) == 8 and all(s["target_acc"]["target"] == "vision" for s in samples)


@pytest.mark.parametrize("model, fixture", [("amps_qwen", "tiny_qwen_path"), ("amps_qwen2", "tiny_qwen2_path")])
def test_fit_then_lmms_eval_amps_with_diagnostics(model, fixture, request, synthetic_mc2_dir, tmp_path):
    tiny_qwen_path = request.getfixturevalue(fixture)
    steering = tmp_path / "amps.safetensors"
    env = _env(synthetic_mc2_dir)
    fit = [sys.executable, "-m", "amps_eval.cli", "fit", "--model", model, "--pretrained", str(tiny_qwen_path),
           "--method", "amps", "--layer", "1", "--out", str(steering), "--epochs", "3", "--lr", "1e-3",
           "--hidden", "8", "--draws", "1", "--device", "cpu"]
    proc = subprocess.run(fit, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    diagnostics = tmp_path / "out" / "diagnostics"
    args = (f"pretrained={tiny_qwen_path},method=amps,steering={steering},alpha=2,diagnostics={diagnostics},device=cpu,"
            f"max_new_tokens={TOKENS}")
    cmd = [sys.executable, "-m", "lmms_eval", "--model", model, "--model_args", args, "--tasks",
           "mc2_visual,mc2_text", "--output_path", str(tmp_path / "out"), "--log_samples", "--batch_size", "4",
           "--verbosity", "DEBUG", *SHORT]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next((tmp_path / "out").rglob("*_results.json")).read_text())
    assert {"mc2_visual", "mc2_text"} <= set(results["results"])
    lines = [json.loads(line) for f in diagnostics.glob("*.jsonl") for line in f.read_text().splitlines()][1:]
    n_items = results["n-samples"]["mc2_visual"]["effective"]
    assert len(lines) == 2 * n_items
    assert {(row["task"], row["mc2_id"]) for row in lines} == {
        (task, i) for task in ("mc2_visual", "mc2_text") for i in range(n_items)
    }
    assert all(row["in_sample"] is False and row["vector_norm"] > 0 for row in lines)
