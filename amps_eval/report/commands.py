"""The exact lmms-eval command that fills a missing table row.

A report is only useful for planning if it says how to get what it lacks: every missing (model,
method, targets) becomes one ``lmms-eval`` command line. The steering file of a steered method is
taken from an existing run of the same model that used a file of the same kind (mean / mean_mcs
share one; among several, the lowest training seed by file name, `steering_of`); when there is none, the command holds a placeholder and the ``amps-eval fit`` command
that writes the file. A table of runs cut by ``--limit`` gets the same ``--limit`` (a full run would
be other data, shown in another table), and the data folder the row's runs read is named.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from amps_eval.methods.registry import BY_NAME
from amps_eval.report import STEERED
from amps_eval.report.runs import DataId, Run
from amps_eval.report.seeds import seed_order

FILE_KIND = {m.name: m.file_method for m in BY_NAME.values() if m.steered}
TASKS = {("vision", "one"): "mc2_visual", ("text", "one"): "mc2_text",
         ("vision", "both"): "mc2_visual_both_orders", ("text", "both"): "mc2_text_both_orders"}


@dataclass(frozen=True)
class MissingRun:
    """A table row with no run behind it for these targets, and how to produce it."""

    pretrained: str
    method: str
    targets: tuple[str, ...]
    command: str
    fit_command: str | None = None  # when no steering file of the right kind is known
    data: DataId | None = None  # the data the table's runs read (the new run must read it too)


def steering_of(runs: list[Run], pretrained: str, method: str) -> tuple[str, str | None] | None:
    """(path, sha256) of a steering file of this kind used with this model, if any: the one of the
    lowest training seed (``seeds.training_seed``: seed 0 is the file without ``_seed<k>``), then of
    the smallest path, then sha256; never chosen by run date, so the suggestion does not depend on
    which seed's runs finished last."""
    kind = FILE_KIND[method]
    found = {(run.settings["steering"], run.settings.get("steering_sha256") or "") for run in runs
             if run.pretrained == pretrained and FILE_KIND.get(run.method) == kind and run.settings.get("steering")}
    if not found:
        return None
    path, sha = min(found, key=lambda f: (*seed_order(f[0]), f[1]))
    return path, sha or None


def missing_run(runs: list[Run], lmms_model: str, pretrained: str, method: str, targets: tuple[str, ...],
                orders: str, alpha: float | None, output_path: str, data: DataId | None = None) -> MissingRun:
    """The command for one missing row (both targets in one command when both are missing)."""
    args = [f"pretrained={pretrained}", f"method={method}"]
    fit = None
    if method in STEERED:
        known = steering_of(runs, pretrained, method)
        if known:
            path, sha = known
            args.append(f"steering={path}")
            if sha:
                args.append(f"steering_sha256={sha}")
        else:
            args.append("steering=STEERING_FILE")
            fit = (f"amps-eval fit --model {lmms_model} --pretrained {shlex.quote(pretrained)} "
                   f"--method {FILE_KIND[method]} --out STEERING_FILE")
        args.append(f"alpha={1.0 if alpha is None else alpha:g}")
    tasks = ",".join(TASKS[(t, orders)] for t in targets)
    limit = f"--limit {data.limit:g} " if data is not None and data.limit is not None else ""
    command = (f"lmms-eval --model {lmms_model} --model_args {shlex.quote(','.join(args))} --tasks {tasks} "
               f"{limit}--log_samples --output_path {shlex.quote(output_path)}")
    return MissingRun(pretrained, method, targets, command, fit, data)
