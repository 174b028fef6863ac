"""Per-item hidden states and MCS for a fit, cached on disk so that an interrupted fit resumes.

What is extracted for every item (AMPS Eq. 10): the output of decoder layer ``layer`` at the last
prompt token for [I,T] (the plain prompt), [I,T,P_v] and [I,T,P_t] (the prompt plus the instruction
toward the image / the text); for ``mean`` and ``amps`` also the item's MCS (c_v, c_t, r_v) on [I,T].

The cache (default ``<out>.cache/``) holds two kinds of entries, because they depend on different
things and a fit of one method should reuse what a fit of another computed:

* ``hidden-<key>/shard-*.safetensors``: one shard per batch, written atomically (temp file +
  rename); the key hashes (model, dtype, layer, instruction texts);
* ``mcs-<key>/records.jsonl``: one line per item, appended and flushed per batch; the key hashes
  (model, dtype, MCS settings). MCS does not depend on the layer.

Each entry carries its item's content hash (``amps_eval.fit_data``): an entry is reused only for the
same ``mc2_id`` with the same content, which is the data hash of the brief taken per item, so a run
with ``--limit`` and a full run share the work. A crash can at worst leave a torn last JSONL line or
a stray ``.tmp`` shard; both are ignored on reading. Values round-trip exactly (float32 tensors,
float64 via JSON's shortest repr), so a resumed fit gives the same tensors as an uninterrupted one.

A damaged cache is never fatal and never trusted: a shard that cannot be read or does not hold what
it should (truncated, bad metadata, wrong shapes, non-finite values) is moved aside as
``<shard>.corrupt`` and a JSONL line that is not a valid record is skipped; both are logged by name
and their items recomputed. A write that fails (disk full, read-only file system) raises an
`amps_eval.files.OutputError` naming the file and leaves no temp file behind.

Not in the key: the batch size and the device (they change the values only at rounding level), and
the weights behind a path (a checkpoint overwritten in place needs a fresh ``--cache-dir``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from amps_eval.files import ensure_folder, output_error, replace_together, tmp_path
from amps_eval.fit_data import FIT_INSTRUCTION_STYLE, PROMPTS, ItemSet
from amps_eval.mc2.prompt import INSTRUCTIONS
from amps_eval.steering.hooks import capture, hidden_size
from amps_eval.mcs.score import MCSResult, MCSSettings, NonFiniteMCSError, compute_mcs, noise_key

__all__ = ["Extracted", "extract", "last_token_states", "mcs_batch"]

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
SHARD = re.compile(r"shard-(\d+)\.safetensors")
# what reading a damaged shard can raise (safetensors, JSON metadata, shapes, the file system)
_SHARD_ERRORS = (SafetensorError, OSError, ValueError, KeyError, TypeError, IndexError, RuntimeError)
KINDS = tuple(PROMPTS)  # ("none", "vision", "text"): [I,T], [I,T,P_v], [I,T,P_t]


@dataclass
class Extracted:
    """Per-item results in the ItemSet's order. Hidden states [N, D] float32 on the CPU; MCS [N]
    float64, None when not asked for. ``computed_*``: items computed in this call (not cached)."""

    ids: list[str]
    categories: list[str]
    hidden: dict[str, Tensor]  # kind in KINDS -> [N, D]
    c_v: Tensor | None
    c_t: Tensor | None
    r_v: Tensor | None
    computed_hidden: int
    computed_mcs: int

    @property
    def d(self) -> Tensor:
        """h[I,T,P_v] - h[I,T,P_t] per item: the unscaled steering target toward the image."""
        return self.hidden["vision"] - self.hidden["text"]


def last_token_states(encoder, conversations: list, layer: int) -> Tensor:
    """[B, D] float32 CPU: output of decoder layer ``layer`` at each conversation's last prompt token."""
    enc = encoder.encode_turns(conversations)
    with torch.no_grad(), capture(encoder.model, layer, first_only=True, dtype=torch.float32, device="cpu") as cap:
        encoder.model(**enc.inputs, use_cache=False, logits_to_keep=1)
    return cap.last_token(enc.inputs["attention_mask"].cpu())


