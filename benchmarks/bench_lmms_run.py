"""Benchmark: an lmms-eval run through an amps-eval wrapper, method=none against a steered method.

    python benchmarks/bench_lmms_run.py --pretrained CHECKPOINT --steering AMPS.safetensors --limit 50 --device cuda
    python benchmarks/bench_lmms_run.py --limit 4          # dry run: the tiny Qwen2.5-VL, its own AMPS fit, CPU

Runs ``mc2_visual`` on ``--limit`` generated MC2 items (`amps_eval.mc2.synthetic`, written to a
temporary folder) through `amps_eval.runner.EvalSession` (lmms-eval's ``simple_evaluate``, the files
its CLI writes), once with ``method=none`` and once with ``--method`` and its steering file, the
model loaded once for both. Reports per method the wall time of the run, the generated tokens
(what ``generate`` returned beyond the prompt, padding excluded: `TokenCounter`) and tokens/s = tokens / wall time
(prefill, steering and lmms-eval's own work included), and the steered/none ratio.

``--pretrained`` defaults to a tiny Qwen2.5-VL checkpoint (`amps_eval.tiny_models`) and
``--steering`` to an AMPS file fitted here on the generated items (`amps_eval.fit`, one fold), so
the dry run needs nothing else. `gpu_check.sh` passes the random full-size Qwen2.5-VL-7B checkpoint
and the AMPS file that `bench_full_size.py --keep` leaves.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, however this is run
from common import THREADS_HELP  # noqa: E402

TASK = "mc2_visual"


def answers(output: Path) -> list[str]:
    """The logged answers of the run's samples file(s) under ``output``."""
    out = []
    for path in sorted(output.rglob(f"*_samples_{TASK}.jsonl")):
        for line in path.read_text().splitlines():
            resps = json.loads(line).get("filtered_resps") or [""]  # lmms-eval 0.7: one answer per document
            while isinstance(resps, list):
                resps = resps[0] if resps else ""
            out.append(str(resps))
    return out


class TokenCounter:
    """Counts the tokens ``generate`` returns beyond the prompt (padding excluded), by wrapping
    ``transformers.GenerationMixin.generate`` for the block: the random full-size model draws from
    the real vocabulary, which the tiny tokenizer cannot decode, so the answers' text says nothing."""

    def __init__(self) -> None:
        self.tokens = 0

    @contextlib.contextmanager
    def counting(self):
        from transformers.generation.utils import GenerationMixin

        real = GenerationMixin.generate

        def generate(model, *args, **kwargs):
            out = real(model, *args, **kwargs)
            ids = out if isinstance(out, torch.Tensor) else out.sequences
            prompt = kwargs.get("input_ids", args[0] if args else None)
            new = ids[:, prompt.shape[1]:] if prompt is not None else ids
            pad = model.generation_config.pad_token_id
            pad = pad[0] if isinstance(pad, list) else pad
            self.tokens += int((new != pad).sum()) if pad is not None else new.numel()
            return out

        GenerationMixin.generate = generate
        try:
            yield self
        finally:
            GenerationMixin.generate = real


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="amps_qwen")
    ap.add_argument("--pretrained", type=Path, default=None, help="checkpoint folder (default: a tiny Qwen2.5-VL)")
    ap.add_argument("--method", default="amps", help="the steered method (default amps)")
    ap.add_argument("--steering", type=Path, default=None, help="its steering file (default: fitted here)")
    ap.add_argument("--limit", type=int, default=50, help="MC2 items per run")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from amps_eval.mc2.synthetic import write_synthetic_mc2
    from amps_eval.runner import EvalSession

    with tempfile.TemporaryDirectory(prefix="bench_lmms_run-") as tmp:
        tmp = Path(tmp)
        data = tmp / "mc2"
        write_synthetic_mc2(data, n_per_category=max(1, -(-args.limit // 4)), seed=0, progress=False)
        pretrained = args.pretrained
        if pretrained is None:
            from amps_eval.tiny_models import tiny_model

            pretrained = tiny_model("qwen2_5_vl", tmp / "models", seed=0)
        steering = args.steering
        if steering is None:
            from amps_eval.fit import FitSettings, fit
            from amps_eval.mcs.settings import MCSSettings

            steering = tmp / f"{args.method}.safetensors"
            fit(FitSettings(model=args.model, pretrained=str(pretrained), method=args.method, layer=1, folds=1,
                            data=str(data), device=args.device, dtype=args.dtype, cache_dir=str(tmp / "cache"),
                            limit=args.limit, mcs=MCSSettings(draws=4, min_draws=2)), steering, progress=False)
        rows = {}
        with EvalSession() as session:
            base = f"pretrained={pretrained},dtype={args.dtype}"
            runs = {"none": base, args.method: f"{base},method={args.method},steering={steering}"}
            for method, model_args in runs.items():
                out = tmp / "runs" / method
                counter = TokenCounter()
                t0 = time.perf_counter()
                with counter.counting():
                    session.run(args.model, model_args, [TASK], out, data=data, batch_size=args.batch_size,
                                device=args.device, limit=args.limit)
                wall = time.perf_counter() - t0
                texts = answers(out)
                tokens = counter.tokens
                rows[method] = {"wall_s": wall, "items": len(texts), "tokens": tokens,
                                "tokens_per_s": tokens / wall if wall > 0 else float("nan")}
                print(f"  {method}: {len(texts)} items, {tokens} tokens in {wall:.1f} s", file=sys.stderr, flush=True)
    ratio = rows[args.method]["tokens_per_s"] / rows["none"]["tokens_per_s"] if rows["none"]["tokens"] else float("nan")
    print(f"lmms-eval {TASK}, {args.limit} items, {args.model} pretrained={args.pretrained or 'tiny qwen2.5-vl'}, "
          f"device {args.device}, dtype {args.dtype}, batch {args.batch_size}, torch {torch.__version__} "
          f"({platform.machine()})")
    for method, row in rows.items():
        print(f"{method:<8} {row['items']:>4} items {row['tokens']:>6} tokens {row['wall_s']:>8.1f} s "
              f"{row['tokens_per_s']:>9.1f} tokens/s")
    print(f"{args.method}/none tokens/s: {ratio:.3f}")
    result = {"task": TASK, "limit": args.limit, "model": args.model, "pretrained": str(args.pretrained),
              "device": args.device, "dtype": args.dtype, "batch_size": args.batch_size, "runs": rows,
              "steered_over_none": ratio}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
