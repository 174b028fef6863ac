"""Benchmark: the fit's per-item extraction, as a ratio to one plain forward of one prompt, before and
after the shared prefix (issue 15, "compute nothing twice").

    python benchmarks/bench_fit_reuse.py --config organism-qwen                 # the shipped organism, CPU
    python benchmarks/bench_fit_reuse.py --config qwen2.5-vl-7b --layers 1      # real widths, 1 layer, CPU
    python benchmarks/bench_fit_reuse.py --dry-run                               # 2 items, 1 repetition, 2 draws (tests)

Per item the fit needs the layer output at the last token of [I,T], [I,T,P_v], [I,T,P_t] and the MCS
of [I,T]. Arms, on the same loaded model and the same items, interleaved (the order rotates every
repetition), medians over the repetitions:

* ``plain``: one forward of the [I,T] prompt (`amps_eval.extract.last_token_states`): the baseline;
* ``before``: what the fit ran before: three such forwards, plus the MCS's own prefill of [I,T]
  (`amps_eval.mcs.kv_cache.prefill_prompt`) -> 4 prefills, each with the vision tower;
* ``after``: `amps_eval.extract.item_batch`: one prefill of the shared prefix, each prompt's own
  tokens against it, the none prompt's pass kept as the MCS's prefill;
* ``before+mcs`` / ``after+mcs``: the same plus the MCS perturbation passes (`compute_mcs`;
  ``after`` hands it its prefill: `amps_eval.extract.mcs_prefilled`). The perturbation part is the
  same work in both, so these ratios are dominated by it.

The ``after`` hidden states are checked against a full prefill of each prompt (max abs difference
printed). Configurations: ``organism-qwen`` / ``organism-llava`` (the shipped organisms, with the
demo's generated MC2 items), or a checkpoint of `bench_full_size.py` (random weights at the real
widths, cut to --layers decoder layers and vision blocks, with its one 640x480 MC2 item).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_runtime_args, device_name, runtime, sync  # noqa: E402

ORGANISMS = {"organism-qwen": "amps_qwen", "organism-llava": "amps_llava"}
KINDS = ("none", "vision", "text")


def arms(encoder, items, rows: list[int], layer: int, mcs) -> dict:
    from amps_eval.extract import item_batch, last_token_states, mcs_batch, mcs_prefilled
    from amps_eval.mcs.kv_cache import prefill_prompt

    ids = [items.ids[i] for i in rows]

    def conversations():  # built inside every arm: the image decode is part of each
        return {kind: items.conversations(rows, kind) for kind in KINDS}

    def plain():
        last_token_states(encoder, conversations()["none"], layer)

    def before():
        c = conversations()
        for kind in KINDS:
            last_token_states(encoder, c[kind], layer)
        prefill_prompt(encoder.model, encoder.encode_turns(c["none"]).inputs)

    def before_mcs():
        c = conversations()
        for kind in KINDS:
            last_token_states(encoder, c[kind], layer)
        mcs_batch(encoder, c["none"], ids, mcs)

    def after():
        item_batch(encoder, conversations(), layer, True)

    def after_mcs():
        passes = item_batch(encoder, conversations(), layer, True)
        mcs_prefilled(encoder, passes.variants["none"], ids, mcs)

    return {"plain": plain, "before": before, "after": after, "before+mcs": before_mcs, "after+mcs": after_mcs}


def load(args, tmp: Path, dtype_name: str, device):
    """(encoder, items, layer, description)."""
    from amps_eval.encoding import load_encoder
    from amps_eval.fit_data import load_items

    if args.config in ORGANISMS:
        from amps_eval.mc2.synthetic import write_synthetic_mc2
        from amps_eval.organism import organism_path

        model = ORGANISMS[args.config]
        path = organism_path(model)
        write_synthetic_mc2(tmp / "data", n_per_category=1, seed=0, progress=False)
        items = load_items(tmp / "data", limit=args.items)
        encoder = load_encoder(model, path, str(device), dtype_name)
        layers = encoder.model.config.get_text_config().num_hidden_layers
        return encoder, items, layers // 2, f"{path.name} (shipped organism), {len(items)} generated MC2 items"
    from bench_full_size import CHECKPOINTS, FAMILIES, STEER_LAYER, mc2_item, write_checkpoint

    ck = CHECKPOINTS[args.config]
    write_checkpoint(ck, args.layers, tmp / "checkpoint", device, getattr(torch, dtype_name))
    encoder = load_encoder(FAMILIES[ck.family]["model"], tmp / "checkpoint", str(device), dtype_name)
    items, _ = mc2_item()
    layers = encoder.model.config.get_text_config().num_hidden_layers
    return (encoder, items, min(STEER_LAYER, layers - 1),
            f"{ck.hub_id} widths, random weights, {layers} decoder layer(s), one 640x480 MC2 item")


def main(argv: list[str] | None = None) -> None:
    from tabulate import tabulate

    from amps_eval.extract import item_batch
    from amps_eval.mcs.score import MCSSettings
    from amps_eval.shared_prefix import run_variants

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="organism-qwen",
                    choices=[*ORGANISMS, "qwen2.5-vl-3b", "qwen2.5-vl-7b", "llava-1.5-7b", "llava-1.5-13b"])
    ap.add_argument("--layers", type=int, default=1, help="decoder layers and vision blocks of a bench_full_size checkpoint")
    ap.add_argument("--items", type=int, default=4, help="organism configs: items per batch (left-padded)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--draws", type=int, default=MCSSettings.draws, help="MCS draws per (sigma, modality)")
    ap.add_argument("--dry-run", action="store_true",
                    help="seconds, for the tests: --items 2 --reps 1 --draws 2 (the figures mean nothing)")
    add_runtime_args(ap)
    args = ap.parse_args(argv)
    if args.dry_run:
        args.items, args.reps, args.draws = 2, 1, 2
    device, dtype_name = runtime(args)
    mcs = MCSSettings(draws=args.draws)
    with tempfile.TemporaryDirectory(prefix="bench_fit_reuse-") as tmp:
        encoder, items, layer, what = load(args, Path(tmp), dtype_name, device)
    rows = list(range(len(items)))
    print(f"bench_fit_reuse: {args.config}: {what}; layer {layer}; {device} ({device_name(device)}), {dtype_name}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}; MCS {mcs.perturbations_per_sample} "
          f"perturbations per item; {args.reps} repetitions after one warm-up")

    conversations = {kind: items.conversations(rows, kind) for kind in KINDS}
    shared = item_batch(encoder, conversations, layer, True)
    full = run_variants(encoder, conversations, layer, share=False)
    diff = max(float((shared.variants[k].hidden - full.variants[k].hidden).abs().max()) for k in KINDS)
    scale = max(float(full.variants[k].hidden.abs().max()) for k in KINDS)
    print(f"shared prefix used: {shared.shared}, prefix tokens per row {shared.prefix_lengths}; hidden states vs a full "
          f"prefill of each prompt: max abs difference {diff:.2e} (max |h| {scale:.3g})")

    fns = arms(encoder, items, rows, layer, mcs)
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(args.reps + 1):
        order = names[rep % len(names):] + names[: rep % len(names)]
        for name in order:
            sync(device)
            t0 = time.perf_counter()
            fns[name]()
            sync(device)
            if rep:  # the first round is the warm-up
                times[name].append(time.perf_counter() - t0)
    med = {n: statistics.median(t) for n, t in times.items()}
    base = med["plain"]
    table = [[n, f"{med[n]:.3f}", f"{med[n] / base:.2f}x"] for n in names]
    print(tabulate(table, headers=["arm", "median s / batch", "/ plain"], disable_numparse=True,
                   colalign=("left", "right", "right")))
    print(f"after / before: {med['after'] / med['before']:.2f} without the MCS perturbations, "
          f"{med['after+mcs'] / med['before+mcs']:.2f} with them; target after <= 1.5x plain: "
          f"{'met' if med['after'] / base <= 1.5 else 'NOT met'} ({med['after'] / base:.2f}x)")


if __name__ == "__main__":
    main()
