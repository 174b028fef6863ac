"""Is an image file whole? A strict check that does not depend on PIL's process-wide settings.

lmms-eval sets `PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True` for the whole process; PIL then pads a
truncated JPEG with grey and says nothing, so an item would be scored on half an image. The check
here detects truncation whatever that flag says. Used by `prepare-mc2` (local COCO files) and
`prepare-mc2 --download` (each fetched image before it is kept).
"""

from __future__ import annotations

import io
from pathlib import Path


class _ReadPastEnd(Exception):
    """PIL asked for image data beyond the end of the bytes: the image is truncated.

    Deliberately not an OSError / IndexError / struct.error / SyntaxError: PIL catches those in
    places and may carry on, and this must always abort the decode.
    """


class _BytesWithoutEnd(io.BytesIO):
    """In-memory image bytes that raise `_ReadPastEnd` when read at their end."""

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if not data and size != 0:
            raise _ReadPastEnd
        return data

    def read1(self, size: int | None = -1) -> bytes:
        data = super().read1(size)
        if not data and size != 0:
            raise _ReadPastEnd
        return data


def jpeg_problem(data: bytes) -> str | None:
    """None when `data` is a JPEG that PIL decodes to the last pixel, else a short reason.

    Truncation is detected whatever `PIL.ImageFile.LOAD_TRUNCATED_IMAGES` says (lmms-eval sets it
    True process-wide, and then PIL pads a truncated JPEG with grey and reports nothing). PIL only
    asks its file for more bytes when the decoder has not finished the image, so a complete JPEG
    is decoded without a read at the end (that is why PIL with the flag False accepts it) and a
    truncated one always reads at the end. `_BytesWithoutEnd` turns that read into an error.
    We do not set the flag False around the decode instead: it is one global read by every thread
    of the process, so it would race between our download threads (one thread restoring True
    while another decodes) and change behaviour for any other thread, and no lock here can stop
    other code from reading it. (Corrupt bytes inside a complete body are another matter: libjpeg
    mostly only warns about them, with either flag setting; the Content-Length check and TCP cover
    transfers.)
    """
    from PIL import Image

    if not data.startswith(b"\xff\xd8"):
        return f"not a JPEG (starts with {data[:12]!r})"
    try:
        with Image.open(_BytesWithoutEnd(data), formats=["JPEG"]) as img:
            img.load()
    except _ReadPastEnd:
        return f"truncated, the data ends at byte {len(data)} before the image does"
    except Exception as exc:  # anything PIL raises while decoding means the file is not usable
        return f"{type(exc).__name__}: {exc}"
    return None


def image_problem(path: Path | None) -> str | None:
    """None when ``path`` is a whole image, else a short reason ("missing", "truncated, ...", ...).

    JPEGs (all of COCO) get the strict `jpeg_problem` check; other formats are opened and decoded
    fully by PIL."""
    from PIL import Image

    if path is None or not path.is_file():
        return "missing"
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"unreadable ({type(exc).__name__}: {exc})"
    if data.startswith(b"\xff\xd8"):
        problem = jpeg_problem(data)
        return None if problem is None else f"unreadable ({problem})"
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except Exception as exc:  # anything PIL raises while decoding means the file is not usable
        return f"unreadable ({type(exc).__name__}: {exc})"
    return None
