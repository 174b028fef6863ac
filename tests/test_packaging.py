"""The wheel carries every task YAML and the wrappers inside the amps_eval namespace."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_tasks_and_wrappers(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, text=True,
    )
    wheel = next(tmp_path.glob("amps_eval-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    yamls = sorted(p.name for p in (ROOT / "tasks").glob("*.yaml"))
    assert len(yamls) >= 22
    missing = [y for y in yamls if f"amps_eval/tasks/{y}" not in names]
    assert not missing, f"task YAMLs missing from the wheel: {missing}"
    for module in ("amps_eval/tasks/utils.py", "amps_eval/model_wrappers/registered.py", "amps_eval/model_wrappers/base.py",
                   "amps_eval/plugin.py"):
        assert module in names
    packages = sorted(str(p.parent.relative_to(ROOT)) for p in (ROOT / "amps_eval").rglob("__init__.py"))
    lost = [p for p in packages if f"{p}/__init__.py" not in names]
    assert not lost, f"packages missing from the wheel (add them to pyproject's packages): {lost}"
    top_level = {n.split("/")[0] for n in names}
    assert top_level <= {"amps_eval", next(n.split("/")[0] for n in names if ".dist-info/" in n)}, top_level
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[lmms_eval.models]" in text and "amps_eval.plugin:manifests" in text
