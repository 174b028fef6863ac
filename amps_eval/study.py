"""The whole AMPS study, end to end, on one or more checkpoints (`make demo` runs it on the organism).

Steps, each with its own progress output:

1. data: the prepared folder ``--data``, else for a real checkpoint the folder the tasks read
   (``AMPS_MC2_DATA``, else the default folder; none: the study stops before any compute), for the
   model organisms (or with ``--synthetic``) the generated MC2-format set (held out from the
   organism's training seeds); passed to every step explicitly (`amps_eval.study_data`, which also
   sets the MLPs' learning rate from the item count);
2. MCS of every item without an instruction and with each instruction (Figures 4 and 5), and the
   check of the MCS against the organism's designed preference;
3. fitting every kind of steering file (mean, L2S, AMPS and AMPS with beta = 0; 2-fold
   cross-fitting; one extraction cache shared by the fits, so no item is extracted twice);
4. every prompt baseline through lmms-eval;
5. a sweep of the steering strength for every steered method (Figures 1 and 6; the tables' steered
   rows use ``table_alpha`` if set, else the alpha chosen on held-out halves of the items), with
   per-sample diagnostics, from which the report reads each run's effective strength;
6. Tables 1-3, the figures, the leaderboard and the susceptibility analysis (does an item's MCS
   predict where steering flips or collapses it?), written into ``out``.

Everything is written into a staging folder next to ``out`` that replaces ``out`` only when the
study has finished (`amps_eval.staged_output`): a killed or failed study leaves the previous
output whole. Each unit of work (the data, each MCS file, each fit, each baseline run, each sweep)
is recorded as finished in the staging folder (`amps_eval.resume`): the same study started again
after a kill or a failure reuses every finished unit whose settings and inputs are unchanged and
recomputes the rest; a study with other settings starts from an empty staging folder.

Real checkpoints go through the same code: after ``amps-eval prepare-mc2 --download``,
``amps-eval study --model amps_qwen --pretrained Qwen/Qwen2.5-VL-7B-Instruct --layer 14 --device cuda
--out results/qwen7b`` (``--methods none,inst,l2s,amps`` for a subset).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from amps_eval.methods.registry import BY_NAME, FIT_METHODS, PROMPT_METHODS, STEERING_METHODS, info, usable_on

from amps_eval.steering.train_settings import TrainSettings
from amps_eval.study_plan import TRAINED, StepClock, select  # noqa: F401 - TRAINED re-exported
from amps_eval.vocabulary import DTYPES, TARGETS, did_you_mean  # noqa: F401 - DTYPES re-exported


@dataclass(frozen=True)
class StudySettings:
    out: Path = Path("results/demo")
    models: tuple[str, ...] = ("amps_qwen",)  # lmms-eval model names, studied one after the other
    pretrained: tuple[str, ...] | str | None = None  # one checkpoint per model; default: each model's shipped organism
    data: Path | None = None  # default: as the tasks resolve it, the generated set for organisms (amps_eval.study_data)
    n_per_category: int = 16
    data_seed: int = 3  # the organism trained on seed 1 and was checked on seed 2
    image_size: int = 84
    layer: int | None = None  # default: the middle decoder layer
    alphas: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)
    table_alpha: float | None = None  # None: each steered row's alpha chosen on held-out halves of the items
    batch_size: int = 8
    device: str | None = None  # default: cuda if available, else cpu
    dtype: str = "auto"  # bfloat16 on GPU, float32 on CPU; or float32, bfloat16, float16
    epochs: int = TrainSettings.epochs
    lr: float | None = None  # None: follows the data size (amps_eval.study_data.study_lr: 5e-5 on 2,000 items)
    limit: int | None = None
    synthetic: bool = False  # the generated set, whatever the checkpoint (amps_eval.study_data)
    methods: tuple[str, ...] = tuple(BY_NAME)  # which methods' runs (and the fits they need)
    targets: tuple[str, ...] = TARGETS  # which tasks: vision -> mc2_visual, text -> mc2_text
    graded: bool = False  # the graded organisms on graded data, and the known-answer tests (amps-eval validate)
    seeds: int = 3  # training seeds of each trained method (TRAINED): one steering file and sweep per seed
    jobs: int = 1  # models studied at once, one worker process each (amps_eval.study_workers); 1: in this process
    threads: int | None = None  # torch threads of each worker (None: the cores shared out); set: workers even for 1 job

    def __post_init__(self) -> None:
        from amps_eval.plugin import MODEL_CLASSES

        unknown = [m for m in self.models if m not in MODEL_CLASSES]
        if not self.models or unknown:
            hints = "".join(did_you_mean(m, MODEL_CLASSES) for m in unknown)
            raise ValueError(f"models must name one or more of {tuple(MODEL_CLASSES)}, got {self.models!r}{hints}")
        if isinstance(self.pretrained, str):
            object.__setattr__(self, "pretrained", (self.pretrained,))
        if self.pretrained is not None and len(self.pretrained) != len(self.models):
            raise ValueError(f"--pretrained names {len(self.pretrained)} checkpoint(s) for {len(self.models)} --model "
                             "name(s): give one checkpoint per model, in the same order (--model amps_auto,amps_qwen "
                             "--pretrained org/a,org/b)")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        for name, chosen, valid in (("methods", self.methods, tuple(BY_NAME)), ("targets", self.targets, TARGETS)):
            unknown = [m for m in chosen if m not in valid]
            if not chosen or unknown:
                hints = "".join(did_you_mean(m, valid) for m in unknown)
                raise ValueError(f"--{name} must name one or more of {', '.join(valid)}, got {', '.join(chosen) or 'none'}"
                                 f"{hints}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not isinstance(self.seeds, int) or isinstance(self.seeds, bool) or self.seeds < 1:
            raise ValueError(f"seeds must be an int >= 1 (training seeds per trained method), got {self.seeds!r}")
        if not isinstance(self.jobs, int) or isinstance(self.jobs, bool) or self.jobs < 1:
            raise ValueError(f"jobs must be an int >= 1 (models studied at once), got {self.jobs!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or isinstance(self.threads, bool)
                                         or self.threads < 1):
            raise ValueError(f"threads must be an int >= 1 (torch threads per worker) or None, got {self.threads!r}")

    @property
    def in_workers(self) -> bool:
        """Whether the models are studied in worker processes (`amps_eval.study_workers`)."""
        return self.jobs > 1 or self.threads is not None

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def recorded_path(path: str) -> str:
    """A checkpoint as the study's JSON records it: a folder inside this repository (a shipped
    organism) relative to the repository's root, so that no machine path is committed; else as given."""
    root = Path(__file__).resolve().parent.parent
    if not Path(path).is_dir():  # a hub id: as given
        return path
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        return path


