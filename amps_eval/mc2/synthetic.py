"""A synthetic MC2-style dataset that needs no download: drawn images that really show the answer.

Why: the real MC2 benchmark needs the COCO 2014 images (tens of GB). The synthetic set lets every
task, test and steering experiment run anywhere. It mirrors MC2's design: each item has an image
that supports `answer_vision` and a short text context that asserts a *different* `answer_text`
(neither answer is a substring of the other, so answer parsing is unambiguous), in the eight MC2
categories, with the prepared schema of `schema.py`.

Each category maps to a simple, visually unambiguous drawing (PIL, no anti-aliasing, exact palette
colours, PNG-encoded so the pixels survive):

==========================  ================================================  =====================
category                    question                                          answers
==========================  ================================================  =====================
activity_recognition        What is the arrow doing?                          moving left/right/up/down
attribute                   What size is the <shape>?                         big, small
color                       What color is the <shape>?                        6 palette colours
counting                    How many <shape>s are in the picture?             one .. five
object_recognition          What shape is shown in the picture?               circle, square, ...
positional_reasoning        Where is the <c1> circle relative to the <c2> sq  left/right/above/below
sentiment_understanding     What emotion does the face show?                  happy/sad/surprised/neutral
sport_recognition           Which sport is this ball used for?                soccer/basketball/...
==========================  ================================================  =====================

Determinism and balance: item `index` has category `CATEGORIES[index % 8]` and is a pure function of
(seed, index, image_size), so a larger dataset extends a smaller one with the same seed. Within a
category, consecutive items cycle through every ordered (vision, text) answer pair, so answers are
balanced for any size (useful for training steering modules on thousands of items).
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from PIL import Image, ImageDraw

from amps_eval.mc2.schema import CATEGORIES

SYNTHETIC_VERSION = 1
"""Version of the generators; bump when a drawing or template changes (recorded in the manifest)."""

Color = tuple[int, int, int]

BACKGROUND: Color = (255, 255, 255)
BLACK: Color = (0, 0, 0)
GRAY: Color = (150, 150, 150)

PALETTE: dict[str, Color] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 205, 0),
    "purple": (140, 50, 180),
    "orange": (250, 130, 0),
}
"""Named, very distinct fill colours (none is close to white, black or gray)."""

FACE_COLOR: Color = (245, 205, 0)
BASKETBALL_COLOR: Color = (225, 110, 20)
TENNIS_COLOR: Color = (200, 230, 40)
STITCH_COLOR: Color = (200, 20, 30)

COUNT_WORDS: tuple[str, ...] = ("one", "two", "three", "four", "five")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
RELATIONS: dict[str, str] = {
    "left": "to the left of",
    "right": "to the right of",
    "above": "above",
    "below": "below",
}


@dataclass(frozen=True)
class DrawnItem:
    """What a category generator returns for one item."""

    question: str
    context: str
    image: Image.Image


@dataclass(frozen=True)
class CategorySpec:
    """A category's answer set and its generator `make(rng, vision, text, size) -> DrawnItem`."""

    name: str
    answers: tuple[str, ...]
    make: Callable[[random.Random, str, str, int], DrawnItem]


# --------------------------------------------------------------------------------------------
# Drawing helpers (all coordinates are fractions of the image size times `size`)
# --------------------------------------------------------------------------------------------


def _canvas(size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (size, size), BACKGROUND)
    return image, ImageDraw.Draw(image)


def _shape_points(shape: str, cx: float, cy: float, side: float) -> list[tuple[float, float]]:
    """Polygon of a triangle or star whose bounding box is about `side` wide, centred on (cx, cy)."""
    if shape == "triangle":
        h = side * math.sqrt(3) / 2
        return [(cx, cy - h / 2), (cx + side / 2, cy + h / 2), (cx - side / 2, cy + h / 2)]
    if shape == "star":
        outer, inner = side / 2, side / 4
        return [
            (
                cx + (outer if k % 2 == 0 else inner) * math.cos(math.radians(-90 + 36 * k)),
                cy + (outer if k % 2 == 0 else inner) * math.sin(math.radians(-90 + 36 * k)),
            )
            for k in range(10)
        ]
    raise ValueError(f"no polygon for shape {shape!r}")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, side: float, fill: Color) -> None:
    """A filled shape of about `side` x `side` pixels centred on (cx, cy)."""
    half = side / 2
    box = [cx - half, cy - half, cx + half, cy + half]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "cross":
        arm = side * 0.2  # arms 0.4 * side wide
        draw.rectangle([cx - half, cy - arm, cx + half, cy + arm], fill=fill)
        draw.rectangle([cx - arm, cy - half, cx + arm, cy + half], fill=fill)
    else:
        draw.polygon(_shape_points(shape, cx, cy, side), fill=fill)


