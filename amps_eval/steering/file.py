"""The steering file: what `amps-eval fit` writes and the steered wrappers read.

One safetensors file: the tensors (a mean vector or an MLP state dict per fold and direction, keys
prefixed ``fold{k}.vision.`` / ``fold{k}.text.``) plus one JSON string under the metadata key "amps_eval" with everything else. Loading
never unpickles (safetensors + json only), so a steering file from anywhere is safe to open.

Cross-fitting: with k folds, fold k's module is fitted on every item except its held-out set, and an
item is steered by the module that did not see it (:meth:`SteeringFile.fold_for`). A single fold
"all" fitted on everything is allowed (to steer new data); then an item from the fit set is steered
in-sample and :meth:`SteeringFile.fold_choice` says so, for the run to record.

Validation: an edited or damaged file is refused, never trusted. Every metadata field is checked
against one schema (:data:`SCHEMA`, :data:`FOLD_SCHEMA`, :data:`SETTINGS_SCHEMA`: type, range, what
it means), the fields against the fit settings the file records (layer, method, checkpoint, fold
count, MLP width, item count), the folds for a partition of the items (else items would be steered
in-sample without a word) and every tensor for its presence, shape and finiteness. A failure raises
:class:`SteeringFileError` naming the file and the field or tensor, in one line.

Compatibility: hidden size, layer count, architecture and method must match the run, else
:class:`SteeringFileMismatch`. The model id alone differing is only a warning: the same weights are
often named by a hub id at fit time and a local path at run time, and the structural checks already
catch a different model family or size.
"""

from __future__ import annotations

import json
import os
import shlex
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
from amps_eval.steering.file_schema import (
    FOLD_SCHEMA,
    FORMAT_VERSION,
    METHODS,
    SCHEMA,
    SETTINGS_SCHEMA,
    examples,
    non_finite,
    not_safetensors,
    schema_problem,
    show,
)
from amps_eval.steering.module import SteeringMLP
from amps_eval.vocabulary import TARGETS as DIRECTIONS

__all__ = [
    "FORMAT_VERSION", "METHODS", "Fold", "FoldChoice", "SteeringFile", "SteeringFileError", "SteeringFileMismatch",
    "SteeringFileWarning", "sha256", "current_versions",
]

META_KEY = "amps_eval"
_MLP_KEYS = ("encoder.weight", "encoder.bias", "decoder.weight")
# Every fold stores its tensors for both steering directions, prefixed "vision." and "text.": for
# mean and L2S the text entries are the negated vision ones; AMPS scales its targets per direction
# (Eq. 9 depends on which modality is steered away from), so its two modules differ.
FIX = "refit with `amps-eval fit` or restore the file"


def _direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    return direction


class SteeringFileError(ValueError):
    """A steering file that cannot be used: not a steering file, damaged, or edited inconsistently."""


