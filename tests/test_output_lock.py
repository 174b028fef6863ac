"""Output locks: two processes writing one output (issue 25, section 2).

A real second process holds the lock (`_holder`), and the command under test runs in this process
(`amps_eval.cli.main`) or as a real `amps-eval` process: the lock is an OS lock between processes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from amps_eval import cli
from amps_eval.output_lock import Owner, OutputLocked, command_outputs, lock_path, output_lock, owner_path

HOLDER = textwrap.dedent("""
    import sys
    from amps_eval.output_lock import output_lock
    with output_lock(sys.argv[1], "holder " + sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.readline()
    print("released", flush=True)
""")


def _holder(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _release(proc: subprocess.Popen) -> None:
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "released"
    proc.wait(timeout=30)


COMMANDS = {  # every command that writes an output, with its output
    "synth-mc2": (["synth-mc2", "--out", "{out}"], "{out}"),
    "prepare-mc2": (["prepare-mc2", "--images", "coco", "--questions", "q.json", "--out", "{out}"], "{out}"),
    "study": (["study", "--out", "{out}"], "{out}"),
    "demo": (["demo", "--out", "{out}"], "{out}"),
    "fit": (["fit", "--model", "amps_qwen", "--pretrained", "p", "--method", "mean", "--out", "{out}"], "{out}"),
    "mcs": (["mcs", "--model", "amps_qwen", "--pretrained", "p", "--out", "{out}"], "{out}"),
    "sweep": (["sweep", "--model", "amps_qwen", "--pretrained", "p", "--method", "amps", "--steering", "s",
               "--alphas", "1", "--out", "{out}"], "{out}"),
    "report --out": (["report", "runs", "--out", "{out}"], "{out}"),
    "report --figures": (["report", "runs", "--figures", "{out}"], "{out}"),
    "report --susceptibility": (["report", "runs", "--susceptibility", "{out}"], "{out}"),
    "leaderboard": (["leaderboard", "runs", "--out", "{out}"], "{out}"),
    "leaderboard (default)": (["leaderboard", "{out}"], "{out}"),
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_writing_command_locks_its_output(name, tmp_path):
    argv, expected = COMMANDS[name]
    out = tmp_path / "target"
    args = cli.build_parser().parse_args([a.format(out=out) for a in argv] + ["--wait-for-lock"])
    assert args.wait_for_lock is True
    assert Path(expected.format(out=out)).absolute() in command_outputs(args)


def test_a_report_to_stdout_locks_nothing():
    assert command_outputs(cli.build_parser().parse_args(["report", "runs"])) == []


def test_second_writer_stops_at_once_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "data"
    holder = _holder(out)
    try:
        started = time.perf_counter()
        code = cli.main(["synth-mc2", "--out", str(out), "--n-per-category", "1"])
        elapsed = time.perf_counter() - started
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and elapsed < 10
        assert len(err) == 1, err
        line = err[0]
        assert f"{out.absolute()} is being written by pid {holder.pid} on {socket.gethostname()}" in line
        assert f"`holder {out}`" in line and "--wait-for-lock" in line
        assert not out.exists()  # nothing written
    finally:
        _release(holder)
    assert cli.main(["synth-mc2", "--out", str(out), "--n-per-category", "1"]) == 0  # free again
    assert (out / "mc2_manifest.json").is_file()
    assert not owner_path(out).exists() and not lock_path(out).exists()  # released: nothing left behind


def test_wait_for_lock_waits_for_the_holder(tmp_path):
    out = tmp_path / "data"
    holder = _holder(out)
    waiter = subprocess.Popen([sys.executable, "-m", "amps_eval.cli", "synth-mc2", "--out", str(out),
                               "--n-per-category", "1", "--wait-for-lock"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        line = waiter.stderr.readline()
        assert f"waiting for pid {holder.pid}" in line and str(out.absolute()) in line
        assert waiter.poll() is None and not out.exists()  # still waiting, nothing written
    finally:
        _release(holder)
    stdout, stderr = waiter.communicate(timeout=120)
    assert waiter.returncode == 0, stderr
    assert (out / "mc2_manifest.json").is_file()


def test_a_killed_holder_leaves_a_stale_lock_that_is_taken_over(tmp_path, capsys):
    out = tmp_path / "steer.safetensors"
    holder = _holder(out)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    assert Owner.read(owner_path(out)).pid == holder.pid  # the killed run's record is left
    with output_lock(out, "second"):
        assert Owner.read(owner_path(out)).pid == os.getpid()
    err = capsys.readouterr().err
    assert f"a run that was killed, pid {holder.pid}" in err and "taken over" in err


def test_soft_lock_of_a_killed_run_is_broken_but_a_live_ones_is_not(tmp_path, monkeypatch, capsys):
    """On a file system without OS locks the lock is a file: a dead pid on this host makes it stale."""
    import amps_eval.output_lock as module

    real = module._new_lock
    monkeypatch.setattr(module, "_new_lock", lambda path, soft: real(path, True))
    out = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_path(out).write_text("")
    Owner(dead.pid, socket.gethostname(), "killed", time.time()).write(owner_path(out))
    with output_lock(out, "mine"):
        pass
    assert f"a killed run, pid {dead.pid}" in capsys.readouterr().err
    lock_path(out).write_text("")  # now a live process on this host holds it
    Owner(os.getpid(), socket.gethostname(), "alive", time.time()).write(owner_path(out))
    with pytest.raises(OutputLocked, match=f"pid {os.getpid()}"):
        with output_lock(out, "mine"):
            pass
    Owner(dead.pid, "another-host", "elsewhere", time.time()).write(owner_path(out))
    with pytest.raises(OutputLocked, match="another-host"):  # cannot be checked from here: not broken
        with output_lock(out, "mine"):
            pass


def test_a_lock_that_cannot_be_made_is_the_usual_cannot_write_and_the_cli_leaves_it_to_the_command(tmp_path, capsys):
    out = Path("/proc/amps-eval-test/x")  # /proc takes no new files, even for root
    with pytest.raises(OSError, match=r"cannot write the output /proc/amps-eval-test/x: "):
        with output_lock(out, "mine"):
            pass
    # through the CLI, the command's own check before any work names the output in its words
    assert cli.main(["synth-mc2", "--out", str(out / "data"), "--n-per-category", "1"]) == 2
    assert "cannot" in capsys.readouterr().err


def test_a_command_that_fails_leaves_no_folder_made_for_its_lock(tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "steer.safetensors"
    assert cli.main(["fit", "--model", "amps_qwen", "--pretrained", str(tmp_path / "no-such-model"), "--method",
                     "mean", "--out", str(out)]) == 2
    assert "no-such-model" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
