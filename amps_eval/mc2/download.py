"""Download what `prepare_mc2` needs: the MC2 question file and only the COCO 2014 images it uses.

`amps-eval prepare-mc2 --download` calls `download_mc2`, then joins the two with `prepare_mc2` as
for a local COCO copy. Everything fetched lands in a cache folder (by default `<out>.download/`
beside the output folder), laid out as a COCO 2014 root, so it can also be passed to `--images`::

    <out>.download/
      evaluate_final.json                       the question file, sha256-verified
      train2014/COCO_train2014_<12-digit id>.jpg
      val2014/COCO_val2014_<12-digit id>.jpg

Each file is written to a temporary name and renamed into place only once it is complete and
verified (the question file by its sha256, an image by a full decode), so a file in the cache is a
good file and a rerun after an interruption fetches only what is missing.

Images come from COCO's per-image addresses, `{BASE}/train2014/COCO_train2014_<id>.jpg` and, when
that is a 404, `{BASE}/val2014/COCO_val2014_<id>.jpg`; a mirror with the same layout can replace
BASE. Requests run in a thread pool and are retried with exponential back-off on connection
errors, timeouts, 5xx answers, truncated bodies and undecodable images; a 404 is not retried.

Only the standard library (urllib, concurrent.futures) plus PIL and tqdm are used.
"""

from __future__ import annotations

import hashlib
import http.client
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from amps_eval.files import replace_together
from amps_eval.mc2.images import jpeg_problem
from amps_eval.mc2.prepare import COCO_SPLITS, MAX_LISTED_IDS, find_coco_image, load_question_records
from amps_eval.mc2.schema import coco_image_id

QUESTIONS_COMMIT = "024631d6811b4eed2d9244150be2fda1b7cdb84c"
"""The commit of EchoDreamer/Modality-Preference whose data/evaluate_final.json is pinned."""

QUESTIONS_URL = (
    f"https://raw.githubusercontent.com/EchoDreamer/Modality-Preference/{QUESTIONS_COMMIT}/data/evaluate_final.json"
)
QUESTIONS_SHA256 = "7fcb45ef6a49f215caf180af2217c422d1f23ab2424dd00d2a85fa452b2e1f6a"
IMAGES_URL = "http://images.cocodataset.org"

CACHE_SUFFIX = ".download"
"""The default cache folder is the output folder's name plus this suffix, in the same parent."""


@dataclass(frozen=True)
class DownloadSettings:
    """Where to download from and how hard to try.

    retries: further attempts after the first (so 1 + retries requests at most per address).
    timeout: seconds to wait for the server on each connect and read.
    backoff: seconds before the first retry, doubled for each further one, at most max_backoff.
    """

    questions_url: str = QUESTIONS_URL
    questions_sha256: str = QUESTIONS_SHA256
    images_url: str = IMAGES_URL
    workers: int = 16
    retries: int = 4
    timeout: float = 30.0
    backoff: float = 1.0
    max_backoff: float = 30.0
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("questions_url", "images_url"):
            scheme = urllib.parse.urlsplit(getattr(self, name)).scheme
            if scheme not in ("http", "https"):
                raise ValueError(f"{name} must be an http:// or https:// address, got {getattr(self, name)!r}")
        digest = self.questions_sha256.strip().lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"questions_sha256 must be 64 hex digits, got {self.questions_sha256!r}")
        object.__setattr__(self, "questions_sha256", digest)
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.retries < 0:
            raise ValueError(f"retries must be 0 or more, got {self.retries}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be positive, got {self.timeout}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff and max_backoff must be 0 or more")


# --------------------------------------------------------------------------------------------
# Pure helpers: addresses, file names, back-off
# --------------------------------------------------------------------------------------------


def image_filename(split: str, image_id: str | int) -> str:
    """COCO's file name of `image_id` in `split`, e.g. COCO_val2014_000000046962.jpg."""
    return f"COCO_{split}_{coco_image_id(image_id)}.jpg"


def image_url(base: str, split: str, image_id: str | int) -> str:
    """COCO's per-image address: `{base}/{split}/COCO_{split}_<12-digit id>.jpg`."""
    return f"{base.rstrip('/')}/{split}/{image_filename(split, image_id)}"


def image_path(root: Path, split: str, image_id: str | int) -> Path:
    """Where the image goes in a COCO 2014 root (the layout `prepare_mc2` reads)."""
    return Path(root) / split / image_filename(split, image_id)


def default_cache_dir(out: Path) -> Path:
    """The cache folder for output folder `out`: `<out>.download` next to it."""
    out = Path(out).expanduser().absolute()
    return out.parent / f"{out.name}{CACHE_SUFFIX}"


def questions_filename(url: str) -> str:
    """The cache file name of the question file: the last part of the URL's path."""
    name = Path(urllib.parse.urlsplit(url).path).name
    return name if name and name not in (".", "..") else "questions.json"


