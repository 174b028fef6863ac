"""The per-item cache: what a model computed for one item is computed once and read back by every
command that needs it (`amps-eval fit`, `amps-eval mcs`, the ``mean_mcs`` wrapper inside a sweep,
the study, which passes one folder to all of them).

A cache folder holds namespaces ``<kind>-<digest>/``, each with a ``key.json`` (what the digest
hashes, readable) and its entries:

* ``hidden-<key>/shard-*.safetensors`` (`TensorShards`): the fit's last-token hidden states of
  [I,T], [I,T,P_v], [I,T,P_t]; the namespace key: the model (`model_key`), the layer, the prompt
  kinds and the instruction texts; an entry: the item's content hash (`amps_eval.fit_data`);
* ``mcs-<key>/records.jsonl`` (`MCSCache`): c_v, c_t, r_v, their standard errors and the item's
  number of perturbations; the namespace
  key: the model and the MCS settings that change the values (`mcs_values_key`: every
  `MCSSettings` field but the batching ones, as `amps_eval.mcs.settings.MCS_KEYS`, a setting added
  later left out at the value caches written before it used, `ADDED_SETTINGS`); an entry:
  `mcs_entry_key` = the prompt's content digest (`PromptEncoder.prompt_digest`: processor settings,
  the rendered chat prompt, the images' pixels) and the noise's sample id (`noise_key`: mc2_id and
  prompt variant). So an MCS is shared wherever the model sees the very same prompt with the
  same noise, whichever command asked first.

The model in every key (`model_key`): the checkpoint (a local folder resolved to its absolute path,
or a hub id and the commit transformers resolved), a fingerprint of the folder (every file's name,
size and modification time, so a checkpoint overwritten in place or copied anew gets new entries;
cheap: no weight is read), the model class and its dtype. Not in any key: the batch size and the
device (they change the values at rounding level only).

Robustness (as before this cache was shared): shards are written atomically (temp file + rename);
records are appended and flushed per batch, a torn last line (a killed run) is closed before the
next append; a damaged shard is moved aside as ``.corrupt`` and a line that is not a valid record is
skipped, both logged by name and their items recomputed; a failed write raises
`amps_eval.files.OutputError` naming the file. Values round-trip exactly (float32 tensors, float64
numbers through JSON's shortest repr). Clearing the cache = deleting the folder (or one namespace).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from amps_eval.files import output_error, replace_together, tmp_path

__all__ = ["CACHE_FORMAT", "MCSCache", "TensorShards", "mcs_entry_key", "mcs_values_key", "model_key", "namespace"]

log = logging.getLogger(__name__)

CACHE_FORMAT = 2
SHARD = re.compile(r"shard-(\d+)\.safetensors")
# what reading a damaged shard can raise (safetensors, JSON metadata, shapes, the file system)
_SHARD_ERRORS = (SafetensorError, OSError, ValueError, KeyError, TypeError, IndexError, RuntimeError)
MCS_VALUES = ("c_v", "c_t", "r_v")
MCS_STDERRS = ("c_v_stderr", "c_t_stderr", "r_v_stderr")


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def model_key(model, pretrained: str | os.PathLike | None = None) -> dict:
    """What identifies a loaded model's values: checkpoint, its fingerprint, class and dtype."""
    config = getattr(model, "config", None)
    name = str(pretrained if pretrained is not None else getattr(config, "_name_or_path", "") or "")
    key = {"format": CACHE_FORMAT, "class": type(model).__name__, "dtype": str(getattr(model, "dtype", None))}
    folder = Path(name) if name else None
    if folder is not None and folder.is_dir():
        listing = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()
                         if p.is_file() and not p.name.startswith("."))
        return {**key, "pretrained": str(folder.resolve()),
                "files": hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:20]}
    return {**key, "pretrained": name, "commit": getattr(config, "_commit_hash", None)}


def mcs_values_key(settings) -> dict:
    """The MCS settings that change the values (every field but the batching ones) and how each
    item's noise is seeded (a cache made with another seeding scheme is not reused)."""
    from amps_eval.mcs.seeding import noise_key
    from amps_eval.mcs.settings import ADDED_SETTINGS, MCS_KEYS

    values = settings.to_dict()
    keep = [k for k in MCS_KEYS if k not in ADDED_SETTINGS or values[k] != ADDED_SETTINGS[k]]
    return {**{k: values[k] for k in keep}, "seeding": noise_key("ID", "none")}


def mcs_entry_key(prompt_digest: str, sample_id: str) -> str:
    """An MCS entry: the prompt's content digest and the noise's sample id (`noise_key`)."""
    return hashlib.sha256(f"{prompt_digest}\x00{sample_id}".encode()).hexdigest()


def namespace(root: Path, prefix: str, key: dict) -> Path:
    """The folder ``<root>/<prefix>-<digest of key>`` with its ``key.json`` (created if needed)."""
    folder = Path(root) / f"{prefix}-{_digest(key)}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise output_error(folder, "the item cache folder", error) from error
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
    replace_together([(key_file, json.dumps(key, indent=1, sort_keys=True), "the item cache key")])
    return folder


