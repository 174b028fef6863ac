"""Models and tasks are found by lmms-eval with no flags; --include_path still works."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from amps_eval.mc2.prompt import TARGETS
from amps_eval.mc2.schema import CATEGORIES
from amps_eval.plugin import MODEL_CLASSES, task_dir

EXPECTED_TASKS = {f"mc2_{t}" for t in ("visual", "text")} | {
    f"mc2_{t}_{c}" for t in ("visual", "text") for c in CATEGORIES
} | {f"mc2_{t}_both_orders" for t in ("visual", "text")}


def test_task_yamls_cover_every_category_and_target():
    import yaml

    seen = {}
    for path in Path(task_dir()).glob("mc2_*.yaml"):
        text = path.read_text()
        if text.startswith("group:"):
            continue
        config = yaml.safe_load(text.replace("!function", ""))
        seen[config["task"]] = config["metadata"]
        assert config["metadata"]["target"] in TARGETS
        assert config["metadata"].get("category") in (None, *CATEGORIES)
    assert set(seen) == EXPECTED_TASKS


def test_entry_point_registers_models():
    from lmms_eval.models import MODEL_REGISTRY_V2

    for name, path in MODEL_CLASSES.items():
        assert MODEL_REGISTRY_V2.get_manifest(name).simple_class_path == path


def test_task_manager_finds_tasks_without_flags_and_with_include_path():
    import lmms_eval.models  # noqa: F401  (runs the entry point)
    from lmms_eval.tasks import TaskManager

    plain = TaskManager("ERROR", include_defaults=False)
    assert EXPECTED_TASKS | {"mc2_visual_categories", "mc2_text_categories"} <= set(plain.all_tasks)
    explicit = TaskManager("ERROR", include_path=task_dir(), include_defaults=False)
    assert EXPECTED_TASKS <= set(explicit.all_tasks)
    assert explicit.task_index["mc2_visual"]["yaml_path"].startswith(task_dir())


def _cli(*args, env_extra=None) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "lmms_eval", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


@pytest.fixture(scope="module")
def task_listings():
    """The output of `lmms_eval --tasks list` with and without the task autoregistration. Both
    listings are started together (each spends ~half a minute indexing lmms-eval's own tasks, on
    one core), and each test waits for its own."""
    started = {"registered": _cli("--tasks", "list"),
               "switched_off": _cli("--tasks", "list", env_extra={"AMPS_EVAL_NO_TASK_AUTOREGISTER": "1"})}
    printed: dict[str, str] = {}

    def listing(name: str) -> str:
        if name not in printed:
            out, err = started[name].communicate(timeout=300)
            printed[name] = out + err
        return printed[name]

    try:
        yield listing
    finally:
        for process in started.values():
            if process.poll() is None:
                process.kill()
                process.communicate()


@pytest.mark.slow
def test_cli_lists_tasks_with_no_include_path(task_listings):
    listing = task_listings("registered")
    for task in ("mc2_visual", "mc2_text", "mc2_visual_color", "mc2_text_counting"):
        assert f"- {task}\n" in listing, listing[-2000:]


@pytest.mark.slow
def test_autoregistration_can_be_switched_off(task_listings):
    listing = task_listings("switched_off")
    assert "- mc2_visual\n" in task_listings("registered")  # the same listing lists the tasks when registered
    assert "- mc2_visual\n" not in listing


@pytest.mark.slow
def test_without_mc2_data_the_cli_stops_before_loading_the_model(tmp_path):
    """No AMPS_MC2_DATA and an empty default folder: the run ends at task matching with the command
    that makes the data; the (nonexistent) checkpoint is never opened."""
    env = {k: v for k, v in os.environ.items() if k != "AMPS_MC2_DATA"}
    env.update({"HF_HUB_OFFLINE": "1", "AMPS_EVAL_HOME": str(tmp_path / "home")})
    checkpoint = tmp_path / "no-such-checkpoint"
    out = subprocess.run(
        [sys.executable, "-m", "lmms_eval", "--model", "amps_qwen", "--model_args", f"pretrained={checkpoint}",
         "--tasks", "mc2_visual", "--output_path", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    log = out.stdout + out.stderr
    assert "amps-eval prepare-mc2 --download" in log, log[-3000:]
    assert str(tmp_path / "home" / "mc2") in log
    assert "no-such-checkpoint" not in log.replace(f"pretrained={checkpoint}", ""), log[-3000:]
