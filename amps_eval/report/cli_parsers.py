"""The ``report``, ``leaderboard`` and ``sweep`` subcommands of ``amps-eval`` (parsers + handlers).

Kept here rather than in ``amps_eval/cli.py`` so that the CLI module only needs one line to add
them; heavy imports happen inside the handlers, so ``amps-eval --help`` stays instant.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from amps_eval.report import STEERED


def finite_alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 2 or 0.5, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number such as 2 or 0.5, got {text!r} "
                                         "(no run is steered with it)")
    return value


def _report(args: argparse.Namespace) -> int:
    from amps_eval.report.build import TABLES, ReportOptions, build_report
    from amps_eval.report.render import write_text_atomic

    if args.susceptibility:
        from amps_eval.report.susceptibility_report import write_susceptibility

        mcs = [Path(p) for p in args.mcs] or [Path(args.results_dir)]
        for path in write_susceptibility(Path(args.results_dir), mcs, Path(args.susceptibility)):
            print(f"wrote {path}", file=sys.stderr)
        return 0
    options = ReportOptions(
        results_dir=Path(args.results_dir), tables=TABLES if args.table == "all" else (args.table,), format=args.format,
        collapse=args.collapse, stderr=args.stderr, paper=args.paper, model=args.model, alpha=args.alpha,
        alpha_choice=args.alpha_choice,
        orders="both" if args.both_orders else "one", figures=Path(args.figures) if args.figures else None,
        mcs=tuple(Path(p) for p in args.mcs),
    )
    report = build_report(options)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(args.out), report.text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(report.text)
    if args.format == "csv":  # the other formats carry the notes in the text itself
        print("\n".join(report.notes), file=sys.stderr)
    return 0


def _leaderboard(args: argparse.Namespace) -> int:
    from amps_eval.report.leaderboard import write_leaderboard

    html_path, md_path = write_leaderboard(Path(args.results_dir), Path(args.out) if args.out else None)
    print(f"wrote {html_path} and {md_path}")
    return 0


def sweep_settings(args: argparse.Namespace):
    """The `SweepSettings` of a parsed ``sweep`` command line."""
    from amps_eval.report.runs import parse_model_args
    from amps_eval.report.sweep import SweepSettings
    from amps_eval.vocabulary import split_list

    return SweepSettings(
        model=args.model, pretrained=args.pretrained, method=args.method, steering=Path(args.steering),
        alphas=args.alphas, tasks=split_list(args.tasks), out=Path(args.out),
        batch_size=args.batch_size, limit=args.limit, device=args.device,
        data=Path(args.data) if args.data else None, extra_model_args=parse_model_args(args.model_args),
    )


def _sweep(args: argparse.Namespace) -> int:
    from amps_eval.report.sweep import run_sweep

    run_sweep(sweep_settings(args))
    return 0


def add_parsers(sub, batch_help: str = "prompts per forward pass", list_help: str = "separated by ',' or '/'") -> None:
    """Add the three subcommands to ``amps-eval``'s subparsers."""
    from amps_eval.families import lmms_models
    from amps_eval.report.build import ReportOptions
    from amps_eval.report.sweep import SweepSettings, alphas_type
    from amps_eval.vocabulary import POSITIONS

    p = sub.add_parser("report", help="the AMPS paper's tables (and figures) from lmms-eval result files")
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="folder of lmms-eval outputs (searched recursively)")
    p.add_argument("--table", choices=("1", "2", "3", "all"), default="all", help="which table")
    p.add_argument("--format", choices=("github", "markdown", "latex", "csv"), default="github", help="output format")
    p.add_argument("--out", default=None, help="write here instead of stdout (notes then go to stderr; default: stdout)")
    p.add_argument("--paper", action="store_true", help="show the published numbers on file beside ours")
    p.add_argument("--collapse", action="store_true", help="add the collapse rate (answers following neither option)")
    p.add_argument("--stderr", action="store_true", help="add the standard error over items")
    p.add_argument("--model", default=None,
                   help="only this model (pretrained id, its last component, or a substring; default: every model)")
    p.add_argument("--alpha", type=finite_alpha, default=None,
                   help="steered rows use this alpha (default: chosen per --alpha-choice)")
    p.add_argument("--alpha-choice", choices=("held-out", "optimistic"), default=ReportOptions.alpha_choice,
                   help="without --alpha: choose a sweep's alpha on held-out halves of the items (held-out) or "
                   "take the best Total on the evaluated items (optimistic, labelled as such)")
    p.add_argument("--both-orders", action="store_true", help="use the mc2_*_both_orders runs instead of the one-order ones")
    p.add_argument("--figures", default=None, metavar="DIR",
                   help="also write Figures 1, 4, 5, 6 (PNG + PDF) here (default: no figures)")
    p.add_argument("--mcs", action="append", default=[], metavar="PATH",
                   help="amps-eval mcs outputs / diagnostics for Figures 4-5 (default: search RESULTS_DIR); repeatable")
    p.add_argument("--susceptibility", default=None, metavar="DIR",
                   help="instead of the tables: does the MCS predict each item's flip and collapse points in the "
                   "sweeps? writes DIR/susceptibility.md and a figure per model (MCS from --mcs; default: the tables)")
    p.set_defaults(run=_report)

    p = sub.add_parser("leaderboard", help="one row per model and method, both targets side by side (HTML + Markdown)")
    p.add_argument("results_dir", metavar="RESULTS_DIR")
    p.add_argument("--out", default=None, metavar="DIR", help="folder for leaderboard.html/.md (default: RESULTS_DIR)")
    p.set_defaults(run=_leaderboard)

    p = sub.add_parser("sweep", help="run one steered method over a grid of alphas (one results folder)")
    p.add_argument("--model", required=True, choices=lmms_models(), help="lmms-eval model")
    p.add_argument("--pretrained", required=True, help="hub id or local folder of the checkpoint")
    p.add_argument("--method", required=True, choices=STEERED)
    p.add_argument("--steering", required=True, help="steering file from `amps-eval fit`")
    p.add_argument("--alphas", required=True, type=alphas_type, help=f"steering strengths, {list_help}, e.g. 0,0.5,1,2,4")
    p.add_argument("--tasks", default=",".join(SweepSettings.tasks), help=f"lmms-eval tasks, {list_help}")
    p.add_argument("--out", required=True, help="results folder (one subfolder per alpha)")
    p.add_argument("--batch-size", type=int, default=SweepSettings.batch_size, help=batch_help)
    p.add_argument("--limit", type=int, default=SweepSettings.limit, help="documents per task (default: all)")
    p.add_argument("--device", default=SweepSettings.device, help="default: cuda if available, else cpu")
    p.add_argument("--data", default=SweepSettings.data,
                   help="prepared MC2 folder (default: AMPS_MC2_DATA, else the default folder)")
    p.add_argument("--model-args", default="",
                   help="further model arguments, k=v,k=v (lists inside one '/'-separated), e.g. "
                   f"positions={POSITIONS[1]},mcs_sigmas=0.05/0.1 (default: none)")
    p.set_defaults(run=_sweep)
