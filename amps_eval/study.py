"""The whole AMPS study, end to end, on one or more checkpoints (`make demo` runs it on the organism).

Steps, each with its own progress output:

1. data: the generated MC2-format set (held out from the organism's training seeds), or the
   prepared folder ``--data``, passed to every step explicitly;
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
output whole.

Real checkpoints go through the same code: ``amps-eval study --model amps_qwen --pretrained
Qwen/Qwen2.5-VL-7B-Instruct --data ~/.cache/amps-eval/mc2 --layer 14 --device cuda --out
results/qwen7b``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from amps_eval.methods.registry import FIT_METHODS, PROMPT_METHODS, STEERING_METHODS, info

from amps_eval.steering.module import TrainSettings
from amps_eval.vocabulary import DTYPES, did_you_mean  # noqa: F401 - DTYPES re-exported


@dataclass(frozen=True)
class StudySettings:
    out: Path = Path("results/demo")
    models: tuple[str, ...] = ("amps_qwen",)  # lmms-eval model names, studied one after the other
    pretrained: str | None = None  # default: each model's shipped organism (only with one model)
    data: Path | None = None  # default: generate the held-out synthetic set into <out>/data
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
    lr: float = 1e-3  # not TrainSettings.lr: the papers' 5e-5 barely moves a module fitted on ~100 items in 100 epochs
    limit: int | None = None

    def __post_init__(self) -> None:
        from amps_eval.plugin import MODEL_CLASSES

        unknown = [m for m in self.models if m not in MODEL_CLASSES]
        if not self.models or unknown:
            hints = "".join(did_you_mean(m, MODEL_CLASSES) for m in unknown)
            raise ValueError(f"models must name one or more of {tuple(MODEL_CLASSES)}, got {self.models!r}{hints}")
        if self.pretrained is not None and len(self.models) != 1:
            raise ValueError("--pretrained names one checkpoint: give exactly one --model with it")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def _step(i: int, n: int, text: str) -> None:
    print(f"\n[study {i}/{n}] {text}", flush=True)


STUDY_OUTPUTS = ("runs", "mcs", "steering", "diagnostics", "figures", "models")
"""The folders a study writes into ``out`` besides ``data``."""
SETTINGS_NAME = "study_settings.json"
STUDY_FILES = (SETTINGS_NAME, "tables.md", "tables.tex", "leaderboard.html", "leaderboard.md",
               "study_summary.json", "mcs_check.json", "susceptibility.md")
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


def _data(settings: StudySettings, out: Path, previous: Path | None = None) -> Path:
    """The MC2 folder: ``settings.data``, or the generated set in ``out/data``, copied from
    ``previous/data`` when that was generated with the same seed, size and image size."""
    from amps_eval.mc2.synthetic import write_synthetic_mc2

    if settings.data is not None:
        return Path(settings.data).absolute()
    folder = out / "data"
    wanted = {"source": "synthetic", "seed": settings.data_seed, "n_per_category": settings.n_per_category,
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
    write_synthetic_mc2(folder, n_per_category=settings.n_per_category, seed=settings.data_seed,
                        image_size=settings.image_size)
    return folder


def _checkpoint(settings: StudySettings, model: str, out: Path) -> tuple[str, bool]:
    """(checkpoint, whether it is an organism with a known preference: the shipped one, or a folder
    written by ``amps-eval build-organism``). Without a shipped organism the demo falls back to a
    tiny random model, says so loudly, and its steering numbers are noise."""
    if settings.pretrained is not None:
        from amps_eval.organism.train import MANIFEST_NAME

        return settings.pretrained, (Path(settings.pretrained) / MANIFEST_NAME).is_file()
    from amps_eval.organism import organism_path

    try:
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

        check_pretrained(settings.pretrained, settings.models[0])
    if (final / SETTINGS_NAME).is_file():
        print(f"{final} holds an earlier study: it is replaced when this one finishes, not before")
    with staged_output(final, OWNED) as out:
        summary = _run_study(settings, out, previous=final if final.is_dir() else None)
    print(f"\n[study] done in {summary['minutes']:.1f} min: {final}/tables.md, tables.tex, figures/, leaderboard.html, "
          "susceptibility.md")
    return summary


def _run_study(settings: StudySettings, out: Path, previous: Path | None) -> dict:
    started = time.perf_counter()
    checkpoints = {model: _checkpoint(settings, model, out) for model in settings.models}
    (out / SETTINGS_NAME).write_text(json.dumps(
        {**settings.to_dict(), "pretrained": {m: c[0] for m, c in checkpoints.items()}}, indent=2))

    _step(1, 6, "data")
    data = _data(settings, out, previous)
    print(f"MC2 data: {data}")
    per_model = {}
    for model, (pretrained, organism) in checkpoints.items():
        per_model[model] = study_model(settings, model, pretrained, organism, data, out)
    checks = {m: r["mcs_check"] for m, r in per_model.items() if r["mcs_check"] is not None}
    if checks:
        (out / "mcs_check.json").write_text(json.dumps(checks, indent=2))

    _step(6, 6, "Tables 1-3, figures and leaderboard")
    report = write_study_report(out, settings.table_alpha)
    minutes = (time.perf_counter() - started) / 60
    summary = {"minutes": round(minutes, 1), "models": per_model, "figures": [str(p) for p in report.figures]}
    (out / "study_summary.json").write_text(json.dumps(summary, indent=2))
    print(report.text)
    return summary


def study_model(settings: StudySettings, model: str, pretrained: str, organism: bool, data: Path, out: Path) -> dict:
    """Steps 2-5 for one model: MCS (and its check on an organism), fits, baselines, sweeps."""
    from amps_eval.fit import FitSettings, fit
    from amps_eval.mcs_run import run_mcs
    from amps_eval.runner import EvalSession
    from amps_eval.steering.module import TrainSettings

    layer = _layer(settings, pretrained)
    stem = model
    print(f"\n=== {model}: {pretrained}{' (model organism)' if organism else ''}")

    _step(2, 6, f"{model}: MCS without instruction and with each instruction (Figures 4, 5)")
    mcs_dir = out / "mcs"
    mcs_dir.mkdir(exist_ok=True)
    cache = out / "steering" / f"{stem}.cache"  # the item cache of every step (amps_eval.item_cache)
    for prompt in ("none", "visual", "text"):
        run_mcs(model, pretrained, mcs_dir / f"{stem}_{prompt}.jsonl", data=data, prompt=prompt,
                batch_size=settings.batch_size, device=settings.device, dtype=settings.dtype, limit=settings.limit,
                cache_dir=cache)
    check = mcs_check(mcs_dir, stem) if organism else None
    if check:
        print(f"mean r_v: image-leaning {check['none']['image_leaning']:.3f} vs text-leaning "
              f"{check['none']['text_leaning']:.3f}; image instruction {check['visual']['all']:.3f} vs text "
              f"instruction {check['text']['all']:.3f}")

    _step(3, 6, f"{model}: fitting {', '.join(FIT_METHODS)} at layer {layer}")
    steering_dir = out / "steering"
    steering_dir.mkdir(exist_ok=True)
    files = {}
    train = TrainSettings(epochs=settings.epochs, lr=settings.lr)
    for method in FIT_METHODS:
        files[method] = steering_dir / f"{stem}_{method}.safetensors"
        fit(FitSettings(model=model, pretrained=pretrained, method=method, layer=layer, train=train,
                        batch_size=settings.batch_size, device=settings.device, dtype=settings.dtype, data=data,
                        limit=settings.limit, cache_dir=cache),
            files[method])

    with EvalSession() as session:  # one load of the model for the baselines and the sweeps
        _baselines_and_sweeps(settings, model, pretrained, files, data, out, session, cache)
    return {"pretrained": pretrained, "organism": organism, "layer": layer, "mcs_check": check}


def _baselines_and_sweeps(settings: StudySettings, model: str, pretrained: str, files: dict, data: Path, out: Path,
                          session, cache: Path) -> None:
    """Steps 4-5 for one model, every run over the session's one load of the checkpoint; the
    sweeps read each item's MCS from the item cache ``cache`` the MCS step and the fits filled."""
    from amps_eval.report.sweep import SweepSettings, run_sweep

    stem = model
    runs = out / "runs"
    device_args = {"dtype": settings.dtype, **({"device": settings.device} if settings.device else {})}
    _step(4, 6, f"{model}: prompt baselines {', '.join(PROMPT_METHODS)} on mc2_visual and mc2_text")
    for method in PROMPT_METHODS:
        args = ",".join(f"{k}={v}" for k, v in {"pretrained": pretrained, "method": method, **device_args}.items())
        run = session.run(model, args, ["mc2_visual", "mc2_text"], runs / stem / method,
                          batch_size=settings.batch_size, limit=settings.limit, data=data)
        print(f"  {method}: " + ", ".join(f"{t} {100 * run.results['results'][t]['target_acc,none']:.1f}%"
                                          for t in ("mc2_visual", "mc2_text")))

    alphas = tuple(sorted(set(settings.alphas) | ({settings.table_alpha} if settings.table_alpha is not None else set())))
    _step(5, 6, f"{model}: steering sweeps over alpha in {alphas}")
    for method in STEERING_METHODS:
        run_sweep(SweepSettings(model=model, pretrained=pretrained, method=method,
                                steering=files[info(method).file_method],
                                alphas=alphas, out=runs / stem / f"sweep_{method}", batch_size=settings.batch_size,
                                limit=settings.limit, device=settings.device, data=data,
                                extra_model_args={"dtype": settings.dtype, "item_cache": str(cache),
                                                  "diagnostics": str(out / "diagnostics" / stem / method)}),
                  session=session)


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
