"""Bad inputs and faults a real `fit` / `mcs` / steered run meets: unwritable outputs (found before
any compute), a damaged extraction cache (recomputed, named), a full or read-only disk (a clear error,
no partial file, the previous outputs intact), a steering strength that overflows the model (an error
naming alpha, not a silent collapse), and runs killed with SIGKILL and rerun.

Everything runs on the tiny Qwen2.5-VL and the generated MC2 set, on 4 items (8 for the kill tests).
Tests run as root, for whom permissions do not block writes: an unwritable path is a path below a
regular file or in /proc, and a full / read-only disk is simulated by the write raising the OSError.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file, save_file

from amps_eval.steering.hooks import SteeringNonFinite
from bad_inputs import BadInput, CLIFailed, check, cli_exit, params

CTX: dict = {}  # the tiny model, the data and a shared folder, set by the fixture below
LAYER = "1"


@pytest.fixture(scope="module", autouse=True)
def _context(tiny_qwen_path, synthetic_mc2_dir, tmp_path_factory):
    CTX.update(qwen=str(tiny_qwen_path), data=str(synthetic_mc2_dir), root=tmp_path_factory.mktemp("bad_runs"))
    yield
    CTX.clear()


# ---- helpers ---------------------------------------------------------------------------------------
def model_args(limit: int = 4) -> list[str]:
    return ["--model", "amps_qwen", "--pretrained", CTX["qwen"], "--data", CTX["data"], "--device", "cpu",
            "--limit", str(limit), "--draws", "1", "--sigmas", "0.1"]


def fit_argv(out, *extra: str, method: str = "mean", limit: int = 4) -> list[str]:
    return ["fit", *model_args(limit), "--method", method, "--layer", LAYER, "--folds", "1", "--batch-size", "2",
            "--hidden", "8", "--epochs", "1", "--out", str(out), *extra]


def mcs_argv(out, *extra: str) -> list[str]:
    return ["mcs", *model_args(), "--batch-size", "4", "--out", str(out), *extra]


@contextlib.contextmanager
def no_model_load():
    """The command must fail before it loads any weights (i.e. before computing anything)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the output paths were checked")

    with mock.patch("amps_eval.encoding.load_encoder", refuse):
        yield


def fails_fast(argv: list[str]) -> None:
    with no_model_load():
        cli_exit(argv)


