"""``amps-eval sweep``: one steered method over a grid of alphas, into one results folder.

Each alpha is a separate lmms-eval run written to ``<out>/alpha_<alpha>/``, so a report over
``<out>`` sees one variant per alpha (Figures 1 and 6, and the alpha choice of the tables). The
steering file's sha256 goes into every run's model arguments (``steering_sha256=``): the wrapper
then refuses a file that changed during the sweep, and the run's identity, lmms-eval's cache key
included, names the file's content rather than just its path. The alphas run in one process over
one load of the model (`amps_eval.runner.EvalSession`), and by default in one pass over the items
(`amps_eval.sweep_pass`, docs/sweeps.md): the first alpha's run generates every alpha's answers in
the same batches, the later runs take theirs; the files are those of one run per alpha
(``one_pass=False``, ``amps-eval sweep --per-alpha``, runs each alpha on its own).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from amps_eval.report import STEERED


def parse_alphas(text: str) -> tuple[float, ...]:
    """"0,0.5,1" or "0/0.5/1" -> (0.0, 0.5, 1.0); duplicates and non-finite values are errors."""
    from amps_eval.vocabulary import split_list

    try:
        alphas = tuple(float(x) for x in split_list(text))
    except ValueError:
        raise ValueError(f"--alphas must be numbers separated by ',' or '/', e.g. 0,0.5,1,2; got {text!r}") from None
    if not alphas or any(not math.isfinite(a) for a in alphas) or len(set(alphas)) != len(alphas):
        raise ValueError(f"--alphas needs distinct finite numbers, got {text!r}")
    return alphas


def alphas_type(text: str) -> tuple[float, ...]:
    """`parse_alphas` as an argparse ``type`` (a bad list is a usage error)."""
    import argparse

    try:
        return parse_alphas(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


@dataclass(frozen=True)
class SweepSettings:
    model: str
    pretrained: str
    method: str
    steering: Path
    alphas: tuple[float, ...]
    tasks: tuple[str, ...] = ("mc2_visual", "mc2_text")
    out: Path = Path("results/sweep")
    batch_size: int = 1
    limit: int | None = None
    device: str | None = None
    data: Path | None = None  # prepared MC2 folder (default: AMPS_MC2_DATA, else the default folder)
    extra_model_args: dict[str, str] = field(default_factory=dict)
    # every alpha in one pass over the items (amps_eval.sweep_pass): batches of batch_size items x
    # len(alphas) rows, the same files as one run per alpha (False: each alpha generates on its own)
    one_pass: bool = True

    def __post_init__(self) -> None:
        from amps_eval.families import by_lmms_model, lmms_models
        from amps_eval.settings import settings_class
        from amps_eval.vocabulary import did_you_mean

        if self.model not in lmms_models():
            raise ValueError(f"unknown model {self.model!r}{did_you_mean(self.model, lmms_models())}; "
                             f"valid models: {', '.join(lmms_models())}")
        if self.method not in STEERED:
            raise ValueError(f"sweep varies alpha, which only the steered methods use ({', '.join(STEERED)}); "
                             f"got method={self.method}")
        if not Path(self.steering).is_file():
            raise FileNotFoundError(f"steering file {self.steering} not found; write it with `amps-eval fit`")
        names = settings_class(by_lmms_model(self.model)).field_names()
        for name in self.extra_model_args:
            if name not in names:
                raise ValueError(f"--model-args: unknown model argument {name!r}{did_you_mean(name, names)}; "
                                 f"valid arguments: {', '.join(names)}")
        clash = {"pretrained", "method", "steering", "steering_sha256", "alpha", "device"} & set(self.extra_model_args)
        if clash:
            raise ValueError(f"--model-args must not set {sorted(clash)}: the sweep sets them")


def alpha_folder(alpha: float) -> str:
    return "alpha_" + f"{alpha:g}".replace("-", "m")


def alpha_arg(alpha: float) -> str:
    """The ``alpha=`` model argument of a sweep's run (the value its wrapper steers with is
    ``float`` of it)."""
    return f"{alpha:g}"


def model_args(settings: SweepSettings, alpha: float, sha: str) -> str:
    args = {"pretrained": settings.pretrained, "method": settings.method, "steering": str(Path(settings.steering).resolve()),
            "steering_sha256": sha, "alpha": alpha_arg(alpha), **settings.extra_model_args}
    if settings.device:
        args["device"] = settings.device
    return ",".join(f"{k}={v}" for k, v in args.items())


def run_sweep(settings: SweepSettings, progress: Callable[[str], None] = print, session=None) -> list[Path]:
    """Run every alpha; return the results files in alpha order.

    All alphas run in this process over one load of the model and one task index: the caller's
    ``session`` (`amps_eval.runner.EvalSession`, e.g. the study's, shared with its other runs), or
    one opened for this sweep; with ``one_pass`` the runs share one `amps_eval.sweep_pass.SweepPass`
    (the first generates every alpha, the others take their answers)."""
    from amps_eval.files import ensure_folder
    from amps_eval.runner import EvalSession

    ensure_folder(settings.out, "the sweep's results folder (--out)")  # before any model loads
    if session is None:
        with EvalSession() as own:
            return run_sweep(settings, progress, own)
    if not settings.one_pass:
        return _run_alphas(settings, progress, session)
    with session.sweep(float(alpha_arg(a)) for a in settings.alphas):
        return _run_alphas(settings, progress, session)


def _run_alphas(settings: SweepSettings, progress: Callable[[str], None], session) -> list[Path]:
    from amps_eval.files import sha256_file

    sha = sha256_file(settings.steering)
    files = []
    for i, alpha in enumerate(settings.alphas, 1):
        progress(f"[sweep] {i}/{len(settings.alphas)} alpha={alpha:g}: {settings.method} on {','.join(settings.tasks)}")
        run = session.run(settings.model, model_args(settings, alpha, sha), list(settings.tasks),
                          Path(settings.out) / alpha_folder(alpha), batch_size=settings.batch_size,
                          limit=settings.limit, data=settings.data)
        numbers = {t: run.results.get("results", {}).get(t, {}).get("target_acc,none") for t in settings.tasks}
        shares = ", ".join(f"{t} {100 * v:.1f}%" for t, v in numbers.items() if isinstance(v, (int, float)))
        progress(f"[sweep] alpha={alpha:g} done: {shares} -> {run.results_file}")
        files.append(run.results_file)
    progress(f"[sweep] report: amps-eval report {settings.out}")
    return files
