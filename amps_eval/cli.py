"""`amps-eval`: the command line (data, MCS, fitting, the study, reports).

Each subcommand is a small function; heavy imports happen inside them so that `--help` is instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _prepare_mc2(args: argparse.Namespace) -> int:
    import os

    from amps_eval.mc2.prepare import check_output_dir, prepare_mc2
    from amps_eval.mc2.source import ENV_VAR, default_data_dir

    out = Path(args.out).expanduser().absolute() if args.out else default_data_dir()
    check_output_dir(out)  # before any download: a folder we may not write is an error now, not later
    questions = Path(args.questions) if args.questions else None
    images = Path(args.images) if args.images else None
    if not args.download and (args.images_url or args.workers):
        raise ValueError("--images-url and --workers only apply with --download (not with --images)")
    if questions is not None and (args.questions_url or args.questions_sha256):
        raise ValueError("--questions-url and --questions-sha256 only apply without --questions (a local file)")
    if args.download or questions is None:
        from amps_eval.mc2 import download as dl

        given = {"questions_url": args.questions_url, "questions_sha256": args.questions_sha256,
                 "images_url": args.images_url, "workers": args.workers, "retries": args.retries,
                 "timeout": args.timeout}
        settings = dl.DownloadSettings(**{k: v for k, v in given.items() if v is not None})
        cache = Path(args.cache).expanduser().absolute() if args.cache else dl.default_cache_dir(out)
        if cache == out or out in cache.parents:
            raise ValueError(f"--cache {cache} must not be inside --out {out}, which is replaced when written")
        if args.download:
            result = dl.download_mc2(settings, cache, questions=questions, allow_missing=args.skip_missing)
            questions, images, report = result.questions, result.images.root, result.images
            print(f"COCO images: {report.n_images} used, {report.n_cached} already in {cache}, "
                  f"{report.n_fetched} downloaded, {len(report.failures)} failed")
            if report.failures:
                print(f"could not fetch {len(report.failures)} images, their questions are skipped: "
                      f"{dl.failures_summary(report.failures, limit=5)}")
        else:
            questions, _ = dl.download_questions(settings, cache)
        print(f"downloaded files are kept in {cache} (a rerun reuses them; delete it to free the space)")

    report = prepare_mc2(questions, images, out, skip_missing=args.skip_missing, skip_invalid=args.skip_invalid)
    counts = ", ".join(f"{category} {n}" for category, n in report.per_category.items())
    print(f"wrote {report.n_items} MC2 items to {out} ({counts})")
    if report.n_skipped:
        print(f"skipped {report.n_skipped} items (without a readable image, or invalid with --skip-invalid): "
              f"listed with the reason in {out / 'skipped.json'}")
    if out.resolve() == default_data_dir().resolve():
        print("this is the default MC2 folder: the tasks find it without any environment variable")
        set_to = os.environ.get(ENV_VAR, "").strip()
        if set_to and Path(set_to).expanduser().resolve() != out.resolve():
            print(f"note: {ENV_VAR}={set_to} is set and takes precedence; unset it to use this folder")
    else:
        print(f"export {ENV_VAR}={out.resolve()}")
    return 0


def _synth_mc2(args: argparse.Namespace) -> int:
    from amps_eval.mc2.synthetic import write_synthetic_mc2

    write_synthetic_mc2(Path(args.out), n_per_category=args.n_per_category, seed=args.seed)
    print(f"wrote the generated MC2 set ({args.n_per_category} items per category) to {args.out}")
    print(f"export AMPS_MC2_DATA={Path(args.out).resolve()}")
    return 0


def study_settings(args: argparse.Namespace):
    """The `StudySettings` of a parsed ``study`` / ``demo`` command line."""
    from amps_eval.study import StudySettings
    from amps_eval.vocabulary import split_list

    return StudySettings(
        out=Path(args.out), models=split_list(args.model),
        pretrained=tuple(p.strip() for p in args.pretrained.split(",") if p.strip()) if args.pretrained else None,
        data=Path(args.data) if args.data else None, n_per_category=args.n_per_category, layer=args.layer,
        alphas=args.alphas, table_alpha=args.table_alpha, batch_size=args.batch_size,
        device=args.device, dtype=args.dtype, epochs=args.epochs, lr=args.lr, limit=args.limit,
        synthetic=args.synthetic, methods=split_list(args.methods), targets=split_list(args.targets),
        graded=getattr(args, "graded", False), seeds=args.seeds,
        **_workers(args),
    )


SHIPPED = ("demo", "validate")
"""The commands on the shipped organisms by default: their models run side by side, one torch
thread each (the same numbers on every machine; docs/demo.md)."""


def _workers(args: argparse.Namespace) -> dict:
    """``jobs`` and ``threads`` of a study command line: as given, else the command's default."""
    shipped = getattr(args, "command_name", "study") in SHIPPED
    jobs, threads = getattr(args, "jobs", None), getattr(args, "threads", None)
    from amps_eval.vocabulary import split_list

    return {"jobs": jobs if jobs is not None else (len(split_list(args.model)) if shipped else 1),
            "threads": threads if threads is not None else (1 if shipped else None)}


