"""Benchmark: the MCS beyond its prefill against its bound, and the work of building the copies.

    python benchmarks/bench_mcs_bound.py                                   # qwen2.5-vl-3b, 4 layers, CPU
    python benchmarks/bench_mcs_bound.py --baseline 48ad9db                # also the code of that commit
    python benchmarks/bench_mcs_bound.py --config qwen2.5-vl-7b --layers 28 --device cuda --batch-size 8
    python benchmarks/bench_mcs_bound.py --dry-run                         # tiny widths, seconds (tests)

1. Time. A RANDOMLY INITIALISED Qwen2.5-VL with a real checkpoint's widths (`bench_full_size.py`'s
   configurations and cut: every width and the vocabulary at full size, N decoder layers and vision
   blocks) gets a left-padded batch of image prompts (``--image-tokens`` image tokens from a square
   grid, ``--text-tokens`` random text tokens, 7 fewer per row). After one `prefill_prompt`, three
   arms run interleaved ``--repeats`` times (after one warm-up each), with the default MCS settings
   and the same copies per pass (``--max-copies-per-pass``, default: all of the batch's):

   * ``mcs``: `compute_mcs(..., prefilled=...)`, i.e. all of the MCS beyond its prefill;
   * ``bound``: only the single-token forwards and backwards the MCS must do: the same number of
     passes over cache copies of the same shapes, made before the clock starts (the clean cache
     replicated, its copies the leaves), each pass `forward_last_token` + `cross_entropy` +
     `torch.autograd.grad` w.r.t. the copies;
   * ``baseline`` (with ``--baseline REV``): `compute_mcs` of ``amps_eval/mcs/score.py`` at git
     revision REV (loaded from ``git show``), on the same prefill.

   The ratio mcs / bound (median times) is the target: <= 1.5.

   ``--dry-run`` (the tests): the tiny widths of ``bench_full_size.py``'s ``tiny-qwen2.5-vl`` (with
   the real vocabulary, which the prompt's token ids need), 2 layers, 16 image tokens, 12 text
   tokens, 1 repeat, the copies at 2 layers and batch 2: it checks that the script runs; its figures
   mean nothing.
2. Dispatched operations. One more run of each arm under a TorchDispatchMode that counts every aten
   op, and the host synchronisations among them (``_local_scalar_dense``: item / float / int /
   bool; ``nonzero``). The ops of the MCS beyond the bound are its own work: the noise, the copies,
   the norms, the setup.
3. The copies alone at the checkpoint's full depth (``--count-layers``, default: the checkpoint's)
   and ``--count-batch`` samples (default 8), on synthetic caches of the real kv_heads and head_dim
   and a short prompt (the op count does not depend on its length): the ops and host
   synchronisations of building every perturbed copy of the batch once (`_build_copies`, the
   baseline's too with ``--baseline``).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import importlib.util
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/*.py, however this is run
from bench_full_size import CHECKPOINTS, FAMILIES, cut  # noqa: E402
from common import add_runtime_args, default_dtype, device_name, left_pad, random_text, runtime, sync  # noqa: E402

from amps_eval.mcs import score  # noqa: E402
from amps_eval.mcs.kv_cache import _last_position_ids, forward_last_token, frozen_eval, prefill_prompt  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SPECIAL = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653)
SYNC_OPS = ("_local_scalar_dense", "nonzero")
DRY_RUN = "tiny-qwen2.5-vl"  # bench_full_size.py's tiny widths


class OpCounter(TorchDispatchMode):
    """Counts every dispatched aten op by name."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))

    def summary(self) -> dict:
        return {"ops": sum(self.ops.values()), "syncs": sum(self.ops[name] for name in SYNC_OPS)}