@contextlib.contextmanager
def logged(name: str = "amps_eval.item_cache"):
    """The messages logged by ``name`` inside the block."""
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler, logger = Keep(level=logging.WARNING), logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def tensors_of(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same_tensors(a: Path, b: Path, anchors_rel: float = 0.0) -> None:
    """The same steering: equal tensors and, from the MCS, equal anchors (within ``anchors_rel`` where
    an item's MCS was recomputed in a batch of another composition: rounding level, extract.py)."""
    from amps_eval.steering.file import SteeringFile

    ta, tb = tensors_of(a), tensors_of(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key
    assert SteeringFile.load(a).anchors == pytest.approx(SteeringFile.load(b).anchors, rel=anchors_rel, abs=0)


def reference() -> Path:
    """The steering file of one reference fit (mean, 4 items, batches of 2, one fold), made once; its
    extraction cache (two hidden-state shards, 4 MCS records) is CTX["cache"]."""
    if "reference" not in CTX:
        cache, out = CTX["root"] / "cache", CTX["root"] / "reference.safetensors"
        cli_exit(fit_argv(out, "--cache-dir", str(cache)))
        CTX.update(cache=cache, reference=out)
    return CTX["reference"]


def populated_cache(folder: Path) -> Path:
    """A copy, under ``folder``, of the reference fit's extraction cache."""
    reference()
    shutil.copytree(CTX["cache"], folder / "cache")
    return folder / "cache"


def shards(cache: Path) -> list[Path]:
    return sorted(cache.glob("hidden-*/shard-*.safetensors"))


def records_file(cache: Path) -> Path:
    (path,) = cache.glob("mcs-*/records.jsonl")
    return path


def refit(cache: Path, out: Path) -> tuple[list[str], list[str]]:
    """Fit again on ``cache``; returns (what extract logged, the summary lines printed)."""
    printed = []
    with logged() as messages, mock.patch("builtins.print", lambda *a, **k: printed.append(" ".join(map(str, a)))):
        cli_exit(fit_argv(out, "--cache-dir", str(cache)))
    return messages, printed


def partial_then(error: BaseException):
    """A stand-in for a write function (``save_file(tensors, path, ...)`` / ``_write_file(path, data)``)
    that writes a few bytes to its path, as a disk filling up does, then raises ``error``."""
    def write(first, second, *args, **kwargs):
        path = second if isinstance(first, dict) else first
        Path(path).write_bytes(b"partial")
        raise error

    return write


def enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ---- the rows' makers and commands -------------------------------------------------------------
def under_a_file(folder: Path, rel: str) -> Path:
    (folder / "file.txt").write_text("a regular file\n")
    return folder / "file.txt" / rel


def existing_folder(folder: Path, rel: str) -> Path:
    (folder / rel).mkdir(parents=True)
    (folder / rel / "keep.txt").write_text("kept\n")
    return folder / rel


def fit_damaged_shard(made) -> None:
    """A damaged shard is named, moved aside and recomputed: the fit equals the reference."""
    cache, shard, folder = made
    messages, printed = refit(cache, folder / "out.safetensors")
    assert any(str(shard) in m and "damaged" in m for m in messages), messages
    assert shard.with_name(shard.name + ".corrupt").exists() and not shard.exists()
    assert any("2 extracted, 2 from the cache" in line for line in printed), printed
    assert_same_tensors(folder / "out.safetensors", CTX["reference"])


def truncate_shard(folder: Path):
    cache = populated_cache(folder)
    shard = shards(cache)[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    return cache, shard, folder


def shard_bad_metadata(folder: Path):
    cache = populated_cache(folder)
    shard = shards(cache)[1]
    save_file(load_file(str(shard)), str(shard), metadata={"ids": "not json", "hashes": "[]"})
    return cache, shard, folder


def malformed_records(folder: Path):
    """Two records damaged: one not an object, one with a string where a number belongs."""
    cache = populated_cache(folder)
    path = records_file(cache)
    lines = path.read_text().splitlines()
    bad = json.loads(lines[1])
    bad["r_v"] = "oops"
    path.write_text("\n".join(["[1, 2]", json.dumps(bad), *lines[2:]]) + "\n")
    return cache, path, folder


def fit_malformed_records(made) -> None:
    cache, path, folder = made
    messages, printed = refit(cache, folder / "out.safetensors")
    assert any(str(path) in m and "2 line(s) (1, 2)" in m for m in messages), messages
    assert any("MCS computed for 2" in line for line in printed), printed
    assert_same_tensors(folder / "out.safetensors", CTX["reference"])


def torn_record(folder: Path):
    """An interrupted run's torn last line, and one item missing: the recomputed record must land
    on a line of its own (not glued to the torn one), so the next run computes nothing."""
    cache = populated_cache(folder)
    path = records_file(cache)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])  # no newline at the end
    return cache, path, folder


def fit_torn_record(made) -> None:
    cache, path, folder = made
    messages, printed = refit(cache, folder / "a.safetensors")
    assert any("MCS computed for 1" in line for line in printed), printed
    messages, printed = refit(cache, folder / "b.safetensors")
    assert any("MCS computed for 0" in line for line in printed), printed
    assert any("1 line(s)" in m for m in messages), messages  # only the torn line, never a new record
    assert_same_tensors(folder / "b.safetensors", CTX["reference"], anchors_rel=1e-4)  # 1 item rescored alone


def previous_mcs_outputs(folder: Path) -> dict[str, bytes]:
    old = {"m.jsonl": b'{"mc2_id": 0, "r_v": 0.5}\n', "m.jsonl.meta.json": b'{"model": "the previous run"}',
           "m.summary.json": b'{"model": "the previous run"}'}
    for name, data in old.items():
        (folder / name).write_bytes(data)
    return old


def mcs_write_fails(error: OSError):
    def run(folder: Path) -> None:
        old = previous_mcs_outputs(folder)
        try:
            with mock.patch("amps_eval.files._write_file", partial_then(error)):
                cli_exit(mcs_argv(folder / "m.jsonl"))
        finally:  # the previous three files are whole, whatever happened
            assert {name: (folder / name).read_bytes() for name in old} == old

    return run


def steer_alpha(alpha: str):
    def run(folder: Path) -> None:
        from amps_eval.runner import run_lmms_eval

        args = f"pretrained={CTX['qwen']},method=mean,steering={reference()},alpha={alpha},device=cpu"
        try:
            run_lmms_eval("amps_qwen", args, ["mc2_visual"], folder / "out", data=Path(CTX["data"]), limit=2,
                          batch_size=2)
        finally:
            assert not list((folder / "out").rglob("*_results.json")), "a failed run wrote results"

    return run


def settings_alpha(alpha: str):
    def run(folder: Path) -> None:
        from amps_eval.settings import QwenSettings

        QwenSettings.from_model_args(pretrained=CTX["qwen"], method="mean", steering=str(reference()), alpha=alpha)

    return run


def _with_patch(target: str, replacement, action) -> None:
    with mock.patch(target, replacement):
        action()


def _safetensors_enospc() -> BaseException:
    """What safetensors (Rust) raises when the disk fills up: not an OSError."""
    from safetensors import SafetensorError

    return SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def shard_write_fails(folder: Path) -> None:
    try:
        _with_patch("amps_eval.item_cache.save_file", partial_then(enospc()),
                    lambda: cli_exit(fit_argv(folder / "out.safetensors", "--cache-dir", str(folder / "c"))))
    finally:
        assert not list((folder / "c").rglob("shard-*")), "a partial shard or its temp file was left"


TABLE = [
    # -- outputs that cannot be written: refused before the model loads, naming the path and why
    BadInput("fit_out_below_a_file", lambda f: fit_argv(under_a_file(f, "out.safetensors")), fails_fast, CLIFailed,
             says=("file.txt/out.safetensors", "the steering file (--out)", "is a file, not a folder")),
    BadInput("fit_out_in_proc", lambda f: fit_argv("/proc/amps-eval-test/out.safetensors"), fails_fast, CLIFailed,
             says=("/proc/amps-eval-test/out.safetensors", "does not take new files")),
    BadInput("fit_out_is_a_folder", lambda f: fit_argv(existing_folder(f, "out.safetensors")), fails_fast, CLIFailed,
             says=("out.safetensors", "is an existing folder"), exists=("out.safetensors/keep.txt",)),
    BadInput("fit_cache_below_a_file",
             lambda f: fit_argv(f / "out.safetensors", "--cache-dir", str(under_a_file(f, "cache"))),
             fails_fast, CLIFailed, says=("file.txt/cache", "the extraction cache (--cache-dir)", "is a file, not a folder"),
             absent=("out.safetensors",)),
    BadInput("fit_cache_is_a_file",
             lambda f: fit_argv(f / "out.safetensors", "--cache-dir", str(under_a_file(f, "x").parent)),
             fails_fast, CLIFailed, says=("file.txt", "it is a file, not a folder"), absent=("out.safetensors",)),
    BadInput("mcs_out_below_a_file", lambda f: mcs_argv(under_a_file(f, "m.jsonl")), fails_fast, CLIFailed,
             says=("file.txt/m.jsonl", "the MCS rows (--out)", "is a file, not a folder")),
    BadInput("mcs_out_is_a_folder", lambda f: mcs_argv(existing_folder(f, "m.jsonl")), fails_fast, CLIFailed,
             says=("m.jsonl", "is an existing folder"), exists=("m.jsonl/keep.txt",)),
    BadInput("mcs_summary_path_is_a_folder", lambda f: mcs_argv(existing_folder(f, "m.summary.json").parent / "m.jsonl"),
             fails_fast, CLIFailed, says=("m.summary.json", "the MCS summary", "is an existing folder"),
             absent=("m.jsonl", "m.jsonl.meta.json")),
    # -- a damaged extraction cache: the entry is treated as missing, logged by name and recomputed
    BadInput("cache_shard_truncated", truncate_shard, fit_damaged_shard, None,
             why="the shard is moved aside as .corrupt, named in a warning, and its 2 items re-extracted; "
                 "the fit equals the reference bit for bit"),
    BadInput("cache_shard_bad_metadata", shard_bad_metadata, fit_damaged_shard, None,
             why="a readable shard whose ids metadata is not JSON is treated like a truncated one"),
    BadInput("cache_records_malformed", malformed_records, fit_malformed_records, None,
             why="records that are not objects or hold a string for r_v are skipped (logged with their line "
                 "numbers) and recomputed, instead of a raw TypeError"),
    BadInput("cache_records_torn_last_line", torn_record, fit_torn_record, None,
             why="a torn last line is closed before the next append, so the recomputed record is readable"),
    # -- a full or read-only disk: a clear error naming the file, no partial or temp file, nothing lost
    BadInput("fit_disk_full_at_save", lambda f: f,
             lambda f: _with_patch("amps_eval.steering.file.save_file", partial_then(enospc()),
                                   lambda: cli_exit(fit_argv(f / "out.safetensors", method="l2s"))),
             CLIFailed, says=("could not write the steering file", "out.safetensors", "No space left on device",
                              "the extraction cache", "is kept"),
             absent=("out.safetensors", "out.safetensors.tmp"), exists=("out.safetensors.cache",)),
    BadInput("fit_disk_full_at_save_safetensors_error", lambda f: f,
             lambda f: _with_patch("amps_eval.steering.file.save_file", partial_then(_safetensors_enospc()),
                                   lambda: cli_exit(fit_argv(f / "out.safetensors", method="l2s"))),
             CLIFailed, says=("could not write the steering file", "os error 28", "the disk is full"),
             absent=("out.safetensors", "out.safetensors.tmp")),
    BadInput("cache_disk_full_at_shard", lambda f: f, shard_write_fails, CLIFailed,
             says=("could not write the extraction cache shard", "shard-000000.safetensors", "No space left on device",
                   "a rerun resumes"),
             absent=("out.safetensors",)),
    BadInput("mcs_disk_full", lambda f: f, mcs_write_fails(enospc()), CLIFailed,
             says=("could not write the MCS summary", "m.summary.json", "No space left on device",
                   "the previous files are unchanged"),
             absent=("m.jsonl.tmp", "m.jsonl.meta.json.tmp", "m.summary.json.tmp")),
    BadInput("mcs_read_only_file_system", lambda f: f,
             mcs_write_fails(OSError(errno.EROFS, os.strerror(errno.EROFS))), CLIFailed,
             says=("m.summary.json", "Read-only file system", "write somewhere else"),
             absent=("m.jsonl.tmp", "m.jsonl.meta.json.tmp", "m.summary.json.tmp")),
    # -- steering strengths the model cannot take
    BadInput("steering_alpha_1e30", lambda f: f, steer_alpha("1e30"), SteeringNonFinite,
             says=("alpha=1e+30", "hidden state at layer 1 non-finite", "task mc2_visual doc", "method=mean",
                   "lower alpha")),
    BadInput("steering_alpha_nan_model_arg", lambda f: f, settings_alpha("nan"), ValueError, says=("alpha=",)),
    BadInput("steering_alpha_inf_model_arg", lambda f: f, settings_alpha("inf"), ValueError, says=("alpha=",)),
]


@pytest.mark.parametrize("row", params(TABLE))
def test_bad_input(row: BadInput, tmp_path: Path) -> None:
    check(row, tmp_path)


def test_table_rows_that_succeed_say_why() -> None:
    assert all(row.why for row in TABLE if row.raises is None)


# ---- killed with SIGKILL, then rerun ------------------------------------------------------------------
def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _kill_when(argv: list[str], ready, log: Path, timeout: float = 240.0) -> None:
    """Start ``python -m amps_eval.cli argv``, SIGKILL it as soon as ``ready()`` holds; the run must
    not have finished by then."""
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "amps_eval.cli", *argv], stdout=subprocess.DEVNULL,
                                stderr=err, env=_env())
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, f"the run ended before it could be killed:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the run never got to computing"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL, "the run had finished before the kill"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_mcs_killed_midway_leaves_the_previous_outputs_whole(tmp_path, tiny_llava_path):
    from amps_eval.mcs_run import run_mcs
    from amps_eval.mcs.score import MCSSettings

    out = tmp_path / "m.jsonl"
    names = ("m.jsonl", "m.jsonl.meta.json", "m.summary.json")
    settings = MCSSettings(sigmas=(0.1,), draws=1)
    run_mcs("amps_qwen", CTX["qwen"], out, data=CTX["data"], settings=settings, batch_size=4, device="cpu", limit=4,
            progress=False)
    before = {name: (tmp_path / name).read_bytes() for name in names}
    assert json.loads(before["m.jsonl.meta.json"])["rows_sha256"] == hashlib.sha256(before["m.jsonl"]).hexdigest()

    # another model's run over the same --out, killed once it is computing (its progress bar is up)
    log = tmp_path / "stderr.txt"
    argv = ["mcs", "--model", "amps_llava", "--pretrained", str(tiny_llava_path), "--data", CTX["data"], "--device",
            "cpu", "--limit", "8", "--batch-size", "1", "--draws", "1", "--sigmas", "0.1", "--out", str(out)]
    _kill_when(argv, lambda: b"MCS (none prompt)" in log.read_bytes(), log)
    assert {name: (tmp_path / name).read_bytes() for name in names} == before, "the killed run changed the outputs"
    # no temp file; the killed run's output lock stays until the next run takes it over (tests/test_output_lock.py)
    lock = [".m.jsonl.lock", ".m.jsonl.lock.owner"]
    left = sorted(p.name for p in tmp_path.iterdir() if p.name not in lock)
    assert left == sorted([*names, "stderr.txt"]), "left a temp file"

    # the rerun completes and labels its own rows
    records = run_mcs("amps_llava", str(tiny_llava_path), out, data=CTX["data"], settings=settings, batch_size=4,
                      device="cpu", limit=8, progress=False)
    meta = json.loads((tmp_path / "m.jsonl.meta.json").read_text())
    summary = json.loads((tmp_path / "m.summary.json").read_text())
    assert meta["model"] == summary["model"] == "amps_llava" and meta["n_items"] == len(records) == 8
    assert meta["rows_sha256"] == _digest(out) and len(out.read_text().splitlines()) == 8
    # (run_mcs from Python takes no lock: the killed command's stale lock is the CLI's to take over)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name not in lock) == sorted([*names, "stderr.txt"])


