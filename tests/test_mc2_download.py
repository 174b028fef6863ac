"""`amps-eval prepare-mc2 --download` against a local HTTP server that misbehaves on request.

The server (a `ThreadingHTTPServer` on 127.0.0.1, port 0) serves a small MC2-format question file
and small JPEGs laid out like images.cocodataset.org. `plan(path, ...)` makes the next requests to
a path misbehave (drop the connection, stall, send a short body, a truncated JPEG, a 500); `hits`
counts every request, so the tests can check what was retried and what a rerun fetches.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import socket
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from amps_eval.cli import main
from amps_eval.mc2 import download as dl
from amps_eval.mc2.schema import CATEGORIES
from amps_eval.mc2.source import load_mc2, resolve_source

SLOW_S = 1.0
"""How long a "slow" answer stalls; the tests that use it set a timeout well below."""

IMAGE_IDS = [f"{n:012d}" for n in (46962, 101, 2020, 30303, 404404, 5050, 606, 7777777)]
QUESTIONS_PATH = "/data/evaluate_final.json"


def _records() -> list[dict[str, str]]:
    """9 questions over the 8 categories and 8 images; the last question reuses the first image."""
    records = [
        {
            "image_id": image_id,
            "task": category,
            "question": f"What is in picture {n}?",
            "answer_vision": f"vision answer {n}",
            "answer_text": f"text answer {n}",
            "context": f"A short context that asserts text answer {n}.",
        }
        for n, (image_id, category) in enumerate(zip(IMAGE_IDS, CATEGORIES))
    ]
    return records + [dict(records[0], question="What else is in picture 0?")]


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _image_path(split: str, image_id: str) -> str:
    return f"/{split}/COCO_{split}_{image_id}.jpg"


class FakeCoco:
    """What the test server serves and how it has been asked."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.plans: dict[str, list[str]] = {}
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.base = ""
        self.records = _records()
        self.questions = json.dumps(self.records).encode()
        self.sha256 = hashlib.sha256(self.questions).hexdigest()
        self.images = {image_id: _jpeg(n) for n, image_id in enumerate(IMAGE_IDS)}

    def publish(self, val_only: tuple[str, ...] = (), missing: tuple[str, ...] = ()) -> None:
        """Serve the question file and the images (under train2014 unless val_only or missing)."""
        self.files[QUESTIONS_PATH] = self.questions
        for image_id, data in self.images.items():
            if image_id not in missing:
                split = "val2014" if image_id in val_only else "train2014"
                self.files[_image_path(split, image_id)] = data

    def plan(self, path: str, *behaviours: str) -> None:
        """The next requests to `path` do these: drop, slow, truncate, bad-jpeg, 500."""
        self.plans.setdefault(path, []).extend(behaviours)

    @property
    def questions_url(self) -> str:
        return self.base + QUESTIONS_PATH

    def settings(self, **overrides) -> dl.DownloadSettings:
        given = dict(questions_url=self.questions_url, questions_sha256=self.sha256, images_url=self.base,
                     workers=4, retries=2, timeout=0.5, backoff=0.01, progress=False)
        return dl.DownloadSettings(**{**given, **overrides})

    def cli_args(self, out: Path, *extra: str) -> list[str]:
        return ["prepare-mc2", "--download", "--questions-url", self.questions_url,
                "--questions-sha256", self.sha256, "--images-url", self.base, "--workers", "4",
                "--timeout", "2", "--retries", "1", "--out", str(out), *extra]


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        state: FakeCoco = self.server.state  # type: ignore[attr-defined]
        path = urllib.parse.urlsplit(self.path).path
        with state.lock:
            state.hits[path] += 1
            queue = state.plans.get(path)
            behaviour = queue.pop(0) if queue else None
        if behaviour == "drop":  # close the socket without an answer
            self.close_connection = True
            return
        if behaviour == "slow":
            time.sleep(SLOW_S)
        if behaviour == "500":
            self.send_error(500)
            return
        data = state.files.get(path)
        if data is None:
            self.send_error(404)
            return
        if behaviour == "bad-jpeg":  # a truncated JPEG, sent whole with the right Content-Length
            data = data[: len(data) // 2]
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg" if path.endswith(".jpg") else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if behaviour == "truncate":  # promise the whole body, send half, hang up
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        self.wfile.write(data)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # a client that timed out and left makes the late answer fail; that is expected


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No proxy between the client and 127.0.0.1; a private default data folder."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AMPS_MC2_DATA", raising=False)
    monkeypatch.setenv("AMPS_EVAL_HOME", str(tmp_path / "home"))


