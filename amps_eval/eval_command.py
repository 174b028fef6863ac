"""``amps-eval eval <lmms-eval arguments>``: an lmms-eval run whose exit code says whether it worked.

`lmms-eval` exits 0 when an evaluation fails (it catches every exception, prints the traceback and
logs the message again; docs/lmms-eval.md), so a job array or a script cannot see a failed run.
``amps-eval eval`` takes exactly the arguments of ``lmms-eval`` and:

1. checks, before lmms-eval starts (seconds instead of a model load), what it can check without
   running: ``--tasks`` and ``--output_path`` are given and the output folder takes new files; for an
   amps-eval model, the ``--model_args`` (an unknown argument such as ``alhpa=2``, an unknown
   ``method=ampz``, a bad value) and the checkpoint (a missing folder, a checkpoint of another
   family); for the MC2 tasks, the data folder they will read (``AMPS_MC2_DATA``, else the default
   folder; the command that makes it otherwise). A failed check prints one line and exits 2;
2. runs ``python -m lmms_eval <the same arguments>`` with the same environment, its output shown as
   it comes;
3. checks that lmms-eval exited 0 and wrote a new results file under ``--output_path`` that holds
   every requested task (and, with ``--log_samples``, a samples file for each task it ran);
   otherwise one line names what is missing (or lmms-eval's non-zero exit code), and the exit
   code is 2.

It runs one process; for several GPUs use ``accelerate launch -m lmms_eval`` and check the results
files as step 3 does. ``--config`` (a YAML of runs) is refused: the checks read the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["EvalRequest", "EvaluationFailed", "check_results", "parse_request", "precheck", "run_eval"]

USAGE = "amps-eval eval --model MODEL --model_args ARGS --tasks TASKS --output_path DIR [other lmms-eval arguments]"


class EvaluationFailed(RuntimeError):
    """lmms-eval failed or did not write the results of every requested task."""


@dataclass(frozen=True)
class EvalRequest:
    """What ``amps-eval eval`` reads from lmms-eval's arguments (all of them are passed on unchanged)."""

    argv: tuple[str, ...]
    model: str
    model_args: str
    tasks: tuple[str, ...]
    output_path: Path
    log_samples: bool
    batch_size: str | None
    device: str | None


def parse_request(argv: Sequence[str]) -> EvalRequest:
    """The parts of lmms-eval's command line that the checks need; the rest is lmms-eval's business."""
    parser = argparse.ArgumentParser(prog="amps-eval eval", add_help=False, allow_abbrev=False)
    parser.add_argument("--model", default="hf")  # lmms-eval's default
    parser.add_argument("--model_args", default="")
    parser.add_argument("--tasks", default=None)
    parser.add_argument("--output_path", default=None)
    parser.add_argument("--log_samples", action="store_true")
    parser.add_argument("--batch_size", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--config", default="")
    known, _ = parser.parse_known_args(list(argv))
    if known.config:
        raise ValueError("amps-eval eval checks the runs its command line asks for, not a --config file: give "
                         "--model, --model_args, --tasks and --output_path instead")
    if not known.tasks or known.tasks.startswith("list"):
        raise ValueError(f"give the tasks to run, e.g. --tasks mc2_visual,mc2_text (usage: {USAGE}; to list the "
                         "tasks, run lmms-eval --tasks list --include_path <amps-eval tasks>)")
    if not known.output_path:
        raise ValueError(f"give --output_path DIR: the results files there are how the run is checked (usage: {USAGE})")
    tasks = tuple(t.strip() for t in known.tasks.split(",") if t.strip())
    return EvalRequest(tuple(argv), known.model, known.model_args or "", tasks, Path(known.output_path),
                       known.log_samples, known.batch_size, known.device)


def _is_mc2_task(task: str) -> bool:
    from amps_eval.plugin import task_names

    return task in task_names()


def precheck(request: EvalRequest, environ: Mapping[str, str] | None = None) -> None:
    """Step 1 of the module docstring: raise on what would fail, before lmms-eval starts."""
    from amps_eval.files import ensure_folder

    ensure_folder(request.output_path, "--output_path")
    from amps_eval.families import check_pretrained, lmms_models

    if request.model in lmms_models():
        from lmms_eval.utils import simple_parse_args_string  # what lmms-eval makes of --model_args

        from amps_eval.families import by_lmms_model
        from amps_eval.settings import settings_class

        args = simple_parse_args_string(request.model_args)
        extra = {k: v for k, v in (("batch_size", request.batch_size), ("device", request.device)) if v is not None}
        settings = settings_class(by_lmms_model(request.model)).from_model_args(**{**args, **extra})
        check_pretrained(settings.pretrained, request.model)
        if settings.steering is not None and not Path(settings.steering).expanduser().is_file():
            raise FileNotFoundError(f"steering={settings.steering}: no such file (write it with amps-eval fit)")
    if any(_is_mc2_task(task) for task in request.tasks):
        from amps_eval.mc2.source import resolve_source

        resolve_source(os.environ if environ is None else environ)


def _results_files(folder: Path) -> set[Path]:
    return set(folder.rglob("*_results.json")) if folder.is_dir() else set()


def check_results(request: EvalRequest, before: set[Path]) -> Path:
    """Step 3: the new results file that holds every requested task; `EvaluationFailed` otherwise."""
    written = sorted(_results_files(request.output_path) - before, key=lambda p: p.stat().st_mtime)
    if not written:
        raise EvaluationFailed(f"lmms-eval wrote no results file under {request.output_path}: the evaluation "
                               "failed (lmms-eval's message is above)")
    results_file = written[-1]
    results = json.loads(results_file.read_text())
    found = set(results.get("results", {})) | set(results.get("groups", {})) | set(results.get("group_subtasks", {}))
    missing = [task for task in request.tasks if task not in found]
    if missing:
        raise EvaluationFailed(f"{results_file} has no results for {', '.join(missing)} (requested: "
                               f"{', '.join(request.tasks)}): those tasks did not run")
    if request.log_samples:
        ran = sorted(results.get("configs", {}))
        without = [t for t in ran if not list(results_file.parent.glob(f"*_samples_{t}.jsonl"))]
        if without:
            raise EvaluationFailed(f"--log_samples: no samples file for {', '.join(without)} next to {results_file}")
    return results_file


def run_eval(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Path:
    """The whole command: returns the results file; raises (one message) when the run failed."""
    request = parse_request(argv)
    precheck(request, environ)
    before = _results_files(request.output_path)
    env = dict(os.environ if environ is None else environ)
    code = subprocess.run([sys.executable, "-m", "lmms_eval", *request.argv], env=env).returncode
    if code != 0:
        raise EvaluationFailed(f"lmms-eval exited with code {code} (its message is above)")
    return check_results(request, before)


def help_text() -> str:
    """``amps-eval eval --help``."""
    return f"usage: {USAGE}\n\n" + __doc__.split("\n\n", 1)[1]
