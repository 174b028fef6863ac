"""The README is a short guide: its first screen starts a newcomer and a GPU user, its commands are
ones the code accepts, its lines are short, and every link in it and in docs/ resolves."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from amps_eval.cli import build_parser
from amps_eval.report.runs import parse_model_args
from amps_eval.settings import WrapperSettings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FIRST_SCREEN = 40


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S)


def commands(text: str, program: str) -> list[list[str]]:
    """Every ``program`` command line in the bash blocks of ``text``, continuation lines joined and
    comments removed, split as the shell would."""
    found = []
    for block in code_blocks(text):
        for line in block.replace("\\\n", "").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == [program]:
                found.append(words)
    return found


def option(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def test_first_screen_has_the_newcomer_commands_then_the_gpu_quick_start():
    first = "\n".join(README.splitlines()[:FIRST_SCREEN])
    blocks = code_blocks(first)
    assert [line.split("#")[0].strip() for line in blocks[0].splitlines() if not line.startswith(" ")] \
        == ["make demo", "make test"]
    gpu = blocks[1]
    steps = ["pip install -c constraints.txt -e .", "amps-eval prepare-mc2 --download", "amps-eval eval --model",
             "amps-eval study"]
    positions = [gpu.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), positions
    assert "## On a GPU" in first and "_results.json" in first  # where the results appear
    gpu_section = README.split("## On a GPU", 1)[1].split("\n## ", 1)[0]
    assert "(docs/cost.md)" in gpu_section  # what a run costs, before the first run


def test_ci_runs_the_readmes_test_command():
    assert re.search(r"^make test +# ", code_blocks(README)[0], flags=re.M)
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(), flags=re.M)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, flags=re.M) and re.search(r"^test:", makefile, flags=re.M)


def test_readme_lines_are_short_outside_tables():
    long = [(n, len(line)) for n, line in enumerate(README.splitlines(), 1)
            if len(line) > 100 and not line.startswith("|")]
    assert long == []


def test_readme_is_a_short_guide():
    assert len(README.splitlines()) <= 250


@pytest.mark.parametrize("words", commands(README, "amps-eval"), ids=lambda w: " ".join(w[:2]))
def test_readme_amps_eval_commands_parse(words):
    build_parser().parse_args(words[1:])  # an option the code does not have exits 2


def test_readme_lmms_eval_commands_use_real_tasks_and_model_arguments(monkeypatch):
    monkeypatch.setattr(WrapperSettings, "check_steering_file", lambda self: None)  # the file is fitted first
    tasks = set()
    for yaml in (ROOT / "tasks").glob("*.yaml"):
        tasks.update(re.findall(r"^(?:task|group): (\S+)", yaml.read_text(), flags=re.M))
    runs = commands(README, "lmms-eval")
    assert runs
    for words in runs:
        assert set(option(words, "--tasks").split(",")) <= tasks
        WrapperSettings.from_model_args(**parse_model_args(option(words, "--model_args")))  # unknown: error


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for the headings of ``page``."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    found = set()
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_resolve(page):
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(target)
    assert broken == []


def test_readme_links_every_reference_page():
    for name in ("install", "data", "tasks", "models", "steering", "method", "reports", "demo", "cli",
                 "failures", "layout", "lmms-eval", "mc2", "cost"):
        assert f"(docs/{name}.md)" in README, name
