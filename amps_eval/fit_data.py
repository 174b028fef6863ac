"""The items a fit (or an MCS run) reads (the model is loaded by `amps_eval.encoding.load_encoder`).

Shared by `amps-eval fit` and `amps-eval mcs` so both see the same documents, the same prompts and
the same content hashes:

* every item becomes one task document built with ``TaskSpec("vision")``: the option order (image
  answer first for even ``mc2_id``) is the one the tasks ask with ``orders="one"``, and it does not
  depend on the steering direction, so the hidden states serve both directions;
* the contrast prompts [I, T, P_v] / [I, T, P_t] follow AMPS Eq. 8: the instruction is appended
  after the whole question prompt (``FIT_INSTRUCTION_STYLE = "appended"``, the instructions
  ``amps_eval.mc2.prompt.APPENDED_INSTRUCTIONS``), whatever ``instruction_style`` the evaluation
  runs of ``inst`` / ``cot`` use;
* an item's content hash covers its text fields and its image bytes, so a cache entry is reused only
  for the very same item (another dataset that reuses an ``mc2_id`` gets its own entry), and the
  data hash of a fit is the hash over its items' hashes, in order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from amps_eval.methods.prompts import Turn, build_conversation

TEXT_FIELDS = ("mc2_id", "category", "image_id", "question", "context", "answer_vision", "answer_text")
# prompt kind -> (prompt method, target) of build_conversation: [I,T], [I,T,P_v], [I,T,P_t] (Eq. 10)
PROMPTS: dict[str, tuple[str, str | None]] = {"none": ("none", None), "vision": ("inst", "vision"), "text": ("inst", "text")}
# where P_v / P_t go in those prompts: appended after the question (AMPS Eq. 8), see amps_eval.mc2.prompt
FIT_INSTRUCTION_STYLE = "appended"

__all__ = ["FIT_INSTRUCTION_STYLE", "ItemSet", "PROMPTS", "load_items", "num_layers"]


@dataclass
class ItemSet:
    """The task documents of a fit, with their ids, categories and content hashes (same order)."""

    docs: object  # datasets.Dataset of task documents (TaskSpec("vision"))
    ids: list[str]
    categories: list[str]
    hashes: list[str]
    description: str

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def data_hash(self) -> str:
        """sha256 over the items' content hashes, in order (the steering file's ``data_hash``)."""
        return hashlib.sha256("\n".join(self.hashes).encode()).hexdigest()

    def conversations(self, rows: list[int], prompt: str) -> list[list[Turn]]:
        """The conversations of ``rows`` under a prompt kind of ``PROMPTS``."""
        from amps_eval.mc2.prompt import doc_prompt

        if prompt not in PROMPTS:
            raise ValueError(f"prompt must be one of {tuple(PROMPTS)}, got {prompt!r}")
        method, target = PROMPTS[prompt]
        out = []
        for row in rows:
            doc = self.docs[row]
            out.append(build_conversation(method, doc_prompt(doc), [doc["image"].convert("RGB")], target,
                                          style=FIT_INSTRUCTION_STYLE))
        return out


def _item_hash(row: dict, image: dict) -> str:
    digest = hashlib.sha256()
    for name in TEXT_FIELDS:
        digest.update(f"{name}={row[name]}\x00".encode())
    data = image.get("bytes")
    if data is None and image.get("path"):
        data = Path(image["path"]).read_bytes()
    if data is None:
        raise ValueError(f"MC2 item mc2_id={row['mc2_id']} has no image bytes or path; rebuild the data folder")
    digest.update(data)
    return digest.hexdigest()


def load_items(data: str | Path | None = None, limit: int | None = None) -> ItemSet:
    """The MC2 items of a fit: ``data`` (a prepared folder) or, if None, ``resolve_source()``.

    ``limit`` keeps the first ``limit`` items (as lmms-eval's ``--limit`` does).
    """
    import datasets

    from amps_eval.mc2.docs import TaskSpec, task_docs
    from amps_eval.mc2.source import load_mc2, resolve_source

    source = resolve_source(folder=data)
    items = load_mc2(source)
    if limit is not None:
        items = items.select(range(min(limit, len(items))))
    if len(items) == 0:
        raise ValueError(f"no MC2 items to fit on in {source.description}")
    raw = items.cast_column("image", datasets.Image(decode=False))
    rows = raw.select_columns(list(TEXT_FIELDS)).to_list()
    hashes = [_item_hash(row, image) for row, image in zip(rows, raw["image"])]
    ids = [str(row["mc2_id"]) for row in rows]  # unique: load_mc2 refuses duplicate mc2_ids (MC2DataError)
    docs = task_docs(items, TaskSpec("vision"))
    return ItemSet(docs, ids, [row["category"] for row in rows], hashes, source.description)


def num_layers(pretrained: str) -> int:
    """Decoder layers of a checkpoint, read from its config alone (no weights are loaded)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(pretrained)
    except OSError as error:
        raise ValueError(f"cannot read the model config of --pretrained {pretrained}: {error}") from error
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.num_hidden_layers)


def check_layer(pretrained: str, layer: int) -> int:
    """Raise a ValueError naming the valid range unless ``layer`` is a decoder layer of the model."""
    n = num_layers(pretrained)
    if not 0 <= layer < n:
        raise ValueError(
            f"layer {layer} is out of range for {pretrained}: it has {n} decoder layers, valid layers are "
            f"0..{n - 1} (the AMPS paper's layer 14 needs a 7B-size model; pass --layer)"
        )
    return n
