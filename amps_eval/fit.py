"""`amps-eval fit`: fit mean-steering vectors, L2S modules or AMPS modules on MC2 items.

Each method's own fit of one fold lives in its file under `amps_eval.methods` (``mean``, ``l2s``,
``amps``, ``amps_beta0``); this module is what they share: items, extraction, folds, the file.

Pipeline (AMPS paper, Eq. 9-13; docs/method.md, "Scaling", "Targets", "Module", "Cross-fitting"):

1. every item's prompt [I,T] and its two instructed variants [I,T,P_v], [I,T,P_t] are run through
   the model and the output of decoder layer ``layer`` at the last prompt token is kept
   (``amps_eval.extract``, cached so an interrupted fit resumes); for ``mean`` and AMPS also
   the item's MCS on [I,T] (``mean`` needs it only for the anchors that ``mean_mcs`` reads);
2. d = h[P_v] - h[P_t] per item; the items are split into K folds (cross-fitting: each fold's
   vector/module is fitted on the other folds' items and serves its own held-out items);
3. per fold: ``mean`` -> the mean of d; ``l2s`` -> an MLP h[I,T] -> d; ``amps`` -> one MLP per
   direction on the gamma-scaled targets of Eq. 11 (``amps_targets``), with per-category anchors
   taken on the fold's own fit items (the held-out items must not leak into their steering);
   ``amps_beta0`` -> the same with beta = 0 (every gamma 1: L2S's targets doubled);
4. both directions are stored: for ``mean`` / ``l2s`` the text entries are exactly the negated
   vision ones (for an MLP: the decoder negated), for ``amps`` two separately trained modules.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import Tensor

from amps_eval.files import ensure_folder, ensure_writable, output_error, tmp_path
from amps_eval.methods.registry import FIT_METHODS, implementation, info
from amps_eval.steering.anchors import ALL, amps_targets, category_anchors
from amps_eval.mcs.score import MCSSettings
from amps_eval.methods.steering import SteeringConfig
from amps_eval.vocabulary import PAPER_LAYER
from amps_eval.steering.module import TrainSettings
from amps_eval.steering.scaling import ANCHOR_FLOOR, CONVENTIONS, GAMMA_MAX
from amps_eval.fit_settings import FitSettings  # re-exported

__all__ = ["ALL", "FitSettings", "amps_targets", "category_anchors", "fit", "fit_fold", "split_folds"]


def _id_key(item: str):
    return (0, int(item), "") if item.isdigit() else (1, 0, item)


def split_folds(ids: list[str], categories: list[str], folds: int, seed: int) -> list[tuple[str, list[str], list[str]]]:
    """(name, fit_ids, held_out_ids) per fold: a seeded split, stratified by category.

    Each category's items (sorted, then shuffled by ``random.Random(seed)``) are dealt round-robin,
    continuing across categories, so the parts differ in size by at most one and every category is
    spread over the folds. Deterministic in (item set, seed), independent of the data's row order.
    """
    if folds == 1:
        return [("all", sorted(ids, key=_id_key), [])]
    if len(ids) < folds:
        raise ValueError(f"folds={folds} needs at least {folds} items, got {len(ids)}; lower --folds or raise --limit")
    rng = random.Random(seed)
    by_category: dict[str, list[str]] = {}
    for item, category in zip(ids, categories):
        by_category.setdefault(category, []).append(item)
    parts: list[list[str]] = [[] for _ in range(folds)]
    dealt = 0
    for category in sorted(by_category):
        members = sorted(by_category[category], key=_id_key)
        rng.shuffle(members)
        for member in members:
            parts[dealt % folds].append(member)
            dealt += 1
    everything = sorted(ids, key=_id_key)
    out = []
    for k, part in enumerate(parts):
        held = set(part)
        out.append((f"fold{k}", [i for i in everything if i not in held], sorted(part, key=_id_key)))
    return out


def fit_fold(
    method: str, x: Tensor, d: Tensor, settings: FitSettings, hidden: int,
    r_v: Tensor | None = None, categories: list[str] | None = None, progress: bool = False,
) -> tuple[dict[str, Tensor], dict[str, float], dict[str, float]]:
    """One fold on its fit items: (tensors for both directions, final train loss per direction,
    the fold's own anchors); the method's own file says how (`amps_eval.methods`)."""
    result = implementation(method).fit_fold(x, d, settings, hidden, r_v, categories, progress)
    return result.tensors, result.losses, result.anchors


def data_reliance(items, ids: list[str], column: str) -> Tensor:
    """The items' ``column`` (e.g. ``planted_p_vision``), in the order of ``ids``, as r_v; a clear
    error for data without it."""
    names = items.docs.column_names
    if column not in names:
        raise ValueError(f"this method fits on the data column {column!r}, which {items.description} lacks: "
                         "use a graded data folder (amps_eval.mc2.graded.write_graded_mc2, `amps-eval validate`)")
    by_id = {str(i): float(v) for i, v in zip(items.docs["mc2_id"], items.docs[column])}
    return torch.tensor([by_id[i] for i in ids], dtype=torch.float64)


def fit(settings: FitSettings, out: Path, progress: bool = True):
    """Run a fit and write the steering file to ``out``; returns the SteeringFile (see module doc).

    ``out`` and the cache folder are checked first (an unwritable path fails before any weights
    load, naming the path); ``out`` is written through a temp file, so it is whole or untouched, and
    a failed write (disk full, read-only) raises `amps_eval.files.OutputError` naming it."""
    from amps_eval.extract import extract
    from amps_eval.families import adapter_for, check_pretrained
    from amps_eval.encoding import load_encoder
    from amps_eval.fit_data import check_layer, load_items
    from amps_eval.steering.file import Fold, SteeringFile

    out = Path(out)
    cache = Path(settings.cache_dir) if settings.cache_dir is not None else Path(str(out) + ".cache")
    # Before anything is computed: a fit that trains and then cannot save loses the training.
    ensure_writable(out, "the steering file (--out)")
    ensure_folder(cache, "the extraction cache (--cache-dir)" if settings.cache_dir is not None
                  else "the extraction cache (<out>.cache; --cache-dir moves it)")
    family = check_pretrained(settings.pretrained, settings.model)  # before loading any weights
    check_layer(settings.pretrained, settings.layer)
    if settings.hidden is None:
        from transformers import AutoConfig

        hidden = family.mlp_hidden(AutoConfig.from_pretrained(settings.pretrained).model_type)
    else:
        hidden = settings.hidden
    items = load_items(settings.data, settings.limit)
    encoder = load_encoder(settings.model, settings.pretrained, settings.device, settings.dtype)
    needs_mcs = implementation(settings.method).needs_mcs_at_fit
    ex = extract(encoder, items, settings.layer, cache, settings.mcs if needs_mcs else None, settings.batch_size, progress)

    r_v = ex.r_v
    column = implementation(settings.method).reliance_column
    if column is not None:  # amps_oracle: a known per-item reliance from the data instead of the MCS
        r_v = data_reliance(items, ex.ids, column)

    model = encoder.model
    train_device = encoder.device if encoder.device.type == "cuda" else torch.device("cpu")
    x_all, d_all = ex.hidden["none"].to(train_device), ex.d.to(train_device)
    position = {item: i for i, item in enumerate(ex.ids)}
    folds, losses, fold_anchors = [], {}, {}
    for name, fit_ids, held_out in split_folds(ex.ids, ex.categories, settings.folds, settings.seed):
        rows = [position[i] for i in fit_ids]
        tensors, losses[name], anchors = fit_fold(
            settings.method, x_all[rows], d_all[rows], settings, hidden,
            None if r_v is None else r_v[rows], [ex.categories[i] for i in rows], progress,
        )
        if anchors:
            fold_anchors[name] = anchors
        folds.append(Fold(name, fit_ids, held_out, tensors, None if settings.method == "mean" else hidden))

    architectures = getattr(model.config, "architectures", None) or [type(model).__name__]
    adapter = adapter_for(model)
    record = {**settings.to_dict(), "hidden": hidden, "n_items": len(ex.ids), "data_description": items.description,
              "train_losses": losses, "fold_anchors": fold_anchors}
    steering = SteeringFile(
        method=settings.method, layer=settings.layer, hidden_size=adapter.hidden_size(model),
        num_layers=len(adapter.decoder_layers(model)), model_id=settings.pretrained, architecture=architectures[0],
        folds=folds, settings=record, anchors=category_anchors(r_v, ex.categories) if r_v is not None else {},
        data_hash=items.data_hash,
    )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        digest = steering.save(out)  # a temp file renamed into place: `out` is whole or untouched
    except (OSError, SafetensorError) as error:  # disk full, read-only file system, ...
        tmp_path(out).unlink(missing_ok=True)
        raise output_error(out, "the steering file", error,
                           f"nothing was written there; the extraction cache {cache} is kept, so a rerun "
                           "only retrains") from error
    steering.source = str(out)
    print(summary(steering, losses, ex, out, digest))
    return steering


def summary(steering, losses: dict, ex, out: Path, digest: str) -> str:
    """A few lines for the terminal: items, folds, per-fold final train loss."""
    lines = [
        f"fitted {steering.method} at layer {steering.layer} on {len(ex.ids)} items "
        f"({ex.computed_hidden} extracted, {len(ex.ids) - ex.computed_hidden} from the cache"
        + (f"; MCS computed for {ex.computed_mcs}" if ex.r_v is not None else "") + ")",
    ]
    for fold in steering.folds:
        loss = losses.get(fold.name) or {}
        loss_text = ", ".join(f"{k} {v:.4g}" for k, v in loss.items()) if loss else "no training (mean)"
        lines.append(f"  {fold.name}: fit {len(fold.fit_ids)}, held out {len(fold.held_out_ids)}; train loss {loss_text}")
    lines.append(f"wrote {out} (sha256 {digest[:16]})")
    return "\n".join(lines)