@pytest.fixture
def server():
    state = FakeCoco()
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _dead_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------


def test_addresses_names_and_backoff(tmp_path):
    assert dl.image_url("http://mirror.example/coco/", "val2014", 46962) == (
        "http://mirror.example/coco/val2014/COCO_val2014_000000046962.jpg"
    )
    assert dl.image_path(tmp_path, "train2014", "46962") == tmp_path / "train2014" / "COCO_train2014_000000046962.jpg"
    assert dl.default_cache_dir(tmp_path / "mc2") == tmp_path / "mc2.download"
    assert dl.questions_filename(dl.QUESTIONS_URL) == "evaluate_final.json"
    assert dl.questions_filename("http://host/") == "questions.json"
    assert dl.question_image_ids(_records()) == IMAGE_IDS
    settings = dl.DownloadSettings(backoff=0.5, max_backoff=3)
    assert [dl.backoff_delay(n, settings) for n in (1, 2, 3, 4, 5)] == [0.5, 1, 2, 3, 3]
    # The pinned question file: the full commit, and its hash.
    assert "/EchoDreamer/Modality-Preference/024631d6811b4eed2d9244150be2fda1b7cdb84c/data/evaluate_final.json" in dl.QUESTIONS_URL
    assert dl.DownloadSettings().questions_sha256 == "7fcb45ef6a49f215caf180af2217c422d1f23ab2424dd00d2a85fa452b2e1f6a"
    with pytest.raises(ValueError, match="64 hex digits"):
        dl.DownloadSettings(questions_sha256="abc")
    with pytest.raises(ValueError, match="http"):
        dl.DownloadSettings(images_url="file:///coco")


