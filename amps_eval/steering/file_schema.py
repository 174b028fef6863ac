"""The steering file's metadata schema and the words for a file that is not one (pure).

`SCHEMA` (top-level fields), `FOLD_SCHEMA` (one entry of "folds") and `SETTINGS_SCHEMA` (the
recorded fit settings) say what each field must be, as a `Spec` each; `schema_problem` returns the
first field that is missing or fails, as a sentence naming it. `not_safetensors` explains why a
file cannot be read as safetensors (empty, a pickle, truncated, garbage) instead of the library's
"header too large". `amps_eval.steering.file` applies these when a file is loaded or built.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from amps_eval.methods.registry import FIT_METHODS

FORMAT_VERSION = 1
METHODS = FIT_METHODS  # the kinds of file `amps-eval fit` writes


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not the layer 1


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Spec:
    """What one metadata field must be: ``expected`` completes "must be ...", ``check`` tests the value,
    ``each`` (for objects and lists) every entry."""

    expected: str
    check: Callable[[Any], bool]
    each: "Spec | None" = None


POSITIVE = Spec("a positive integer", lambda v: is_int(v) and v > 0)
NAME = Spec("a non-empty string", lambda v: isinstance(v, str) and v != "")
TEXT = Spec("a string", lambda v: isinstance(v, str))
IDS = Spec("a list of item ids", lambda v: isinstance(v, (list, tuple)), each=Spec("an item id (a string)", lambda v: isinstance(v, str)))

# The top-level fields of the JSON metadata, as `save` writes them (and the dataclass fields of the
# same names, checked the same way when a SteeringFile is built in code).
SCHEMA: dict[str, Spec] = {
    "format": Spec(f"the format version {FORMAT_VERSION} (this amps_eval reads only that)",
                   lambda v: is_int(v) and v == FORMAT_VERSION),
    "method": Spec(f"one of {METHODS}", lambda v: isinstance(v, str) and v in METHODS),
    "layer": Spec("an integer (the decoder layer that is steered)", is_int),
    "hidden_size": POSITIVE,
    "num_layers": POSITIVE,
    "model_id": NAME,
    "architecture": TEXT,
    "settings": Spec("an object (the fit settings)", lambda v: isinstance(v, dict)),
    "anchors": Spec("an object of per-category anchors", lambda v: isinstance(v, dict),
                    each=Spec("a finite number", is_number)),
    "data_hash": TEXT,
    "versions": Spec("an object", lambda v: isinstance(v, dict)),
    "created": TEXT,
    "folds": Spec("a non-empty list of folds", lambda v: isinstance(v, (list, tuple)) and len(v) > 0),
}
# One entry of "folds" ("tensors" only in the file: in memory a Fold holds the tensors themselves).
FOLD_SCHEMA: dict[str, Spec] = {
    "name": NAME,
    "fit_ids": IDS,
    "held_out_ids": IDS,
    "hidden": Spec("null or a positive integer (the MLP width)", lambda v: v is None or (is_int(v) and v > 0)),
    "tensors": Spec("a list of tensor names", lambda v: isinstance(v, list), each=TEXT),
}
# The fit settings recorded under "settings" (all optional: files written in code may record fewer).
# Every number anywhere in them must also be finite.
SETTINGS_SCHEMA: dict[str, Spec] = {
    "model": NAME,
    "pretrained": NAME,
    "method": SCHEMA["method"],
    "layer": Spec("a non-negative integer", lambda v: is_int(v) and v >= 0),
    "folds": POSITIVE,
    "hidden": FOLD_SCHEMA["hidden"],
    "n_items": Spec("a non-negative integer", lambda v: is_int(v) and v >= 0),
    "beta": Spec("a finite number", is_number),
}


def show(value: Any) -> str:
    """A value as the JSON shows it, with its Python type: 'true (bool)', '"2" (str)'."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def spec_problem(name: str, value: Any, spec: Spec) -> str | None:
    if not spec.check(value):
        return f"metadata field {name!r} must be {spec.expected}, got {show(value)}"
    if spec.each is not None:
        entries = value.items() if isinstance(value, dict) else enumerate(value)
        for key, entry in entries:
            sub = f"{name}.{key}" if isinstance(value, dict) else f"{name}[{key}]"
            problem = spec_problem(sub, entry, spec.each)
            if problem:
                return problem
    return None


def schema_problem(values: dict, schema: dict[str, Spec], prefix: str = "", required: bool = True) -> str | None:
    """The first field of ``values`` that is missing (when ``required``) or fails its spec."""
    for key, spec in schema.items():
        if key not in values:
            if required:
                return f"metadata field {prefix + key!r} is missing"
            continue
        problem = spec_problem(prefix + key, values[key], spec)
        if problem:
            return problem
    return None


def non_finite(value: Any, name: str) -> str | None:
    """The first non-finite number (NaN, inf) inside ``value``, as a problem naming its field."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"metadata field {name!r} must be a finite number, got {show(value)}"
    entries = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, entry in entries:
        found = non_finite(entry, f"{name}.{key}" if isinstance(value, dict) else f"{name}[{key}]")
        if found:
            return found
    return None


def examples(ids) -> str:
    ids = sorted(ids)
    return ", ".join(repr(i) for i in ids[:3]) + (", ..." if len(ids) > 3 else "")


def not_safetensors(path: Path, error: Exception) -> str:
    """Why ``path`` cannot be read as safetensors, in words (not the library's 'header too large')."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError as os_error:
        return f"cannot be read: {os_error.strerror or os_error}"
    if size == 0:
        return "the file is empty"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive as torch.save writes, i.e. a pickle; steering files are safetensors and are never unpickled"
    header_length = int.from_bytes(head[:8], "little")
    if size >= 9 and head[8:9] == b"{":  # a safetensors header: 8 bytes of length, then JSON
        if 8 + header_length > size:
            return f"truncated: its header alone needs {8 + header_length} bytes, the file has {size}"
        try:
            with open(path, "rb") as handle:
                handle.seek(8)
                entries = json.loads(handle.read(header_length)).values()
            needed = 8 + header_length + max((e["data_offsets"][1] for e in entries if isinstance(e, dict)
                                              and "data_offsets" in e), default=0)
        except (OSError, ValueError, TypeError, KeyError, IndexError):
            needed = None
        if needed is not None and needed > size:
            return f"truncated: its header describes {needed} bytes, the file has {size}"
    elif head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a pickle; steering files are safetensors and are never unpickled"
    else:
        return "no safetensors header at its start: garbage or another format"
    detail = str(error).replace("Error while deserializing header: ", "")
    return f"truncated or corrupt safetensors data ({detail})"
