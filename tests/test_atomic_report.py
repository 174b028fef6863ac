"""Every report file appears whole or not at all, the figure set replaced together (issue 25, section 3).

`amps-eval report --figures` is stopped by SIGINT (in-process: Ctrl-C is a KeyboardInterrupt) and by
SIGKILL (a real process that kills itself at a chosen point: while a figure is half-written, and
between two of the renames that put the set in place). Each time the figures folder holds the old
set or the new one, complete, and no file at a final name is truncated.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_leaderboard import make_results

from amps_eval import cli
from amps_eval.staged_output import staging_path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def site(tmp_path):
    """(runs, figures folder holding an old set + a user's file, names of the new set)."""
    runs = make_results(tmp_path / "site")
    figures = tmp_path / "figures"
    assert cli.main(["report", str(runs), "--figures", str(figures), "--out", str(tmp_path / "tables.md")]) == 0
    names = sorted(snapshot(figures))
    assert len(names) >= 4 and all(n.endswith((".png", ".pdf")) for n in names)
    for name in names:  # the "old" set: other content under the same names
        (figures / name).write_bytes(b"old " + name.encode())
    (figures / "notes.txt").write_text("mine")
    return runs, figures, names


def _is_new(figures: Path, name: str) -> bool:
    data = (figures / name).read_bytes()
    if name.endswith(".png"):
        return data.startswith(b"\x89PNG") and data.endswith(b"IEND\xaeB`\x82")
    return data.startswith(b"%PDF") and data.rstrip().endswith(b"%%EOF")


def _old_or_new_set(figures: Path, names: list[str], old: dict[str, bytes]) -> str:
    now = snapshot(figures)
    assert now["notes.txt"] == b"mine"
    if all(now[n] == old[n] for n in names):
        return "old"
    assert all(_is_new(figures, n) for n in names), "a mix of old and new, or a truncated figure"
    return "new"


def test_ctrl_c_during_the_figures_leaves_the_old_set(site, monkeypatch, capsys):
    import amps_eval.report.figures as figures_module

    runs, figures, names = site
    old = snapshot(figures)
    real, calls = figures_module._save, []

    def save(fig, out, stem):
        calls.append(stem)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(fig, out, stem)

    monkeypatch.setattr(figures_module, "_save", save)
    assert cli.main(["report", str(runs), "--figures", str(figures)]) == 130
    assert "nothing in" in capsys.readouterr().out
    assert _old_or_new_set(figures, names, old) == "old" and snapshot(figures) == old
    assert not staging_path(figures.absolute()).exists()
    monkeypatch.setattr(figures_module, "_save", real)
    assert cli.main(["report", str(runs), "--figures", str(figures)]) == 0
    assert _old_or_new_set(figures, names, old) == "new"


KILLER = textwrap.dedent("""
    import os, signal, sys
    import amps_eval.report.figures as figures
    import amps_eval.staged_output as staged
    from amps_eval import cli

    where = sys.argv[1]
    real_save, real_replace, calls = figures._save, os.replace, []

    def save(fig, out, stem):  # SIGKILL while the second figure is half-written
        calls.append(stem)
        if where == "writing" and len(calls) == 2:
            (out / (stem + ".png")).write_bytes(b"\\x89PNG half")
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(fig, out, stem)

    class Os:  # SIGKILL between two renames of the set into place
        def __getattr__(self, name):
            return getattr(os, name)

        def replace(self, src, dst, moved=[]):
            if where == "moving" and len(moved) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            moved.append(dst)
            return real_replace(src, dst)

    figures._save = save
    staged.os = Os()
    sys.exit(cli.main(sys.argv[2:]))
""")


@pytest.mark.parametrize("where", ["writing", "moving"])
def test_sigkill_during_the_report_leaves_the_old_or_the_new_set_never_a_truncated_file(site, where):
    runs, figures, names = site
    old = snapshot(figures)
    proc = subprocess.run([sys.executable, "-c", KILLER, where, "report", str(runs), "--figures", str(figures)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    if where == "writing":
        assert _old_or_new_set(figures, names, old) == "old"
    else:  # killed half-way through the renames: the next report (or any run on the folder) completes them
        from amps_eval.staged_output import recover_files

        recover_files(figures)
        assert _old_or_new_set(figures, names, old) == "new"
    assert not any(p.name.endswith(".tmp") for p in figures.iterdir())
    assert cli.main(["report", str(runs), "--figures", str(figures)]) == 0  # a rerun: the new set, no leftovers
    assert _old_or_new_set(figures, names, old) == "new"
    assert not staging_path(figures.absolute()).exists()
    assert sorted(os.listdir(figures)) == sorted(names + ["notes.txt"])
