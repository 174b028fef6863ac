"""The committed demo is what the current code produces: its provenance.json (written by the study)
records the hashes of the files that made it; they must equal today's (amps_eval.provenance)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from amps_eval.provenance import NAME, changed_files, fingerprint, write_provenance

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "results" / "demo"


def _tree(root: Path) -> None:
    for name, text in {"amps_eval/a.py": "A", "amps_eval/organism/x/model.safetensors": "W",
                       "amps_eval/report/r.py": "R", "amps_eval/__pycache__/a.cpython.pyc": "C",
                       "tasks/t.yaml": "T", "requirements-cpu.lock": "L", "README.md": "not hashed"}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_the_fingerprint_splits_runs_from_report_and_names_what_changed(tmp_path):
    _tree(tmp_path)
    first = fingerprint(tmp_path)
    assert sorted(first["runs"]) == ["amps_eval/a.py", "amps_eval/organism/x/model.safetensors",
                                     "requirements-cpu.lock", "tasks/t.yaml"]
    assert sorted(first["report"]) == ["amps_eval/report/r.py"]
    import hashlib

    assert first["runs"]["amps_eval/a.py"] == hashlib.sha256(b"A").hexdigest()
    (tmp_path / "amps_eval/organism/x/model.safetensors").write_text("W2")
    (tmp_path / "amps_eval/report/new.py").write_text("N")
    (tmp_path / "tasks/t.yaml").unlink()
    (tmp_path / "README.md").write_text("changed, not hashed")
    assert changed_files(first, fingerprint(tmp_path)) == {
        "report": ["amps_eval/report/new.py"], "runs": ["amps_eval/organism/x/model.safetensors", "tasks/t.yaml"]}
    (tmp_path / "out").mkdir()
    path = write_provenance(tmp_path / "out", {"seed": 1}, tmp_path)
    recorded = json.loads(path.read_text())
    assert recorded["settings"] == {"seed": 1} and changed_files(recorded["files"], fingerprint(tmp_path)) == {}


def test_the_committed_demo_was_made_by_the_current_code():
    path = DEMO / NAME
    if not path.is_file():
        pytest.skip(f"{path} is absent: the committed demo predates provenance records; regenerate it (make demo)")
    recorded = json.loads(path.read_text())["files"]
    changed = changed_files(recorded, fingerprint(ROOT))
    assert not changed, (
        "results/demo was made by other code than this checkout's: regenerate it with `make demo` "
        f"(changed since: {json.dumps(changed)})")
