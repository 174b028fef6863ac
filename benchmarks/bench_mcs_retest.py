"""Benchmark: test-retest reliability of the Modality Contribution Score against its cost.

For every estimator configuration and every shipped model organism, computes r_v of every item of
the prepared demo data twice, with two different MCS seeds (as two ``amps-eval mcs --mcs-seed A``
/ ``--mcs-seed B`` runs would: `amps_eval.extract.mcs_batch`, noise keyed by `noise_key(mc2_id,
"none")`), in one process so each model loads once. Reports per configuration:

* ``spearman``: rank correlation of r_v between the two seeds (over the items);
* ``mean |d|`` / ``max |d|``: mean and largest |r_v(seed A) - r_v(seed B)|;
* ``mean se``: the mean reported r_v standard error (`mcs_stderr`, both seeds);
* ``pert``: perturbations per item; ``s/item``: wall seconds per item of the MCS calls (encoding
  included, mean of the two seeds); ``cost``: s/item relative to the 2-draw plain row of the same
  organism in the same run.

Configurations ("noise/ratio", draws): the noise is ``plain`` (independent draws), ``anti``
(antithetic pairs), ``crn-s`` (common random numbers across sigmas) or ``crn-m`` (across the two
modalities); the ratio is how r_v is formed from the same scores (``sums``: the paper's
C_V / (C_V + C_T); ``per_sigma``: the mean over sigmas of the per-sigma ratio; ``per_draw``: the
mean of the per-draw ratios; see `amps_eval.mcs.score.mcs_ratio`). Rows with the same noise
and draws share their runs (the ratio is computed from the same scores with `mcs_ratio` and
`mcs_stderr`, exactly as `compute_mcs` would with that ``ratio``), so their cost is the same.
Target: Spearman >= 0.95 and mean |d| <= 0.05 on both organisms.

    python benchmarks/bench_mcs_retest.py                   # both organisms, ~10-15 min on 2 CPU cores
    python benchmarks/bench_mcs_retest.py --limit 16 --draws 2,4 --option-draws 2   # quick check
    python benchmarks/bench_mcs_retest.py --options '' --draws 16 --tolerances 0.03,0.04   # sequential vs fixed

Sequential rows (``--tolerances``, noise ``seqT``): the sequential estimator (`MCSSettings.tolerance`
= T, at most ``--max-draws`` draws), r_v and its standard error as `compute_mcs` returns them;
``pert`` is then the mean perturbations per item over both seeds. The run ends with the curve of
reliability (Spearman / mean |d|) against mean perturbations per item.

Noise designs (``--noise-designs``, `MCSSettings.noise_design`): the plain fixed-draw rows and the
sequential rows run once per design, ``gaussian`` (independent draws; rows ``plain``, ``seqT``) and
``orthogonal`` (the draws of each round orthogonalised, `amps_eval.mcs.noise`; rows ``orth``,
``orth-seqT``), on the same items in the same run; the run ends with one line per organism and
tolerance comparing the designs (Spearman, mean |d|, mean perturbations per item).

    python benchmarks/bench_mcs_retest.py --options '' --draws 2 --tolerances 0.05 --min-draws 4 \
        --round-draws 2 --max-draws 8 --noise-designs gaussian,orthogonal   # orthogonal vs gaussian draws
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, however this is run
from common import THREADS_HELP  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ORGANISMS = {
    "qwen": ("amps_qwen", ROOT / "amps_eval/organism/amps-organism-qwen2.5-vl"),
    "llava": ("amps_llava", ROOT / "amps_eval/organism/amps-organism-llava-1.5"),
}
NOISES = {  # name -> MCSSettings fields
    "plain": {},
    "anti": {"antithetic": True},
    "crn-s": {"common_sigmas": True},
    "crn-m": {"common_modalities": True},
}
TARGET_RHO, TARGET_MAD = 0.95, 0.05
DESIGN_PREFIX = {"gaussian": "", "orthogonal": "orth-"}  # row names: plain / seqT, orth / orth-seqT


def fixed_row_noise(noise: str, design: str) -> str:
    """The row name of a fixed-draw row: the option's name, ``orth`` for the orthogonal plain rows."""
    return "orth" if (noise, design) == ("plain", "orthogonal") else noise


