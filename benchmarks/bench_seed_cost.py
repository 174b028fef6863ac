"""Benchmark: what training seeds cost the study's fits (issue 23: `amps-eval study --seeds`).

    OMP_NUM_THREADS=1 python benchmarks/bench_seed_cost.py                 # the Qwen organism, demo data, CPU
    python benchmarks/bench_seed_cost.py --limit 4 --epochs 2              # a tiny dry run (tests)

The study fits every trained method (L2S, AMPS beta=0, AMPS) once per training seed, over one item
cache: the first fit of a model extracts every item's hidden states (and MCS), later fits read them
from the cache and only train. This script runs the study's fits the same way (the study's layer,
epochs, learning rate; a fresh cache in a temporary folder) for seeds 0 and 1 and prints each
fit's wall time: the first line includes the extraction, the others are what one more seed costs
per method. Each extra seed also adds one sweep per steered method that reads the file (L2S,
AMPS beta=0, AMPS: ``len(alphas)`` lmms-eval runs each), which this script does not time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="amps_qwen", help="lmms-eval model whose shipped organism is fitted")
    ap.add_argument("--data", type=Path, default=ROOT / "results" / "demo" / "data", help="prepared MC2 folder")
    ap.add_argument("--limit", type=int, default=None, help="items (default: all)")
    ap.add_argument("--epochs", type=int, default=None, help="default: the study's")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="write the timings as JSON here")
    args = ap.parse_args(argv)

    from amps_eval.fit import FitSettings, fit
    from amps_eval.organism import organism_path
    from amps_eval.steering.module import TrainSettings
    from amps_eval.methods.registry import info
    from amps_eval.study import TRAINED, StudySettings, _layer
    from amps_eval.study_data import DataChoice, n_items, study_lr

    study = StudySettings()
    trained = [m for m in TRAINED if info(m).needs_column is None]  # amps_oracle needs graded data
    lr = study_lr(n_items(DataChoice(args.data, ""), study.n_per_category, args.limit))  # as the study sets it
    pretrained = str(organism_path(args.model))
    layer = _layer(study, pretrained)
    epochs = args.epochs or study.epochs
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        for seed in range(args.seeds):
            for method in trained:
                train = TrainSettings(epochs=epochs, lr=lr, seed=seed)
                started = time.perf_counter()
                fit(FitSettings(model=args.model, pretrained=pretrained, method=method, layer=layer, train=train,
                                batch_size=study.batch_size, device="cpu", dtype="float32", data=args.data,
                                limit=args.limit, cache_dir=cache), Path(tmp) / f"{method}_{seed}.safetensors",
                    progress=False)
                seconds = time.perf_counter() - started
                first = not rows
                rows.append({"seed": seed, "method": method, "seconds": round(seconds, 2), "extraction": first})
                print(f"seed {seed}  {method:<11} {seconds:8.2f} s" + ("  (includes the extraction)" if first else ""),
                      flush=True)
    extra = [r["seconds"] for r in rows if r["seed"] > 0]
    if extra:
        print(f"one more seed: {sum(extra):.2f} s of fitting for {len(trained)} methods (model {args.model}, "
              f"{args.limit or 'all'} items, {epochs} epochs)")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