def load_baseline(rev: str):
    """``amps_eval/mcs/score.py`` at git revision ``rev``, imported as module ``score_baseline``."""
    source = subprocess.run(["git", "show", f"{rev}:amps_eval/mcs/score.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "score_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("score_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["score_baseline"] = module
    spec.loader.exec_module(module)
    return module


def build_model(config: str, layers: int | None, device: torch.device, dtype: torch.dtype):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ck = CHECKPOINTS[config]
    if not ck.vocab:  # the dry run's tiny widths: the prompts' token ids are the real vocabulary's
        ck = dataclasses.replace(ck, vocab=CHECKPOINTS["qwen2.5-vl-7b"].vocab)
    if ck.family != "qwen2_5_vl":
        raise SystemExit(f"--config {config}: this benchmark builds Qwen2.5-VL checkpoints only")
    n_layers, vision = cut(ck, layers)
    text = dict(FAMILIES[ck.family]["text"], hidden_size=ck.hidden, intermediate_size=ck.intermediate,
                num_hidden_layers=n_layers, num_attention_heads=ck.heads, num_key_value_heads=ck.kv_heads,
                vocab_size=ck.vocab, rope_parameters=ck.rope, tie_word_embeddings=ck.tied, bos_token_id=151643,
                eos_token_id=151645, pad_token_id=151643)
    vision = dict(vision, in_chans=3)
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=ck.tied, **SPECIAL)
    torch.manual_seed(0)
    with torch.device(device), default_dtype(dtype):
        model = Qwen2_5_VLForConditionalGeneration(cfg).to(dtype).eval()
    return model, ck, n_layers


def make_inputs(batch: int, image_tokens: int, text_tokens: int, device: torch.device, dtype: torch.dtype) -> dict:
    side = 2 * round(math.sqrt(image_tokens))  # patches per side of a square grid; 2x2 patches per token
    grid = (1, side, side)
    rng = torch.Generator().manual_seed(0)
    seqs, pixels = [], []
    for b in range(batch):
        seqs.append([SPECIAL["vision_start_token_id"]] + [SPECIAL["image_token_id"]] * (side * side // 4)
                    + [SPECIAL["vision_end_token_id"]] + random_text(rng, max(4, text_tokens - 7 * b), 1000, 150000))
        pixels.append(torch.randn(side * side, 3 * 2 * 14 * 14, generator=rng))
    ids, am = left_pad(seqs, 151643)
    return dict(input_ids=ids.to(device), attention_mask=am.to(device),
                pixel_values=torch.cat(pixels).to(device=device, dtype=dtype),
                image_grid_thw=torch.tensor([grid] * batch, device=device))


def bound_pass_setup(prefilled, chunk: int, n_copies: int, attention_mask, input_ids):
    """Per pass: (rows, cache copies requiring grad), made before the clock starts."""
    bsz = prefilled.keys[0].shape[0]
    rows_all = torch.arange(n_copies, device=prefilled.keys[0].device) // (n_copies // bsz)
    passes = []
    for start in range(0, n_copies, chunk):
        rows = rows_all[start : start + chunk]
        keys = [k.index_select(0, rows).requires_grad_(True) for k in prefilled.keys]
        values = [v.index_select(0, rows).requires_grad_(True) for v in prefilled.values]
        passes.append((rows, keys, values))
    return passes


def run_bound(model, prefilled, passes, inputs):
    """The single-token forwards + backwards of the MCS over prepared copies."""
    p_x = torch.softmax(prefilled.logits, dim=-1)
    last_ids = inputs["input_ids"][:, -1:]
    am = inputs["attention_mask"]
    with frozen_eval(model), torch.enable_grad():
        for rows, keys, values in passes:
            logits = forward_last_token(model, last_ids.index_select(0, rows),
                                        _last_position_ids(prefilled.position_ids, rows), am.index_select(0, rows),
                                        keys, values)
            ce = score.cross_entropy(p_x.index_select(0, rows), logits)
            torch.autograd.grad(ce.sum(), keys + values)


def copies_of(module, batch: int, layers: int, kv: int, dim: int, settings, tokens: int = 16):
    """(copies, keys, values) of ``module`` (this code or the baseline) for a synthetic batch cache."""
    g = torch.Generator().manual_seed(0)
    keys = [torch.randn(batch, kv, tokens, dim, generator=g) for _ in range(layers)]
    values = [torch.randn(batch, kv, tokens, dim, generator=g) for _ in range(layers)]
    vision, text = torch.arange(2, 2 + tokens // 2), torch.cat((torch.arange(2), torch.arange(2 + tokens // 2, tokens)))
    samples = [module._Sample(row=i, sample_id=str(i), positions=(vision, text),
                              generator=torch.Generator().manual_seed(i)) for i in range(batch)]
    copies = [module._Copy(smp, s, m, n) for smp in samples for s in range(len(settings.sigmas)) for m in range(2)
              for n in range(settings.draws)]
    return copies, keys, values


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=[k for k, c in CHECKPOINTS.items() if c.family == "qwen2_5_vl"],
                    default="qwen2.5-vl-3b")
    ap.add_argument("--layers", type=int, default=4, help="decoder layers and vision blocks built (default 4)")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--image-tokens", type=int, default=256)
    ap.add_argument("--text-tokens", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-copies-per-pass", type=int, default=None, help="default: all copies of the batch at once")
    ap.add_argument("--baseline", default=None, help="also time the compute_mcs of this git revision")
    ap.add_argument("--count-layers", type=int, default=None, help="layers of the copy op count (default: full depth)")
    ap.add_argument("--count-batch", type=int, default=8)
    ap.add_argument("--dry-run", action="store_true", help="tiny widths, seconds (module docstring; the tests)")
    add_runtime_args(ap)
    args = ap.parse_args(argv)
    if args.dry_run:
        args.config, args.layers, args.image_tokens, args.text_tokens = DRY_RUN, 2, 16, 12
        args.repeats, args.count_layers, args.count_batch = 1, 2, 2
    device, dtype_name = runtime(args)
    dtype = getattr(torch, dtype_name)
    baseline = load_baseline(args.baseline) if args.baseline else None

    t0 = time.perf_counter()
    model, ck, n_layers = build_model(args.config, args.layers, device, dtype)
    inputs = make_inputs(args.batch_size, args.image_tokens, args.text_tokens, device, dtype)
    build_s = time.perf_counter() - t0
    vision = inputs["input_ids"] == SPECIAL["image_token_id"]
    text = inputs["attention_mask"].bool() & ~vision
    ids = [f"s{i}" for i in range(args.batch_size)]
    settings = score.MCSSettings()
    n_copies = args.batch_size * settings.perturbations_per_sample
    chunk = args.max_copies_per_pass or n_copies
    settings = dataclasses.replace(settings, max_copies_per_pass=chunk)
    seq_len = inputs["input_ids"].shape[1]
    prefilled = prefill_prompt(model, inputs)
    passes = bound_pass_setup(prefilled, chunk, n_copies, inputs["attention_mask"], inputs["input_ids"])
    n_max = int(torch.maximum(vision[:, :-1].sum(1), text[:, :-1].sum(1)).max())
    footprint = score.CopyFootprint(
        layers=n_layers, kv_heads=ck.kv_heads, head_dim=ck.hidden // ck.heads, tokens=seq_len - 1, entries=n_max,
        group_width=n_max, draws=settings.draws, cache_bytes=prefilled.keys[0].element_size(),
        work_bytes=prefilled.logits.element_size(), query_heads=ck.heads, vocab=ck.vocab, hidden=ck.hidden,
        intermediate=ck.intermediate)
    default_chunk = score.copies_per_pass(footprint, score.memory_budget(device), n_copies)

    arms = {
        "mcs": lambda: score.compute_mcs(model, inputs, vision, text, settings, ids, prefilled=prefilled),
        "bound": lambda: run_bound(model, prefilled, passes, inputs),
    }
    if baseline is not None:
        arms["baseline"] = lambda: baseline.compute_mcs(model, inputs, vision, text, settings, ids, prefilled=prefilled)
    results = {}
    for name, arm in arms.items():
        results[name] = arm()  # warm-up
    times = {name: [] for name in arms}
    for _ in range(args.repeats):
        for name, arm in arms.items():
            sync(device)
            start = time.perf_counter()
            arm()
            sync(device)
            times[name].append(time.perf_counter() - start)
    counts = {}
    for name, arm in arms.items():
        with OpCounter() as counter:
            arm()
        counts[name] = counter.summary()

    # the copies alone, at the checkpoint's depth and widths
    count_layers = args.count_layers or ck.layers
    kv, dim = ck.kv_heads, ck.hidden // ck.heads
    copy_counts = {}
    for name, module in (("mcs", score), ("baseline", baseline)):
        if module is None:
            continue
        copies, keys, values = copies_of(module, args.count_batch, count_layers, kv, dim, score.MCSSettings())
        with OpCounter() as counter:
            module._build_copies(copies, keys, values, module.MCSSettings())
        copy_counts[name] = counter.summary()
        del copies, keys, values

    med = {name: statistics.median(t) for name, t in times.items()}
    ratio = med["mcs"] / med["bound"]
    seq = inputs["input_ids"].shape[1]
    n_img = int(vision[0].sum())
    print(f"MCS vs its bound: {args.config} cut to {n_layers} layers on {device} ({dtype_name}), batch "
          f"{args.batch_size}, prompt length {seq} ({n_img} image tokens), {n_copies} perturbed copies in passes of "
          f"{chunk}, {args.repeats} interleaved repeats, torch threads {torch.get_num_threads()}, built in {build_s:.1f}s")
    header = f"{'arm':<9} {'median s':>9} {'min s':>8} {'x bound':>8} {'aten ops':>9} {'host syncs':>11}"
    print(f"(the default max_copies_per_pass=None would pass {default_chunk} copies at once here: "
          f"{footprint.bytes_per_copy() / 2**20:.1f} MiB per copy estimated, budget "
          f"{score.memory_budget(device) / 2**30:.1f} GiB)")
    print(header)
    print("-" * len(header))
    for name in arms:
        print(f"{name:<9} {med[name]:>9.3f} {min(times[name]):>8.3f} {med[name] / med['bound']:>8.2f} "
              f"{counts[name]['ops']:>9} {counts[name]['syncs']:>11}")
    print(f"MCS beyond its prefill / bound (medians): {ratio:.2f}x  (target <= 1.5x: {'met' if ratio <= 1.5 else 'NOT met'});"
          f" its own ops beyond the bound's: {counts['mcs']['ops'] - counts['bound']['ops']}")
    if "baseline" in results:
        diff = float((results["mcs"].r_v - results["baseline"].r_v).abs().max())
        print(f"baseline {args.baseline} / mcs (medians): {med['baseline'] / med['mcs']:.2f}x;  its own ops beyond the "
              f"bound's: {counts['baseline']['ops'] - counts['bound']['ops']};  max |r_v mcs - r_v baseline| = {diff:.2e}")
    print(f"building every perturbed copy once at {args.config}'s full cache shapes ({count_layers} layers, kv_heads {kv},"
          f" head_dim {dim}), batch {args.count_batch}, {args.count_batch * score.MCSSettings().perturbations_per_sample}"
          " copies:")
    for name, c in copy_counts.items():
        print(f"  {name:<9} aten ops {c['ops']:>7}  host syncs {c['syncs']:>5}")
    out = {"config": args.config, "layers": n_layers, "device": str(device), "device_name": device_name(device),
           "dtype": dtype_name, "batch_size": args.batch_size, "prompt_length": seq, "image_tokens": n_img,
           "copies": n_copies, "copies_per_pass": chunk, "default_copies_per_pass": default_chunk,
           "estimated_bytes_per_copy": footprint.bytes_per_copy(), "threads": torch.get_num_threads(), "torch": torch.__version__,
           "times_s": times, "median_s": med, "ratio_mcs_over_bound": ratio, "op_counts": counts,
           "copy_op_counts": copy_counts, "baseline": args.baseline}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
