"""Benchmark: a sweep over alpha in one pass over the items against one generation per alpha.

`amps_eval.report.sweep.run_sweep` over a shipped organism, the generated MC2 set (``--limit``
documents of mc2_visual and of mc2_text) and a mean steering file with random vectors (2 folds, the
middle layer), at 5 alphas by default (the study's: 0, 0.5, 1, 2, 4), in one `EvalSession` (one
load, warmed up by a first sweep): ``per_alpha`` (``one_pass=False``: each alpha's run generates its
batches) against ``one_pass`` (the first run generates every alpha's answers in batches of
batch-size items x alphas rows, the later runs take theirs; `amps_eval.sweep_pass`). Rounds
alternate the arm order (per_alpha, one_pass, one_pass, per_alpha, ...). Reported per positions
setting: the median seconds per sweep of each arm, their ratio (one_pass / per_alpha), the ratio
within each round (both arms under the same load) and its median, and whether both arms wrote the
same answers (every sample line's response).

    .venv/bin/python benchmarks/bench_sweep.py                      # qwen organism, CPU, 1 thread
    .venv/bin/python benchmarks/bench_sweep.py --dry-run            # tiny model, 2 documents, 2 alphas, 1 round (the tests)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_runtime_args, runtime  # noqa: E402

DEFAULT_ALPHAS = (0.0, 0.5, 1.0, 2.0, 4.0)


def _answers(out: Path) -> list:
    """Every sample line's filtered response of every run under ``out``, in alpha and task order."""
    answers = []
    for path in sorted(out.rglob("*_samples_*.jsonl"), key=lambda p: (p.parts[-3], p.name.split("_samples_")[-1])):
        answers.append([json.loads(line)["filtered_resps"] for line in path.read_text().splitlines()])
    return answers


def bench_sweep(model: str, pretrained: str, data: Path, steering: Path, device: str, alphas: tuple, positions: str,
                limit: int, batch_size: int, rounds: int, max_new_tokens: int, work: Path, session) -> dict:
    from amps_eval.report.sweep import SweepSettings, run_sweep

    def settings(arm: str, r: int) -> SweepSettings:
        return SweepSettings(model=model, pretrained=pretrained, method="mean", steering=steering, alphas=alphas,
                             out=work / f"{positions}_{arm}_{r}", batch_size=batch_size, limit=limit, device=device,
                             data=data, one_pass=arm == "one_pass",
                             extra_model_args={"positions": positions, "max_new_tokens": str(max_new_tokens)})

    quiet = lambda _: None  # noqa: E731
    run_sweep(settings("one_pass", -1), quiet, session)  # warm-up: the load, imports, the dataset cache
    times = {"per_alpha": [], "one_pass": []}
    for r in range(rounds):
        for arm in (["per_alpha", "one_pass"] if r % 2 == 0 else ["one_pass", "per_alpha"]):
            start = time.perf_counter()
            run_sweep(settings(arm, r), quiet, session)
            times[arm].append(time.perf_counter() - start)
    medians = {arm: statistics.median(t) for arm, t in times.items()}
    paired = [b / a for a, b in zip(times["per_alpha"], times["one_pass"])]  # the arms of one round: the same load
    same = _answers(work / f"{positions}_one_pass_0") == _answers(work / f"{positions}_per_alpha_0")
    return {"positions": positions, "alphas": list(alphas), "limit": limit, "batch_size": batch_size,
            "max_new_tokens": max_new_tokens, "rounds": rounds, "seconds": times, "median": medians,
            "ratio_one_pass_to_per_alpha": medians["one_pass"] / medians["per_alpha"], "paired_ratios": paired,
            "median_paired_ratio": statistics.median(paired), "same_answers": same}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="amps_qwen", help="lmms-eval model whose shipped organism is measured")
    ap.add_argument("--pretrained", default=None, help="a checkpoint of --model's family instead of its organism")
    ap.add_argument("--alphas", default=",".join(f"{a:g}" for a in DEFAULT_ALPHAS))
    ap.add_argument("--positions", default="all,generated", help="positions settings to measure, ',' separated")
    ap.add_argument("--limit", type=int, default=8, help="documents per task (mc2_visual and mc2_text)")
    ap.add_argument("--batch-size", type=int, default=4, help="items per batch (one pass: items x alphas rows)")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=4, help="timed sweeps per arm")
    ap.add_argument("--dry-run", action="store_true",
                    help="a tiny random Qwen2.5-VL, 2 documents, alphas 0,2, positions=generated, 1 round")
    add_runtime_args(ap)
    args = ap.parse_args(argv)
    device, _ = runtime(args)

    from amps_eval.mc2.synthetic import write_synthetic_mc2
    from amps_eval.report.sweep import parse_alphas
    from amps_eval.runner import EvalSession

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_runs import _mean_file

    alphas = parse_alphas("0,2" if args.dry_run else args.alphas)
    limit, rounds = (2, 1) if args.dry_run else (args.limit, args.rounds)
    positions_list = ["generated"] if args.dry_run else args.positions.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.dry_run:
            from amps_eval.tiny_models import tiny_model

            pretrained = str(tiny_model("qwen2_5_vl", work / "models", seed=0))
        elif args.pretrained:
            pretrained = args.pretrained
        else:
            from amps_eval.organism import organism_path

            pretrained = str(organism_path(args.model))
        out = {"model": args.model, "pretrained": pretrained, "device": str(device),
               "threads": torch.get_num_threads(), "dry_run": args.dry_run, "sweeps": []}
        data = work / "mc2"
        write_synthetic_mc2(data, n_per_category=2, seed=3, progress=False)
        from transformers import AutoConfig

        layer = AutoConfig.from_pretrained(pretrained).get_text_config().num_hidden_layers // 2
        from amps_eval.mc2.docs import TaskSpec, task_docs
        from amps_eval.mc2.source import load_mc2, resolve_source

        docs = task_docs(load_mc2(resolve_source({"AMPS_MC2_DATA": str(data)})), TaskSpec("vision"))
        ids = sorted({str(i) for i in docs["mc2_id"]})
        steering = _mean_file(work / "mean.safetensors", pretrained, layer, ids)
        with EvalSession() as session:
            for positions in positions_list:
                s = bench_sweep(args.model, pretrained, data, steering, str(device), alphas, positions, limit,
                                args.batch_size, rounds, args.max_new_tokens, work, session)
                out["sweeps"].append(s)
                what = " (dry run: tiny model)" if args.dry_run else f" {args.pretrained}" if args.pretrained else " organism"
                print(f"sweep of {len(alphas)} alphas ({args.model}{what}, "
                      f"method=mean, positions={positions}, {limit} documents x 2 tasks, batch {args.batch_size}, "
                      f"max {args.max_new_tokens} new tokens, {rounds} rounds, {out['threads']} thread(s)):")
                print(f"  per alpha {s['median']['per_alpha']:.2f} s/sweep, one pass {s['median']['one_pass']:.2f} s/sweep: "
                      f"ratio {s['ratio_one_pass_to_per_alpha']:.3f}; same answers: {s['same_answers']}")
                print(f"  per round (one pass / per alpha): {', '.join(f'{x:.3f}' for x in s['paired_ratios'])}; "
                      f"median {s['median_paired_ratio']:.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
