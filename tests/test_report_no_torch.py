"""The report reads files and needs no torch: `build_report` and the leaderboard on the committed
demo, in a fresh interpreter, never import it (nor transformers, nor lmms-eval)."""

from __future__ import annotations

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


def test_the_report_reads_the_wrapper_defaults_from_the_settings_class_without_torch():
    """The report omits default model arguments from a run's identity; it reads them from the
    wrappers' settings class (no copy of its own), whose module imports no torch."""
    code = ("import sys, dataclasses; from amps_eval.report.select import wrapper_defaults; "
            "from amps_eval.settings import QwenSettings; d = wrapper_defaults(); "
            "assert d == {f.name: f.default for f in dataclasses.fields(QwenSettings) "
            "if f.default is not dataclasses.MISSING}, d; "
            "assert d['alpha'] == 1.0 and d['mcs_sigmas'] == '0.05/0.1/0.2' and 'pretrained' not in d, d; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'lmms_eval')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_shared_words_have_one_definition():
    from amps_eval import vocabulary
    from amps_eval.files import sha256_file
    from amps_eval.steering import file, hooks

    assert hooks.POSITIONS is vocabulary.POSITIONS
    assert file.sha256(__file__) == sha256_file(__file__)
