"""The lmms-eval task class of every MC2 task (referenced by the YAMLs as `class:`).

It differs from lmms-eval's `ConfigurableTask` in two things only, both decided at construction:

* where the data comes from: a prepared folder (`amps_eval.mc2.source.resolve_source`): the
  task config's `dataset_path` when a caller sets one (the study passes
  ``{"task": "mc2_visual", "dataset_path": DIR}`` to lmms-eval), else `AMPS_MC2_DATA`, else the
  default folder that `amps-eval prepare-mc2 --download` fills. A YAML cannot read an environment
  variable, so the class fills in `dataset_path` / `dataset_kwargs`. The folder is checked here,
  with `load_mc2` (the check `amps-eval fit` uses too), before lmms-eval loads it: a broken folder or
  items the task would score wrongly (duplicate ``mc2_id``s, identical options, ...) raise
  `MC2DataError` naming the folder and the fix, not an error of the `datasets` library;
* which documents the task has: `metadata: {target, category, orders}` in the YAML becomes a
  `TaskSpec`, applied as the task's `process_docs`.
"""

from __future__ import annotations

import functools

from lmms_eval.api.task import ConfigurableTask

from amps_eval.mc2.docs import TaskSpec, task_docs
from amps_eval.mc2.source import lmms_dataset_args, load_mc2, resolve_source


class MC2Task(ConfigurableTask):
    def __init__(self, config: dict) -> None:
        config = {key: value for key, value in config.items() if key != "class"}
        spec = TaskSpec.from_metadata(config.get("metadata"))
        source = resolve_source(folder=config.get("dataset_path"))
        load_mc2(source)  # refuses a folder the task cannot trust (MC2DataError)
        config["dataset_path"], config["dataset_kwargs"] = lmms_dataset_args(source)
        config["process_docs"] = functools.partial(task_docs, spec=spec)
        self.spec = spec
        self.source = source
        super().__init__(config=config)
