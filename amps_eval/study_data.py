"""Which MC2 data the study reads, and the MLPs' learning rate that follows its size.

The data, decided once before any compute (`choose_data`):

1. ``--data DIR``: that prepared folder;
2. ``--synthetic``: the generated MC2-format set, written into ``<out>/data`` (a smoke test, not MC2);
3. the shipped model organisms (no ``--pretrained``, or a folder ``amps-eval build-organism`` wrote):
   the generated set, because their preference is designed on it (the demo);
4. any other checkpoint: exactly what the tasks read (`amps_eval.mc2.source.resolve_source`):
   ``AMPS_MC2_DATA``, else the default folder that ``amps-eval prepare-mc2 --download`` fills; with
   neither, the study stops before loading anything, with that command in the message.

The learning rate (`study_lr`), when ``--lr`` is not given: ``5e-5 x 2000 / n`` for ``n`` items,
capped at ``1e-3``. On the real 2,000 MC2 items that is the L2S reference's 5e-5
(`TrainSettings.lr`); on ~100 items it is 1e-3, which the demo needs: a module fitted on ~100 items
takes ~1 Adam step per epoch instead of ~15, and at 5e-5 it barely moves in 100 epochs. Scaling the
rate by 1 / n keeps rate x steps near the reference's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from amps_eval.mc2.schema import CATEGORIES

__all__ = ["DataChoice", "REFERENCE_ITEMS", "SMALL_DATA_LR", "choose_data", "n_items", "study_lr"]

REFERENCE_ITEMS = 2000  # the real MC2 set, on which the reference rate applies
SMALL_DATA_LR = 1e-3  # the cap: the rate for ~100 items and fewer


@dataclass(frozen=True)
class DataChoice:
    """``folder``: the prepared folder to read; None: generate the synthetic set into ``<out>/data``.
    ``how``: one line saying what was chosen and why."""

    folder: Path | None
    how: str


def choose_data(data: Path | None, synthetic: bool, organisms: bool, environ: Mapping[str, str]) -> DataChoice:
    """The study's data (module docstring); raises `MC2SourceError` when a real checkpoint has none."""
    from amps_eval.mc2.source import ENV_VAR, MC2SourceError, local_source, resolve_source

    if data is not None and synthetic:
        raise ValueError("--data and --synthetic exclude each other: give the prepared folder or ask for the "
                         "generated set, not both")
    if data is not None:
        source = local_source(data, "--data")
        return DataChoice(Path(source.path), f"{source.description} (--data)")
    if synthetic:
        return DataChoice(None, "the generated MC2-format set (--synthetic): a smoke test, not the MC2 benchmark")
    if organisms:
        return DataChoice(None, "the generated MC2-format set, on which the model organisms' preference is designed "
                          "(--data DIR for a prepared folder)")
    try:
        source = resolve_source(environ)
    except MC2SourceError as error:
        raise MC2SourceError(f"{error}\nThe study stops here, before loading the checkpoint: on a real checkpoint it "
                             "measures real MC2. (--synthetic runs it on the generated set instead: a smoke test, "
                             "not MC2.)") from None
    how = f"{ENV_VAR} is set" if environ.get(ENV_VAR, "").strip() else f"the default folder; {ENV_VAR} is not set"
    return DataChoice(Path(source.path), f"{source.description} ({how}, as the tasks read it)")


def n_items(choice: DataChoice, n_per_category: int, limit: int | None) -> int:
    """How many items the fits see: the folder's (its manifest's count) or the generated set's, at most ``limit``."""
    if choice.folder is None:
        n = n_per_category * len(CATEGORIES)
    else:
        from amps_eval.mc2.schema import MANIFEST_NAME

        n = int(json.loads((choice.folder / MANIFEST_NAME).read_text()).get("n_items", REFERENCE_ITEMS))
    return n if limit is None else min(n, limit)


def study_lr(items: int) -> float:
    """The MLPs' Adam learning rate for ``items`` items: 5e-5 x 2000 / items, at most 1e-3 (module docstring)."""
    from amps_eval.steering.train_settings import TrainSettings

    if items < 1:
        raise ValueError(f"the study needs at least one item, got {items}")
    return min(SMALL_DATA_LR, TrainSettings.lr * REFERENCE_ITEMS / items)
