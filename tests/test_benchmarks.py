"""The benchmark scripts keep running: each in its tiny dry-run form, as a subprocess (what a user
runs). ``gpu_check.sh --dry-run`` covers bench_full_size.py, bench_steering.py, bench_mcs.py and
bench_lmms_run.py; bench_mcs_retest.py runs its sequential rows on four items, with both noise designs;
bench_fit_reuse.py, bench_mcs_bound.py and bench_runs.py run their ``--dry-run``. bench_sweep.py's dry
run is in test_sweep_pass.py, bench_seed_cost.py's in test_bench_seed_cost.py, cost_table.py's in
test_study_plan.py (`test_every_benchmark_script_runs_in_a_test` checks that none is forgotten)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_gpu_check_dry_run_writes_its_json_and_table(tmp_path):
    out = tmp_path / "gpu_check"
    done = subprocess.run([str(ROOT / "benchmarks/gpu_check.sh"), "--dry-run", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, env=ENV, timeout=1800, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((out / "gpu_check.json").read_text())
    assert record["dry_run"] and [s["step"] for s in record["steps"]] == ["full_size", "steering", "mcs", "lmms_eval"]
    assert all(s["returncode"] == 0 and s["result"] for s in record["steps"])
    steps = {s["step"]: s["result"] for s in record["steps"]}
    assert {p["phase"].split(" ")[0] for p in steps["full_size"]["phases"]} >= {"extract", "mcs", "fit", "generate"}
    runs = steps["lmms_eval"]["runs"]
    assert set(runs) == {"none", "amps"} and all(r["items"] == 4 and r["tokens"] > 0 for r in runs.values())
    table = (out / "gpu_check.md").read_text()
    assert table.count("| ok |") == 4 and "tokens/s" in table


def test_retest_benchmark_runs_its_sequential_rows(tmp_path):
    out = tmp_path / "retest.json"
    done = subprocess.run([sys.executable, "benchmarks/bench_mcs_retest.py", "--organisms", "qwen", "--limit", "4",
                           "--draws", "2", "--options", "", "--tolerances", "0.05", "--min-draws", "2",
                           "--round-draws", "1", "--max-draws", "4", "--noise-designs", "gaussian,orthogonal",
                           "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    seq = [r for r in rows if r["noise"] == "seq0.05"]
    assert len(seq) == 1 and len(seq[0]["per_item_perturbations"]) == 8  # 4 items x 2 seeds
    assert all(12 <= p <= 24 and p % 6 == 0 for p in seq[0]["per_item_perturbations"])  # 3 sigmas x 2 x 2..4 draws
    assert "reliability against mean perturbations" in done.stdout
    orth = [r for r in rows if r["noise"] == "orth-seq0.05"]  # the same rows with orthogonal noise
    assert len(orth) == 1 and orth[0]["settings"]["noise_design"] == "orthogonal"
    assert all(12 <= p <= 24 and p % 6 == 0 for p in orth[0]["per_item_perturbations"])
    assert {r["noise"] for r in rows if r["ratio"] == "per_sigma"} == {"plain", "orth", "seq0.05", "orth-seq0.05"}
    assert "noise designs, same items and seeds" in done.stdout


def test_gpu_hours_projection_adds_up_and_scales_with_the_mcs_cost():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from project_study_gpu_hours import main

    cheap, dear = main(["--mcs-perturbations", "32"]), main(["--mcs-perturbations", "96"])
    for out in (cheap, dear):
        assert abs(out["total_gpu_hours"] - sum(h for _, h in out["rows"])) < 1e-9
    assert dear["rows"][0][1] > cheap["rows"][0][1] and dear["rows"][1:] == cheap["rows"][1:]


def _dry_run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, f"benchmarks/{script}", "--dry-run", *args], cwd=ROOT, capture_output=True,
                          text=True, env=ENV, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_fit_reuse_benchmark_dry_run():
    out = _dry_run("bench_fit_reuse.py")
    assert "2 generated MC2 items" in out and "MCS 12 perturbations per item" in out  # 3 sigmas x 2 x 2 draws
    assert "shared prefix used: True" in out
    for arm in ("plain", "before", "after", "before+mcs", "after+mcs"):
        assert f"\n{arm} " in out, arm
    assert "after / before:" in out


def test_mcs_bound_benchmark_dry_run(tmp_path):
    out = _dry_run("bench_mcs_bound.py", "--out", str(tmp_path / "bound.json"))
    record = json.loads((tmp_path / "bound.json").read_text())
    assert record["config"] == "tiny-qwen2.5-vl" and record["layers"] == 2 and record["image_tokens"] == 16
    assert set(record["median_s"]) == {"mcs", "bound"} and all(len(t) == 1 for t in record["times_s"].values())
    assert record["op_counts"]["mcs"]["ops"] > 0 and record["copy_op_counts"]["mcs"]["ops"] > 0
    assert "MCS beyond its prefill / bound" in out


def test_runs_benchmark_dry_run(tmp_path):
    out = _dry_run("bench_runs.py", "--out", str(tmp_path / "runs.json"))
    record = json.loads((tmp_path / "runs.json").read_text())
    session, mean_mcs = record["session"], record["mean_mcs"]
    assert session["runs_per_round"] == 2 and session["rounds"] == 1 and session["limit"] == 2
    cleanup = record["cleanup"]
    assert cleanup["rounds"] == 1 and set(cleanup["cpu_seconds_per_run"]) == {"skipped", "lmms_eval"}
    assert "lmms-eval's clean-up after each run" in out
    assert all(len(t) == 1 for t in session["seconds_per_run"].values())
    assert mean_mcs["requests"] == 2 and set(mean_mcs["median"]) == {"none", "generated", "generated-twice", "all"}
    assert mean_mcs["same_answers_generated_vs_twice"] is True
    assert "target mean_mcs (positions=generated) <= 1.3x none" in out


def test_every_benchmark_script_runs_in_a_test():
    """Each script of benchmarks/ is run by some test (by its name, in a test file); common.py is
    their shared helpers, gpu_check.py the script behind gpu_check.sh."""
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    scripts = [p.name for p in (ROOT / "benchmarks").iterdir() if p.suffix in (".py", ".sh") and p.name != "common.py"]
    missing = [name for name in scripts if not re.search(rf"\b{re.escape(Path(name).stem)}\b", tests)]
    assert not missing, f"benchmark scripts that no test runs: {missing}"