def seed_suffix(seed: int) -> str:
    """The file / folder suffix of a training seed: "" for seed 0 (the single-seed names), "_seed<k>"."""
    return "" if seed == 0 else f"_seed{seed}"


def _step(i: int, n: int, text: str) -> None:
    print(f"\n[study {i}/{n}] {text}", flush=True)


STUDY_OUTPUTS = ("runs", "mcs", "steering", "diagnostics", "figures", "models")
"""The folders a study writes into ``out`` besides ``data``."""
SETTINGS_NAME = "study_settings.json"
STUDY_FILES = (SETTINGS_NAME, "tables.md", "tables.tex", "leaderboard.html", "leaderboard.md",
               "study_summary.json", "mcs_check.json", "susceptibility.md", "known_answer.md", "known_answer.json",
               "provenance.json")
OWNED = frozenset(STUDY_OUTPUTS + STUDY_FILES + ("data",))
"""Everything a study writes at the top of ``out``: replaced by the next study there; other entries
of ``out`` are kept."""


def check_output_folder(out: Path) -> None:
    """Refuse a folder that holds a study's subfolders but no ``study_settings.json``: it is not a
    study's, and replacing it could destroy someone else's results."""
    found = [name for name in STUDY_OUTPUTS if (out / name).exists()]
    if found and not (out / SETTINGS_NAME).is_file():
        raise FileExistsError(f"{out} has {', '.join(found)} but no {SETTINGS_NAME}: not a study folder; "
                              "give a new folder or an earlier study's --out")


