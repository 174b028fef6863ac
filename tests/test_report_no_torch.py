"""The report reads files and needs no torch: `build_report` and the leaderboard on the committed
demo, in a fresh interpreter, never import it (nor transformers, nor lmms-eval)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "results" / "demo"

SCRIPT = """
import sys, tempfile
from pathlib import Path
from amps_eval.report.build import ReportOptions, build_report
from amps_eval.report.leaderboard import write_leaderboard
from amps_eval.report.cli_parsers import add_parsers
import argparse
add_parsers(argparse.ArgumentParser().add_subparsers())  # the CLI's report/leaderboard/sweep parsers
report = build_report(ReportOptions(Path(sys.argv[1]), collapse=True, stderr=True))
assert "Table 1" in report.text, report.text[:500]
write_leaderboard(Path(sys.argv[1]), Path(tempfile.mkdtemp()))
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "lmms_eval")))
"""


@pytest.mark.skipif(not (DEMO / "runs").is_dir(), reason="no committed demo")
def test_the_report_on_the_committed_demo_never_imports_torch():
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(DEMO / "runs")], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_reports_copy_of_the_wrapper_defaults_equals_the_settings_class():
    from amps_eval.report.select import WRAPPER_DEFAULTS
    from amps_eval.settings import QwenSettings

    defaults = {f.name: f.default for f in dataclasses.fields(QwenSettings) if f.default is not dataclasses.MISSING}
    assert WRAPPER_DEFAULTS == defaults, (
        "amps_eval/report/select.py WRAPPER_DEFAULTS must list the wrappers' defaults (a setting was added or "
        f"changed): missing {sorted(set(defaults) - set(WRAPPER_DEFAULTS))}, extra "
        f"{sorted(set(WRAPPER_DEFAULTS) - set(defaults))}, differing "
        f"{sorted(k for k in defaults if k in WRAPPER_DEFAULTS and defaults[k] != WRAPPER_DEFAULTS[k])}")


def test_shared_words_have_one_definition():
    from amps_eval import vocabulary
    from amps_eval.files import sha256_file
    from amps_eval.steering import file, hooks

    assert hooks.POSITIONS is vocabulary.POSITIONS
    assert file.sha256(__file__) == sha256_file(__file__)
