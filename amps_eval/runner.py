"""Running lmms-eval from Python with the files its CLI writes.

`lmms-eval` (the CLI) catches every exception and exits 0 (docs/lmms-eval.md), so the demo, the
sweeps and the tests go through `lmms_eval.evaluator.simple_evaluate`, which raises, and save the
same `<output>/<model>/<timestamp>_results.json` and `_samples_<task>.jsonl` files the CLI saves.
The MC2 data folder is passed to the tasks explicitly (a task config with `dataset_path`), never
through the process environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EvalRun:
    results: dict
    results_file: Path


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
) -> EvalRun:
    """Evaluate one model on MC2 tasks and save lmms-eval's result files under ``output_path``.

    ``data``: the prepared MC2 folder the tasks read (default: `AMPS_MC2_DATA`, else the default
    folder; see `amps_eval.mc2.source`)."""
    import lmms_eval.models  # noqa: F401  (loads the amps entry point and registers the task folder)
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.loggers import EvaluationTracker
    from lmms_eval.tasks import TaskManager
    from lmms_eval.utils import get_datetime_str

    from amps_eval.plugin import task_dir

    output_path = Path(output_path)
    before = set(output_path.rglob("*_results.json")) if output_path.exists() else set()
    tracker = EvaluationTracker(output_path=str(output_path))
    task_manager = TaskManager(verbosity, include_path=task_dir(), include_defaults=False)
    datetime_str = get_datetime_str()
    results = simple_evaluate(
        model=model,
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
    samples = results.pop("samples", None) if log_samples else None
    tracker.save_results_aggregated(results=results, samples=samples, datetime_str=datetime_str)
    if samples:
        for task_name in results["configs"]:
            tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
    written = sorted(set(output_path.rglob("*_results.json")) - before)
    if not written:
        raise RuntimeError(f"lmms-eval wrote no results file under {output_path}")
    return EvalRun(results, written[-1])