def _data(settings: StudySettings, out: Path, previous: Path | None = None, graded: bool = False) -> Path:
    """The MC2 folder: ``settings.data``, or the generated set in ``out/data`` (the graded set of
    `amps_eval.mc2.graded` for a graded organism), copied from ``previous/data`` when that was
    generated with the same source, seed, size and image size."""
    from amps_eval.mc2.graded import write_graded_mc2
    from amps_eval.mc2.synthetic import write_synthetic_mc2

    if settings.data is not None:
        return Path(settings.data).absolute()
    folder = out / "data"
    wanted = {"source": "synthetic_graded" if graded else "synthetic", "seed": settings.data_seed, "n_per_category": settings.n_per_category,
              "image_size": settings.image_size}
    for candidate in (folder, previous / "data" if previous is not None else None):
        manifest = candidate / "mc2_manifest.json" if candidate is not None else None
        if manifest is None or not manifest.is_file():
            continue
        recorded = json.loads(manifest.read_text())
        if all(recorded.get(k) == v for k, v in wanted.items()):
            if candidate != folder:
                shutil.copytree(candidate, folder)
            return folder
        print(f"not reusing {candidate}: it was generated with other settings")
    if folder.exists():
        shutil.rmtree(folder)
    write = write_graded_mc2 if graded else write_synthetic_mc2
    write(folder, n_per_category=settings.n_per_category, seed=settings.data_seed, image_size=settings.image_size)
    return folder


def stems(settings: StudySettings) -> list[str]:
    """Each (model, checkpoint) pair's name in the output folders: the model name, numbered when a
    model is studied on several checkpoints (``amps_auto-1``, ``amps_auto-2``)."""
    repeated = {m for m in settings.models if settings.models.count(m) > 1}
    return [f"{m}-{i + 1}" if m in repeated else m for i, m in enumerate(settings.models)]


def _checkpoint(settings: StudySettings, index: int, model: str, out: Path) -> tuple[str, bool]:
    """(checkpoint, whether it is an organism with a known preference: the shipped one, or a folder
    written by ``amps-eval build-organism``). Without a shipped organism the demo falls back to a
    tiny random model, says so loudly, and its steering numbers are noise."""
    if settings.pretrained is not None:
        from amps_eval.organism.train import MANIFEST_NAME

        pretrained = settings.pretrained[index]
        return pretrained, (Path(pretrained) / MANIFEST_NAME).is_file()
    from amps_eval.organism import organism_path

    try:
        if settings.graded:
            from amps_eval.organism.architectures import architecture_of_model
            from amps_eval.organism.graded import graded_organism_path

            return str(graded_organism_path(architecture_of_model(model).name)), True
        return str(organism_path(model)), True
    except FileNotFoundError as error:
        from amps_eval.families import by_lmms_model

        fam = by_lmms_model(model)
        print(f"WARNING: {error}\nWARNING: falling back to a tiny RANDOM model: no preference, the numbers are noise")
        return str(fam.build_tiny(out / "models" / f"tiny-random-{fam.name}", seed=0)), False


def _layer(settings: StudySettings, pretrained: str) -> int:
    from transformers import AutoConfig

    if settings.layer is not None:
        return settings.layer
    return AutoConfig.from_pretrained(pretrained).get_text_config().num_hidden_layers // 2