def _study(args: argparse.Namespace) -> int:
    from amps_eval.study import run_study

    run_study(study_settings(args))
    return 0


def _mcs_settings(args: argparse.Namespace):
    from amps_eval.mcs.settings import MCSSettings

    return MCSSettings(sigmas=args.sigmas, draws=args.draws, seed=args.mcs_seed, ratio=args.mcs_ratio,
                       tolerance=args.mcs_tolerance, min_draws=args.mcs_min_draws, round_draws=args.mcs_round_draws)


RECIPES = ("reference", "mse_v1")
"""``fit --recipe``: the `TrainSettings` constructors of the same names."""


def fit_settings(args: argparse.Namespace):
    """The `FitSettings` of a parsed ``fit`` command line."""
    from amps_eval.fit_settings import FitSettings
    from amps_eval.steering.train_settings import TrainSettings

    given = {"epochs": args.epochs, "lr": args.lr, "loss": args.loss, "batch_size": args.train_batch_size}
    train = getattr(TrainSettings, args.recipe)(**{k: v for k, v in given.items() if v is not None})
    return FitSettings(
        model=args.model, pretrained=args.pretrained, method=args.method, layer=args.layer, folds=args.folds,
        hidden=args.hidden, train=train, beta=args.beta, convention=args.convention, gamma_max=args.gamma_max,
        anchor_floor=args.anchor_floor, mcs=_mcs_settings(args),
        batch_size=args.batch_size, device=args.device, dtype=args.dtype, data=args.data, cache_dir=args.cache_dir,
        limit=args.limit, seed=args.seed,
    )


def _fit(args: argparse.Namespace) -> int:
    from amps_eval.fit import fit

    fit(fit_settings(args), Path(args.out), progress=True)
    return 0


def _mcs(args: argparse.Namespace) -> int:
    from amps_eval.mcs_run import run_mcs

    out = Path(args.out)
    records = run_mcs(args.model, args.pretrained, out, data=args.data, prompt=args.prompt, settings=_mcs_settings(args),
                      batch_size=args.batch_size, device=args.device, limit=args.limit, dtype=args.dtype,
                      cache_dir=args.cache_dir)
    print(f"wrote the MCS of {len(records)} items to {out} (+ {out.name}.meta.json, {out.stem}.summary.json)")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from amps_eval.eval_command import help_text, run_eval

    if any(a in ("-h", "--help") for a in args.lmms_args):
        print(help_text())
        return 0
    results_file = run_eval(args.lmms_args)
    print(f"amps-eval eval: every requested task wrote its results: {results_file}")
    return 0


