"""Words and list syntax shared by the settings, the command line and the wrappers' model arguments.

Defined once here so that the commands, the model arguments and the settings classes cannot drift:

* ``TARGETS``: the two modalities a run is steered toward (a task document's ``target``);
* ``DTYPES``: the ``dtype`` choices of every command and wrapper;
* ``POSITIONS``: where a steering shift is added (``positions=``; `amps_eval.steering.hooks` applies it);
* ``PAPER_LAYER``: the decoder layer the AMPS paper steers (``amps-eval fit``'s default; the study
  defaults to each checkpoint's middle layer instead, see `amps_eval.study`);
* lists: ``/`` separates the items of a list everywhere (model arguments, where ``,`` already
  separates the arguments, and the command line); the command line also accepts ``,``, its older
  form and lmms-eval's (``--tasks a,b``). `split_list` reads both;
* `did_you_mean`: the "did you mean" hint of every unknown name (model, method, argument).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable

TARGETS = ("vision", "text")
DTYPES = ("auto", "float32", "bfloat16", "float16")
PAPER_LAYER = 14
POSITIONS = ("all", "generated", "from_last_prompt")  # where a steering shift is added (amps_eval.steering.hooks)
LIST_SEPARATORS = ("/", ",")

__all__ = ["DTYPES", "LIST_SEPARATORS", "PAPER_LAYER", "POSITIONS", "TARGETS", "closest", "did_you_mean", "join_list", "split_list",
           "split_numbers"]


def split_list(text: str) -> tuple[str, ...]:
    """``"a/b"`` or ``"a,b"`` (or a mix) -> ``("a", "b")``; blanks around items and empty items dropped."""
    return tuple(part.strip() for part in re.split("[/,]", str(text)) if part.strip())


def split_numbers(text: str, what: str, example: str = "0.05/0.1/0.2") -> tuple[float, ...]:
    """A list of finite numbers (`split_list`); a ValueError names ``what`` and shows ``example``."""
    try:
        values = tuple(float(part) for part in split_list(text))
    except ValueError:
        raise ValueError(f"{what} must be numbers separated by '/' (or ',' on the command line), "
                         f"e.g. {example}; got {text!r}") from None
    if any(not math.isfinite(v) for v in values):
        raise ValueError(f"{what} must be finite numbers, got {text!r}")
    return values


def join_list(values: Iterable, separator: str = "/") -> str:
    """The inverse of `split_list` (numbers written with ``:g``)."""
    return separator.join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``word`` (difflib), or None when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: str, candidates: Iterable[str], quote: str = "'") -> str:
    """``"; did you mean 'alpha'?"`` for the closest candidate, or ``""`` when none is close."""
    guess = closest(word, candidates)
    return f"; did you mean {quote}{guess}{quote}?" if guess else ""