class TensorShards:
    """Entries (id, content hash, one [width] float32 tensor per field) in atomic safetensors shards."""

    def __init__(self, folder: Path, fields: tuple[str, ...], width: int) -> None:
        self.folder, self.fields, self.width = Path(folder), tuple(fields), width

    def _load(self, shard: Path) -> list[tuple[str, str, dict[str, Tensor]]]:
        with safe_open(str(shard), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in self.fields}
        ids, hashes = json.loads(meta["ids"]), json.loads(meta["hashes"])
        if not (isinstance(ids, list) and isinstance(hashes, list) and len(ids) == len(hashes)
                and all(isinstance(x, str) for x in ids + hashes)):
            raise ValueError("its ids/hashes metadata is not two string lists of one length")
        for name, values in tensors.items():
            if values.dtype != torch.float32 or tuple(values.shape) != (len(ids), self.width):
                raise ValueError(f"tensor {name!r} is {values.dtype} {tuple(values.shape)}, expected float32 "
                                 f"{(len(ids), self.width)}")
            if not bool(torch.isfinite(values).all()):
                raise ValueError(f"tensor {name!r} has non-finite values")
        return [(item, item_hash, {name: tensors[name][row] for name in self.fields})
                for row, (item, item_hash) in enumerate(zip(ids, hashes))]

    def read(self) -> dict[str, tuple[str, dict[str, Tensor]]]:
        """id -> (content hash, tensors) of every usable entry; a damaged shard is logged, moved
        aside (``.corrupt``) and skipped, so its items count as missing and are recomputed."""
        done: dict[str, tuple[str, dict[str, Tensor]]] = {}
        for shard in sorted(self.folder.glob("shard-*.safetensors")):
            try:
                rows = self._load(shard)
            except _SHARD_ERRORS as error:
                aside = shard.with_name(shard.name + ".corrupt")
                try:
                    os.replace(shard, aside)
                    where = f"moved to {aside.name}"
                except OSError:
                    where = "left in place"
                log.warning(f"cache shard {shard} is damaged ({type(error).__name__}: {error}); {where}, its items "
                            "are recomputed")
                continue
            for item, item_hash, states in rows:
                done[item] = (item_hash, states)
        return done

    def write(self, ids: list[str], hashes: list[str], tensors: dict[str, Tensor]) -> None:
        numbers = [int(m.group(1)) for p in self.folder.iterdir()
                   if (m := SHARD.fullmatch(p.name.removesuffix(".corrupt")))]
        path = self.folder / f"shard-{1 + max(numbers, default=-1):06d}.safetensors"
        tmp = tmp_path(path)
        meta = {"ids": json.dumps(ids), "hashes": json.dumps(hashes)}
        try:
            save_file({k: t.contiguous() for k, t in tensors.items()}, str(tmp), metadata=meta)
            os.replace(tmp, path)
        except (OSError, SafetensorError) as error:  # disk full, read-only file system, ...
            tmp.unlink(missing_ok=True)
            raise output_error(path, "the extraction cache shard", error,
                               "the shards already written are kept, so a rerun resumes from them") from error


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _valid_record(record) -> bool:
    return (isinstance(record, dict) and isinstance(record.get("key"), str)
            and all(_number(record.get(k)) for k in MCS_VALUES)
            and all(record.get(k) is None or _number(record.get(k)) for k in MCS_STDERRS)
            and (record.get("perturbations") is None or (isinstance(record["perturbations"], int)
                                                         and not isinstance(record["perturbations"], bool)
                                                         and record["perturbations"] > 0)))


class MCSCache:
    """The MCS records of one (model, MCS settings) namespace, read once; `put` appends."""

    def __init__(self, root: Path, model: dict, settings) -> None:
        self.path = namespace(Path(root), "mcs", {**model, "mcs": mcs_values_key(settings)}) / "records.jsonl"
        self.records = self._read()

    def _read(self) -> dict[str, dict]:
        done: dict[str, dict] = {}
        if not self.path.exists():
            return done
        bad = []
        for number, line in enumerate(self.path.read_bytes().splitlines(), start=1):
            try:
                record = json.loads(line)
            except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
                record = None
            if _valid_record(record):
                done[record["key"]] = record
            elif line.strip():
                bad.append(number)
        if bad:
            shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
            log.warning(f"cache file {self.path}: {len(bad)} line(s) ({shown}) are not valid MCS records (torn by an "
                        "interrupted run, or damaged); their items are recomputed")
        return done

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def put(self, keys: list[str], mc2_ids: list[str], values: list[dict]) -> list[dict]:
        """Append one record per item (``values``: its MCS values, `amps_eval.mcs.item.result_records`),
        flushed; returns the records."""
        records = [{"key": key, "mc2_id": item, **value} for key, item, value in zip(keys, mc2_ids, values, strict=True)]
        for record in records:
            if not _valid_record(record):
                raise ValueError(f"not a valid MCS record (finite c_v, c_t, r_v; standard errors finite or None): {record}")
        try:
            with self.path.open("ab") as handle:
                if handle.tell() > 0:
                    with self.path.open("rb") as check:
                        check.seek(-1, os.SEEK_END)
                        if check.read(1) != b"\n":
                            handle.write(b"\n")  # close a torn last line, so it cannot swallow a record
                handle.write("".join(json.dumps(r, allow_nan=False) + "\n" for r in records).encode("utf-8"))
                handle.flush()
        except OSError as error:  # disk full, read-only file system, ...
            raise output_error(self.path, "the item cache's MCS records", error,
                               "the records already written are kept, so a rerun resumes from them") from error
        self.records.update((r["key"], r) for r in records)
        return records
