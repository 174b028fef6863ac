"""`amps-eval`: the command line (data preparation, the demo, and later fitting and reports).

Each subcommand is a small function; heavy imports happen inside them so that `--help` is instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _prepare_mc2(args: argparse.Namespace) -> int:
    from amps_eval.mc2.prepare import prepare_mc2

    report = prepare_mc2(Path(args.questions), Path(args.images), Path(args.out), skip_missing=args.skip_missing)
    print(report)
    print(f"export AMPS_MC2_DATA={Path(args.out).resolve()}")
    return 0


def _synth_mc2(args: argparse.Namespace) -> int:
    from amps_eval.mc2.synthetic import write_synthetic_mc2

    write_synthetic_mc2(Path(args.out), n_per_category=args.n_per_category, seed=args.seed)
    print(f"wrote the generated MC2 set ({args.n_per_category} items per category) to {args.out}")
    print(f"export AMPS_MC2_DATA={Path(args.out).resolve()}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from amps_eval.demo import DemoSettings, run_demo

    run_demo(DemoSettings(out=Path(args.out), methods=tuple(args.methods.split(",")), limit=args.limit))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amps-eval", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare-mc2", help="join the MC2 question file with COCO 2014 images into a local dataset")
    p.add_argument("--questions", required=True, help="evaluate_final.json from the MC2 authors")
    p.add_argument("--images", required=True, help="COCO root holding train2014/ and val2014/")
    p.add_argument("--out", required=True, help="output folder (then: export AMPS_MC2_DATA=<out>)")
    p.add_argument("--skip-missing", action="store_true", help="drop items whose image is missing; listed in <out>/skipped.json")
    p.set_defaults(run=_prepare_mc2)

    p = sub.add_parser("synth-mc2", help="write the generated MC2-format dataset (no download needed)")
    p.add_argument("--out", required=True)
    p.add_argument("--n-per-category", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_synth_mc2)

    p = sub.add_parser("demo", help="the end-to-end run on the embedded default, offline, on CPU")
    p.add_argument("--out", default="results/demo")
    p.add_argument("--methods", default="none,inst,cot,fewshot")
    p.add_argument("--limit", type=int, default=None, help="documents per task (default: all)")
    p.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"amps-eval {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
