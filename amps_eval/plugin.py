"""lmms-eval integration: the `lmms_eval.models` entry point and the task-folder registration.

This module must stay import-light (no torch, no transformers): lmms-eval loads entry points while
importing `lmms_eval.models`, and an exception here only becomes a logged warning followed by
"model not found".

Why the task folder is registered here
--------------------------------------
lmms-eval 0.7.3 only finds tasks of another package through `--include_path` (or
`TaskManager(include_path=...)`). Its `LMMS_EVAL_PLUGINS` variable is read *after* the task index
is built, so it does not work. The model entry point is loaded before any `TaskManager` exists, so
`manifests()` wraps `TaskManager.initialize_tasks` once to append this package's task folder.

It also wraps `TaskManager.match_tasks`, which the CLI calls with the task names before it loads the
model: when an MC2 task is asked for and no MC2 data can be found, the run stops there, in seconds,
with the command that makes the data, instead of after a multi-minute model load.

These two wrappers are the only places amps-eval touches lmms-eval internals;
`tests/test_registration.py` checks that `lmms-eval --tasks list` shows the tasks with no flag, that
`--include_path` still works and that a run without data stops before the model loads. Set
`AMPS_EVAL_NO_TASK_AUTOREGISTER=1` to switch both off.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from amps_eval.families import FAMILIES

# lmms-eval model name -> the wrapper class over its family (declared in amps_eval.model_wrappers.registered;
# tests/test_families.py checks that the two lists agree)
MODEL_CLASSES = {f.lmms_model: f"amps_eval.model_wrappers.registered.{f.wrapper_class_name}" for f in FAMILIES.values()}

_MARKER = "_amps_eval_task_dir"


def task_dir() -> str:
    """The folder holding the MC2 task YAMLs (installed as `amps_eval.tasks`)."""
    import amps_eval.tasks

    return str(Path(amps_eval.tasks.__file__).parent)


def task_names() -> frozenset[str]:
    """The names of this package's tasks and groups (one YAML each, named after it)."""
    return frozenset(p.stem for p in Path(task_dir()).glob("*.yaml") if not p.stem.startswith("_"))


def register_task_dir() -> None:
    """Make every `TaskManager` index this package's tasks and check the MC2 data when one of them is
    matched (idempotent)."""
    if os.environ.get("AMPS_EVAL_NO_TASK_AUTOREGISTER"):
        return
    from lmms_eval.tasks import TaskManager

    original = TaskManager.initialize_tasks
    if getattr(original, _MARKER, None):
        return
    ours = task_dir()

    @functools.wraps(original)
    def initialize_tasks(self, include_path=None, include_defaults=True):
        paths = [include_path] if isinstance(include_path, str) else list(include_path or [])
        if not any(os.path.abspath(p) == ours for p in paths):
            paths.append(ours)
        return original(self, include_path=paths, include_defaults=include_defaults)

    original_match = TaskManager.match_tasks
    ours_by_name = task_names()

    @functools.wraps(original_match)
    def match_tasks(self, task_list):
        matched = original_match(self, task_list)
        if any(name in ours_by_name for name in matched):
            from amps_eval.mc2.source import resolve_source

            resolve_source()  # MC2SourceError names the command that makes the data
        return matched

    setattr(initialize_tasks, _MARKER, ours)
    TaskManager.initialize_tasks = initialize_tasks
    TaskManager.match_tasks = match_tasks


def wrapper_class(model: str) -> type:
    """The wrapper class registered under the lmms-eval model name ``model``."""
    import importlib

    if model not in MODEL_CLASSES:
        raise ValueError(f"unknown model {model!r}; valid models: {', '.join(MODEL_CLASSES)}")
    module, _, name = MODEL_CLASSES[model].rpartition(".")
    return getattr(importlib.import_module(module), name)


def manifests():
    """Entry point target: the ModelManifests of the families' models (`amps_qwen`, `amps_llava`, ...)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    register_task_dir()
    return [ModelManifest(model_id=name, simple_class_path=path) for name, path in MODEL_CLASSES.items()]