def _jitter(rng: random.Random, size: int, amount: float) -> float:
    return rng.uniform(-amount, amount) * size


def _pick_color(rng: random.Random, exclude: tuple[str, ...] = ()) -> str:
    return rng.choice([name for name in PALETTE if name not in exclude])


def _plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("s", "x")) else "s")


# --------------------------------------------------------------------------------------------
# Category generators
# --------------------------------------------------------------------------------------------


def _make_activity(rng: random.Random, vision: str, text: str, size: int) -> DrawnItem:
    """An arrow pointing (and with motion lines behind it) in the direction it is moving."""
    image, draw = _canvas(size)
    direction = vision.split()[-1]
    cx, cy = size / 2 + _jitter(rng, size, 0.05), size / 2 + _jitter(rng, size, 0.05)
    length, shaft, head_w, head_l = 0.6 * size, 0.06 * size, 0.2 * size, 0.22 * size
    # Arrow pointing right in local coordinates (dx, dy), then rotated to `direction`.
    local = [
        (-length / 2, -shaft),
        (length / 2 - head_l, -shaft),
        (length / 2 - head_l, -head_w),
        (length / 2, 0.0),
        (length / 2 - head_l, head_w),
        (length / 2 - head_l, shaft),
        (-length / 2, shaft),
    ]
    rotate = {
        "right": lambda dx, dy: (dx, dy),
        "left": lambda dx, dy: (-dx, dy),
        "up": lambda dx, dy: (dy, -dx),
        "down": lambda dx, dy: (dy, dx),
    }[direction]
    color = _pick_color(rng)
    draw.polygon([(cx + x, cy + y) for x, y in (rotate(dx, dy) for dx, dy in local)], fill=PALETTE[color])
    for offset in (-0.12, 0.0, 0.12):  # motion lines trailing behind the tail
        (x0, y0), (x1, y1) = rotate(-length / 2 - 0.04 * size, offset * size), rotate(-length / 2 - 0.14 * size, offset * size)
        draw.line([(cx + x0, cy + y0), (cx + x1, cy + y1)], fill=GRAY, width=max(2, size // 60))
    context = rng.choice(
        [
            f"The arrow in the picture is {text}.",
            f"This picture shows a {color} arrow that is {text}. The motion lines make that clear.",
        ]
    )
    return DrawnItem("What is the arrow doing?", context, image)


def _make_attribute(rng: random.Random, vision: str, text: str, size: int) -> DrawnItem:
    """One shape that fills most of the image (big) or a small part of it (small)."""
    image, draw = _canvas(size)
    shape = rng.choice(("circle", "square"))
    side = (0.72 if vision == "big" else 0.14) * size
    room = (size - side) / 2 - 0.03 * size
    cx, cy = size / 2 + rng.uniform(-room, room), size / 2 + rng.uniform(-room, room)
    _draw_shape(draw, shape, cx, cy, side, PALETTE[_pick_color(rng)])
    context = rng.choice(
        [
            f"The {shape} in the picture is {text}.",
            f"A {text} {shape} is drawn on a white page. Its size is easy to judge.",
        ]
    )
    return DrawnItem(f"What size is the {shape}?", context, image)


def _make_color(rng: random.Random, vision: str, text: str, size: int) -> DrawnItem:
    """One large filled shape in the named palette colour."""
    image, draw = _canvas(size)
    shape = rng.choice(("circle", "square", "triangle"))
    cx, cy = size / 2 + _jitter(rng, size, 0.08), size / 2 + _jitter(rng, size, 0.08)
    _draw_shape(draw, shape, cx, cy, 0.6 * size, PALETTE[vision])
    context = rng.choice(
        [
            f"The {shape} in the picture is {text}.",
            f"The {shape} was painted {text}. Nothing else in the picture has a colour.",
        ]
    )
    return DrawnItem(f"What color is the {shape}?", context, image)


def _make_counting(rng: random.Random, vision: str, text: str, size: int) -> DrawnItem:
    """N separate shapes, one per cell of a 3x3 grid, so they never touch."""
    image, draw = _canvas(size)
    shape = rng.choice(("circle", "square"))
    count = COUNT_WORDS.index(vision) + 1
    cell = size / 3
    fill = PALETTE[_pick_color(rng)]
    for slot in rng.sample(range(9), count):
        row, col = divmod(slot, 3)
        cx = (col + 0.5) * cell + _jitter(rng, int(cell), 0.12)
        cy = (row + 0.5) * cell + _jitter(rng, int(cell), 0.12)
        _draw_shape(draw, shape, cx, cy, 0.5 * cell, fill)
    noun = shape if text == "one" else _plural(shape)
    verb = "is" if text == "one" else "are"
    context = rng.choice(
        [
            f"There {verb} {text} {noun} in the picture.",
            f"The picture shows exactly {text} {noun}. They are spread over a white page.",
        ]
    )
    return DrawnItem(f"How many {_plural(shape)} are in the picture?", context, image)


def _make_object(rng: random.Random, vision: str, text: str, size: int) -> DrawnItem:
    """One large shape of the named kind."""
    image, draw = _canvas(size)
    cx, cy = size / 2 + _jitter(rng, size, 0.08), size / 2 + _jitter(rng, size, 0.08)
    _draw_shape(draw, vision, cx, cy, 0.6 * size, PALETTE[_pick_color(rng)])
    context = rng.choice(
        [
            f"The picture shows a {text}.",
            f"A single {text} is drawn in the middle of the picture. It is the only shape there.",
        ]
    )
    return DrawnItem("What shape is shown in the picture?", context, image)


def _make_position(rng: random.Random, vision: str, text: str, size: int) -> DrawnItem:
    """A circle and a square far apart along one axis and nearly aligned along the other."""
    image, draw = _canvas(size)
    circle_color = _pick_color(rng)
    square_color = _pick_color(rng, exclude=(circle_color,))
    near, far = rng.uniform(0.22, 0.3) * size, rng.uniform(0.7, 0.78) * size
    along = size / 2 + _jitter(rng, size, 0.1)
    wobble = _jitter(rng, size, 0.04)
    first, second = (near, far) if vision in ("left", "above") else (far, near)
    if vision in ("left", "right"):
        circle_xy, square_xy = (first, along), (second, along + wobble)
    else:
        circle_xy, square_xy = (along, first), (along + wobble, second)
    _draw_shape(draw, "circle", *circle_xy, 0.24 * size, PALETTE[circle_color])
    _draw_shape(draw, "square", *square_xy, 0.24 * size, PALETTE[square_color])
    subject, other = f"{circle_color} circle", f"{square_color} square"
    context = rng.choice(
        [
            f"The {subject} is {RELATIONS[text]} the {other}.",
            f"In the picture, the {subject} sits {RELATIONS[text]} the {other}. The two shapes do not touch.",
        ]
    )
    return DrawnItem(f"Where is the {subject} relative to the {other}?", context, image)


def _make_sentiment(rng: random.Random, vision: str, text: str, size: int) -> DrawnItem:
    """A yellow face with black eyes; the mouth (smile, frown, open, flat) shows the emotion."""
    image, draw = _canvas(size)
    radius = rng.uniform(0.34, 0.4) * size
    cx, cy = size / 2 + _jitter(rng, size, 0.05), size / 2 + _jitter(rng, size, 0.05)
    draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=FACE_COLOR)
    eye = 0.1 * radius
    for ex in (cx - 0.35 * radius, cx + 0.35 * radius):
        draw.ellipse([ex - eye, cy - 0.3 * radius - eye, ex + eye, cy - 0.3 * radius + eye], fill=BLACK)
    width = max(3, int(0.08 * radius))
    half = 0.5 * radius
    if vision == "happy":
        draw.arc([cx - half, cy - 0.2 * radius, cx + half, cy + 0.55 * radius], 20, 160, fill=BLACK, width=width)
    elif vision == "sad":
        draw.arc([cx - half, cy + 0.3 * radius, cx + half, cy + 0.95 * radius], 200, 340, fill=BLACK, width=width)
    elif vision == "surprised":
        draw.ellipse([cx - 0.17 * radius, cy + 0.2 * radius, cx + 0.17 * radius, cy + 0.6 * radius], fill=BLACK)
    else:  # neutral
        draw.rectangle([cx - 0.4 * radius, cy + 0.4 * radius - width / 2, cx + 0.4 * radius, cy + 0.4 * radius + width / 2], fill=BLACK)
    context = rng.choice(
        [
            f"The face in the picture looks {text}.",
            f"This is a drawing of a {text} face. Its expression is easy to read.",
        ]
    )
    return DrawnItem("What emotion does the face show?", context, image)


def _ball_layer(vision: str, cx: float, cy: float, radius: float, size: int) -> Image.Image:
    """The ball's surface pattern, drawn over the whole canvas (masked to the ball by the caller)."""
    base = {"soccer": (255, 255, 255), "basketball": BASKETBALL_COLOR, "tennis": TENNIS_COLOR, "baseball": (255, 255, 255)}
    layer = Image.new("RGB", (size, size), base[vision])
    draw = ImageDraw.Draw(layer)
    line = max(2, int(0.05 * radius))
    if vision == "soccer":
        draw.polygon(_pentagon(cx, cy, 0.3 * radius, -90), fill=BLACK)
        for k in range(5):
            angle = math.radians(-90 + 72 * k)
            px, py = cx + 0.85 * radius * math.cos(angle), cy + 0.85 * radius * math.sin(angle)
            draw.polygon(_pentagon(px, py, 0.25 * radius, -90 + 72 * k), fill=BLACK)
            inner = _pentagon(cx, cy, 0.3 * radius, -90)[k]
            draw.line([inner, (px, py)], fill=BLACK, width=line)
    elif vision == "basketball":
        draw.line([(cx - radius, cy), (cx + radius, cy)], fill=BLACK, width=line)
        draw.line([(cx, cy - radius), (cx, cy + radius)], fill=BLACK, width=line)
        for sign in (-1, 1):
            ox = cx + sign * 1.35 * radius
            draw.ellipse([ox - radius, cy - radius, ox + radius, cy + radius], outline=BLACK, width=line)
    else:  # tennis (white seams) and baseball (red seams with stitches)
        seam = (255, 255, 255) if vision == "tennis" else STITCH_COLOR
        for sign in (-1, 1):
            ox = cx + sign * 1.3 * radius
            draw.ellipse([ox - radius, cy - radius, ox + radius, cy + radius], outline=seam, width=max(3, int(0.08 * radius)))
            if vision == "baseball":
                for step in range(-4, 5):
                    angle = math.radians(step * 12 + (0 if sign < 0 else 180))
                    sx, sy = ox + radius * math.cos(angle), cy + radius * math.sin(angle)
                    tx, ty = -math.sin(angle), math.cos(angle)
                    nx, ny = math.cos(angle), math.sin(angle)
                    draw.line(
                        [(sx - 0.1 * radius * nx + 0.04 * radius * tx, sy - 0.1 * radius * ny + 0.04 * radius * ty),
                         (sx + 0.1 * radius * nx - 0.04 * radius * tx, sy + 0.1 * radius * ny - 0.04 * radius * ty)],
                        fill=STITCH_COLOR,
                        width=max(1, line // 2),
                    )
    return layer


def _pentagon(cx: float, cy: float, radius: float, start_deg: float) -> list[tuple[float, float]]:
    return [
        (cx + radius * math.cos(math.radians(start_deg + 72 * k)), cy + radius * math.sin(math.radians(start_deg + 72 * k)))
        for k in range(5)
    ]


def _make_sport(rng: random.Random, vision: str, text: str, size: int) -> DrawnItem:
    """A ball whose colour and markings identify the sport."""
    image, draw = _canvas(size)
    radius = rng.uniform(0.32, 0.4) * size
    cx, cy = size / 2 + _jitter(rng, size, 0.05), size / 2 + _jitter(rng, size, 0.05)
    box = [cx - radius, cy - radius, cx + radius, cy + radius]
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    image.paste(_ball_layer(vision, cx, cy, radius, size), (0, 0), mask)
    draw.ellipse(box, outline=BLACK, width=max(2, int(0.03 * radius)))
    context = rng.choice(
        [
            f"The ball in the picture is used for {text}.",
            f"This is the kind of ball people use to play {text}. It is drawn on a white page.",
        ]
    )
    return DrawnItem("Which sport is this ball used for?", context, image)


SPECS: dict[str, CategorySpec] = {
    spec.name: spec
    for spec in (
        CategorySpec("activity_recognition", tuple(f"moving {d}" for d in DIRECTIONS), _make_activity),
        CategorySpec("attribute", ("big", "small"), _make_attribute),
        CategorySpec("color", tuple(PALETTE), _make_color),
        CategorySpec("counting", COUNT_WORDS, _make_counting),
        CategorySpec("object_recognition", SHAPES, _make_object),
        CategorySpec("positional_reasoning", tuple(RELATIONS), _make_position),
        CategorySpec("sentiment_understanding", ("happy", "sad", "surprised", "neutral"), _make_sentiment),
        CategorySpec("sport_recognition", ("soccer", "basketball", "tennis", "baseball"), _make_sport),
    )
}
assert tuple(SPECS) == CATEGORIES, "every MC2 category needs a synthetic generator, in order"


# --------------------------------------------------------------------------------------------
# Items and datasets
# --------------------------------------------------------------------------------------------


def answer_pair(category: str, k: int, seed: int = 0) -> tuple[str, str]:
    """(answer_vision, answer_text) of the k-th item of `category`.

    The answer order is shuffled once per (seed, category); item k takes vision answer k mod K and a
    text answer shifted by 1 + (k div K) mod (K-1), so every K*(K-1) consecutive items hold each
    ordered pair of different answers exactly once.
    """
    answers = list(SPECS[category].answers)
    random.Random(f"amps-mc2-synthetic:{seed}:{category}").shuffle(answers)
    n = len(answers)
    vision = k % n
    text = (vision + 1 + (k // n) % (n - 1)) % n
    return answers[vision], answers[text]


def encode_png(image: Image.Image) -> bytes:
    """Lossless, deterministic PNG bytes (exact colours survive, same image -> same bytes)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def synthetic_item(index: int, seed: int = 0, image_size: int = 224) -> dict[str, Any]:
    """Item `index` as a prepared-schema row (image as PNG bytes); a pure function of its arguments."""
    if index < 0:
        raise ValueError(f"synthetic item index must be >= 0, got {index}")
    category = CATEGORIES[index % len(CATEGORIES)]
    vision, text = answer_pair(category, index // len(CATEGORIES), seed)
    rng = random.Random(f"amps-mc2-synthetic:{seed}:{image_size}:{index}")
    drawn = SPECS[category].make(rng, vision, text, image_size)
    image_id = f"synthetic-{index:06d}"
    return {
        "mc2_id": index,
        "category": category,
        "image_id": image_id,
        "question": drawn.question,
        "context": drawn.context,
        "answer_vision": vision,
        "answer_text": text,
        "image": {"bytes": encode_png(drawn.image), "path": f"{image_id}.png"},
    }


def iter_synthetic_items(n_per_category: int = 16, seed: int = 0, image_size: int = 224) -> Iterator[dict[str, Any]]:
    """Items 0 .. 8*n_per_category-1: exactly `n_per_category` per category, interleaved."""
    if n_per_category < 1:
        raise ValueError(f"n_per_category must be >= 1, got {n_per_category}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 pixels for the drawings to be legible, got {image_size}")
    for index in range(n_per_category * len(CATEGORIES)):
        yield synthetic_item(index, seed, image_size)


def generate_synthetic_mc2(n_per_category: int = 16, seed: int = 0, image_size: int = 224):
    """The synthetic MC2 set as a `datasets.Dataset` in the prepared schema (in memory)."""
    import datasets

    from amps_eval.mc2.schema import PREPARED_COLUMNS, prepared_features

    rows = list(iter_synthetic_items(n_per_category, seed, image_size))
    columns = {name: [row[name] for row in rows] for name in PREPARED_COLUMNS}
    return datasets.Dataset.from_dict(columns, features=prepared_features(), split=datasets.Split.TEST)


def write_synthetic_mc2(out: Path, n_per_category: int = 16, seed: int = 0, image_size: int = 224, progress: bool = True):
    """Write the synthetic set in the prepare_mc2 folder format; returns a `PrepareReport`.

    Point `AMPS_MC2_DATA` at `out` to evaluate on it. The manifest records source "synthetic",
    the seed, n_per_category, image_size and the generator version, so a run is reproducible.
    """
    from amps_eval.mc2.prepare import PrepareReport, base_manifest, check_output_dir, datasets_progress, write_prepared_dir

    out = Path(out)
    check_output_dir(out)  # fail before spending time on generation
    dataset = generate_synthetic_mc2(n_per_category, seed, image_size)
    per_category = {name: n_per_category for name in CATEGORIES}
    manifest = base_manifest("synthetic", len(dataset), per_category, 0)
    manifest.update(
        {
            "seed": seed,
            "n_per_category": n_per_category,
            "n": len(dataset),
            "image_size": image_size,
            "synthetic_version": SYNTHETIC_VERSION,
        }
    )
    with datasets_progress(progress):
        write_prepared_dir(dataset, out, manifest)
    return PrepareReport(out=out, n_items=len(dataset), per_category=per_category, manifest=manifest)
