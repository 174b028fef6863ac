"""Benchmark: batched vs looped Modality Contribution Score (amps_eval.mcs.score).

Both modes run in one process on the same model and the same left-padded batch, with the default
MCS settings (`MCSSettings()`: the sequential estimator, 24 to 48 perturbations per sample). Reports the median time per
sample over a few repeats (after one warm-up each; the two modes interleaved) and the speed ratio, plus the largest r_v
difference between the modes (they use the same noise, so it should be at rounding level).

    python benchmarks/bench_mcs.py                       # tiny Qwen2.5-VL on CPU (< 1 min)
    python benchmarks/bench_mcs.py --config tiny-llava
    python benchmarks/bench_mcs.py --config full-qwen-7b --device cuda --out results/bench_mcs.json

``full-qwen-7b`` builds a RANDOMLY INITIALISED model with the full Qwen2.5-VL-7B configuration
(28 layers, hidden 3584, GQA 28/4, vocab 152064, the 32-block vision tower) directly on the device
in bf16 (~17 GB), with an MC2-sized prompt: a 476x644 image (grid 1x34x46 -> 391 image tokens) and
~220 text tokens. Timings do not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, however this is run
from common import add_runtime_args, build_qwen, default_dtype, device_name, left_pad, random_text, runtime, sync  # noqa: E402

from amps_eval.mcs.score import MCSSettings, compute_mcs  # noqa: E402

IMG_TINY = 190


def build_llava(batch: int, device: torch.device, dtype: torch.dtype, text_tokens: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vcfg = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=112, patch_size=14
    )
    tcfg = LlamaConfig(
        vocab_size=200,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    cfg = LlavaConfig(vision_config=vcfg, text_config=tcfg, image_token_id=IMG_TINY, projector_hidden_act="gelu")
    torch.manual_seed(0)
    with torch.device(device), default_dtype(dtype):
        model = LlavaForConditionalGeneration(cfg).to(dtype).eval()
    with torch.no_grad():
        model.model.language_model.norm.weight.mul_(30.0)
    n_img = (vcfg.image_size // vcfg.patch_size) ** 2
    rng = torch.Generator().manual_seed(0)
    seqs = [[1] + [IMG_TINY] * n_img + random_text(rng, max(4, text_tokens - 7 * b), 3, 180) for b in range(batch)]
    ids, am = left_pad(seqs, 0)
    pv = torch.randn(batch, 3, vcfg.image_size, vcfg.image_size, generator=rng)
    inputs = dict(input_ids=ids.to(device), attention_mask=am.to(device), pixel_values=pv.to(device=device, dtype=dtype))
    return model, inputs, IMG_TINY


def time_modes(model, inputs, image_token_id, modes: dict, repeats, device):
    """Time every mode ``repeats`` times, interleaved (A B A B ...), so that background load on a
    shared machine hits all modes alike; returns {mode: (times, last result, peak GiB)}."""
    vision = inputs["input_ids"] == image_token_id
    text = ~vision
    ids = [f"s{i}" for i in range(inputs["input_ids"].shape[0])]
    out = {mode: ([], None, 0.0 if device.type == "cuda" else None) for mode in modes}
    for settings in modes.values():
        compute_mcs(model, inputs, vision, text, settings, sample_ids=ids)  # warm-up
    for _ in range(repeats):
        for mode, settings in modes.items():
            times, _, peak = out[mode]
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            t0 = time.perf_counter()
            result = compute_mcs(model, inputs, vision, text, settings, sample_ids=ids)
            sync(device)
            times.append(time.perf_counter() - t0)
            if device.type == "cuda":
                peak = max(peak, torch.cuda.max_memory_allocated(device) / 2**30)
            out[mode] = (times, result, peak)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=["tiny-qwen", "tiny-llava", "full-qwen-7b"], default="tiny-qwen")
    ap.add_argument("--batch-size", type=int, default=None, help="samples per compute_mcs call (default 4; 2 for full)")
    ap.add_argument("--text-tokens", type=int, default=None, help="text tokens of the longest prompt (default 60; 220 for full)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-copies-per-pass", type=int, default=None)
    add_runtime_args(ap)
    args = ap.parse_args(argv)

    device, dtype_name = runtime(args)
    dtype = getattr(torch, dtype_name)
    full = args.config == "full-qwen-7b"
    batch = args.batch_size or (2 if full else 4)
    text_tokens = args.text_tokens or (220 if full else 60)

    t0 = time.perf_counter()
    if args.config == "tiny-llava":
        model, inputs, img = build_llava(batch, device, dtype, text_tokens)
    else:
        model, inputs, img = build_qwen("full" if full else "tiny", batch, device, dtype, text_tokens)
    build_s = time.perf_counter() - t0

    base = MCSSettings(max_copies_per_pass=args.max_copies_per_pass)
    rows, results = [], {}
    modes = {"batched": dataclasses.replace(base, batched=True), "loop": dataclasses.replace(base, batched=False)}
    timed = time_modes(model, inputs, img, modes, args.repeats, device)
    for mode in modes:
        times, res, peak = timed[mode]
        med = statistics.median(times)
        results[mode] = res
        rows.append(
            {
                "mode": mode,
                "median_s_per_batch": med,
                "median_s_per_sample": med / batch,
                "min_s_per_batch": min(times),
                "times_s": times,
                "peak_gib": peak,
            }
        )
    speedup = rows[1]["median_s_per_batch"] / rows[0]["median_s_per_batch"]
    r_v_diff = float((results["batched"].r_v - results["loop"].r_v).abs().max())

    n_pert = base.perturbations_per_sample
    seq = inputs["input_ids"].shape[1]
    n_img = int((inputs["input_ids"][0] == img).sum())
    print(
        f"MCS benchmark: {args.config} on {device} ({dtype}), batch {batch}, prompt length {seq} "
        f"({n_img} image tokens), {n_pert} perturbations/sample, {args.repeats} repeats, "
        f"torch threads {torch.get_num_threads()}, model built in {build_s:.1f}s"
    )
    header = f"{'mode':<8} {'median s/batch':>15} {'median s/sample':>16} {'min s/batch':>12}"
    if device.type == "cuda":
        header += f" {'peak GiB':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        line = f"{r['mode']:<8} {r['median_s_per_batch']:>15.4f} {r['median_s_per_sample']:>16.4f} {r['min_s_per_batch']:>12.4f}"
        if device.type == "cuda":
            line += f" {r['peak_gib']:>9.2f}"
        print(line)
    print(f"speed-up batched vs loop (median): {speedup:.2f}x;  max |r_v batched - r_v loop| = {r_v_diff:.2e}")
    print("r_v per sample:", [round(float(x), 4) for x in results["batched"].r_v])

    out = {
        "config": args.config,
        "device": str(device),
        "device_name": device_name(device),
        "dtype": str(dtype).replace("torch.", ""),
        "batch_size": batch,
        "prompt_length": seq,
        "image_tokens": n_img,
        "perturbations_per_sample": n_pert,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "settings": base.to_dict(),
        "rows": rows,
        "speedup_batched_vs_loop": speedup,
        "max_abs_r_v_diff": r_v_diff,
        "r_v": results["batched"].r_v.tolist(),
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