class SteeringFileMismatch(SteeringFileError):
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
        problem = self._problem()
        if problem:
            raise self._error(problem)

    def _error(self, problem: str) -> SteeringFileError:
        if self.source:
            return SteeringFileError(f"{self.source}: {problem}; {FIX}")
        return SteeringFileError(f"steering file: {problem}")

    # ---- validation (see the module doc) ---------------------------------------------------------
    def _problem(self) -> str | None:
        """The first thing wrong with this file, in words naming the field or tensor; None if none."""
        fields = {name: spec for name, spec in SCHEMA.items() if name != "format"}  # format: a file's, not ours
        problem = schema_problem({name: getattr(self, name) for name in fields}, fields)
        if problem:
            return problem
        if not 0 <= self.layer < self.num_layers:
            return (f"metadata field 'layer' must be a decoder layer index in [0, {self.num_layers}) "
                    f"(num_layers={self.num_layers}), got {self.layer}")
        for k, fold in enumerate(self.folds):
            problem = self._fold_problem(k, fold)
            if problem:
                return problem
        if len({f.name for f in self.folds}) != len(self.folds):
            return f"metadata field 'folds' has repeated fold names {[f.name for f in self.folds]}; fold names must be unique"
        return self._settings_problem() or self._partition_problem()

    def _fold_problem(self, k: int, fold: Fold) -> str | None:
        if not isinstance(fold, Fold):
            return f"metadata field 'folds[{k}]' must be a Fold, got {show(fold)}"
        values = {"name": fold.name, "fit_ids": fold.fit_ids, "held_out_ids": fold.held_out_ids, "hidden": fold.hidden}
        problem = schema_problem(values, {k2: v for k2, v in FOLD_SCHEMA.items() if k2 != "tensors"}, f"folds[{k}].")
        if problem:
            return problem
        d = self.hidden_size
        if self.method == "mean":
            shapes = {"vector": (d,)}
        else:
            if fold.hidden is None:
                return f"metadata field 'folds[{k}].hidden' must be the MLP width of a {self.method!r} fold, got null"
            h = fold.hidden
            shapes = dict(zip(_MLP_KEYS, [(h, d), (h,), (d, h)]))
        expected = {f"{direction}.{name}": shape for direction in DIRECTIONS for name, shape in shapes.items()}
        if not isinstance(fold.tensors, dict):
            return f"fold {fold.name!r}: tensors must be a dict of name -> tensor, got {type(fold.tensors).__name__}"
        missing = sorted(set(expected) - set(fold.tensors))
        extra = sorted(set(fold.tensors) - set(expected))
        if missing or extra:
            which = f"tensor 'fold{k}.{missing[0]}' is missing" if missing else f"tensor 'fold{k}.{extra[0]}' is unexpected"
            return (f"{which} (fold {fold.name!r} of a {self.method!r} file: expected tensors {sorted(expected)}, "
                    f"found {sorted(fold.tensors)})")
        for name in sorted(expected):
            tensor = fold.tensors[name]
            key = f"fold{k}.{name}"
            if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
                kind = tensor.dtype if isinstance(tensor, Tensor) else type(tensor).__name__
                return f"tensor {key!r} must be a floating-point tensor, got {kind}"
            if tuple(tensor.shape) != expected[name]:
                return (f"tensor {key!r} has shape {tuple(tensor.shape)}; expected tensors of shape {expected[name]} "
                        f"(hidden size {d}" + ("" if self.method == "mean" else f", MLP width {fold.hidden}") + ")")
            if not torch.isfinite(tensor).all():
                return f"tensor {key!r} has non-finite values (NaN or inf)"
        return None

    def _fitted_ids(self) -> set[str]:
        return {i for f in self.folds for i in (*f.fit_ids, *f.held_out_ids)}

    def _settings_problem(self) -> str | None:
        """The recorded fit settings: well-typed, finite, and in agreement with the file's fields."""
        problem = schema_problem(self.settings, SETTINGS_SCHEMA, "settings.", required=False)
        if problem:
            return problem
        problem = non_finite(self.settings, "settings")
        if problem:
            return problem
        recorded = self.settings
        agree = [("layer", "layer", self.layer), ("method", "method", self.method),
                 ("model_id", "pretrained", self.model_id), ("folds", "folds", len(self.folds)),
                 ("folds", "n_items", len(self._fitted_ids()))]
        if self.method != "mean":
            agree += [(f"folds[{k}].hidden", "hidden", f.hidden) for k, f in enumerate(self.folds)]
        for name, key, value in agree:
            if key in recorded and recorded[key] != value:
                what = {"folds": "the number of folds", "n_items": "the number of items in the folds"}.get(key, "it")
                return (f"metadata field {name!r} disagrees with the recorded fit settings: {what} is {value!r}, "
                        f"but 'settings.{key}' is {show(recorded[key])}; the file was edited after the fit")
        return None

    def _partition_problem(self) -> str | None:
        """Cross-fitting needs folds that partition the items; a single fold with nothing held out
        (fitted on everything, steering in-sample, which `fold_choice` reports) is the one exception."""
        if len(self.folds) == 1 and not self.folds[0].held_out_ids:
            return None
        everything = self._fitted_ids()
        held_by: dict[str, str] = {}
        for k, fold in enumerate(self.folds):
            for key in ("fit_ids", "held_out_ids"):
                ids = getattr(fold, key)
                if len(set(ids)) != len(ids):
                    twice = {i for i in ids if ids.count(i) > 1}
                    return f"metadata field 'folds[{k}].{key}' lists item(s) {examples(twice)} more than once"
            held = set(fold.held_out_ids)
            if not held:
                return (f"metadata field 'folds[{k}].held_out_ids' is empty: with {len(self.folds)} folds each fold "
                        "must hold out its own items")
            inside = held & set(fold.fit_ids)
            if inside:
                return (f"metadata field 'folds[{k}].fit_ids' contains {len(inside)} of the fold's own held-out items "
                        f"({examples(inside)}): they would be steered in-sample")
            for item in fold.held_out_ids:
                if item in held_by:
                    return (f"metadata field 'folds[{k}].held_out_ids' holds out {item!r}, which fold "
                            f"{held_by[item]!r} holds out too: the held-out sets must be disjoint")
                held_by[item] = fold.name
        nowhere = everything - set(held_by)
        if nowhere:
            return (f"metadata field 'folds' does not partition the items: {len(nowhere)} item(s) ({examples(nowhere)}) "
                    "are held out by no fold, so every fold was fitted on them and they would be steered in-sample")
        for k, fold in enumerate(self.folds):
            lacking = everything - set(fold.held_out_ids) - set(fold.fit_ids)
            if lacking:
                return (f"metadata field 'folds[{k}].fit_ids' lacks {len(lacking)} item(s) ({examples(lacking)}) "
                        "it does not hold out: each fold is fitted on every item the other folds hold out")
        return None

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
            wrapper = self._wrapper_name(model_config, architecture)
            layer = f" --layer {self.layer}" if self.layer < text.num_hidden_layers else " --layer LAYER"
            command = (f"amps-eval fit --model {wrapper} --pretrained {shlex.quote(str(model_id))} --method {method}"
                       f"{layer} --out NEW.safetensors")
            raise SteeringFileMismatch(
                f"steering file{where} (fitted on {self.model_id}) does not fit this run:\n  - "
                + "\n  - ".join(problems)
                + f"\nFix: refit with `{command}` or pass the steering file fitted for this model and method."
            )
        if _model_name(model_id) != _model_name(self.model_id):
            warnings.warn(
                f"steering file was fitted on {self.model_id!r}, the run loads {model_id!r}; architecture, "
                "hidden size and layer count match, so it is used. Refit if these are different weights.",
                SteeringFileWarning,
                stacklevel=2,
            )

    def _wrapper_name(self, model_config, architecture: str | None) -> str:
        """The `--model` of `amps-eval fit` for the run's model: the one the file records when the run's
        architecture is the file's, else the model of the family accepting the config's model type."""
        from amps_eval.families import GENERIC, by_model_type, lmms_models

        recorded = self.settings.get("model")
        same_family = not architecture or not self.architecture or architecture == self.architecture
        if same_family and recorded in lmms_models():
            return recorded
        found = by_model_type(getattr(model_config, "model_type", None))
        return (found or GENERIC).lmms_model

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
        """Read and validate a steering file (safetensors + JSON, never a pickle).

        Raises SteeringFileError naming ``path`` and the field or tensor when the file is missing,
        is not a steering file, or fails the schema, the recorded settings, the fold partition or
        the tensor checks (see the module doc).
        """
        p = Path(path)
        if not p.exists():
            raise SteeringFileError(f"{path}: no such steering file; write it with `amps-eval fit ... --out {path}` "
                                    "or pass the path of an existing one")
        if not p.is_file():
            raise SteeringFileError(f"{path} is not an amps-eval steering file (a folder, not a file)")
        try:
            with safe_open(str(p), framework="pt") as handle:
                header = handle.metadata() or {}
            tensors = load_file(str(p))
        except Exception as error:  # noqa: BLE001 - safetensors' own error type, OSError, ...: all mean "unreadable"
            raise SteeringFileError(f"{path} is not an amps-eval steering file ({not_safetensors(p, error)})") from error

        def refuse(problem: str) -> SteeringFileError:
            return SteeringFileError(f"{path}: {problem}; {FIX}")

        raw = header.get(META_KEY)
        if raw is None:
            raise SteeringFileError(f"{path} is not an amps-eval steering file (a safetensors file without "
                                    f"{META_KEY!r} metadata, e.g. model weights)")
        try:
            meta = json.loads(raw)
        except json.JSONDecodeError as error:
            raise refuse(f"metadata field {META_KEY!r} is not valid JSON ({error.msg} at character {error.pos})") from None
        if not isinstance(meta, dict):
            raise refuse(f"metadata field {META_KEY!r} must be a JSON object, got {show(meta)}")
        # The format first: a file of another format version may differ in every other field.
        problem = schema_problem(meta, {"format": SCHEMA["format"]}) or schema_problem(meta, SCHEMA)
        if problem:
            raise refuse(problem)
        for k, entry in enumerate(meta["folds"]):
            if not isinstance(entry, dict):
                raise refuse(f"metadata field 'folds[{k}]' must be an object, got {show(entry)}")
            problem = schema_problem(entry, FOLD_SCHEMA, f"folds[{k}].")
            if problem:
                raise refuse(problem)
        listed = {f"fold{k}.{name}": k for k, entry in enumerate(meta["folds"]) for name in entry["tensors"]}
        for key, k in sorted(listed.items()):
            if key not in tensors:
                raise refuse(f"tensor {key!r} (listed in metadata field 'folds[{k}].tensors') is missing from the file")
        unlisted = sorted(set(tensors) - set(listed))
        if unlisted:
            raise refuse(f"tensor {unlisted[0]!r} is in the file but in no fold's metadata field 'folds[k].tensors'")
        folds = [
            Fold(name=entry["name"], fit_ids=entry["fit_ids"], held_out_ids=entry["held_out_ids"], hidden=entry["hidden"],
                 tensors={name: tensors[f"fold{k}.{name}"] for name in entry["tensors"]})
            for k, entry in enumerate(meta["folds"])
        ]
        fields = ("method", "layer", "hidden_size", "num_layers", "model_id", "architecture",
                  "settings", "anchors", "data_hash", "versions", "created")
        return cls(folds=folds, source=str(path), **{k: meta[k] for k in fields})