def question_image_ids(records: Iterable[Mapping[str, str]]) -> list[str]:
    """The distinct 12-digit image ids of the question records, in order of first use."""
    return list(dict.fromkeys(coco_image_id(record["image_id"]) for record in records))


def backoff_delay(retry: int, settings: DownloadSettings) -> float:
    """Seconds to wait before retry number `retry` (1, 2, ...): backoff * 2**(retry-1), capped."""
    return min(settings.backoff * 2 ** (retry - 1), settings.max_backoff)


def _tries(n: int) -> str:
    return f"{n} {'try' if n == 1 else 'tries'}"


# --------------------------------------------------------------------------------------------
# Errors and reports
# --------------------------------------------------------------------------------------------


class DownloadError(RuntimeError):
    """Something could not be downloaded; the message is one line naming the address and why."""


class FetchError(DownloadError):
    """One address failed for good. kind: not_found, http, connection, timeout, truncated,
    server, or undecodable."""

    def __init__(self, url: str, reason: str, kind: str):
        super().__init__(f"{url}: {reason}")
        self.url, self.reason, self.kind = url, reason, kind


@dataclass(frozen=True)
class ImageFailure:
    """An image that could not be fetched, the last address tried and why."""

    image_id: str
    reason: str
    kind: str
    url: str


class ImagesNotFetchedError(DownloadError):
    """Some images could not be fetched; `failures` lists them."""

    def __init__(self, message: str, failures: Sequence[ImageFailure]):
        super().__init__(message)
        self.failures = list(failures)


@dataclass(frozen=True)
class ImagesReport:
    """What `download_images` did: how many images were already there, fetched, or failed."""

    root: Path
    n_images: int
    n_cached: int
    n_fetched: int
    failures: list[ImageFailure] = field(default_factory=list)


@dataclass(frozen=True)
class DownloadResult:
    """The files `prepare_mc2` reads: the question file and the COCO root of the images."""

    questions: Path
    questions_cached: bool
    images: ImagesReport


def failures_summary(failures: Sequence[ImageFailure], limit: int = MAX_LISTED_IDS) -> str:
    """'<id> (<reason>), ...' for the first `limit` failures, then how many more."""
    shown = ", ".join(f"{f.image_id} ({f.reason})" for f in failures[:limit])
    rest = len(failures) - limit
    return shown + (f", ... and {rest} more" if rest > 0 else "")


# --------------------------------------------------------------------------------------------
# Checking downloaded bytes
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------------


class _Retryable(Exception):
    """One attempt failed in a way another attempt may fix."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind, self.detail = kind, detail


_RETRY_LABELS = {
    "connection": "connection failed",
    "timeout": "timed out",
    "truncated": "truncated body",
    "server": "server error",
    "undecodable": "not a decodable JPEG",
}


def _get_once(url: str, timeout: float) -> bytes:
    """One GET of `url`: the whole body (as long as its Content-Length says), or `_Retryable` /
    `FetchError` (404 and other 4xx)."""
    from amps_eval import __version__

    request = urllib.request.Request(url, headers={"User-Agent": f"amps-eval/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read()
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code in (404, 410):
            raise FetchError(url, f"HTTP {exc.code} (not found)", "not_found") from None
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Retryable("server", f"HTTP {exc.code} {exc.reason}") from None
        raise FetchError(url, f"HTTP {exc.code} {exc.reason}", "http") from None
    except http.client.IncompleteRead as exc:
        got, missing = len(exc.partial), exc.expected  # bytes received, and still due by Content-Length
        raise _Retryable("truncated", f"{got} of {got + missing if isinstance(missing, int) else '?'} bytes") from None
    except TimeoutError:
        raise _Retryable("timeout", f"no answer within {timeout:g} s") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise _Retryable("timeout", f"no answer within {timeout:g} s") from None
        raise _Retryable("connection", getattr(exc.reason, "strerror", None) or str(exc.reason)) from None
    except (http.client.HTTPException, OSError) as exc:  # dropped or reset connections
        raise _Retryable("connection", f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
    # A body shorter than its Content-Length never gets here: http.client raises IncompleteRead.
    return data


def fetch(
    url: str,
    settings: DownloadSettings,
    check: Callable[[bytes], str | None] | None = None,
) -> bytes:
    """The body of `url`, retried with back-off; `check(data)` returning a reason also retries.

    Raises `FetchError`: kind not_found / http at once, else after 1 + settings.retries attempts.
    """
    attempts = settings.retries + 1
    last: _Retryable | None = None
    for attempt in range(attempts):
        if attempt:
            time.sleep(backoff_delay(attempt, settings))
        try:
            data = _get_once(url, settings.timeout)
        except _Retryable as exc:
            last = exc
            continue
        problem = check(data) if check is not None else None
        if problem is None:
            return data
        last = _Retryable("undecodable", problem)
    assert last is not None
    raise FetchError(url, f"{_RETRY_LABELS[last.kind]} after {_tries(attempts)}: {last.detail}", last.kind)


def _write_atomic(dest: Path, data: bytes, what: str) -> None:
    """Write `data` to `dest` through a temporary file in the same folder, renamed into place
    (`amps_eval.files.replace_together`: a full disk is an `OutputError` naming the file)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    replace_together([(dest, data, what)])


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download_questions(settings: DownloadSettings, cache: Path) -> tuple[Path, bool]:
    """(path, reused): the question file in `cache`, fetched unless a verified copy is there.

    Raises `DownloadError` if it cannot be fetched or its sha256 differs (then nothing is kept).
    """
    url, expected = settings.questions_url, settings.questions_sha256
    dest = Path(cache) / questions_filename(url)
    if dest.is_file() and _sha256(dest.read_bytes()) == expected:
        return dest, True
    try:
        data = fetch(url, settings)
    except FetchError as exc:
        raise DownloadError(f"cannot download the MC2 question file from {url}: {exc.reason}") from None
    actual = _sha256(data)
    if actual != expected:
        raise DownloadError(
            f"the MC2 question file from {url} has sha256 {actual}, expected {expected}; nothing was "
            f"written. Check --questions-url, or pass --questions-sha256 {actual} if you trust this file."
        )
    _write_atomic(dest, data, "the MC2 question file")
    return dest, False


