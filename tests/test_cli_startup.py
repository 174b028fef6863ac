"""`amps-eval` starts fast: parsing any command line, --help, --version and argument errors import
neither torch nor transformers nor lmms-eval (issue 22, "Fast to start"); each check runs in a fresh
interpreter, where nothing is imported yet."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "lmms_eval")

COMMAND_LINES = [
    ["prepare-mc2", "--download", "--out", "/tmp/x"],
    ["synth-mc2", "--out", "/tmp/x"],
    ["demo"],
    ["study", "--out", "/tmp/x", "--pretrained", "Qwen/Qwen2.5-VL-7B-Instruct", "--alphas", "0,1,2"],
    ["fit", "--model", "amps_qwen", "--pretrained", "x", "--method", "amps", "--out", "x.safetensors"],
    ["mcs", "--model", "amps_qwen", "--pretrained", "x", "--out", "x.jsonl"],
    ["build-organism", "--out", "/tmp/x"],
    ["report", "/tmp/x"],
    ["eval", "--model", "amps_qwen", "--model_args", "pretrained=x", "--tasks", "mc2_visual", "--output_path", "o"],
]


def _fresh(code: str) -> dict:
    """Run ``code`` in a new interpreter; it prints a JSON object as its last line."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


_LOADED = f"json.dumps({{'heavy': [m for m in {HEAVY!r} if m in sys.modules], 'rc': rc, 'out': out.getvalue()}})"


@pytest.mark.parametrize("argv", COMMAND_LINES, ids=[line[0] for line in COMMAND_LINES])
def test_parsing_a_command_line_and_building_its_settings_imports_no_torch(argv):
    code = (
        "import json, sys, io\n"
        "from amps_eval.cli import build_parser, fit_settings, study_settings\n"
        f"args = build_parser().parse_args({argv!r})\n"
        "if args.command in ('study', 'demo'): study_settings(args)\n"
        "if args.command == 'fit': fit_settings(args)\n"
        "rc, out = 0, io.StringIO()\n"
        f"print({_LOADED})\n"
    )
    assert _fresh(code)["heavy"] == []


@pytest.mark.parametrize(("argv", "rc", "shown"), [
    (["--help"], 0, "usage: amps-eval"),
    (["--version"], 0, "amps-eval "),
    (["study", "--help"], 0, "--pretrained"),
    (["fit", "--help"], 0, "--recipe"),
    (["studdy"], 2, "did you mean"),
    (["study", "--out", "x", "--alhpas", "1"], 2, "unrecognized arguments"),
    (["fit", "--model", "amps_qwen"], 2, "required"),
    (["eval", "--help"], 0, "exits 0 when an evaluation fails"),
    (["eval", "--model", "amps_qwen"], 2, "give the tasks"),
])
def test_help_version_and_argument_errors_import_no_torch(argv, rc, shown):
    code = (
        "import contextlib, io, json, sys\n"
        "from amps_eval.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):\n"
        "    try:\n"
        f"        rc = main({argv!r})\n"
        "    except SystemExit as exit:\n"
        "        rc = exit.code\n"
        f"print({_LOADED})\n"
    )
    result = _fresh(code)
    assert result["heavy"] == []
    assert result["rc"] == rc
    assert shown in result["out"]


def test_the_check_would_see_torch():
    """The probe itself: a command that does need torch shows up as such."""
    code = (
        "import io, json, sys\n"
        "import amps_eval.fit\n"
        "rc, out = 0, io.StringIO()\n"
        f"print({_LOADED})\n"
    )
    assert "torch" in _fresh(code)["heavy"]


@pytest.mark.parametrize("argv, rc", [(["--help"], 0), (["fit", "--help"], 0), (["eval", "--help"], 141)],
                         ids=["help", "fit-help", "eval-help"])
def test_a_closed_stdout_ends_the_command_quietly(argv, rc):
    """``amps-eval --help | head -1``: the reader may go away before the command has written; the
    command then ends without a traceback or an error line (argparse's own help ignores the closed
    pipe and exits 0; a command's output exits 141, as a program that SIGPIPE ended). The read end is
    closed before the command starts, so every write meets the closed pipe."""
    import os

    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "amps_eval.cli", *argv], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (rc, "")


def test_a_command_whose_reader_stops_after_one_line_ends_quietly():
    """The shell's ``amps-eval eval --help | head -1``, with the reader gone after the first line."""
    done = subprocess.run(["bash", "-c", f"'{sys.executable}' -m amps_eval.cli eval --help | head -1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("usage: amps-eval eval") and done.stderr == ""
