"""Bad steering files: damaged, not a steering file, or edited after the fit.

Every row builds a valid steering file the way `amps-eval fit` writes it (two cross-fitted folds
over ten items, the fit settings recorded), breaks one thing (the bytes, a metadata field through
safetensors' own metadata API, a tensor) and checks that loading refuses it with one line naming
the file and the field or tensor, not a raw safetensors / JSON / KeyError. The last rows go through
the wrapper's settings with a `pretrained` that does not exist: the steering file must be refused
before any weights are read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from amps_eval.steering.file import Fold, SteeringFile, SteeringFileError, SteeringFileMismatch
from amps_eval.steering.module import SteeringMLP, TrainSettings

from bad_inputs import BadInput, check, params

D, LAYERS, LAYER, WIDTH = 32, 3, 1, 8
NAME = "steer.safetensors"
MODEL_ID = "/models/Tiny-VL"
QWEN_ARCH = "Qwen2_5_VLForConditionalGeneration"


# ---- a valid file, and ways to break it ----------------------------------------------------------
def build(method: str = "amps", model: str = "amps_qwen", architecture: str = QWEN_ARCH, hidden_size: int = D,
          folds: int = 2) -> SteeringFile:
    torch.manual_seed(0)
    ids = [f"mc2_{i}" for i in range(10)]
    out = []
    for k in range(folds):
        held = ids[k::folds] if folds > 1 else []
        if method == "mean":
            vector = torch.randn(hidden_size)
            tensors = {"vision.vector": vector, "text.vector": -vector}
        else:
            tensors = {f"{d}.{name}": t.clone() for d in ("vision", "text")
                       for name, t in SteeringMLP(hidden_size, WIDTH).state_dict().items()}
        name = f"fold{k}" if folds > 1 else "all"
        out.append(Fold(name, [i for i in ids if i not in held], held, tensors, None if method == "mean" else WIDTH))
    settings = {"model": model, "pretrained": MODEL_ID, "method": method, "layer": LAYER, "folds": folds,
                "hidden": WIDTH, "train": TrainSettings().to_dict(), "beta": 1.0, "convention": "prose",
                "n_items": len(ids), "seed": 0}
    return SteeringFile(method=method, layer=LAYER, hidden_size=hidden_size, num_layers=LAYERS, model_id=MODEL_ID,
                        architecture=architecture, folds=out, settings=settings,
                        anchors={"__all__": 0.5, "color": 0.41}, data_hash="abc")


def valid(folder: Path, **kwargs) -> Path:
    path = folder / NAME
    build(**kwargs).save(path)
    return path


def read(path: Path) -> tuple[dict, str]:
    with safe_open(str(path), framework="pt") as handle:
        raw = handle.metadata()["amps_eval"]
    return load_file(str(path)), raw


def edit_meta(change, method: str = "amps"):
    """make(): a valid file whose JSON metadata ``change(meta)`` edits in place."""
    def make(folder: Path) -> Path:
        path = valid(folder, method=method)
        tensors, raw = read(path)
        meta = json.loads(raw)
        change(meta)
        save_file(tensors, str(path), metadata={"amps_eval": json.dumps(meta)})
        return path
    return make


def raw_meta(text: str):
    """make(): a valid file whose metadata string is replaced by ``text``."""
    def make(folder: Path) -> Path:
        path = valid(folder)
        tensors, _ = read(path)
        save_file(tensors, str(path), metadata={"amps_eval": text})
        return path
    return make


def edit_tensors(change, method: str = "mean"):
    """make(): a valid file whose tensors ``change(tensors)`` edits (the metadata untouched)."""
    def make(folder: Path) -> Path:
        path = valid(folder, method=method)
        tensors, raw = read(path)
        change(tensors)
        save_file(tensors, str(path), metadata={"amps_eval": raw})
        return path
    return make


def write_bytes(content):
    def make(folder: Path) -> Path:
        path = folder / NAME
        path.write_bytes(content(folder) if callable(content) else content)
        return path
    return make


def half_of_valid(folder: Path) -> bytes:
    data = valid(folder).read_bytes()
    return data[: len(data) // 2]


def torch_pickle(folder: Path) -> Path:
    torch.save({"fold0.vision.vector": torch.zeros(D)}, folder / NAME)
    return folder / NAME


def fold_key(k: int, key: str, value):
    def change(meta):
        meta["folds"][k][key] = value
    return change


def set_key(key: str, value):
    def change(meta):
        meta[key] = value
    return change


def in_sample_folds(meta):  # every fold fitted on every item: all steering in-sample
    everything = meta["folds"][0]["fit_ids"] + meta["folds"][0]["held_out_ids"]
    for fold in meta["folds"]:
        fold["fit_ids"] = sorted(everything)


def overlapping_held_out(meta):  # fold1 also holds out fold0's first item (and no longer fits on it)
    item = meta["folds"][0]["held_out_ids"][0]
    meta["folds"][1]["held_out_ids"].append(item)
    meta["folds"][1]["fit_ids"].remove(item)


def held_out_by_none(meta):  # an item fitted by both folds, held out by neither
    item = meta["folds"][0]["held_out_ids"].pop(0)
    meta["folds"][0]["fit_ids"].append(item)


# ---- running: the error must name the full path -------------------------------------------------
def load(path: Path) -> SteeringFile:
    try:
        return SteeringFile.load(path)
    except Exception as error:
        assert str(path) in str(error), f"the error does not name the file {path}:\n{error}"
        assert "\n" not in str(error), f"not one line:\n{error}"
        raise


def qwen_config(hidden_size: int = D, layers: int = LAYERS):
    from transformers import Qwen2_5_VLConfig

    config = Qwen2_5_VLConfig(text_config={"hidden_size": hidden_size, "num_hidden_layers": layers,
                                           "num_attention_heads": 4, "num_key_value_heads": 2,
                                           "intermediate_size": 64},
                              vision_config={"depth": 1, "hidden_size": 16, "out_hidden_size": hidden_size,
                                             "num_heads": 2, "intermediate_size": 32})
    config.architectures = [QWEN_ARCH]
    return config


def run_on_qwen(method: str):
    """run(): load the file, then check it against a Qwen run of ``method`` on MODEL_ID."""
    def run(path: Path) -> None:
        load(path).check_compatible(qwen_config(), MODEL_ID, method)
    return run


def through_wrapper(folder_or_path, **extra) -> None:
    """The wrapper, as lmms-eval builds it, with a checkpoint that does not exist: any error about
    the checkpoint would mean the model load was attempted before the steering file was read."""
    from amps_eval.model_wrappers.registered import AmpsQwen

    path = Path(folder_or_path)
    missing_model = path.parent / "no-such-checkpoint"
    AmpsQwen(pretrained=str(missing_model), device="cpu", method="mean", steering=str(path), **extra)


NOT_STEERING = "is not an amps-eval steering file"

TABLE = [
    # -- not a steering file at all
    BadInput("garbage-bytes", write_bytes(os.urandom(1000)), load, SteeringFileError,
             (NAME, NOT_STEERING, "no safetensors header")),
    BadInput("empty-file", write_bytes(b""), load, SteeringFileError, (NAME, NOT_STEERING, "empty")),
    BadInput("truncated-at-half", write_bytes(half_of_valid), load, SteeringFileError, (NAME, NOT_STEERING, "truncated")),
    BadInput("torch-save-pickle", torch_pickle, load, SteeringFileError,
             (NAME, NOT_STEERING, "pickle", "never unpickled")),
    BadInput("safetensors-without-our-metadata",
             lambda folder: save_file({"w": torch.zeros(2)}, str(folder / NAME)) or folder / NAME,
             load, SteeringFileError, (NAME, NOT_STEERING, "'amps_eval' metadata")),
    BadInput("missing-file", lambda folder: folder / NAME, load, SteeringFileError, (NAME, "no such steering file")),
    # -- the JSON metadata: syntax, presence, types
    BadInput("metadata-not-json", raw_meta('{"method": "amps", "layer": 1,'), load, SteeringFileError,
             (NAME, "metadata field 'amps_eval' is not valid JSON", "refit")),
    BadInput("metadata-not-an-object", raw_meta("[1, 2]"), load, SteeringFileError,
             (NAME, "metadata field 'amps_eval' must be a JSON object")),
    BadInput("format-from-the-future", edit_meta(set_key("format", 2)), load, SteeringFileError,
             (NAME, "metadata field 'format'", "got 2 (int)")),
    BadInput("missing-folds", edit_meta(lambda meta: meta.pop("folds")), load, SteeringFileError,
             (NAME, "metadata field 'folds' is missing")),
    BadInput("fold-without-fit-ids", edit_meta(lambda meta: meta["folds"][1].pop("fit_ids")), load, SteeringFileError,
             (NAME, "metadata field 'folds[1].fit_ids' is missing")),
    BadInput("layer-as-string", edit_meta(set_key("layer", "1")), load, SteeringFileError,
             (NAME, "metadata field 'layer' must be an integer", 'got "1" (str)', "refit with `amps-eval fit`")),
    BadInput("layer-as-bool", edit_meta(set_key("layer", True)), load, SteeringFileError,
             (NAME, "metadata field 'layer' must be an integer", "got true (bool)")),
    BadInput("layer-out-of-range", edit_meta(set_key("layer", LAYERS)), load, SteeringFileError,
             (NAME, "metadata field 'layer'", f"[0, {LAYERS})", f"got {LAYERS}")),
    BadInput("layer-disagrees-with-recorded-settings", edit_meta(set_key("layer", 2)), load, SteeringFileError,
             (NAME, "metadata field 'layer' disagrees with the recorded fit settings", "'settings.layer' is 1")),
    BadInput("method-unknown", edit_meta(set_key("method", "steer")), load, SteeringFileError,
             (NAME, "metadata field 'method' must be one of", '"steer" (str)')),
    BadInput("method-disagrees-with-recorded-settings", edit_meta(lambda meta: meta["settings"].update(method="l2s")),
             load, SteeringFileError, (NAME, "metadata field 'method' disagrees", "'settings.method'")),
    BadInput("hidden-size-not-positive", edit_meta(set_key("hidden_size", 0)), load, SteeringFileError,
             (NAME, "metadata field 'hidden_size' must be a positive integer")),
    BadInput("anchor-not-a-number", edit_meta(lambda meta: meta["anchors"].update(color="high")), load,
             SteeringFileError, (NAME, "metadata field 'anchors.color' must be a finite number", '"high" (str)')),
    BadInput("anchor-nan", edit_meta(lambda meta: meta["anchors"].update(color=float("nan"))), load,
             SteeringFileError, (NAME, "metadata field 'anchors.color' must be a finite number", "NaN")),
    BadInput("recorded-beta-infinite", edit_meta(lambda meta: meta["settings"].update(beta=float("inf"))), load,
             SteeringFileError, (NAME, "metadata field 'settings.beta' must be a finite number", "Infinity")),
    BadInput("recorded-fold-count-disagrees", edit_meta(lambda meta: meta["settings"].update(folds=3)), load,
             SteeringFileError, (NAME, "metadata field 'folds' disagrees", "'settings.folds' is 3")),
    # -- the folds must partition the items
    BadInput("fit-items-cover-held-out", edit_meta(in_sample_folds), load, SteeringFileError,
             (NAME, "metadata field 'folds[0].fit_ids' contains 5 of the fold's own held-out items", "in-sample")),
    BadInput("held-out-sets-overlap", edit_meta(overlapping_held_out), load, SteeringFileError,
             (NAME, "metadata field 'folds[1].held_out_ids' holds out 'mc2_0'", "disjoint")),
    BadInput("item-held-out-by-no-fold", edit_meta(held_out_by_none), load, SteeringFileError,
             (NAME, "metadata field 'folds' does not partition the items", "'mc2_0'", "in-sample")),
    BadInput("fold-fit-lacks-items", edit_meta(lambda meta: meta["folds"][0]["fit_ids"].pop()), load,
             SteeringFileError, (NAME, "metadata field 'folds[0].fit_ids' lacks 1 item(s)")),
    BadInput("single-fold-all-in-sample", lambda folder: valid(folder, folds=1), load, None,
             why="one fold 'all' fitted on every item (`--folds 1`) is allowed: it steers new data, and the run "
                 "records each fitted item as in_sample (fold_choice)"),
    # -- the tensors
    BadInput("tensor-missing", edit_tensors(lambda t: t.pop("fold1.text.vector")), load, SteeringFileError,
             (NAME, "tensor 'fold1.text.vector'", "missing")),
    BadInput("tensor-unlisted", edit_tensors(lambda t: t.update({"fold2.vision.vector": torch.zeros(D)})), load,
             SteeringFileError, (NAME, "tensor 'fold2.vision.vector' is in the file but in no fold")),
    BadInput("tensor-wrong-shape", edit_tensors(lambda t: t.update({"fold0.vision.vector": torch.zeros(D + 1)})), load,
             SteeringFileError, (NAME, "tensor 'fold0.vision.vector' has shape (33,)", f"({D},)")),
    BadInput("mlp-tensor-wrong-shape",
             edit_tensors(lambda t: t.update({"fold1.text.encoder.weight": torch.zeros(WIDTH, D - 1)}), method="l2s"),
             load, SteeringFileError, (NAME, "tensor 'fold1.text.encoder.weight' has shape (8, 31)")),
    BadInput("tensor-nan", edit_tensors(lambda t: t["fold1.text.vector"].__setitem__(3, float("nan"))), load,
             SteeringFileError, (NAME, "tensor 'fold1.text.vector' has non-finite values")),
    BadInput("tensor-integer", edit_tensors(lambda t: t.update({"fold0.text.vector": torch.zeros(D, dtype=torch.int64)})),
             load, SteeringFileError, (NAME, "tensor 'fold0.text.vector' must be a floating-point tensor")),
    # -- a valid file of another method or model: the fix is the right `amps-eval fit` command
    BadInput("file-of-another-method", lambda folder: valid(folder, method="l2s"), run_on_qwen("amps"),
             SteeringFileMismatch,
             (NAME, "method: the run uses 'amps', the file was fitted for 'l2s'",
              f"amps-eval fit --model amps_qwen --pretrained {MODEL_ID} --method amps --layer {LAYER}")),
    BadInput("file-of-another-model",
             lambda folder: valid(folder, method="amps", model="amps_llava", architecture="LlavaForConditionalGeneration",
                                  hidden_size=48),
             run_on_qwen("amps"), SteeringFileMismatch,
             (NAME, "hidden size: the model has 32, the file 48", "architecture: the model is " + QWEN_ARCH,
              f"amps-eval fit --model amps_qwen --pretrained {MODEL_ID} --method amps")),
    # -- through the wrapper's settings: refused before any weights load
    BadInput("wrapper-missing-steering-file", lambda folder: folder / NAME, through_wrapper, ValueError,
             ("steering=", NAME, "does not exist", "before the model loads")),
    BadInput("wrapper-garbage-steering-file", write_bytes(b"not a steering file" * 20), through_wrapper, ValueError,
             ("steering=", NAME, NOT_STEERING)),
    BadInput("wrapper-edited-steering-file", edit_meta(set_key("layer", True), method="mean"), through_wrapper,
             ValueError, ("steering=", NAME, "metadata field 'layer'", "true (bool)")),
    BadInput("wrapper-sha256-pin-differs", lambda folder: valid(folder, method="mean"),
             lambda path: through_wrapper(path, steering_sha256="0" * 64), ValueError,
             ("steering_sha256=", NAME, "the file changed")),
]


@pytest.mark.parametrize("row", params(TABLE))
def test_bad_steering_file(row: BadInput, tmp_path: Path) -> None:
    check(row, tmp_path)


def test_valid_files_load(tmp_path: Path) -> None:
    """The control: the unbroken file of every method loads and round-trips, so each row above fails
    only for what it broke."""
    for method in ("mean", "l2s", "amps"):
        folder = tmp_path / method
        folder.mkdir()
        loaded = load(valid(folder, method=method))
        assert loaded.method == method and loaded.layer == LAYER and len(loaded.folds) == 2
        assert not loaded.fold_choice("mc2_3").in_sample