def fetch_image(image_id: str, root: Path, settings: DownloadSettings) -> ImageFailure | None:
    """Fetch one COCO image into `root` (train2014 address first, val2014 on a 404).

    None when the image is now in `root`, else why not. A file is kept only once fully decoded.
    """
    not_found = []
    for split in COCO_SPLITS:
        url = image_url(settings.images_url, split, image_id)
        try:
            data = fetch(url, settings, check=jpeg_problem)
        except FetchError as exc:
            if exc.kind == "not_found":
                not_found.append(url)
                continue
            return ImageFailure(image_id, exc.reason, exc.kind, url)
        _write_atomic(image_path(root, split, image_id), data, "the COCO image")
        return None
    splits = " and ".join(COCO_SPLITS)
    return ImageFailure(image_id, f"404 at both the {splits} addresses", "not_found", not_found[-1])


def download_images(image_ids: Sequence[str], root: Path, settings: DownloadSettings) -> ImagesReport:
    """Fetch the images of `image_ids` missing from the COCO root `root`, `settings.workers` at once.

    The first missing image is fetched alone: if the server cannot be reached at all, that is one
    `DownloadError` naming the address rather than a failure per image after many retries.
    """
    from tqdm.auto import tqdm

    root = Path(root)
    for split in COCO_SPLITS:
        (root / split).mkdir(parents=True, exist_ok=True)
    ids = list(dict.fromkeys(coco_image_id(i) for i in image_ids))
    todo = [i for i in ids if find_coco_image(root, i) is None]
    failures: list[ImageFailure] = []
    with tqdm(total=len(todo), desc="Downloading COCO images", unit="img", disable=not settings.progress) as bar:
        if todo:
            first = fetch_image(todo[0], root, settings)
            if first is not None and first.kind == "connection":
                raise DownloadError(
                    f"cannot reach the COCO image server {settings.images_url} ({first.url}): {first.reason}. "
                    f"Check the network, or pass a mirror with --images-url."
                )
            failures += [first] if first is not None else []
            bar.update(1)
        pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="mc2-download")
        try:
            futures = [pool.submit(fetch_image, image_id, root, settings) for image_id in todo[1:]]
            for future in as_completed(futures):
                failure = future.result()
                if failure is not None:
                    failures.append(failure)
                    bar.set_postfix(failed=len(failures))
                bar.update(1)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    order = {image_id: n for n, image_id in enumerate(ids)}
    failures.sort(key=lambda f: order[f.image_id])
    return ImagesReport(root, len(ids), len(ids) - len(todo), len(todo) - len(failures), failures)


def download_mc2(
    settings: DownloadSettings,
    cache: Path,
    questions: Path | None = None,
    allow_missing: bool = False,
) -> DownloadResult:
    """Fetch into `cache` the question file (unless `questions` is given) and the images it uses.

    Raises `ImagesNotFetchedError` listing the images that could not be fetched, unless
    `allow_missing` (then `prepare_mc2(..., skip_missing=True)` leaves those questions out).
    """
    cache = Path(cache).expanduser().absolute()
    cache.mkdir(parents=True, exist_ok=True)
    if questions is None:
        questions, cached = download_questions(settings, cache)
    else:
        questions, cached = Path(questions), True
    records = load_question_records(questions)
    report = download_images(question_image_ids(records), cache, settings)
    if report.failures and not allow_missing:
        n = len(report.failures)
        raise ImagesNotFetchedError(
            f"{n} of {report.n_images} COCO images could not be fetched from {settings.images_url}: "
            f"{failures_summary(report.failures)}. Rerun to retry them (the {report.n_images - n} "
            f"others are kept in {cache}), pass a mirror with --images-url, or pass --skip-missing "
            f"to leave their questions out (listed in skipped.json).",
            report.failures,
        )
    return DownloadResult(questions, cached, report)