def mcs_check(mcs_dir: Path, stem: str) -> dict:
    """Mean visual ratio per prompt and per designed leaning (the organism's known truth)."""
    from amps_eval.organism.design import IMAGE_LEANING, TEXT_LEANING

    def mean(values):
        return sum(values) / len(values) if values else float("nan")

    out = {}
    for prompt in ("none", "visual", "text"):
        lines = [json.loads(line) for line in (mcs_dir / f"{stem}_{prompt}.jsonl").read_text().splitlines()]
        out[prompt] = {
            "all": mean([r["r_v"] for r in lines]),
            "image_leaning": mean([r["r_v"] for r in lines if r["category"] in IMAGE_LEANING]),
            "text_leaning": mean([r["r_v"] for r in lines if r["category"] in TEXT_LEANING]),
        }
    out["leaning_ordered"] = out["none"]["image_leaning"] > out["none"]["text_leaning"]
    out["instruction_ordered"] = out["visual"]["all"] > out["text"]["all"]
    return out


def resolve_data_and_lr(settings: StudySettings, environ=None) -> StudySettings:
    """``settings`` with the data folder chosen as `amps_eval.study_data.choose_data` says (None:
    the generated set) and the learning rate set (``--lr``, else `study_lr` of the item count);
    prints both choices. ``environ``: default `os.environ`."""
    import os
    from dataclasses import replace

    from amps_eval.organism.train import MANIFEST_NAME
    from amps_eval.study_data import choose_data, n_items, study_lr

    organisms = settings.pretrained is None or all((Path(p) / MANIFEST_NAME).is_file() for p in settings.pretrained)
    organisms = organisms or settings.graded  # the known-answer tests run on the generated graded set
    choice = choose_data(settings.data, settings.synthetic, organisms, os.environ if environ is None else environ)
    print(f"MC2 data: {choice.how}")
    items = n_items(choice, settings.n_per_category, settings.limit)
    lr = settings.lr if settings.lr is not None else study_lr(items)
    print(f"MLP learning rate: {lr:g}" + (" (--lr)" if settings.lr is not None else
                                          f" (5e-5 x 2000 / {items} items, at most 1e-3; --lr to set it)"))
    return replace(settings, data=choice.folder, lr=lr)


def run_study(settings: StudySettings) -> dict:
    """Every step for every model of ``settings.models`` into ``settings.out``; returns the summary.

    The study runs in a staging folder that replaces ``settings.out`` only when every step has
    finished."""
    from amps_eval.staged_output import staged_output

    from amps_eval.files import ensure_folder

    final = Path(settings.out)
    ensure_folder(final.absolute().parent, "the folder the study writes --out into")  # before any work
    check_output_folder(final)
    if settings.pretrained is not None:  # a wrong family or a missing folder, before any work
        from amps_eval.families import check_pretrained

        for pretrained, model in zip(settings.pretrained, settings.models):
            check_pretrained(pretrained, model)
    settings = resolve_data_and_lr(settings)  # a real checkpoint without data stops here, before any compute
    from amps_eval.study_plan import print_plan

    print_plan(settings)  # the steps, items and passes, and for a known size on a GPU the time
    if (final / SETTINGS_NAME).is_file():
        print(f"{final} holds an earlier study: it is replaced when this one finishes, not before")
    context = resume_context(settings)
    with staged_output(final, OWNED, resume=lambda staging: resumable(staging, context)) as out:
        summary = _run_study(settings, out, previous=final if final.is_dir() else None)
    print(f"\n[study] done in {summary['minutes']:.1f} min: {final}/tables.md, tables.tex, figures/, leaderboard.html, "
          "susceptibility.md")
    return summary


CONTEXT_NAME = "study.context"
"""In the staging folder's unit records: the settings the interrupted study ran with."""


def resume_context(settings: StudySettings) -> dict:
    """What every unit of a study depends on besides its own arguments and inputs: every setting
    (new settings are included without a change here) and the amps-eval version."""
    from amps_eval import __version__

    recorded = {k: v for k, v in settings.to_dict().items() if k != "jobs"}  # how many at once changes no number
    return {"settings": recorded, "amps_eval": __version__}


