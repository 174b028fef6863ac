"""The steering file: what `amps-eval fit` writes and the steered wrappers read.

One safetensors file: the tensors (a mean vector or an MLP state dict per fold and direction, keys
prefixed ``fold{k}.vision.`` / ``fold{k}.text.``) plus one JSON string under the metadata key "amps_eval" with everything else. Loading
never unpickles (safetensors + json only), so a steering file from anywhere is safe to open.

Cross-fitting: with k folds, fold k's module is fitted on every item except its held-out set, and an
item is steered by the module that did not see it (:meth:`SteeringFile.fold_for`). A single fold
"all" fitted on everything is allowed (to steer new data); then an item from the fit set is steered
in-sample and :meth:`SteeringFile.fold_choice` says so, for the run to record.

Compatibility: hidden size, layer count, architecture and method must match the run, else
:class:`SteeringFileMismatch`. The model id alone differing is only a warning: the same weights are
often named by a hub id at fit time and a local path at run time, and the structural checks already
catch a different model family or size.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from amps_eval.files import sha256_file
from amps_eval.steering.module import SteeringMLP

__all__ = [
    "FORMAT_VERSION", "METHODS", "Fold", "FoldChoice", "SteeringFile", "SteeringFileMismatch",
    "SteeringFileWarning", "sha256", "current_versions",
]

FORMAT_VERSION = 1
METHODS = ("mean", "l2s", "amps")
META_KEY = "amps_eval"
_MLP_KEYS = ("encoder.weight", "encoder.bias", "decoder.weight")
# Every fold stores its tensors for both steering directions, prefixed "vision." and "text.": for
# mean and L2S the text entries are the negated vision ones; AMPS scales its targets per direction
# (Eq. 9 depends on which modality is steered away from), so its two modules differ.
DIRECTIONS = ("vision", "text")


def _direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    return direction


class SteeringFileMismatch(ValueError):
    """The steering file was fitted for another model or method than the run uses."""


class SteeringFileWarning(UserWarning):
    """Something differs that may be harmless (e.g. the model id, with matching structure)."""


def sha256(path: str | os.PathLike) -> str:
    """Content hash of a file: identifies the steering in run ids and lmms-eval's cache key."""
    return sha256_file(path)


def current_versions() -> dict[str, str]:
    import amps_eval

    def version(name: str) -> str:
        try:
            return importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            return "unknown"

    return {"torch": torch.__version__, "transformers": version("transformers"), "amps_eval": amps_eval.__version__}


@dataclass
class Fold:
    """One fitted vector or module: ``fit_ids`` it was fitted on, ``held_out_ids`` it serves."""

    name: str
    fit_ids: list[str]
    held_out_ids: list[str]
    tensors: dict[str, Tensor]
    hidden: int | None = None


@dataclass(frozen=True)
class FoldChoice:
    index: int
    in_sample: bool  # True: every fold was fitted on the item (single "all" fold); record it


def _model_name(model_id: str) -> str:
    """Comparable name: 'Qwen/X', '/models/X/' and '.../models--Qwen--X/snapshots/abc' all give 'x'."""
    parts = [p for p in str(model_id).replace("\\", "/").split("/") if p]
    for part in parts:
        if part.startswith("models--"):
            return part.split("--")[-1].lower()
    return parts[-1].lower() if parts else ""