def _build_organism(args: argparse.Namespace) -> int:
    from amps_eval.organism.train import OrganismSettings, build_organism, read_manifest

    overrides = {k: v for k, v in (("seed", args.seed), ("steps", args.steps)) if v is not None}
    if args.design == "graded":
        from amps_eval.organism.graded import graded_settings

        settings = graded_settings(args.architecture, **overrides)
    else:
        settings = OrganismSettings.for_architecture(args.architecture, **overrides)
    out = build_organism(Path(args.out), settings, progress=not args.quiet)
    manifest = read_manifest(out)
    print(f"trained the organism in {manifest['training']['seconds']:.0f} s; weights sha256 {manifest['weights_sha256']}")
    if "evaluation" in manifest:
        targets = manifest["evaluation"]["targets"]
        print("held-out targets: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in targets.items()))
    print(f"wrote {out} (load it as pretrained={Path(out).resolve()})")
    return 0


LIST_HELP = "separated by ',' or '/'"


def build_parser() -> argparse.ArgumentParser:
    import inspect

    from amps_eval.cli_options import Parser, default_of, numbers, optional_float, version

    class TopParser(Parser):
        """Everything after ``eval`` is lmms-eval's, its options included (argparse's REMAINDER
        would take an option that comes first for one of ours)."""

        def parse_known_args(self, args=None, namespace=None):
            args = sys.argv[1:] if args is None else list(args)
            if args[:1] == ["eval"]:
                return argparse.Namespace(command="eval", run=_eval, debug=False, lmms_args=args[1:]), []
            return super().parse_known_args(args, namespace)
    from amps_eval.fit_settings import FitSettings
    from amps_eval.mc2.download import DownloadSettings
    from amps_eval.mc2.synthetic import write_synthetic_mc2
    from amps_eval.mcs.settings import RATIOS, MCSSettings
    from amps_eval.report.cli_parsers import finite_alpha
    from amps_eval.report.sweep import SweepSettings, alphas_type
    from amps_eval.steering.train_settings import TrainSettings
    from amps_eval.steering.scaling import CONVENTIONS
    from amps_eval.study import StudySettings
    from amps_eval.vocabulary import DTYPES, PAPER_LAYER

    parser = TopParser(prog="amps-eval", description=__doc__.splitlines()[0],
                    epilog="Every --dashed-option is also accepted in lmms-eval's spelling (--batch_size, "
                    "--model_args). Lists (--alphas, --sigmas, --model, --tasks) are separated by ',' or '/'; "
                    "inside --model_args by '/' only (',' separates the model arguments there).")
    parser.add_argument("--version", action="version", version=f"amps-eval {version()}",
                        help="print the installed version and exit")
    parser.add_argument("--debug", action="store_true",
                        help="on an unexpected error, print the traceback (also: AMPS_EVAL_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    batch_help = ("prompts per forward pass, for speed and memory (the wrappers' answers and the MCS are tested "
                  "equal to unbatched ones). The defaults differ by command: fit and mcs "
                  f"{FitSettings.batch_size}, study and demo {StudySettings.batch_size} (the CPU demo), sweep "
                  f"{SweepSettings.batch_size} (lmms-eval's own)")
    downloads = DownloadSettings()
    p = sub.add_parser(
        "prepare-mc2", help="make the MC2 dataset: download it (--download) or join the question file with a local COCO 2014 copy",
        description="Join the MC2 question file with its COCO 2014 images into a prepared folder the tasks read. "
        "--download fetches the question file (sha256-verified) and only the 1,940 COCO images it uses into a "
        "cache folder (<out>.download/, reused by a rerun); --images uses a local COCO 2014 root instead.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--download", action="store_true",
                        help="download the question file (unless --questions) and the COCO 2014 images it uses")
    source.add_argument("--images", default=None, help="local COCO 2014 root holding train2014/ and val2014/")
    p.add_argument("--questions", default=None,
                   help="local evaluate_final.json from the MC2 authors (default: download it from --questions-url)")
    p.add_argument("--out", default=None,
                   help="output folder (default: $AMPS_EVAL_HOME/mc2, else ~/.cache/amps-eval/mc2, where the tasks "
                   "look without AMPS_MC2_DATA)")
    p.add_argument("--skip-missing", action="store_true",
                   help="drop items whose image is missing or could not be fetched; listed in <out>/skipped.json")
    p.add_argument("--skip-invalid", action="store_true",
                   help="drop questions every later command would refuse (exact repeats, two equal options); "
                   "listed in <out>/skipped.json (default: refuse the question file, naming them)")
    p.add_argument("--cache", default=None, help="folder for the downloaded files (default: <out>.download next to --out)")
    p.add_argument("--questions-url", default=None,
                   help=f"address of the question file (default: {downloads.questions_url})")
    p.add_argument("--questions-sha256", default=None,
                   help=f"expected sha256 of the question file (default: the pinned file's, {downloads.questions_sha256})")
    p.add_argument("--images-url", default=None,
                   help="base address of the COCO images, a mirror with the same layout "
                   f"(BASE/train2014/COCO_train2014_<id>.jpg, BASE/val2014/...; default: {downloads.images_url})")
    p.add_argument("--workers", type=int, default=None, help=f"parallel downloads (default: {downloads.workers})")
    p.add_argument("--retries", type=int, default=None,
                   help=f"retries per address after the first try (default: {downloads.retries})")
    p.add_argument("--timeout", type=float, default=None,
                   help=f"seconds to wait for the server on each connect/read (default: {downloads.timeout:g})")
    p.set_defaults(run=_prepare_mc2)

    p = sub.add_parser("synth-mc2", help="write the generated MC2-format dataset (no download needed)")
    p.add_argument("--out", required=True, help="new folder for the dataset")
    synthetic = inspect.signature(write_synthetic_mc2).parameters
    p.add_argument("--n-per-category", type=int, default=synthetic["n_per_category"].default, help="items per category")
    p.add_argument("--seed", type=int, default=synthetic["seed"].default, help="seed of the generated items")
    p.set_defaults(run=_synth_mc2)

    from amps_eval.families import FAMILIES, lmms_models
    from amps_eval.organism.architectures import ARCHITECTURES

    organism_models = [a.lmms_model for a in ARCHITECTURES.values()]
    for name, help_text in (
        ("demo", "the whole study offline on CPU on the shipped graded model organisms, with the known-answer "
                 "tests (what `make demo` runs)"),
        ("study", "the whole study (MCS, fit, baselines, sweeps, tables, figures, leaderboard) on any checkpoint"),
        ("validate", "the known-answer tests: the study on the graded organisms (planted per-item preference) "
                     "with the AMPS oracle; writes known_answer.md and known_answer.json besides the study's outputs"),
    ):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(graded=name in SHIPPED, command_name=name)
        if name == "demo":
            p.add_argument("--out", default=str(default_of(StudySettings, "out")), help="output folder")
        else:
            p.add_argument("--out", required=True, help="output folder")
        p.add_argument("--model", default=",".join(organism_models if name in ("demo", "validate") else StudySettings.models),
                       help=f"lmms-eval model name(s), {LIST_HELP}: {', '.join(lmms_models())}"
                       + (" (the demo: every shipped organism)" if name == "demo" else ""))
        p.add_argument("--pretrained", default=None,
                       help="checkpoint(s), one per --model in the same order, comma-separated (default: each model's "
                       "shipped organism); one leaderboard across them all")
        p.add_argument("--data", default=None,
                       help="prepared MC2 folder (default: as the tasks find it, AMPS_MC2_DATA, else the folder "
                       "`amps-eval prepare-mc2 --download` fills; the generated set for the shipped organisms)")
        p.add_argument("--synthetic", action="store_true",
                       help="run on the generated MC2-format set (written into <out>/data), whatever the checkpoint: "
                       "a smoke test, not the MC2 benchmark")
        p.add_argument("--methods", default=",".join(StudySettings.methods),
                       help=f"the methods to run, {LIST_HELP}; the fits follow (mean_mcs reads the mean file), "
                       "e.g. none,inst,l2s,amps")
        p.add_argument("--targets", default=",".join(StudySettings.targets),
                       help=f"the targets to run, {LIST_HELP}: vision (mc2_visual), text (mc2_text)")
        p.add_argument("--n-per-category", type=int, default=StudySettings.n_per_category,
                       help="generated items per category (the generated set only)")
        p.add_argument("--layer", type=int, default=StudySettings.layer,
                       help="steering layer (default: the checkpoint's middle decoder layer; `fit` defaults to the "
                       f"paper's layer {PAPER_LAYER}, which a small organism does not have)")
        p.add_argument("--alphas", type=alphas_type, default=StudySettings.alphas,
                       help=f"steering strengths of the sweeps, {LIST_HELP}")
        p.add_argument("--table-alpha", type=finite_alpha, default=StudySettings.table_alpha,
                       help="alpha of the tables' steered rows (default: chosen on held-out halves of the items)")
        p.add_argument("--batch-size", type=int, default=StudySettings.batch_size, help=batch_help)
        p.add_argument("--device", default=StudySettings.device, help="default: cuda if available, else cpu")
        p.add_argument("--dtype", default=StudySettings.dtype, choices=DTYPES,
                       help="auto: bfloat16 on a GPU, float32 on the CPU")
        p.add_argument("--epochs", type=int, default=StudySettings.epochs, help="training epochs of the MLPs")
        p.add_argument("--lr", type=float, default=StudySettings.lr,
                       help=f"Adam learning rate of the MLPs (default: {TrainSettings.lr:g} x 2000 / items, at most "
                       f"1e-3: the papers' {TrainSettings.lr:g} on the real 2,000 items, 1e-3 on ~100, where "
                       f"{TrainSettings.lr:g} barely moves a module in 100 epochs)")
        p.add_argument("--limit", type=int, default=StudySettings.limit, help="documents per task (default: all)")
        p.add_argument("--jobs", type=int, default=None,
                       help="models studied at once, one worker process each (default: every model for demo and "
                       "validate, else 1: one after the other in this process)")
        p.add_argument("--threads", type=int, default=None,
                       help="torch threads of each worker process (default: 1 for demo and validate, whose numbers "
                       "are then the same on every machine; else the cores shared out among the workers)")
        p.add_argument("--seeds", type=int, default=StudySettings.seeds,
                       help="training seeds of each trained method (L2S, AMPS, AMPS beta=0): each seed is fitted "
                       "and swept, and the report compares the methods over the seeds' mean, with their spread")
        p.set_defaults(run=_study)

    from amps_eval.methods.registry import FIT_METHODS
    from amps_eval.plugin import MODEL_CLASSES

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, choices=sorted(MODEL_CLASSES))
        p.add_argument("--pretrained", required=True, help="hub id or local folder of the checkpoint")
        p.add_argument("--data", default=None, help="prepared MC2 folder (default: AMPS_MC2_DATA, else the default folder)")
        p.add_argument("--batch-size", type=int, default=FitSettings.batch_size, help=batch_help)
        p.add_argument("--device", default=FitSettings.device, help="default: cuda if available, else cpu")
        p.add_argument("--dtype", default=FitSettings.dtype, choices=DTYPES, help="auto: bfloat16 on a GPU, float32 on the CPU")
        p.add_argument("--limit", type=int, default=FitSettings.limit, help="use only the first N items (default: all)")
        p.add_argument("--sigmas", type=numbers("--sigmas"), default=MCSSettings.sigmas,
                       help=f"MCS noise levels (relative), {LIST_HELP}")
        p.add_argument("--draws", type=int, default=MCSSettings.draws,
                       help="MCS Monte Carlo draws per noise level and modality (with --mcs-tolerance: the most an "
                       "item takes)")
        p.add_argument("--mcs-tolerance", type=optional_float("--mcs-tolerance"), default=MCSSettings.tolerance,
                       help="sequential MCS: draw per item until its r_v standard error is at most this ('none': "
                       "always --draws draws; see docs/method.md)"
                       + (" (default: none)" if MCSSettings.tolerance is None else ""))
        p.add_argument("--mcs-min-draws", type=int, default=MCSSettings.min_draws,
                       help="sequential MCS: draws of an item's first round")
        p.add_argument("--mcs-round-draws", type=int, default=MCSSettings.round_draws,
                       help="sequential MCS: draws each later round adds")
        p.add_argument("--mcs-seed", type=int, default=MCSSettings.seed, help="seed of the MCS noise")
        p.add_argument("--mcs-ratio", choices=RATIOS, default=MCSSettings.ratio,
                       help="how r_v is formed: per_sigma, the mean of per-sigma ratios; sums, C_V/(C_V+C_T) (Eq. 7 "
                       "as written); per_draw, the mean of per-draw ratios; see docs/method.md")

    p = sub.add_parser("fit", help="fit mean-steering vectors, L2S or AMPS modules on MC2 items (cross-fitted)")
    model_args(p)
    p.add_argument("--method", required=True, choices=FIT_METHODS,
                   help="mean (also the file mean_mcs reads), l2s, amps, or amps_beta0 (AMPS with beta = 0: the ablation)")
    p.add_argument("--layer", type=int, default=FitSettings.layer,
                   help="decoder layer to read and steer (the paper's; `study` defaults to the checkpoint's middle layer)")
    p.add_argument("--out", required=True, help="the steering file to write (.safetensors)")
    p.add_argument("--folds", type=int, default=FitSettings.folds, help="cross-fitting folds; 1 fits on everything")
    p.add_argument("--hidden", type=int, default=FitSettings.hidden, help="MLP width (default: the family's: "
                   + ", ".join(f"{f.default_mlp_hidden} for {f.lmms_model}" for f in FAMILIES.values() if f.model_types)
                   + "; amps_auto: 400 for Qwen-VL checkpoints, else 100)")
    p.add_argument("--recipe", choices=RECIPES, default=RECIPES[0],
                   help="how the MLP is trained: the L2S reference code's recipe (AMPS trains the same "
                   "way on its own targets) or amps-eval 0.1's (plain MSE, last epoch); see docs/method.md")
    recipes = {r: getattr(TrainSettings, r)() for r in RECIPES}
    for option, field, what in (("--epochs", "epochs", "training epochs"), ("--lr", "lr", "Adam learning rate"),
                                ("--train-batch-size", "batch_size", "training batch size")):
        kind = type(getattr(TrainSettings(), field))
        values = sorted({f"{getattr(r, field):g}" for r in recipes.values()})
        note = (f"; `study` and `demo` scale it with the data: {TrainSettings.lr:g} x 2000 / items, at most 1e-3, "
                f"because the papers' {TrainSettings.lr:g} barely moves a module fitted on ~100 items in 100 epochs"
                if field == "lr" else "")
        p.add_argument(option, type=kind, default=None,
                       help=f"{what} (default: the recipe's, {' / '.join(values)}){note}")
    p.add_argument("--loss", choices=("l2s", "mse"), default=None,
                   help="override the recipe's loss: l2s (MSE + L1 - cosine, the reference) or mse (AMPS Eq. 12) "
                   "(default: the recipe's: " + ", ".join(f"{r.loss} for {n}" for n, r in recipes.items()) + ")")
    p.add_argument("--beta", type=float, default=FitSettings.beta,
                   help="AMPS scaling strength of Eq. 9 (default: the method's: 1 for amps, 0 for amps_beta0, "
                   "which fixes it)")
    p.add_argument("--convention", choices=CONVENTIONS, default=FitSettings.convention, help="sign convention of Eq. 9")
    p.add_argument("--gamma-max", type=float, default=FitSettings.gamma_max,
                   help="upper bound of the per-sample scaling gamma")
    p.add_argument("--anchor-floor", type=float, default=FitSettings.anchor_floor,
                   help="lower bound of the anchor reliance in Eq. 9 (keeps a near-zero anchor from exploding gamma)")
    p.add_argument("--cache-dir", default=FitSettings.cache_dir, help="extraction cache (default: <out>.cache/)")
    p.add_argument("--seed", type=int, default=FitSettings.seed, help="seed of the fold split")
    p.set_defaults(run=_fit)

    p = sub.add_parser("mcs", help="the modality contribution score of every MC2 item (JSONL + summary)")
    model_args(p)
    p.add_argument("--prompt", choices=("none", "visual", "text"), default="none",
                   help="plain prompt, or with the instruction toward the image / the text appended after the "
                   "question (as in the fits, AMPS Eq. 8)")
    p.add_argument("--out", required=True, help="output .jsonl (+ <out>.meta.json and <stem>.summary.json)")
    p.add_argument("--cache-dir", default=None, help="item cache to reuse and extend (default: none, every item is "
                   "scored); a fit's --cache-dir shares its MCS")
    p.set_defaults(run=_mcs)

    p = sub.add_parser("build-organism", help="train a model organism (a small "
                       + " or ".join(a.family.display for a in ARCHITECTURES.values()) + " with a known modality preference)")
    p.add_argument("--out", required=True, help="new or empty output folder (hub layout + organism_manifest.json)")
    p.add_argument("--architecture", default="qwen2_5_vl", choices=list(ARCHITECTURES),
                   help=", ".join(f"{a.name}: {a.family.display} (served by {a.lmms_model})" for a in ARCHITECTURES.values()))
    p.add_argument("--seed", type=int, default=None, help="weight and data-order seed (default: the shipped organism's)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the shipped organism's)")
    p.add_argument("--design", default="fixed", choices=("fixed", "graded"),
                   help="fixed: one modality per category, trained from scratch; graded: a planted per-item "
                   "probability of following the image (docs/organisms.md), fine-tuned from the shipped fixed organism")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_build_organism)

    p = sub.add_parser("eval", add_help=False,
                       help="run lmms-eval with the same arguments and exit non-zero when the run failed or a "
                       "task wrote no results (`amps-eval eval --help`)")
    p.add_argument("lmms_args", nargs=argparse.REMAINDER, help="lmms-eval's arguments")
    p.set_defaults(run=_eval)

    from amps_eval.report.cli_parsers import add_parsers  # report, leaderboard, sweep

    add_parsers(sub, batch_help=batch_help, list_help=LIST_HELP)
    from amps_eval.output_lock import add_lock_option

    add_lock_option(sub)  # last: every command with an output option gets --wait-for-lock
    return parser


