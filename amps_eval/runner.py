"""Running lmms-eval from Python with the files its CLI writes.

`lmms-eval` (the CLI) catches every exception and exits 0 (docs/lmms-eval.md), so the demo, the
sweeps and the tests go through `lmms_eval.evaluator.simple_evaluate`, which raises, and save the
same `<output>/<model>/<timestamp>_results.json` and `_samples_<task>.jsonl` files the CLI saves.
The MC2 data folder is passed to the tasks explicitly (a task config with `dataset_path`), never
through the process environment.

`EvalSession` runs many evaluations in one process over one `TaskManager` and one loaded model per
(checkpoint, loading settings) (the wrapper's ``load_checkpoint``): each run builds a
fresh wrapper (its method, alpha, steering file, diagnostics) over the loaded weights and hands the
instance to ``simple_evaluate``. The files are those of a run by model name: the runner records the
same ``config.model``, ``config.model_args`` and ``model_source`` that lmms-eval records when it
builds the model itself. The caller owns the session (``with EvalSession() as session:``); leaving
the block drops the models.

Inside ``with session.sweep(alphas):`` the runs of one sweep share a `amps_eval.sweep_pass.SweepPass`:
the first run generates every alpha's answers in the same batches and the later runs of the sweep
take theirs (each run still writes its own files, the same as alone; docs/sweeps.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amps_eval.sweep_pass import SweepPass


@dataclass(frozen=True)
class EvalRun:
    results: dict
    results_file: Path


@dataclass
class EvalSession:
    """lmms-eval runs in one process that share one task index and one load per checkpoint (see the
    module docstring). Not thread-safe; one per process (with `accelerate launch`, each process
    loads its own models)."""

    verbosity: str = "WARNING"
    _models: dict = field(default_factory=dict, repr=False)
    _task_manager: Any = field(default=None, repr=False)
    loads: int = 0  # how many checkpoints this session has loaded
    _sweep: SweepPass | None = field(default=None, repr=False)

    def __enter__(self) -> "EvalSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Drop the loaded models (and free their memory once no wrapper refers to them)."""
        import gc

        self._models.clear()
        self._task_manager = None
        if self._sweep is not None:
            self._sweep.clear()
        gc.collect()

    @property
    def models(self) -> tuple:
        """The `LoadedModel`s this session holds."""
        return tuple(self._models.values())

    @property
    def task_manager(self):
        if self._task_manager is None:
            self._task_manager = _task_manager(self.verbosity)
        return self._task_manager

    @contextlib.contextmanager
    def sweep(self, alphas) -> Iterator[SweepPass]:
        """The runs inside the block are those of one sweep over ``alphas`` (the values the runs'
        ``alpha=`` arguments parse to): they share one `SweepPass`, dropped when the block ends."""
        if self._sweep is not None:
            raise RuntimeError("a sweep is already open in this session: run the sweeps one after the other")
        self._sweep = SweepPass(tuple(alphas))
        try:
            yield self._sweep
        finally:
            self._sweep.clear()
            self._sweep = None

    def wrapper(self, model: str, model_args: str, *, batch_size: int | None = None, device: str | None = None):
        """A fresh wrapper for one run, built as lmms-eval builds it from ``model`` and
        ``model_args`` (plus the ``batch_size`` and ``device`` it always passes) but over the
        session's load of its checkpoint."""
        import lmms_eval.models  # noqa: F401  (loads the amps entry point: registers the amps models)
        from lmms_eval.models import get_model
        from lmms_eval.utils import simple_parse_args_string

        from amps_eval.families import lmms_models

        if model not in lmms_models():  # the wrapper class comes from lmms-eval's registry, as lmms-eval builds it
            raise ValueError(f"an EvalSession runs the amps-eval models ({', '.join(lmms_models())}); got {model!r}")
        cls = get_model(model)
        args = simple_parse_args_string(model_args)
        args.update({k: v for k, v in {"batch_size": batch_size, "device": device}.items() if v is not None})
        settings = cls.settings_class.from_model_args(**args)  # refuses bad arguments before any load
        key = cls.load_key(settings)
        if key not in self._models:
            self._models[key] = cls.load_checkpoint(settings)
            self.loads += 1
        return cls(loaded=self._models[key], sweep=self._sweep, settings=settings)  # reads its steering file once

    def run(self, model: str, model_args: str, tasks: list[str], output_path: Path, **kwargs) -> "EvalRun":
        """`run_lmms_eval` over this session's models and task index."""
        return run_lmms_eval(model, model_args, tasks, output_path, session=self, **kwargs)


def _task_manager(verbosity: str):
    import lmms_eval.models  # noqa: F401  (loads the amps entry point and registers the task folder)
    from lmms_eval.tasks import TaskManager

    from amps_eval.plugin import task_dir

    return TaskManager(verbosity, include_path=task_dir(), include_defaults=False)


def run_lmms_eval(
    model: str,
    model_args: str,
    tasks: list[str],
    output_path: Path,
    *,
    data: Path | None = None,
    batch_size: int = 1,
    device: str | None = None,
    limit: int | None = None,
    log_samples: bool = True,
    verbosity: str = "WARNING",
    session: EvalSession | None = None,
) -> EvalRun:
    """Evaluate one model on MC2 tasks and save lmms-eval's result files under ``output_path``.

    ``data``: the prepared MC2 folder the tasks read (default: `AMPS_MC2_DATA`, else the default
    folder; see `amps_eval.mc2.source`). ``session``: run over its loaded model and task index
    (same files); None loads the model and indexes the tasks for this run alone."""
    import lmms_eval.models  # noqa: F401  (loads the amps entry point and registers the task folder)
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.loggers import EvaluationTracker
    from lmms_eval.utils import get_datetime_str

    output_path = Path(output_path)
    before = set(output_path.rglob("*_results.json")) if output_path.exists() else set()
    tracker = EvaluationTracker(output_path=str(output_path))
    task_manager = _task_manager(verbosity) if session is None else session.task_manager
    instance = None if session is None else session.wrapper(model, model_args, batch_size=batch_size, device=device)
    datetime_str = get_datetime_str()
    results = simple_evaluate(
        model=model if instance is None else instance,
        model_args=model_args,
        tasks=tasks if data is None else [{"task": task, "dataset_path": str(Path(data).absolute())} for task in tasks],
        batch_size=batch_size,
        device=device,
        limit=limit,
        log_samples=log_samples,
        evaluation_tracker=tracker,
        task_manager=task_manager,
        verbosity=verbosity,
        datetime_str=datetime_str,
    )
    if results is None:  # a non-zero rank of a multi-process run
        raise RuntimeError("lmms-eval returned no results on this process")
    if instance is not None:
        # what lmms-eval records when it builds the model from its name
        results["config"]["model"] = model
        tracker.general_config_tracker.model_source = model
    samples = results.pop("samples", None) if log_samples else None
    tracker.save_results_aggregated(results=results, samples=samples, datetime_str=datetime_str)
    if samples:
        for task_name in results["configs"]:
            tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
    written = sorted(set(output_path.rglob("*_results.json")) - before)
    if not written:
        raise RuntimeError(f"lmms-eval wrote no results file under {output_path}")
    missing = [t for t in tasks if t not in results.get("results", {}) and t not in results.get("groups", {})]
    if missing:
        raise RuntimeError(f"lmms-eval wrote no results for {', '.join(missing)} in {written[-1]}")
    return EvalRun(results, written[-1])