@dataclass
class SteeringFile:
    method: str
    layer: int
    hidden_size: int
    num_layers: int
    model_id: str
    architecture: str
    folds: list[Fold]
    settings: dict = field(default_factory=dict)
    anchors: dict[str, float] = field(default_factory=dict)
    data_hash: str = ""
    versions: dict[str, str] = field(default_factory=current_versions)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    source: str | None = field(default=None, compare=False)  # the path it was loaded from
    _id_sets: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not 0 <= self.layer < self.num_layers:
            raise ValueError(f"layer {self.layer} out of range 0..{self.num_layers - 1}")
        if not self.folds:
            raise ValueError("a steering file needs at least one fold")
        if len({f.name for f in self.folds}) != len(self.folds):
            raise ValueError("fold names must be unique")
        for fold in self.folds:
            self._check_fold(fold)
        for key, value in self.anchors.items():
            if not math.isfinite(float(value)):
                raise ValueError(f"anchor {key!r} is not finite: {value!r}")

    def _check_fold(self, fold: Fold) -> None:
        d = self.hidden_size
        if self.method == "mean":
            shapes = {"vector": (d,)}
        else:
            if not isinstance(fold.hidden, int) or fold.hidden < 1:
                raise ValueError(f"fold {fold.name!r}: an MLP fold needs its hidden width")
            h = fold.hidden
            shapes = dict(zip(_MLP_KEYS, [(h, d), (h,), (d, h)]))
        expected = {f"{direction}.{name}": shape for direction in DIRECTIONS for name, shape in shapes.items()}
        found = {k: tuple(t.shape) for k, t in fold.tensors.items()}
        if found != expected:
            raise ValueError(f"fold {fold.name!r} of a {self.method!r} file: expected tensors {expected}, found {found}")
        for name, tensor in fold.tensors.items():
            if not torch.isfinite(tensor).all():
                raise ValueError(f"fold {fold.name!r}: tensor {name!r} has non-finite values; refit")

    # ---- using the folds -------------------------------------------------------------------
    def fold_choice(self, item_id: str) -> FoldChoice:
        """The fold to steer ``item_id`` with: one whose fit set does not contain it.

        Preference: the fold that holds it out; else (an item outside all fitting data) the first
        fold that did not see it; else (single "all" fold) fold 0, marked in-sample.
        """
        if len(self._id_sets) != len(self.folds):  # folds are fixed once built; index them once
            self._id_sets.update({i: (frozenset(f.fit_ids), frozenset(f.held_out_ids))
                                  for i, f in enumerate(self.folds)})
        unseen = [i for i in range(len(self.folds)) if item_id not in self._id_sets[i][0]]
        for i in unseen:
            if item_id in self._id_sets[i][1]:
                return FoldChoice(i, in_sample=False)
        if unseen:
            return FoldChoice(unseen[0], in_sample=False)
        return FoldChoice(0, in_sample=True)

    def fold_for(self, item_id: str) -> int:
        return self.fold_choice(item_id).index

    def vector(self, fold: int, direction: str = "vision") -> Tensor:
        """The steering vector of a fold toward ``direction`` ("vision" or "text")."""
        if self.method != "mean":
            raise ValueError(f"a {self.method!r} file has modules, not vectors")
        return self.folds[fold].tensors[f"{_direction(direction)}.vector"]

    def module(self, fold: int, direction: str = "vision") -> SteeringMLP:
        """The fitted MLP of a fold that predicts the shift toward ``direction``."""
        if self.method == "mean":
            raise ValueError("a 'mean' file has vectors, not modules")
        f = self.folds[fold]
        prefix = f"{_direction(direction)}."
        mlp = SteeringMLP(self.hidden_size, f.hidden)
        mlp.load_state_dict({k[len(prefix):]: t for k, t in f.tensors.items() if k.startswith(prefix)})
        return mlp.eval()

    # ---- compatibility ---------------------------------------------------------------------
    def check_compatible(self, model_config, model_id: str, method: str, architecture: str | None = None) -> None:
        """Raise SteeringFileMismatch unless this file fits ``model_config`` and ``method``.

        ``architecture`` defaults to ``model_config.architectures[0]``; when neither is known (a
        config built in code) the architecture is not compared, the sizes still are.
        """
        text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
        archs = getattr(model_config, "architectures", None) or [None]
        architecture = architecture or archs[0]
        problems = []
        if method != self.method:
            problems.append(f"method: the run uses {method!r}, the file was fitted for {self.method!r}")
        if text.hidden_size != self.hidden_size:
            problems.append(f"hidden size: the model has {text.hidden_size}, the file {self.hidden_size}")
        if text.num_hidden_layers != self.num_layers:
            problems.append(f"decoder layers: the model has {text.num_hidden_layers}, the file {self.num_layers}")
        if architecture and self.architecture and architecture != self.architecture:
            problems.append(f"architecture: the model is {architecture}, the file was fitted on {self.architecture}")
        if problems:
            where = f" {self.source}" if self.source else ""
            raise SteeringFileMismatch(
                f"steering file{where} (fitted on {self.model_id}) does not fit this run:\n  - "
                + "\n  - ".join(problems)
                + f"\nFix: refit with `amps-eval fit --model {model_id} --method {method} --layer {self.layer} ...`"
                " or pass the steering file fitted for this model and method."
            )
        if _model_name(model_id) != _model_name(self.model_id):
            warnings.warn(
                f"steering file was fitted on {self.model_id!r}, the run loads {model_id!r}; architecture, "
                "hidden size and layer count match, so it is used. Refit if these are different weights.",
                SteeringFileWarning,
                stacklevel=2,
            )

    # ---- storage ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> str:
        """Write atomically (temp file + rename); returns the file's sha256."""
        tensors = {f"fold{k}.{name}": t.detach().cpu().contiguous().clone()
                   for k, f in enumerate(self.folds) for name, t in f.tensors.items()}
        meta = {
            "format": FORMAT_VERSION, "method": self.method, "layer": self.layer,
            "hidden_size": self.hidden_size, "num_layers": self.num_layers, "model_id": self.model_id,
            "architecture": self.architecture, "settings": self.settings, "anchors": self.anchors,
            "data_hash": self.data_hash, "versions": self.versions, "created": self.created,
            "folds": [{"name": f.name, "fit_ids": list(f.fit_ids), "held_out_ids": list(f.held_out_ids),
                       "hidden": f.hidden, "tensors": sorted(f.tensors)} for f in self.folds],
        }
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta, sort_keys=True)})
        os.replace(tmp, path)
        return sha256(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SteeringFile":
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(META_KEY)
        if raw is None:
            raise ValueError(f"{path} is a safetensors file but not an amps-eval steering file (no {META_KEY!r} metadata)")
        meta = json.loads(raw)
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: steering file format {meta.get('format')!r}, this amps_eval reads {FORMAT_VERSION}")
        tensors = load_file(str(path))
        folds = [
            Fold(name=f["name"], fit_ids=f["fit_ids"], held_out_ids=f["held_out_ids"], hidden=f["hidden"],
                 tensors={name: tensors[f"fold{k}.{name}"] for name in f["tensors"]})
            for k, f in enumerate(meta["folds"])
        ]
        fields = ("method", "layer", "hidden_size", "num_layers", "model_id", "architecture",
                  "settings", "anchors", "data_hash", "versions", "created")
        return cls(folds=folds, source=str(path), **{k: meta[k] for k in fields})
