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

import math
import random
from dataclasses import asdict, dataclass, field, fields
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

_STEERING = {f.name: f.default for f in fields(SteeringConfig)}
"""The steering settings' defaults (`amps_eval.methods.steering.SteeringConfig`), shared with the runs."""

__all__ = ["ALL", "FitSettings", "amps_targets", "category_anchors", "fit", "fit_fold", "split_folds"]


@dataclass(frozen=True)
class FitSettings:
    """Everything that decides a fit; recorded in the steering file (``to_dict``).

    beta None -> the method's (``amps``: `SteeringConfig`'s 1, as the paper; ``amps_beta0``: 0, which is also the only
    value it accepts). hidden None -> the family's ``default_mlp_hidden`` (L2S: 100, 400 for Qwen). data None ->
    ``resolve_source()``, as the tasks. cache_dir None -> ``<out>.cache/``. limit: the first N items.
    folds=1 fits on everything (one fold "all" with no held-out items).
    """

    model: str
    pretrained: str
    method: str
    layer: int = PAPER_LAYER
    folds: int = 2
    hidden: int | None = None
    train: TrainSettings = field(default_factory=TrainSettings)
    beta: float | None = None
    convention: str = _STEERING["convention"]
    gamma_max: float = GAMMA_MAX  # upper bound of gamma (AMPS targets, mean_mcs strengths)
    anchor_floor: float = ANCHOR_FLOOR  # lower bound of the anchor reliance in Eq. 9
    mcs: MCSSettings = field(default_factory=MCSSettings)
    batch_size: int = 4
    device: str | None = None
    dtype: str = "auto"
    data: str | Path | None = None
    cache_dir: str | Path | None = None
    limit: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        from amps_eval.settings import DTYPES
        from amps_eval.plugin import MODEL_CLASSES

        def is_int(value, low, none_ok=False):
            return (none_ok and value is None) or (isinstance(value, int) and not isinstance(value, bool) and value >= low)

        checks = {
            "model": (self.model in MODEL_CLASSES, f"one of {tuple(MODEL_CLASSES)}"),
            "pretrained": (isinstance(self.pretrained, str) and bool(self.pretrained), "a hub id or a local folder"),
            "method": (self.method in FIT_METHODS, f"one of {FIT_METHODS}"),
            "layer": (is_int(self.layer, 0), "a decoder layer index >= 0"),
            "folds": (is_int(self.folds, 1), "an int >= 1"),
            "hidden": (is_int(self.hidden, 1, none_ok=True), "None or an int >= 1"),
            "train": (isinstance(self.train, TrainSettings), "a TrainSettings"),
            "beta": (self.beta is None or (isinstance(self.beta, (int, float)) and math.isfinite(self.beta)
                                           and self.beta >= 0), "None or a finite number >= 0"),
            "convention": (self.convention in CONVENTIONS, f"one of {CONVENTIONS}"),
            "gamma_max": (isinstance(self.gamma_max, (int, float)) and math.isfinite(self.gamma_max)
                          and self.gamma_max >= 1, "a finite number >= 1"),
            "anchor_floor": (isinstance(self.anchor_floor, (int, float)) and 0 <= self.anchor_floor < 1,
                             "a number in [0, 1)"),
            "mcs": (isinstance(self.mcs, MCSSettings), "an MCSSettings"),
            "batch_size": (is_int(self.batch_size, 1), "an int >= 1"),
            "dtype": (self.dtype in DTYPES, f"one of {DTYPES}"),
            "limit": (is_int(self.limit, 1, none_ok=True), "None or an int >= 1"),
            "seed": (is_int(self.seed, -(2**63)), "an int"),
        }
        bad = [f"{name}={getattr(self, name)!r} (expected {what})" for name, (ok, what) in checks.items() if not ok]
        fixed = info(self.method).fit_beta if self.method in FIT_METHODS else None
        if fixed is not None and self.beta is not None and self.beta != fixed:
            bad.append(f"beta={self.beta!r} (method={self.method} fixes beta at {fixed:g}; use --method amps to vary it)")
        if self.method == "amps" and self.beta == 0:
            bad.append("beta=0 with method=amps (that is the ablation: use --method amps_beta0, so that the tables "
                       "label it as such)")
        if bad:
            raise ValueError("invalid fit settings: " + "; ".join(bad))

    @property
    def fit_beta(self) -> float:
        """The beta the fit uses: fixed by the method, else the setting, else 1."""
        fixed = info(self.method).fit_beta
        return float(fixed if fixed is not None else _STEERING["beta"] if self.beta is None else self.beta)

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("train", "mcs")}
        out.update(train=self.train.to_dict(), mcs=self.mcs.to_dict(), beta=self.fit_beta)
        for key in ("data", "cache_dir"):
            out[key] = None if out[key] is None else str(out[key])
        return out


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
    from amps_eval.families import check_pretrained
    from amps_eval.encoding import load_encoder
    from amps_eval.fit_data import check_layer, load_items
    from amps_eval.steering.file import Fold, SteeringFile
    from amps_eval.steering.hooks import decoder_layers, hidden_size

    out = Path(out)
    cache = Path(settings.cache_dir) if settings.cache_dir is not None else Path(str(out) + ".cache")
    # Before anything is computed: a fit that trains and then cannot save loses the training.
    ensure_writable(out, "the steering file (--out)")
    ensure_folder(cache, "the extraction cache (--cache-dir)" if settings.cache_dir is not None
                  else "the extraction cache (<out>.cache; --cache-dir moves it)")
    family = check_pretrained(settings.pretrained, settings.model)  # before loading any weights
    check_layer(settings.pretrained, settings.layer)
    hidden = settings.hidden or family.default_mlp_hidden
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
    record = {**settings.to_dict(), "hidden": hidden, "n_items": len(ex.ids), "data_description": items.description,
              "train_losses": losses, "fold_anchors": fold_anchors}
    steering = SteeringFile(
        method=settings.method, layer=settings.layer, hidden_size=hidden_size(model),
        num_layers=len(decoder_layers(model)), model_id=settings.pretrained, architecture=architectures[0],
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
