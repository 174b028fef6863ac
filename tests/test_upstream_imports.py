"""Every lmms-eval name the plugin, the tasks and the runner use, imported in one place.

When an upstream release (of lmms-eval or of something it imports, as filelock 4.3 did by removing
`filelock._api`) breaks one of them, this is the one clear failing test, instead of a crash in the
middle of a study. Keep the list in step with `git grep "from lmms_eval"`.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

USED = [
    ("lmms_eval.api.model", "lmms"),
    ("lmms_eval.api.task", "ConfigurableTask"),
    ("lmms_eval.evaluator", "simple_evaluate"),
    ("lmms_eval.loggers", "EvaluationTracker"),
    ("lmms_eval.tasks", "TaskManager"),
    ("lmms_eval.utils", "get_datetime_str"),
    ("lmms_eval.utils", "simple_parse_args_string"),
    ("lmms_eval.models", "MODEL_REGISTRY_V2"),
    ("lmms_eval.models", "get_model"),
    ("lmms_eval.models.registry_v2", "ModelManifest"),
    ("lmms_eval.__main__", "cli_evaluate"),
]


@pytest.mark.parametrize(("module", "name"), USED, ids=[f"{m}.{n}" for m, n in USED])
def test_lmms_eval_name_imports(module, name):
    assert hasattr(importlib.import_module(module), name), f"{module} no longer has {name}"


def test_the_list_covers_every_lmms_eval_import_of_the_package():
    pattern = re.compile(r"from (lmms_eval[\w.]*) import (\w+)")
    found = set()
    for folder in ("amps_eval", "model_wrappers", "tasks"):
        for path in (ROOT / folder).rglob("*.py"):
            found |= set(pattern.findall(path.read_text()))
    assert found <= set(USED), f"add these to USED: {sorted(found - set(USED))}"


def test_the_task_manager_methods_the_plugin_wraps_still_take_what_it_passes():
    from lmms_eval.tasks import TaskManager

    assert list(inspect.signature(TaskManager.initialize_tasks).parameters)[:3] == [
        "self", "include_path", "include_defaults"]
    assert list(inspect.signature(TaskManager.match_tasks).parameters)[:2] == ["self", "task_list"]


def test_the_simple_model_interface_is_what_the_wrappers_implement():
    from lmms_eval.api.model import lmms

    abstract = set(getattr(lmms, "__abstractmethods__", ()))
    assert abstract <= {"generate_until", "loglikelihood", "generate_until_multi_round"}, abstract
