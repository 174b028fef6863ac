"""`amps-eval mcs`: the Modality Contribution Score of every MC2 item (the AMPS paper's Fig. 4 and 5).

Writes three files:

* ``<out>`` (JSONL): one line per item, ``{"mc2_id", "category", "prompt", "c_v", "c_t", "r_v",
  "c_v_stderr", "c_t_stderr", "r_v_stderr", "perturbations"}`` (the Monte Carlo standard errors, null
  with one draw, and the perturbations the item's estimate took: `amps_eval.mcs.item.VALUES`)
  and nothing else, so every line has the same keys and the file loads as a table as it is;
* ``<out>.meta.json`` (sidecar): what produced it: model, pretrained, MCS settings, prompt, the data
  description and data hash, versions, and the sha256 of the rows file it describes (``rows_sha256``).
  A sidecar rather than a header line, for the same reason;
* ``<out stem>.summary.json``: r_v per category and overall: mean, std (sample std, ddof=1; 0 for a
  single item), n; plus the mean c_v and c_t.

``prompt`` picks the conversation: ``none`` the plain MC2 prompt [I,T]; ``visual`` / ``text`` the
prompt with the instruction toward that modality appended after it (``APPENDED_INSTRUCTIONS``, AMPS
Eq. 8, as in the fits: [I,T,P_v] / [I,T,P_t]), to
see how much an instruction alone moves the model's reliance (Figure 5).

Nothing is written until every item is scored: the paths are checked first (`ensure_writable`), then
the three files are written together at the end (`amps_eval.files.replace_together`): each to a temp
file in the same folder, then renamed into place, the sidecar last. So a run that is killed, crashes
or hits a full disk leaves the previous three files exactly as they were; and because the old sidecar
is removed before the first rename and the new one comes last (it also records the rows' sha256),
rows never sit next to a sidecar that names another run (a reader between the renames sees rows
without a sidecar, i.e. unlabelled, never relabelled).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from tqdm.auto import tqdm

from amps_eval.files import ensure_writable, output_error, replace_together
from amps_eval.mcs.item import VALUES
from amps_eval.mcs.settings import MCSSettings

__all__ = ["MCS_PROMPTS", "run_mcs", "summarise"]

MCS_PROMPTS = {"none": "none", "visual": "vision", "text": "text"}  # CLI name -> fit_data.PROMPTS kind


def _stats(values: list[float]) -> dict:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}


def summarise(records: list[dict]) -> dict:
    """Per-category and overall statistics of r_v (and the mean C_V, C_T) over JSONL records."""
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(record["category"], []).append(record)

    def block(rows: list[dict]) -> dict:
        return {"r_v": _stats([r["r_v"] for r in rows]),
                "c_v_mean": sum(r["c_v"] for r in rows) / len(rows), "c_t_mean": sum(r["c_t"] for r in rows) / len(rows)}

    return {"categories": {c: block(groups[c]) for c in sorted(groups)}, "overall": block(records)}


def run_mcs(
    model: str,
    pretrained: str,
    out: Path,
    data: str | Path | None = None,
    prompt: str = "none",
    settings: MCSSettings = MCSSettings(),
    batch_size: int = 4,
    device: str | None = None,
    limit: int | None = None,
    progress: bool = True,
    dtype: str = "auto",
    cache_dir: str | Path | None = None,
) -> list[dict]:
    """Compute the MCS of every item and write ``out``, its sidecar and its summary; returns the records.

    ``cache_dir``: the item cache (`amps_eval.item_cache`) to read and extend: an item whose MCS of
    this prompt, model and MCS settings is there (from a fit, another run, a ``mean_mcs`` sweep) is
    not scored again. None: no cache, every item is scored."""
    from amps_eval.extract import mcs_batch
    from amps_eval.encoding import load_encoder
    from amps_eval.files import ensure_folder
    from amps_eval.fit_data import load_items
    from amps_eval.item_cache import MCSCache, model_key
    from amps_eval.mcs.item import entry_key, item_mcs
    from amps_eval.steering.file import current_versions

    if prompt not in MCS_PROMPTS:
        raise ValueError(f"prompt must be one of {tuple(MCS_PROMPTS)}, got {prompt!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    out = Path(out)
    meta_path, summary_path = Path(str(out) + ".meta.json"), out.with_name(out.stem + ".summary.json")
    outputs = ((out, "the MCS rows (--out)"), (meta_path, "the MCS metadata sidecar"), (summary_path, "the MCS summary"))
    for path, what in outputs:  # before loading anything: a path we cannot write fails now, not after the run
        ensure_writable(path, what)
    if cache_dir is not None:
        ensure_folder(cache_dir, "the item cache (--cache-dir)")
    from amps_eval.families import check_pretrained

    check_pretrained(pretrained, model)  # a wrong family or a missing folder, before the data and the weights load
    items = load_items(data, limit)
    encoder = load_encoder(model, pretrained, device, dtype)
    meta = {
        "model": model, "pretrained": str(pretrained), "prompt": prompt, "mcs": settings.to_dict(),
        "batch_size": batch_size, "dtype": str(encoder.torch_dtype), "device": str(encoder.device),
        "data": items.description, "data_hash": items.data_hash, "n_items": len(items), "versions": current_versions(),
    }
    kind = MCS_PROMPTS[prompt]
    cache = MCSCache(Path(cache_dir), model_key(encoder.model, encoder.pretrained), settings) if cache_dir else None
    keys = None
    if cache is not None:
        keys = [entry_key(encoder.prompt_digest(turns), item, kind)
                for item, turns in zip(items.ids, items.conversations(list(range(len(items))), kind))]
    computed = 0

    def compute(rows: list[int]):
        nonlocal computed
        computed += len(rows)
        return mcs_batch(encoder, items.conversations(rows, kind), [items.ids[i] for i in rows], settings, kind)

    bar = tqdm(total=len(items), desc=f"MCS ({prompt} prompt)", disable=not progress)
    scored = item_mcs(items.ids, compute, cache, keys, batch_size, bar.update)
    bar.update(len(items) - computed)  # the items read from the cache
    bar.close()
    meta["n_from_cache"] = len(items) - computed
    records = [{"mc2_id": int(item) if item.isdigit() else item, "category": items.categories[i], "prompt": prompt,
                **{key: scored[i][key] for key in VALUES}} for i, item in enumerate(items.ids)]
    # Every item is scored: now the three files, together (see the module docstring).
    lines = "".join(json.dumps(record, allow_nan=False) + "\n" for record in records).encode("utf-8")
    meta["rows_sha256"] = hashlib.sha256(lines).hexdigest()
    summary = {"prompt": prompt, "model": model, "pretrained": str(pretrained), **summarise(records)}
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise output_error(out.parent, "the output folder", error) from error
    replace_together([
        (summary_path, json.dumps(summary, indent=2), "the MCS summary"),
        (out, lines, "the MCS rows (--out)"),
        (meta_path, json.dumps(meta, indent=2), "the MCS metadata sidecar"),  # last: the commit record
    ])
    return records