SIGPIPE_EXIT = 141
"""The exit code of a command whose standard output was closed (128 + SIGPIPE, what a shell reports
for a program that a closed pipe ended, e.g. ``yes | head -1``)."""


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit codes: 0 done; 2 an input or environment error (one line on stderr:
    ``amps-eval <command>: error: <message>``; argparse's usage errors also exit 2); 1 an unexpected
    error, i.e. a bug (one line; the traceback with ``--debug`` or ``AMPS_EVAL_DEBUG=1``);
    130 interrupted (Ctrl-C); 141 (`SIGPIPE_EXIT`), without a message, when the reader of standard
    output went away (``amps-eval report ... | head -1``)."""
    import os

    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # a closed pipe shows here, not as a traceback at the interpreter's exit
    except BrokenPipeError:
        # what is still buffered for stdout goes nowhere: the interpreter's last flush finds no closed pipe
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return SIGPIPE_EXIT


def _run(argv: list[str] | None) -> int:
    """`main` but for a closed standard output."""
    import os
    import traceback

    # input and environment errors; the project's own errors derive from these
    expected = (OSError, ValueError, LookupError, RuntimeError, ImportError, MemoryError)
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("AMPS_EVAL_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
    name = f"amps-eval {args.command}"
    try:
        from amps_eval.output_lock import command_locks

        with command_locks(args, " ".join(["amps-eval", *(sys.argv[1:] if argv is None else argv)])):
            return args.run(args)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise  # `main`: the reader of stdout went away, not an error of the command
    except Exception as error:  # noqa: BLE001 - every failure becomes a message and an exit code
        if debug:
            traceback.print_exc()
        text = str(error).strip()
        kind = type(error).__name__
        if isinstance(error, expected):
            if isinstance(error, KeyError) or not text:  # str(KeyError('x')) is just "'x'"
                text = f"{kind}: {text}" if text else kind
            print(f"{name}: error: {text}", file=sys.stderr)
            return 2
        hint = "" if debug else " (rerun with --debug or AMPS_EVAL_DEBUG=1 for the traceback)"
        print(f"{name}: internal error, please report it: {kind}{': ' + text if text else ''}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
