"""The GPU check: every full-size measurement in one run, one JSON and one Markdown table.

    benchmarks/gpu_check.sh --out results/gpu_check            # one H100-class GPU, under 8 minutes
    benchmarks/gpu_check.sh --dry-run --out /tmp/gpu_check      # the same steps on the CPU, tiny configurations

Steps, each its own process (so one step's GPU memory is free for the next, and a failing step
is recorded while the others still run), in this order:

1. ``full_size``: `bench_full_size.py` at full depth for Qwen2.5-VL-7B in bfloat16 (wall time and
   peak memory of each phase: build, load, extract, MCS, fit, generate none / mean / amps); it
   keeps the random checkpoint and its AMPS steering file for step 4;
2. ``steering``: `bench_steering.py --config full-qwen-7b` (tokens/s of none / mean / amps);
3. ``mcs``: `bench_mcs.py --config full-qwen-7b` (batched vs looped MCS);
4. ``lmms_eval``: `bench_lmms_run.py`, a 50-item lmms-eval run of the random full-size 7B weights
   through ``amps_qwen`` with ``method=amps`` against ``method=none`` (tokens/s).

``--dry-run``: the same four steps on the CPU in float32 with tiny configurations (the
``tiny-qwen2.5-vl`` checkpoint, ``tiny`` / ``tiny-qwen`` configs, 4 items), about a minute alone.
Writes ``<out>/gpu_check.json`` (every step's command, exit code, wall time, its own JSON and the
tail of its output) and ``<out>/gpu_check.md`` (one table: step, status, wall time, key figures),
and exits non-zero when a step failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def steps(out: Path, dry: bool, python: str) -> list[tuple[str, list[str]]]:
    model = out / "model"
    if dry:
        dev = ["--device", "cpu", "--dtype", "float32", "--threads", "1"]
        return [
            ("full_size", [python, str(HERE / "bench_full_size.py"), "--config", "tiny-qwen2.5-vl", *dev,
                           "--keep", str(model), "--out", str(out / "full_size.json")]),
            ("steering", [python, str(HERE / "bench_steering.py"), "--config", "tiny", *dev, "--batch-sizes", "1",
                          "--repeats", "2", "--warmup", "0", "--new-tokens", "4", "--out", str(out / "steering.json")]),
            ("mcs", [python, str(HERE / "bench_mcs.py"), "--config", "tiny-qwen", *dev, "--repeats", "1",
                     "--out", str(out / "mcs.json")]),
            ("lmms_eval", [python, str(HERE / "bench_lmms_run.py"), "--pretrained", str(model / "checkpoint"),
                           "--steering", str(model / "amps.safetensors"), "--limit", "4", "--batch-size", "4",
                           "--device", "cpu", "--dtype", "float32", "--threads", "1", "--out", str(out / "lmms_eval.json")]),
        ]
    dev = ["--device", "cuda", "--dtype", "bfloat16"]
    return [
        ("full_size", [python, str(HERE / "bench_full_size.py"), "--config", "qwen2.5-vl-7b", *dev,
                       "--keep", str(model), "--out", str(out / "full_size.json")]),
        ("steering", [python, str(HERE / "bench_steering.py"), "--config", "full-qwen-7b", *dev,
                      "--out", str(out / "steering.json")]),
        ("mcs", [python, str(HERE / "bench_mcs.py"), "--config", "full-qwen-7b", *dev, "--out", str(out / "mcs.json")]),
        ("lmms_eval", [python, str(HERE / "bench_lmms_run.py"), "--pretrained", str(model / "checkpoint"),
                       "--steering", str(model / "amps.safetensors"), "--limit", "50", "--batch-size", "8",
                       "--device", "cuda", "--dtype", "bfloat16", "--out", str(out / "lmms_eval.json")]),
    ]


def figures(name: str, data: dict | None) -> str:
    """The key figures of one step's JSON, in one table cell."""
    if not data:
        return ""
    if name == "full_size":
        return "; ".join(f"{r['phase']}: {r['wall_s']:.2f} s, peak {r['peak_mib']:.0f} MiB" for r in data["phases"])
    if name == "lmms_eval":
        runs = data["runs"]
        return "; ".join(f"{m}: {r['tokens_per_s']:.1f} tokens/s ({r['tokens']} tokens, {r['wall_s']:.1f} s)"
                         for m, r in runs.items()) + f"; steered/none {data['steered_over_none']:.3f}"
    return ", ".join(f"{k}: {v}" for k, v in data.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool))[:600]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="a new folder for the JSON, the table and the steps' files")
    ap.add_argument("--dry-run", action="store_true", help="the same steps on the CPU with tiny configurations")
    args = ap.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        ap.error(f"--out {args.out} is not empty; pass a new folder")
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"dry_run": args.dry_run, "steps": []}
    t_start = time.perf_counter()
    for name, command in steps(args.out, args.dry_run, sys.executable):
        print(f"[gpu_check] {name}: {' '.join(command)}", flush=True)
        t0 = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        print(done.stdout[-4000:], end="", flush=True)
        if done.returncode:
            print(done.stderr[-4000:], end="", file=sys.stderr, flush=True)
        result_file = args.out / f"{name}.json"
        data = json.loads(result_file.read_text()) if done.returncode == 0 and result_file.exists() else None
        record["steps"].append({"step": name, "command": command, "returncode": done.returncode, "wall_s": wall,
                                "result": data, "stdout_tail": done.stdout[-4000:], "stderr_tail": done.stderr[-2000:]})
    record["total_s"] = time.perf_counter() - t_start
    (args.out / "gpu_check.json").write_text(json.dumps(record, indent=2))
    lines = [f"# GPU check{' (dry run, CPU, tiny configurations)' if args.dry_run else ''}", "",
             f"total {record['total_s']:.0f} s", "", "| step | status | wall s | figures |", "|---|---|---:|---|"]
    for s in record["steps"]:
        status = "ok" if s["returncode"] == 0 else f"FAILED (exit {s['returncode']})"
        lines.append(f"| {s['step']} | {status} | {s['wall_s']:.1f} | {figures(s['step'], s['result'])} |")
    (args.out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    failed = [s["step"] for s in record["steps"] if s["returncode"]]
    if failed:
        print(f"[gpu_check] failed steps: {', '.join(failed)} (see {args.out / 'gpu_check.json'})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
