"""Several models of a study at once: one worker process per model (``--jobs``), each with a set
number of torch threads (``--threads``).

Why: on a CPU the organisms' layers are too small for torch's threads to share their work (two
threads on two cores take about the time of one), while two processes on two cores take half the
time; and a fixed thread count makes the numbers the same on every machine (a matrix product's
float sums follow the thread count; the demo's trained MLPs amplify such rounding, docs/demo.md).

How: each model's steps (`amps_eval.study.study_model`) run in a fresh (spawned) worker process
that sets its torch thread count, writes its output into the study's staging folder exactly as the
study does in one process (the units of different models have different names and files,
`amps_eval.resume`), and logs into ``<staging>/.units/logs/<stem>.log``. The parent relays each
worker's progress lines (the steps and their remaining time), prefixed with the model's name; a
worker's failure stops the study with the model's name and the end of its log, and the staging
folder keeps every finished unit for the next start (`amps_eval.staged_output`).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ModelJob", "default_threads", "run_jobs", "worker_threads"]

LOG_FOLDER = "logs"
"""Inside the staging folder's unit records (`amps_eval.resume.RECORDS`): one log per worker."""
RELAYED = ("[study", "===", "  [", "mean r_v", "  none:", "  inst", "  cot", "  fewshot", "WARNING", "Error",
           "Traceback")
"""The start of a worker's log lines that the parent prints (steps, progress and results; not
the progress bars, which would interleave)."""


@dataclass(frozen=True)
class ModelJob:
    """The steps 2-5 of one model (`amps_eval.study.study_model`'s arguments)."""

    stem: str
    model: str
    pretrained: str
    organism: bool


def default_threads(jobs: int, cores: int | None = None) -> int:
    """Torch threads per worker when ``--threads`` is not given: the cores shared out, at least 1."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return max(1, cores // max(1, jobs))


def worker_threads(settings) -> int:
    return settings.threads if settings.threads is not None else default_threads(settings.jobs)


def _entry(settings, job: ModelJob, data: Path, out: Path, context: dict, log: Path, threads: int) -> None:
    """The worker process: ``job``'s steps with ``threads`` torch threads, printing into ``log``;
    the result (or the error) goes to ``log``'s ``.result.json``."""
    import json
    import traceback

    import torch

    from amps_eval.resume import Units
    from amps_eval.study import study_model

    torch.set_num_threads(threads)  # this worker process's own setting
    with open(log, "w", buffering=1, encoding="utf-8") as stream, contextlib.redirect_stdout(stream), \
            contextlib.redirect_stderr(stream):
        print(f"[worker] {job.stem}: pid {os.getpid()}, torch threads {threads}", flush=True)
        try:
            units = Units(out, context)
            result = study_model(settings, job.model, job.pretrained, job.organism, data, out, stem=job.stem,
                                 units=units)
            record = {"result": result, "summary": units.summary()}
        except BaseException as error:  # recorded for the parent, then the process fails
            traceback.print_exc()
            record = {"error": f"{type(error).__name__}: {error}"}
        _result_path(log).write_text(json.dumps(record), encoding="utf-8")
    if "error" in record:
        raise SystemExit(1)


def _result_path(log: Path) -> Path:
    return log.with_suffix(".result.json")


class _LogRelay:
    """Print the new complete lines of each worker's log that `RELAYED` names, prefixed."""

    def __init__(self, logs: dict[str, Path], say=print) -> None:
        self.logs, self.say = logs, say
        self.offsets = {stem: 0 for stem in logs}

    def poll(self) -> None:
        for stem, log in self.logs.items():
            if not log.is_file():
                continue
            with open(log, "rb") as stream:
                stream.seek(self.offsets[stem])
                chunk = stream.read()
            end = chunk.rfind(b"\n") + 1  # whole lines only; the rest is read next time
            self.offsets[stem] += end
            for line in chunk[:end].decode("utf-8", "replace").replace("\r", "\n").splitlines():
                if line.strip() and line.lstrip("\n").startswith(RELAYED):
                    self.say(f"[{stem}] {line}", flush=True)


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def run_jobs(settings, jobs: list[ModelJob], data: Path, out: Path, context: dict, records: Path,
             poll_seconds: float = 1.0) -> dict[str, dict]:
    """Every job, at most ``settings.jobs`` worker processes at a time; {stem: study_model's
    result}, in ``jobs``' order. A failed worker stops the others and raises RuntimeError naming
    its model and the end of its log."""
    import json
    import multiprocessing

    logs_dir = records / LOG_FOLDER
    logs_dir.mkdir(parents=True, exist_ok=True)
    logs = {job.stem: logs_dir / f"{job.stem}.log" for job in jobs}
    for log in logs.values():
        _result_path(log).unlink(missing_ok=True)
    threads = worker_threads(settings)
    width = min(settings.jobs, len(jobs))
    print(f"studying {len(jobs)} model(s) in {width} worker process(es) at a time, {threads} torch thread(s) "
          f"each; their logs: {logs_dir}", flush=True)
    context_of = multiprocessing.get_context("spawn")  # a fresh interpreter: no state shared with this one
    relay = _LogRelay(logs)
    waiting, running, results = list(jobs), {}, {}
    try:
        while waiting or running:
            while waiting and len(running) < width:
                job = waiting.pop(0)
                process = context_of.Process(target=_entry, name=f"amps-eval study {job.stem}",
                                             args=(settings, job, data, out, context, logs[job.stem], threads))
                process.start()
                running[job.stem] = (job, process)
            time.sleep(poll_seconds)
            relay.poll()
            for stem, (job, process) in list(running.items()):
                if process.exitcode is None:
                    continue
                del running[stem]
                path = _result_path(logs[stem])
                record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {
                    "error": f"the worker process ended with exit code {process.exitcode} (killed: out of memory, "
                             "or a signal?)"}
                if "error" in record:
                    raise RuntimeError(f"the study of {stem} ({job.pretrained}) failed: {record['error']}\nthe end "
                                       f"of its log ({logs[stem]}):\n{tail(logs[stem])}")
                results[stem] = record["result"]
                print(f"[{stem}] done: {record['summary']}", flush=True)
    finally:
        for _, process in running.values():  # a failure or an interrupt: stop the others
            process.terminate()
        for _, process in running.values():
            process.join()
    return {job.stem: results[job.stem] for job in jobs}