def test_decode_check_does_not_depend_on_the_truncated_images_flag(monkeypatch):
    good = _jpeg(0)
    truncated = good[: len(good) * 2 // 3]
    for flag in (False, True):
        monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", flag)
        assert dl.jpeg_problem(good) is None
        assert "truncated" in dl.jpeg_problem(truncated)
        assert "truncated" in dl.jpeg_problem(good[:-2])  # only the end-of-image marker missing
        assert ImageFile.LOAD_TRUNCATED_IMAGES is flag  # the check leaves the process-wide flag alone
    # With the flag on (as lmms-eval sets it), PIL itself accepts the truncated file without a word.
    with Image.open(io.BytesIO(truncated)) as img:
        img.load()
    assert "not a JPEG" in dl.jpeg_problem(b"<html>Service Unavailable</html>")


# --------------------------------------------------------------------------------------------
# One image at a time: addresses, retries, rejections
# --------------------------------------------------------------------------------------------


def test_image_only_under_val2014(server, tmp_path):
    image_id = IMAGE_IDS[1]
    server.publish(val_only=(image_id,))
    report = dl.download_images([image_id], tmp_path, server.settings())
    assert report.failures == [] and report.n_fetched == 1
    assert (tmp_path / "val2014" / f"COCO_val2014_{image_id}.jpg").read_bytes() == server.images[image_id]
    assert not (tmp_path / "train2014" / f"COCO_train2014_{image_id}.jpg").exists()
    # A 404 is not retried: one request to each address.
    assert server.hits[_image_path("train2014", image_id)] == 1
    assert server.hits[_image_path("val2014", image_id)] == 1


def test_truncated_body_is_retried(server, tmp_path):
    image_id, path = IMAGE_IDS[2], _image_path("train2014", IMAGE_IDS[2])
    server.publish()
    server.plan(path, "truncate")
    report = dl.download_images([image_id], tmp_path, server.settings())
    assert report.failures == []
    assert server.hits[path] == 2
    assert (tmp_path / "train2014" / f"COCO_train2014_{image_id}.jpg").read_bytes() == server.images[image_id]


def test_body_that_stays_truncated_is_rejected(server, tmp_path):
    image_id, path = IMAGE_IDS[2], _image_path("train2014", IMAGE_IDS[2])
    server.publish()
    server.plan(path, "truncate", "truncate", "truncate")
    report = dl.download_images([image_id], tmp_path, server.settings(retries=2))
    [failure] = report.failures
    assert failure.image_id == image_id and failure.kind == "truncated"
    assert "truncated body after 3 tries" in failure.reason
    assert server.hits[path] == 3 and server.hits[_image_path("val2014", image_id)] == 0
    assert _files(tmp_path) == []  # nothing kept, no temporary file left behind


def test_truncated_jpeg_with_a_correct_length_is_rejected(server, tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as lmms-eval sets it
    image_id, path = IMAGE_IDS[3], _image_path("train2014", IMAGE_IDS[3])
    server.publish()
    server.plan(path, "bad-jpeg", "bad-jpeg", "bad-jpeg")
    report = dl.download_images([image_id], tmp_path, server.settings(retries=2))
    [failure] = report.failures
    assert failure.kind == "undecodable" and "not a decodable JPEG after 3 tries" in failure.reason
    assert "truncated" in failure.reason
    assert server.hits[path] == 3  # fetched again from the network each time
    assert _files(tmp_path) == []


def test_undecodable_jpeg_is_fetched_again(server, tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    image_id, path = IMAGE_IDS[3], _image_path("train2014", IMAGE_IDS[3])
    server.publish()
    server.plan(path, "bad-jpeg")
    report = dl.download_images([image_id], tmp_path, server.settings())
    assert report.failures == [] and server.hits[path] == 2
    assert (tmp_path / "train2014" / f"COCO_train2014_{image_id}.jpg").read_bytes() == server.images[image_id]


def test_dropped_connection_is_retried(server, tmp_path):
    image_id, path = IMAGE_IDS[4], _image_path("train2014", IMAGE_IDS[4])
    server.publish()
    server.plan(path, "drop")
    report = dl.download_images([image_id], tmp_path, server.settings())
    assert report.failures == [] and server.hits[path] == 2
    assert (tmp_path / "train2014" / f"COCO_train2014_{image_id}.jpg").read_bytes() == server.images[image_id]


def test_slow_answer_is_retried_then_reported(server, tmp_path):
    first, second = IMAGE_IDS[5], IMAGE_IDS[6]
    server.publish()
    server.plan(_image_path("train2014", first), "slow")
    server.plan(_image_path("train2014", second), "slow", "slow")
    settings = server.settings(timeout=0.3, retries=1)
    started = time.monotonic()
    report = dl.download_images([first, second], tmp_path, settings)
    assert time.monotonic() - started < 3 * SLOW_S  # the client gave up on each stalled answer
    assert server.hits[_image_path("train2014", first)] == 2
    assert server.hits[_image_path("train2014", second)] == 2
    [failure] = report.failures
    assert failure.image_id == second and failure.kind == "timeout"
    assert "timed out after 2 tries" in failure.reason and "0.3 s" in failure.reason
    assert _files(tmp_path) == [f"train2014/COCO_train2014_{first}.jpg"]


# --------------------------------------------------------------------------------------------
# The whole download: resumption, the question file, unreachable servers
# --------------------------------------------------------------------------------------------


def test_rerun_fetches_only_what_is_missing(server, tmp_path):
    server.publish(val_only=(IMAGE_IDS[7],))
    failing = IMAGE_IDS[1], IMAGE_IDS[2]
    for image_id in failing:
        server.plan(_image_path("train2014", image_id), "500")
    cache = tmp_path / "cache"
    with pytest.raises(dl.ImagesNotFetchedError) as caught:
        dl.download_mc2(server.settings(retries=0), cache)
    assert [f.image_id for f in caught.value.failures] == list(failing)
    assert "2 of 8 COCO images could not be fetched" in str(caught.value)
    assert "server error after 1 try: HTTP 500" in str(caught.value) and "--skip-missing" in str(caught.value)
    # An interrupted write leaves only a temporary file, which does not count as the image.
    (cache / "train2014" / f".COCO_train2014_{failing[0]}.jpg.x.part").write_bytes(b"\xff\xd8partial")

    server.hits.clear()
    result = dl.download_mc2(server.settings(retries=0), cache)
    assert result.questions_cached and result.images.failures == []
    assert (result.images.n_cached, result.images.n_fetched) == (6, 2)
    assert server.hits == Counter({_image_path("train2014", image_id): 1 for image_id in failing})
    for image_id in IMAGE_IDS:
        assert dl.find_coco_image(cache, image_id) is not None

    server.hits.clear()
    dl.download_mc2(server.settings(), cache)
    assert sum(server.hits.values()) == 0  # everything is there: no request at all


def test_image_server_down_is_one_error(server, tmp_path):
    server.publish()
    dead = f"http://127.0.0.1:{_dead_port()}"
    with pytest.raises(dl.DownloadError) as caught:
        dl.download_mc2(server.settings(images_url=dead, retries=1), tmp_path / "cache")
    assert not isinstance(caught.value, dl.ImagesNotFetchedError)  # not one failure per image
    message = str(caught.value)
    assert f"cannot reach the COCO image server {dead}" in message and "after 2 tries" in message
    assert "\n" not in message


def test_wrong_question_hash_writes_nothing(server, tmp_path, capsys):
    server.publish()
    out, wrong = tmp_path / "mc2", "0" * 64
    args = server.cli_args(out)
    args[args.index("--questions-sha256") + 1] = wrong
    assert main(args) == 2
    err = capsys.readouterr().err
    assert server.sha256 in err and wrong in err and server.questions_url in err
    assert not out.exists()
    assert _files(tmp_path / "mc2.download") == []  # not even in the cache
    assert set(server.hits) == {QUESTIONS_PATH}  # no image was asked for


def test_server_down_is_a_one_line_error(tmp_path, capsys):
    url = f"http://127.0.0.1:{_dead_port()}/data/evaluate_final.json"
    out = tmp_path / "mc2"
    code = main(["prepare-mc2", "--download", "--questions-url", url, "--retries", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and "Traceback" not in err
    assert url in err and "connection failed after 2 tries" in err
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# The command line, end to end
# --------------------------------------------------------------------------------------------


def test_download_end_to_end(server, tmp_path, capsys):
    server.publish(val_only=(IMAGE_IDS[1], IMAGE_IDS[4]))
    out = tmp_path / "mc2"
    assert main(server.cli_args(out)) == 0
    printed = capsys.readouterr().out
    assert "wrote 9 MC2 items" in printed and f"export AMPS_MC2_DATA={out.resolve()}" in printed
    data = load_mc2(resolve_source(folder=out))
    assert len(data) == 9 and set(data["category"]) == set(CATEGORIES)
    for row in data:  # each question got the bytes of its own image
        assert row["image"].tobytes() == Image.open(io.BytesIO(server.images[row["image_id"]])).tobytes()
    cache = tmp_path / "mc2.download"
    assert (cache / "evaluate_final.json").read_bytes() == server.questions
    assert len(list(cache.glob("*/COCO_*.jpg"))) == 8


def test_missing_image_is_an_error_then_skip_missing_works(server, tmp_path, capsys):
    missing = IMAGE_IDS[3]
    server.publish(missing=(missing,))
    out = tmp_path / "mc2"
    assert main(server.cli_args(out)) == 2
    err = capsys.readouterr().err
    assert "1 of 8 COCO images could not be fetched" in err and missing in err
    assert "404 at both the train2014 and val2014 addresses" in err and "--skip-missing" in err
    assert not out.exists()

    server.hits.clear()
    assert main(server.cli_args(out, "--skip-missing")) == 0
    assert "wrote 8 MC2 items" in capsys.readouterr().out
    skipped = json.loads((out / "skipped.json").read_text())
    assert [(s["mc2_id"], s["image_id"]) for s in skipped] == [(3, missing)]
    assert len(load_mc2(resolve_source(folder=out))) == 8
    # The rerun asked only for the image it did not have.
    assert set(server.hits) == {_image_path("train2014", missing), _image_path("val2014", missing)}


def test_default_folder_needs_no_variable(server, tmp_path, capsys):
    server.publish()
    args = server.cli_args(tmp_path / "unused")
    del args[args.index("--out"):]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "without any environment variable" in printed and "export" not in printed
    home = tmp_path / "home"
    assert (home / "mc2.download" / "evaluate_final.json").is_file()
    assert len(load_mc2(resolve_source(environ={"AMPS_EVAL_HOME": str(home)}))) == 9


def test_download_and_images_are_exclusive(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["prepare-mc2", "--download", "--images", "coco"])
    assert caught.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["prepare-mc2"])
    assert "one of the arguments --download --images is required" in capsys.readouterr().err