def mcs_batch(encoder, conversations: list, ids: list[str], settings: MCSSettings, prompt: str = "none") -> MCSResult:
    """MCS of a batch of conversations of the ``prompt`` variant ("none", "vision", "text"); each
    item's noise is seeded by `noise_key` (mc2_id, prompt), as `mean_mcs` seeds it at inference, so
    the same prompt gets the same r_v at fit time and at run time. The result's sample ids are the
    mc2_ids."""
    enc = encoder.encode_turns(conversations)
    try:
        result = compute_mcs(encoder.model, enc.inputs, enc.vision_mask, enc.text_mask, settings,
                             [noise_key(i, prompt) for i in ids])
        result.sample_ids = list(ids)
        return result
    except NonFiniteMCSError as error:
        raise NonFiniteMCSError(
            f"the MCS of MC2 item(s) {error.sample_ids} is not finite ({error}). The model's next-token "
            "distribution is degenerate for these items: check the weights and dtype (try --dtype float32), or "
            "leave the items out of the data.",
            error.sample_ids,
            error.values,
        ) from error


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def _folder(root: Path, prefix: str, key: dict) -> Path:
    folder = root / f"{prefix}-{_digest(key)}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise output_error(folder, "the extraction cache folder", error) from error
    key_file = folder / "key.json"
    if key_file.exists():
        try:
            recorded = json.loads(key_file.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as error:
            log.warning(f"cache key file {key_file} is unreadable ({error}); rewriting it (the folder name is the "
                        "hash of the key, so its entries are still the right ones)")
            recorded = None
        if recorded is not None:
            if recorded != json.loads(json.dumps(key)):
                raise RuntimeError(f"cache folder {folder} belongs to other settings; delete it or pick another cache_dir")
            return folder
    replace_together([(key_file, json.dumps(key, indent=1, sort_keys=True), "the extraction cache key")])
    return folder


def _load_shard(shard: Path, width: int) -> list[tuple[str, str, dict[str, Tensor]]]:
    """(item, item_hash, {kind: [D] tensor}) per row of one shard; raises if the shard is damaged."""
    with safe_open(str(shard), framework="pt") as handle:
        meta = handle.metadata() or {}
        tensors = {kind: handle.get_tensor(kind) for kind in KINDS}
    ids, hashes = json.loads(meta["ids"]), json.loads(meta["hashes"])
    if not (isinstance(ids, list) and isinstance(hashes, list) and len(ids) == len(hashes)
            and all(isinstance(x, str) for x in ids + hashes)):
        raise ValueError("its ids/hashes metadata is not two string lists of one length")
    for kind, values in tensors.items():
        if values.dtype != torch.float32 or tuple(values.shape) != (len(ids), width):
            raise ValueError(f"tensor {kind!r} is {values.dtype} {tuple(values.shape)}, expected float32 "
                             f"{(len(ids), width)}")
        if not bool(torch.isfinite(values).all()):
            raise ValueError(f"tensor {kind!r} has non-finite values")
    return [(item, item_hash, {kind: tensors[kind][row] for kind in KINDS})
            for row, (item, item_hash) in enumerate(zip(ids, hashes))]


def _read_hidden(folder: Path, width: int) -> dict[str, tuple[str, dict[str, Tensor]]]:
    """Every usable cached item; a damaged shard is logged, moved aside (``.corrupt``) and skipped,
    so its items count as missing and are recomputed."""
    done: dict[str, tuple[str, dict[str, Tensor]]] = {}
    for shard in sorted(folder.glob("shard-*.safetensors")):
        try:
            rows = _load_shard(shard, width)
        except _SHARD_ERRORS as error:
            aside = shard.with_name(shard.name + ".corrupt")
            try:
                os.replace(shard, aside)
                where = f"moved to {aside.name}"
            except OSError:
                where = "left in place"
            log.warning(f"cache shard {shard} is damaged ({type(error).__name__}: {error}); {where}, its items are "
                        "recomputed")
            continue
        for item, item_hash, states in rows:
            done[item] = (item_hash, states)
    return done


def _write_hidden(folder: Path, ids: list[str], hashes: list[str], tensors: dict[str, Tensor]) -> None:
    numbers = [int(m.group(1)) for p in folder.iterdir() if (m := SHARD.fullmatch(p.name.removesuffix(".corrupt")))]
    path = folder / f"shard-{1 + max(numbers, default=-1):06d}.safetensors"
    tmp = tmp_path(path)
    meta = {"ids": json.dumps(ids), "hashes": json.dumps(hashes)}
    try:
        save_file({k: t.contiguous() for k, t in tensors.items()}, str(tmp), metadata=meta)
        os.replace(tmp, path)
    except (OSError, SafetensorError) as error:  # disk full, read-only file system, ...
        tmp.unlink(missing_ok=True)
        raise output_error(path, "the extraction cache shard", error,
                           "the shards already written are kept, so a rerun resumes from them") from error


def _valid_record(record) -> bool:
    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    return (isinstance(record, dict) and isinstance(record.get("mc2_id"), str) and isinstance(record.get("item_hash"), str)
            and all(number(record.get(key)) for key in ("c_v", "c_t", "r_v")))


def _read_mcs(path: Path) -> dict[str, dict]:
    """The valid records of the MCS cache file; a line that is not one (torn by an interrupted run,
    or damaged) is skipped and logged, so its item is recomputed."""
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    bad = []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            record = json.loads(line)
        except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
            record = None
        if _valid_record(record):
            done[record["mc2_id"]] = record
        elif line.strip():
            bad.append(number)
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        log.warning(f"cache file {path}: {len(bad)} line(s) ({shown}) are not valid MCS records (torn by an "
                    "interrupted run, or damaged); their items are recomputed")
    return done


def _append_records(path: Path, records: list[dict]) -> None:
    """Append JSONL records and flush them; a torn last line (an interrupted run) is closed first,
    so it cannot swallow the first new record."""
    try:
        with path.open("ab") as handle:
            if handle.tell() > 0:
                with path.open("rb") as check:
                    check.seek(-1, os.SEEK_END)
                    if check.read(1) != b"\n":
                        handle.write(b"\n")
            handle.write("".join(json.dumps(r, allow_nan=False) + "\n" for r in records).encode("utf-8"))
            handle.flush()
    except OSError as error:  # disk full, read-only file system, ...
        raise output_error(path, "the extraction cache's MCS records", error,
                           "the records already written are kept, so a rerun resumes from them") from error


def _check_finite(name: str, values: Tensor, ids: list[str]) -> None:
    bad = [ids[i] for i in range(len(ids)) if not bool(torch.isfinite(values[i]).all())]
    if bad:
        raise ValueError(
            f"non-finite {name} for MC2 item(s) mc2_id={bad}; check the model weights and dtype "
            "(try --dtype float32) or leave these items out"
        )


def _batches(rows: list[int], size: int) -> list[list[int]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def extract(
    encoder, items: ItemSet, layer: int, cache_root: Path, mcs: MCSSettings | None, batch_size: int, progress: bool = True
) -> Extracted:
    """Hidden states (and MCS when ``mcs`` is given) of every item, computing only what the cache lacks."""
    ensure_folder(cache_root, "the extraction cache")
    pretrained = str(encoder.pretrained)
    if Path(pretrained).exists():  # a local folder: the same folder from any working directory
        pretrained = str(Path(pretrained).resolve())
    model_key = {"format": CACHE_FORMAT, "pretrained": pretrained,
                 "class": type(encoder.model).__name__, "dtype": str(encoder.torch_dtype)}
    folder = _folder(Path(cache_root), "hidden",
                     {**model_key, "layer": layer, "prompts": PROMPTS, "instructions": INSTRUCTIONS[FIT_INSTRUCTION_STYLE]})
    done = _read_hidden(folder, hidden_size(encoder.model))
    todo = [i for i, item in enumerate(items.ids) if done.get(item, ("",))[0] != items.hashes[i]]
    bar = tqdm(total=len(todo), desc=f"hidden states (layer {layer})", disable=not progress or not todo)
    for rows in _batches(todo, batch_size):
        ids = [items.ids[i] for i in rows]
        states = {kind: last_token_states(encoder, items.conversations(rows, kind), layer) for kind in KINDS}
        for kind, values in states.items():
            _check_finite(f"hidden states ({kind} prompt, layer {layer})", values, ids)
        _write_hidden(folder, ids, [items.hashes[i] for i in rows], states)
        for j, i in enumerate(rows):
            done[items.ids[i]] = (items.hashes[i], {kind: values[j] for kind, values in states.items()})
        bar.update(len(rows))
    bar.close()
    hidden = {kind: torch.stack([done[item][1][kind] for item in items.ids]) for kind in KINDS}

    c_v = c_t = r_v = None
    computed_mcs = 0
    if mcs is not None:
        # batched / max_copies_per_pass change how the perturbations are grouped, not the values
        # "noise": how each item's noise is seeded (`noise_key`); a cache made with other seeds is not reused
        values_key = {k: v for k, v in mcs.to_dict().items() if k not in ("batched", "max_copies_per_pass")}
        values_key["noise"] = noise_key("ID", "none")
        records_path = _folder(Path(cache_root), "mcs", {**model_key, "mcs": values_key}) / "records.jsonl"
        records = _read_mcs(records_path)
        missing = [i for i, item in enumerate(items.ids) if records.get(item, {}).get("item_hash") != items.hashes[i]]
        bar = tqdm(total=len(missing), desc="MCS", disable=not progress or not missing)
        for rows in _batches(missing, batch_size):
            ids = [items.ids[i] for i in rows]
            result = mcs_batch(encoder, items.conversations(rows, "none"), ids, mcs)
            batch = [{"mc2_id": ids[j], "item_hash": items.hashes[i], "c_v": float(result.c_v[j]),
                      "c_t": float(result.c_t[j]), "r_v": float(result.r_v[j])} for j, i in enumerate(rows)]
            _append_records(records_path, batch)
            records.update((record["mc2_id"], record) for record in batch)
            bar.update(len(rows))
        bar.close()
        computed_mcs = len(missing)
        c_v, c_t, r_v = (torch.tensor([records[i][k] for i in items.ids], dtype=torch.float64) for k in ("c_v", "c_t", "r_v"))
    return Extracted(list(items.ids), list(items.categories), hidden, c_v, c_t, r_v, len(todo), computed_mcs)