def seq_row_noise(tol: float, design: str) -> str:
    return f"{DESIGN_PREFIX[design]}seq{tol:g}"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rho (average ranks for ties): the known-answer tests' implementation."""
    from amps_eval.known_answer.stats import spearman as rank_correlation

    return rank_correlation(a, b)


def score_run(wrapper, items, settings, batch_size: int) -> tuple[torch.Tensor, float]:
    """Scores [n, S, 2, N] of every item (as `amps-eval mcs` computes them) and the wall seconds."""
    results, seconds = result_run(wrapper, items, settings, batch_size)
    return torch.cat([r.scores for r in results]), seconds


def result_run(wrapper, items, settings, batch_size: int) -> tuple[list, float]:
    """The `MCSResult` of every batch of items (as `amps-eval mcs` computes them) and the wall seconds."""
    from amps_eval.extract import mcs_batch

    parts = []
    t0 = time.perf_counter()
    for start in range(0, len(items), batch_size):
        rows = list(range(start, min(start + batch_size, len(items))))
        parts.append(mcs_batch(wrapper, items.conversations(rows, "none"), [items.ids[i] for i in rows], settings, "none"))
    return parts, time.perf_counter() - t0


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--organisms", default="qwen,llava", help="comma-separated, of: " + ", ".join(ORGANISMS))
    ap.add_argument("--data", default=str(ROOT / "results/demo/data"), help="prepared MC2 folder (the 128 demo items)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N items")
    ap.add_argument("--seeds", type=_ints, default=[1, 2], help="the two MCS seeds (default 1,2)")
    ap.add_argument("--draws", type=_ints, default=[2, 4, 8, 16, 32], help="draws of the plain-noise rows")
    ap.add_argument("--option-draws", type=_ints, default=[2, 4, 8, 16], help="draws of the anti / crn rows")
    ap.add_argument("--options", default="anti,crn-s,crn-m", help="noise options besides plain ('' for none)")
    ap.add_argument("--tolerances", type=_floats, default=[],
                    help="r_v standard-error tolerances of sequential rows (noise 'seq', per_sigma ratio), e.g. 0.03,0.04")
    ap.add_argument("--min-draws", type=int, default=None, help="sequential rows: draws of the first round "
                    "(default: MCSSettings')")
    ap.add_argument("--round-draws", type=int, default=None, help="sequential rows: draws per later round")
    ap.add_argument("--max-draws", type=int, default=16, help="sequential rows: the most draws an item takes")
    ap.add_argument("--noise-designs", default="gaussian",
                    help="comma-separated MCSSettings.noise_design values of the plain and sequential rows "
                         "(gaussian, orthogonal); default gaussian")
    ap.add_argument("--sigmas", default="0.05,0.1,0.2")
    ap.add_argument("--batch-size", type=int, default=8, help="items per compute_mcs call")
    ap.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if len(args.seeds) != 2 or args.seeds[0] == args.seeds[1]:
        ap.error("--seeds takes two different seeds")
    torch.set_num_threads(args.threads)

    from amps_eval.encoding import load_encoder
    from amps_eval.fit_data import load_items
    from amps_eval.mcs.score import MCSSettings, mcs_ratio, mcs_stderr

    sigmas = tuple(float(x) for x in args.sigmas.split(","))
    options = [o for o in args.options.split(",") if o]
    for o in options:
        if o not in NOISES or o == "plain":
            ap.error(f"unknown option {o!r}; choose from {', '.join(k for k in NOISES if k != 'plain')}")
    from amps_eval.mcs.noise import NOISE_DESIGNS

    designs = [d for d in args.noise_designs.split(",") if d]
    if not designs or any(d not in NOISE_DESIGNS for d in designs):
        ap.error(f"--noise-designs takes a comma-separated list of {', '.join(NOISE_DESIGNS)}, got {args.noise_designs!r}")
    plan = ([("plain", d, design) for design in designs for d in args.draws]
            + [(o, d, "gaussian") for o in options for d in args.option_draws])
    sequential = {k: v for k, v in (("min_draws", args.min_draws), ("round_draws", args.round_draws)) if v is not None}
    if ("plain", 2, "gaussian") not in plan:
        plan.insert(0, ("plain", 2, "gaussian"))  # the cost reference
    items = load_items(args.data, args.limit)
    t_start = time.perf_counter()
    rows: list[dict] = []
    for org in args.organisms.split(","):
        model, pretrained = ORGANISMS[org]
        wrapper = load_encoder(model, str(pretrained), "cpu", "auto")
        score_run(wrapper, items, MCSSettings(sigmas=sigmas, draws=2, tolerance=None), args.batch_size)  # warm-up
        org_rows = []
        for option, draws, design in plan:
            base = MCSSettings(sigmas=sigmas, draws=draws, tolerance=None, noise_design=design,
                               **NOISES[option])  # fixed draws
            noise = fixed_row_noise(option, design)
            runs = [score_run(wrapper, items, dataclasses.replace(base, seed=seed), args.batch_size) for seed in args.seeds]
            s_per_item = statistics.fmean(t for _, t in runs) / len(items)
            print(f"  {org} {noise} {draws} draws: {s_per_item:.4f} s/item", file=sys.stderr, flush=True)
            for ratio in ("sums", "per_sigma", "per_draw") if option == "plain" else ("sums", "per_sigma"):
                settings = dataclasses.replace(base, ratio=ratio)
                est = {k: getattr(settings, k) for k in ("ratio", "antithetic", "common_sigmas", "common_modalities")}
                r = [mcs_ratio(scores, ratio).tolist() for scores, _ in runs]
                se = [mcs_stderr(scores, **est)[2] for scores, _ in runs]
                diffs = [abs(x - y) for x, y in zip(*r)]
                rho = spearman(*r)
                mad = statistics.fmean(diffs)
                org_rows.append({
                    "organism": org, "noise": noise, "ratio": ratio, "draws": draws,
                    "perturbations": settings.perturbations_per_sample, "spearman": rho, "mean_abs_diff": mad,
                    "max_abs_diff": max(diffs), "mean_stderr": float(torch.cat(se).nanmean()),
                    "s_per_item": s_per_item, "seconds": [t for _, t in runs], "meets_target": rho >= TARGET_RHO and mad <= TARGET_MAD,
                    "settings": settings.to_dict(), "r_v": r,
                })
        for tol, design in [(tol, design) for tol in args.tolerances for design in designs]:
            base = MCSSettings(sigmas=sigmas, draws=args.max_draws, tolerance=tol, noise_design=design, **sequential)
            runs = [result_run(wrapper, items, dataclasses.replace(base, seed=seed), args.batch_size)
                    for seed in args.seeds]
            s_per_item = statistics.fmean(t for _, t in runs) / len(items)
            r = [torch.cat([x.r_v for x in results]).tolist() for results, _ in runs]
            se = torch.cat([x.r_v_stderr for results, _ in runs for x in results])
            pert = [p for results, _ in runs for x in results for p in x.perturbations]
            diffs = [abs(x - y) for x, y in zip(*r)]
            rho, mad = spearman(*r), statistics.fmean(diffs)
            print(f"  {org} {design} seq tol {tol}: {statistics.fmean(pert):.1f} perturbations/item, "
                  f"{s_per_item:.4f} s/item", file=sys.stderr, flush=True)
            org_rows.append({
                "organism": org, "noise": seq_row_noise(tol, design), "ratio": base.ratio, "draws": args.max_draws,
                "perturbations": statistics.fmean(pert), "perturbations_range": [min(pert), max(pert)],
                "spearman": rho, "mean_abs_diff": mad, "max_abs_diff": max(diffs), "mean_stderr": float(se.nanmean()),
                "s_per_item": s_per_item, "seconds": [t for _, t in runs],
                "meets_target": rho >= TARGET_RHO and mad <= TARGET_MAD, "settings": base.to_dict(), "r_v": r,
                "per_item_perturbations": pert,
            })
        ref = next(x["s_per_item"] for x in org_rows if x["noise"] == "plain" and x["draws"] == 2)
        for x in org_rows:
            x["cost_vs_default"] = x["s_per_item"] / ref
        rows += org_rows
        del wrapper
    total_s = time.perf_counter() - t_start

    print(
        f"MCS test-retest: {len(items)} items ({args.data}), seeds {args.seeds[0]} vs {args.seeds[1]}, sigmas {sigmas}, "
        f"relative noise, cpu ({platform.machine()}), float32, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"batch {args.batch_size}, total {total_s:.0f}s"
    )
    header = (f"{'organism':<8} {'noise/ratio':<16} {'draws':>5} {'pert':>5} {'spearman':>8} {'mean|d|':>8} "
              f"{'max|d|':>7} {'mean se':>8} {'s/item':>7} {'cost':>6}  target")
    print(header)
    print("-" * len(header))
    for x in rows:
        print(f"{x['organism']:<8} {x['noise'] + '/' + x['ratio']:<16} {x['draws']:>5} {x['perturbations']:>5.4g} "
              f"{x['spearman']:>8.3f} {x['mean_abs_diff']:>8.3f} {x['max_abs_diff']:>7.3f} {x['mean_stderr']:>8.3f} "
              f"{x['s_per_item']:>7.4f} {x['cost_vs_default']:>5.1f}x  {'met' if x['meets_target'] else '-'}")
    print(f"target: spearman >= {TARGET_RHO} and mean |d| <= {TARGET_MAD} (d = r_v seed {args.seeds[0]} - r_v seed "
          f"{args.seeds[1]}); cost = s/item / plain/sums 2-draw s/item of the same organism")
    orgs = args.organisms.split(",")
    print("reliability against mean perturbations per item (per_sigma ratio; plain = fixed draws, seqT = sequential "
          "with tolerance T, max " f"{args.max_draws} draws; orth = orthogonal noise):")
    for org in orgs:
        curve = sorted((x for x in rows if x["organism"] == org and x["ratio"] == "per_sigma"
                        and (x["noise"] in ("plain", "orth") or "seq" in x["noise"])), key=lambda x: x["perturbations"])
        print(f"  {org:<6} " + "  ".join(f"{x['noise']}:{x['perturbations']:.1f}->{x['spearman']:.3f}/{x['mean_abs_diff']:.3f}"
                                     for x in curve))
    if len(designs) > 1:
        print("noise designs, same items and seeds (per_sigma ratio): spearman / mean |d| / mean perturbations per item")
        for org in orgs:
            pairs = [(f"{d} {args.draws[i]} draws", [x for x in rows if x["organism"] == org and x["ratio"] == "per_sigma"
                                                      and x["noise"] == fixed_row_noise("plain", d)
                                                      and x["draws"] == args.draws[i]]) for i in range(len(args.draws))
                     for d in designs]
            pairs += [(f"{d} seq{tol:g}", [x for x in rows if x["organism"] == org and x["noise"] == seq_row_noise(tol, d)])
                      for tol in args.tolerances for d in designs]
            print(f"  {org:<6} " + "  ".join(f"{name}: {x[0]['spearman']:.3f}/{x[0]['mean_abs_diff']:.3f}/"
                                             f"{x[0]['perturbations']:.1f}" for name, x in pairs if x))
    best = {}
    for x in rows:
        key = (x["noise"], x["ratio"], x["draws"])
        best.setdefault(key, []).append(x)
    both = [v for v in best.values() if len(v) == len(orgs) and all(x["meets_target"] for x in v)]
    if both:
        cheapest = min(both, key=lambda v: (v[0]["perturbations"], max(x["cost_vs_default"] for x in v)))
        n, ra, d = cheapest[0]["noise"], cheapest[0]["ratio"], cheapest[0]["draws"]
        print(f"cheapest configuration meeting the target on {', '.join(orgs)}: {n}/{ra}, {d} draws "
              f"({cheapest[0]['perturbations']} perturbations/item, cost "
              + ", ".join(f"{x['organism']} {x['cost_vs_default']:.1f}x" for x in cheapest) + ")")
    else:
        print(f"no configuration meets the target on all of {', '.join(orgs)}")

    out = {
        "data": args.data, "n_items": len(items), "seeds": args.seeds, "sigmas": list(sigmas),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
        "total_seconds": total_s, "rows": rows,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1))
        print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
