"""The lmms-eval task class of every MC2 task (referenced by the YAMLs as `class:`).

It differs from lmms-eval's `ConfigurableTask` in two things only, both decided at construction:

* where the data comes from: `AMPS_MC2_DATA` (a folder written by `amps-eval prepare-mc2` or
  `amps-eval synth-mc2`) or else the authors' copy on the hub (`amps_eval.mc2.source`); a YAML
  cannot read an environment variable, so the class fills in `dataset_path` / `dataset_kwargs`;
* which documents the task has: `metadata: {target, category, orders}` in the YAML becomes a
  `TaskSpec`, applied as the task's `process_docs`.
"""

from __future__ import annotations

import functools

from lmms_eval.api.task import ConfigurableTask

from amps_eval.mc2.docs import TaskSpec, task_docs
from amps_eval.mc2.source import lmms_dataset_args, resolve_source


class MC2Task(ConfigurableTask):
    def __init__(self, config: dict) -> None:
        config = {key: value for key, value in config.items() if key != "class"}
        spec = TaskSpec.from_metadata(config.get("metadata"))
        config["dataset_path"], config["dataset_kwargs"] = lmms_dataset_args(resolve_source())
        config["process_docs"] = functools.partial(task_docs, spec=spec)
        self.spec = spec
        super().__init__(config=config)
