"""Projection (not a measurement): GPU-hours of the full MC2 study of a 7B model on one H100.

    python benchmarks/project_study_gpu_hours.py                           # Qwen2.5-VL-7B, defaults below
    python benchmarks/project_study_gpu_hours.py --mcs-perturbations 96    # the fixed 16-draw MCS

No GPU has measured these phases yet (benchmarks/gpu_check.sh will). Until then this script turns
the checkpoint's sizes (`bench_full_size.CHECKPOINTS`, the same table the full-size benchmark
builds its random model from) and the study's shape into time with a roofline model whose every
assumption is an argument and is printed:

* FLOPs: a dense matmul costs 2 FLOPs per parameter per token. Language model per token:
  layers x (q, k, v, o projections + the gated MLP's three matrices) + the LM head; vision tower per
  patch: blocks x (4 h^2 + 3 h i) (Qwen2.5-VL's gated MLP); 4 patches per image token (2x2 merge);
* prefill of a prompt (image + text tokens) and the fit's three prompts: compute-bound at
  ``--mfu`` of the bf16 dense peak ``--peak-tflops``;
* one MCS perturbation: a one-token forward and a backward to the perturbed K/V (about twice the
  forward) at ``--mfu`` (hundreds of copies per pass share the weights), plus the traffic of its own
  K/V copy (about five passes over it) at the decode bandwidth; plus one prefill per item and prompt;
* generation: each decode step reads the weights once per batch of ``--batch`` rows, bound by
  memory at ``--bw-fraction`` of ``--hbm-tbs``; ``--new-tokens`` generated per row; plus the prefill;
* the study: the MCS of every item on 3 prompts (none / visual / text, `amps-eval mcs`); the fits
  (hidden states of 3 prompts per item, and the MCS of the none prompt, shared with the MCS runs
  through the item cache); generation of every item for the prompt baselines and for the steered
  methods at every alpha and both targets (MC2's vision and text tasks); ``mean_mcs`` scores each
  prompt's MCS once per alpha sweep (item cache).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_full_size import CHECKPOINTS  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="qwen2.5-vl-7b", choices=[k for k, c in CHECKPOINTS.items()
                                                                  if c.family == "qwen2_5_vl" and c.vocab])
    ap.add_argument("--items", type=int, default=2000, help="MC2 items")
    ap.add_argument("--image-tokens", type=int, default=391, help="a 640x480 COCO picture (bench_full_size)")
    ap.add_argument("--text-tokens", type=int, default=220)
    ap.add_argument("--mcs-perturbations", type=float, default=32.0, help="mean per item and prompt")
    ap.add_argument("--steered-methods", type=int, default=5, help="mean, mean_mcs, l2s, amps_beta0, amps")
    ap.add_argument("--alphas", type=int, default=5)
    ap.add_argument("--prompt-methods", type=int, default=4, help="none, inst, cot, fewshot (one run each)")
    ap.add_argument("--targets", type=int, default=2, help="vision and text tasks")
    ap.add_argument("--new-tokens", type=int, default=16, help="generated per row (cot: see --cot-new-tokens)")
    ap.add_argument("--cot-new-tokens", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8, help="generation batch")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="H100 SXM bf16 dense peak")
    ap.add_argument("--mfu", type=float, default=0.35, help="share of the peak that prefill / MCS passes reach")
    ap.add_argument("--hbm-tbs", type=float, default=3.35, help="H100 SXM HBM3 bandwidth, TB/s")
    ap.add_argument("--bw-fraction", type=float, default=0.6, help="share of the bandwidth a decode step reaches")
    args = ap.parse_args(argv)

    ck = CHECKPOINTS[args.config]
    head = ck.hidden // ck.heads
    lm_layer = ck.hidden * (ck.hidden + 2 * ck.kv_heads * head) + ck.hidden * ck.hidden + 3 * ck.hidden * ck.intermediate
    lm = ck.layers * lm_layer + ck.hidden * ck.vocab  # + the LM head (the embedding lookup is free)
    v = ck.vision
    vision = v["depth"] * (4 * v["hidden_size"] ** 2 + 3 * v["hidden_size"] * v["intermediate_size"])
    weights_bytes = 2 * (ck.layers * lm_layer + 2 * ck.hidden * ck.vocab + v["depth"] * (
        4 * v["hidden_size"] ** 2 + 3 * v["hidden_size"] * v["intermediate_size"]))  # bf16
    flops = args.peak_tflops * 1e12 * args.mfu
    prompt = args.image_tokens + args.text_tokens
    prefill_s = (2 * lm * prompt + 2 * vision * 4 * args.image_tokens) / flops
    kv_copy = ck.layers * 2 * ck.kv_heads * head * prompt * 2  # one perturbed K/V copy, bf16
    # compute (forward + backward of one token) plus the copy's traffic: written, read by attention
    # forward and backward, its gradient written and read (about 5 passes over the copy)
    perturbation_s = 2 * (2 * lm) / flops + 5 * kv_copy / (args.hbm_tbs * 1e12 * args.bw_fraction)
    decode_s = weights_bytes / (args.hbm_tbs * 1e12 * args.bw_fraction) / args.batch  # per row and token

    n = args.items
    mcs_h = n * 3 * (prefill_s + args.mcs_perturbations * perturbation_s) / 3600
    fit_h = n * 3 * prefill_s / 3600  # the fit's hidden states (its MCS is the mcs run's, from the item cache)
    gen_row = prefill_s + args.new_tokens * decode_s
    cot_row = prefill_s + args.cot_new_tokens * decode_s
    prompt_h = n * args.targets * ((args.prompt_methods - 1) * gen_row + cot_row) / 3600
    steered_h = n * args.targets * args.steered_methods * args.alphas * gen_row / 3600
    total = mcs_h + fit_h + prompt_h + steered_h
    print(f"PROJECTION (roofline, no GPU measurement) for {args.config} ({ck.hub_id}) on one H100: "
          f"LM {lm / 1e9:.2f} G matmul parameters per token, vision {vision / 1e9:.2f} G per patch, "
          f"weights {weights_bytes / 2**30:.1f} GiB bf16")
    print(f"assumptions: peak {args.peak_tflops:g} TFLOP/s at MFU {args.mfu:g}; HBM {args.hbm_tbs:g} TB/s at "
          f"{args.bw_fraction:g}; prompt {args.image_tokens} image + {args.text_tokens} text tokens; "
          f"{args.new_tokens} new tokens per answer (cot {args.cot_new_tokens}); generation batch {args.batch}")
    print(f"per item: prefill {prefill_s * 1e3:.1f} ms; one MCS perturbation {perturbation_s * 1e3:.3f} ms; "
          f"decode {decode_s * 1e3:.2f} ms per token and row")
    rows = [
        (f"MCS: {n} items x 3 prompts x {args.mcs_perturbations:g} perturbations", mcs_h),
        (f"fits: hidden states of {n} items x 3 prompts (shared by the fit methods and the MCS of the none "
         "prompt through the item cache)", fit_h),
        (f"prompt baselines: {args.prompt_methods} methods x {args.targets} targets x {n} items", prompt_h),
        (f"steered: {args.steered_methods} methods x {args.alphas} alphas x {args.targets} targets x {n} items",
         steered_h),
    ]
    for what, hours in rows:
        print(f"  {what:<112} {hours:7.2f} GPU-h")
    print(f"  {'total':<112} {total:7.2f} GPU-h")
    return {"rows": rows, "total_gpu_hours": total}


if __name__ == "__main__":
    main()