def resumable(staging: Path, context: dict) -> bool:
    """Whether the staging folder a killed or failed study left was started with ``context`` (then
    its finished units are reused, each checked again); says which it is."""
    from amps_eval.resume import RECORDS, Units

    try:
        recorded = json.loads((staging / RECORDS / CONTEXT_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        recorded = None
    if recorded != json.loads(json.dumps(context)):  # as written (tuples become lists)
        print(f"not resuming from {staging}: it was started with other settings or by another version; starting afresh")
        return False
    print(f"resuming the interrupted study in {staging}: {Units(staging, context).found()} finished units found "
          "(each is reused only if its settings, inputs and outputs check out)")
    return True


def _run_study(settings: StudySettings, out: Path, previous: Path | None) -> dict:
    from amps_eval.resume import RECORDS, Units

    started = time.perf_counter()
    context = resume_context(settings)
    units = Units(out, context)
    (out / RECORDS).mkdir(exist_ok=True)
    (out / RECORDS / CONTEXT_NAME).write_text(json.dumps(context), encoding="utf-8")
    checkpoints = {stem: (model, *_checkpoint(settings, i, model, out))
                   for i, (stem, model) in enumerate(zip(stems(settings), settings.models))}
    (out / SETTINGS_NAME).write_text(json.dumps(
        {**settings.to_dict(), "pretrained": {m: recorded_path(c[1]) for m, c in checkpoints.items()}}, indent=2))
    from amps_eval.provenance import write_provenance

    write_provenance(out, settings.to_dict())  # what made this output (checked against the code by a test)

    _step(1, 6, "data")
    graded = settings.graded or all(is_graded_organism(c[1]) for c in checkpoints.values())
    if settings.data is None:
        units.run("data", [out / "data"], lambda: _data(settings, out, previous, graded=graded))
    data = _data(settings, out, previous, graded=graded) if settings.data is not None else out / "data"
    print(f"MC2 data: {data}")
    if settings.in_workers:
        from amps_eval.study_workers import ModelJob, run_jobs

        jobs = [ModelJob(stem, model, pretrained, organism) for stem, (model, pretrained, organism) in checkpoints.items()]
        per_model = run_jobs(settings, jobs, data, out, context, out / RECORDS)
    else:
        per_model = {stem: study_model(settings, model, pretrained, organism, data, out, stem=stem, units=units)
                     for stem, (model, pretrained, organism) in checkpoints.items()}
    checks = {m: r["mcs_check"] for m, r in per_model.items() if r["mcs_check"] is not None}
    if checks:
        (out / "mcs_check.json").write_text(json.dumps(checks, indent=2))

    _step(6, 6, "Tables 1-3, figures and leaderboard")
    report = write_study_report(out, settings.table_alpha)
    if graded:
        known_answer_step(out, data)
    minutes = (time.perf_counter() - started) / 60
    summary = {"minutes": round(minutes, 1), "models": per_model, "figures": [str(p) for p in report.figures]}
    (out / "study_summary.json").write_text(json.dumps(summary, indent=2))
    print(report.text)
    print(f"[study] {units.summary()}")
    units.discard()
    return summary


def is_graded_organism(pretrained: str) -> bool:
    """Whether ``pretrained`` is a graded organism (its manifest's design is ``graded``)."""
    from amps_eval.organism.train import MANIFEST_NAME

    manifest = Path(pretrained) / MANIFEST_NAME
    if not manifest.is_file():
        return False
    return json.loads(manifest.read_text()).get("settings", {}).get("design") == "graded"


def data_columns(data: Path) -> list[str]:
    import datasets

    return list(datasets.load_from_disk(str(data))["test"].column_names)


def known_answer_step(out: Path, data: Path) -> None:
    """The known-answer tests (`amps_eval.known_answer`) on a study of a graded organism."""
    from amps_eval.known_answer.analysis import analyse_study
    from amps_eval.known_answer.report import write_known_answer

    if "planted_p_vision" not in data_columns(data):
        print(f"known-answer tests skipped: {data} has no planted_p_vision (not a graded data folder)")
        return
    paths = write_known_answer(out, analyse_study(out, data))
    print(f"known-answer tests: {', '.join(str(p) for p in paths)}")


def _unit(units, name: str, outputs: list[Path], compute, **keys):
    """``compute()`` as the unit ``name`` of ``units`` (`amps_eval.resume.Units.run`), or directly
    without units."""
    return compute() if units is None else units.run(name, outputs, compute, **keys)


def study_model(settings: StudySettings, model: str, pretrained: str, organism: bool, data: Path, out: Path,
                stem: str | None = None, units=None) -> dict:
    """Steps 2-5 for one model: MCS (and its check on an organism), fits, baselines, sweeps."""
    from amps_eval.fit import FitSettings, fit
    from amps_eval.mcs_run import run_mcs
    from amps_eval.runner import EvalSession
    from amps_eval.steering.module import TrainSettings

    layer = _layer(settings, pretrained)
    stem = stem or model
    print(f"\n=== {model}: {pretrained}{' (model organism)' if organism else ''}")

    _step(2, 6, f"{model}: MCS without instruction and with each instruction (Figures 4, 5)")
    mcs_dir = out / "mcs"
    mcs_dir.mkdir(exist_ok=True)
    cache = out / "steering" / f"{stem}.cache"  # the item cache of every step (amps_eval.item_cache)
    inputs = {"data": data, "checkpoint": pretrained}
    clock = StepClock("mcs", 3)
    for prompt in ("none", "visual", "text"):
        path = mcs_dir / f"{stem}_{prompt}.jsonl"
        _unit(units, f"mcs {stem} {prompt}", [path, Path(f"{path}.meta.json"), path.with_name(f"{path.stem}.summary.json")],
              lambda: run_mcs(model, pretrained, path, data=data, prompt=prompt, batch_size=settings.batch_size,
                              device=settings.device, dtype=settings.dtype, limit=settings.limit, cache_dir=cache),
              arguments={"model": model, "pretrained": pretrained, "prompt": prompt}, inputs=inputs)
        print(clock.advance(), flush=True)
    check = mcs_check(mcs_dir, stem) if organism else None
    if check:
        print(f"mean r_v: image-leaning {check['none']['image_leaning']:.3f} vs text-leaning "
              f"{check['none']['text_leaning']:.3f}; image instruction {check['visual']['all']:.3f} vs text "
              f"instruction {check['text']['all']:.3f}")

    chosen = select(settings.methods, settings.targets)
    fit_methods = usable_on(chosen.fit_methods, data_columns(data))  # amps_oracle only on graded data
    _step(3, 6, f"{model}: fitting {', '.join(fit_methods) or 'nothing (no steered method chosen)'} at layer {layer}")
    steering_dir = out / "steering"
    steering_dir.mkdir(exist_ok=True)
    files: dict[str, list[Path]] = {}
    for method in fit_methods:
        for seed in range(settings.seeds if method in TRAINED else 1):
            train = TrainSettings(epochs=settings.epochs, lr=settings.lr, seed=seed)
            path = steering_dir / f"{stem}_{method}{seed_suffix(seed)}.safetensors"
            fit_settings = FitSettings(model=model, pretrained=pretrained, method=method, layer=layer, train=train,
                                       batch_size=settings.batch_size, device=settings.device, dtype=settings.dtype,
                                       data=data, limit=settings.limit, cache_dir=cache)
            _unit(units, f"fit {stem} {method}{seed_suffix(seed)}", [path], lambda: fit(fit_settings, path),
                  arguments={"fit": repr(fit_settings)}, inputs=inputs)
            files.setdefault(method, []).append(path)

    with EvalSession() as session:  # one load of the model for the baselines and the sweeps
        _baselines_and_sweeps(settings, model, pretrained, files, data, out, session, cache, stem, units)
    return {"pretrained": recorded_path(pretrained), "organism": organism, "layer": layer, "mcs_check": check}


def _baselines_and_sweeps(settings: StudySettings, model: str, pretrained: str, files: dict, data: Path, out: Path,
                          session, cache: Path, stem: str | None = None, units=None) -> None:
    """Steps 4-5 for one model, every run over the session's one load of the checkpoint; the
    sweeps read each item's MCS from the item cache ``cache`` the MCS step and the fits filled."""
    from amps_eval.report.sweep import SweepSettings, run_sweep

    stem = stem or model
    runs = out / "runs"
    chosen = select(settings.methods, settings.targets)
    device_args = {"dtype": settings.dtype, **({"device": settings.device} if settings.device else {})}
    _step(4, 6, f"{model}: prompt baselines {', '.join(chosen.prompt_methods) or '(none chosen)'} on "
          f"{' and '.join(chosen.tasks)}")
    clock = StepClock("baselines", len(chosen.prompt_methods) * len(chosen.tasks))
    for method in chosen.prompt_methods:
        args = ",".join(f"{k}={v}" for k, v in {"pretrained": pretrained, "method": method, **device_args}.items())
        run = _unit(units, f"run {stem} {method}", [runs / stem / method],
                    lambda: session.run(model, args, list(chosen.tasks), runs / stem / method,
                                        batch_size=settings.batch_size, limit=settings.limit, data=data),
                    arguments={"model_args": args, "tasks": list(chosen.tasks)},
                    inputs={"data": data, "checkpoint": pretrained})
        if run is not None:
            print(f"  {method}: " + ", ".join(f"{t} {100 * run.results['results'][t]['target_acc,none']:.1f}%"
                                              for t in chosen.tasks))
        print(clock.advance(len(chosen.tasks)), flush=True)

    alphas = tuple(sorted(set(settings.alphas) | ({settings.table_alpha} if settings.table_alpha is not None else set())))
    _step(5, 6, f"{model}: steering sweeps over alpha in {alphas}")
    steered = [m for m in chosen.steering_methods if info(m).file_method in files]  # the fitted ones
    clock = StepClock("sweeps", sum(len(files[info(m).file_method]) for m in steered) * len(alphas) * len(chosen.tasks))
    for method in steered:
        for seed, steering in enumerate(files[info(method).file_method]):  # one sweep per training seed
            name = f"{method}{seed_suffix(seed)}"
            sweep = SweepSettings(model=model, pretrained=pretrained, method=method, steering=steering,
                                  tasks=chosen.tasks, alphas=alphas, out=runs / stem / f"sweep_{name}",
                                  batch_size=settings.batch_size, limit=settings.limit, device=settings.device,
                                  data=data, extra_model_args={"dtype": settings.dtype, "item_cache": str(cache),
                                                               "diagnostics": str(out / "diagnostics" / stem / name)})
            _unit(units, f"sweep {stem} {name}", [sweep.out, out / "diagnostics" / stem / name],
                  lambda: run_sweep(sweep, session=session), arguments={"sweep": repr(sweep)},
                  inputs={"data": data, "checkpoint": pretrained, "steering": sweep.steering})
            print(clock.advance(len(alphas) * len(chosen.tasks)), flush=True)


def write_study_report(out: Path, table_alpha: float | None):
    """Tables 1-3 (Markdown and LaTeX), the figures and the leaderboard from ``out/runs`` and ``out/mcs``."""
    from amps_eval.report.build import ReportOptions, build_report
    from amps_eval.report.leaderboard import write_leaderboard
    from amps_eval.report.susceptibility_report import write_susceptibility

    runs = out / "runs"
    report = build_report(ReportOptions(results_dir=runs, collapse=True, stderr=True, alpha=table_alpha,
                                        figures=out / "figures", mcs=(out / "mcs",)))
    (out / "tables.md").write_text(report.text)
    latex = build_report(ReportOptions(results_dir=runs, format="latex", alpha=table_alpha))
    (out / "tables.tex").write_text(latex.text)
    write_leaderboard(runs, out)
    write_susceptibility(runs, out / "mcs", out, figures=out / "figures")
    return report
