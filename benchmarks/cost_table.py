"""The cost table of docs/cost.md: GPU memory and time per 1,000 items of each study step, per
checkpoint size, PROJECTED (nothing here runs a model) by `amps_eval.study_cost` from the sizes that
bench_full_size.py recorded (benchmarks/README.md, "Full-size widths").

    .venv/bin/python benchmarks/cost_table.py [--batch 8] [--items 1000]

Columns: weights (bf16); generation = weights + the K/V cache of a batch of prompts with their
64-token budget; MCS = weights + one perturbed copy and its gradient (the least it needs; it takes as
many copies per pass as fit half the free memory) and all 96 copies of one item (what makes it
fastest); then minutes per `--items` items of each study step on the assumed device, for the
default study (3 MCS prompts; 1 extraction; 8 baseline passes: none, inst, cot at 512 tokens,
fewshot with 3 images, on 2 tasks; 50 sweep passes: 5 steered methods x 5 alphas x 2 tasks).
"""

from __future__ import annotations

import argparse


def rows(batch: int, items: int) -> list[list[str]]:
    from amps_eval.mcs.settings import MCSSettings
    from amps_eval.study import StudySettings
    from amps_eval.study_cost import DEVICES, GIB, SIZES, generation_bytes, mcs_copy_bytes, weights_bytes
    from amps_eval.study_plan import plan, select, step_minutes

    settings = StudySettings()
    selection = select(settings.methods, settings.targets)
    the_plan = plan(("model",), items, selection, settings.alphas)
    mcs = MCSSettings()
    perturbations = len(mcs.sigmas) * 2 * mcs.draws
    device = DEVICES["h100"]
    out = []
    for sizes in SIZES:
        minutes = dict(step_minutes(the_plan, selection, sizes, device, batch, perturbations))
        one, every = mcs_copy_bytes(sizes), perturbations * mcs_copy_bytes(sizes)
        out.append([
            sizes.name, f"{sizes.params / 1e9:.2f}B", f"{weights_bytes(sizes) / GIB:.1f}",
            f"{generation_bytes(sizes, batch, 64) / GIB:.1f}",
            f"{(weights_bytes(sizes) + one) / GIB:.1f} / {(weights_bytes(sizes) + every) / GIB:.1f}",
            *(f"{minutes[step]:.1f}" for step in ("mcs", "fit", "baselines", "sweeps")),
            f"{sum(minutes.values()):.0f}",
        ])
    return out


HEADER = ["checkpoint", "params", "weights GiB", "generate GiB", "MCS GiB (1 copy / 96)", "MCS min", "fit min",
          "baselines min", "sweeps min", "total min"]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="prompts per forward pass (the study's default)")
    parser.add_argument("--items", type=int, default=1000, help="items the times are given for")
    args = parser.parse_args(argv)
    from amps_eval.study_cost import DEVICES

    table = [HEADER, *rows(args.batch, args.items)]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER))]
    lines = [f"cost_table: PROJECTED, not measured; batch {args.batch}, {args.items} items, bf16, on "
             f"{DEVICES['h100'].name} at {DEVICES['h100'].assumption}"]
    lines += ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in table]
    lines.insert(2, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