def test_fit_killed_midway_resumes_to_the_same_steering_file(tmp_path):
    """SIGKILL during the extraction, rerun: the file equals an uninterrupted fit's, tensor for tensor."""
    def argv(out: Path, cache: Path) -> list[str]:
        return ["fit", *model_args(limit=4), "--method", "amps", "--layer", LAYER, "--folds", "2", "--batch-size",
                "1", "--hidden", "8", "--epochs", "1", "--cache-dir", str(cache), "--out", str(out)]

    reference = tmp_path / "uninterrupted.safetensors"
    cli_exit(argv(reference, tmp_path / "cache-uninterrupted"))

    out, cache, log = tmp_path / "resumed.safetensors", tmp_path / "cache", tmp_path / "stderr.txt"
    _kill_when(argv(out, cache), lambda: bool(shards(cache)), log)
    assert not out.exists()
    records = list(cache.glob("mcs-*/records.jsonl"))
    n_records = len(records[0].read_text().splitlines()) if records else 0
    assert len(shards(cache)) < 4 or n_records < 4, "the kill came after the extraction"

    with mock.patch("builtins.print"):
        cli_exit(argv(out, cache))
    assert_same_tensors(out, reference)
    assert not list(tmp_path.rglob("*.tmp")), "a temp file was left behind"
