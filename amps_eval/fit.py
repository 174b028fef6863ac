"""`amps-eval fit`: fit mean-steering vectors, L2S modules or AMPS modules on MC2 items.

Pipeline (AMPS paper, Eq. 9-13; docs/method.md, "Scaling", "Targets", "Module", "Cross-fitting"):

1. every item's prompt [I,T] and its two instructed variants [I,T,P_v], [I,T,P_t] are run through
   the model and the output of decoder layer ``layer`` at the last prompt token is kept
   (``amps_eval.extract``, cached so an interrupted fit resumes); for ``mean`` and ``amps`` also
   the item's MCS on [I,T] (``mean`` needs it only for the anchors that ``mean_mcs`` reads);
2. d = h[P_v] - h[P_t] per item; the items are split into K folds (cross-fitting: each fold's
   vector/module is fitted on the other folds' items and serves its own held-out items);
3. per fold: ``mean`` -> the mean of d; ``l2s`` -> an MLP h[I,T] -> d; ``amps`` -> one MLP per
   direction on the gamma-scaled targets of Eq. 11 (``amps_targets``), with per-category anchors
   taken on the fold's own fit items (the held-out items must not leak into their steering);
4. both directions are stored: for ``mean`` / ``l2s`` the text entries are exactly the negated
   vision ones (for an MLP: the decoder negated), for ``amps`` two separately trained modules.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import Tensor

from amps_eval.files import ensure_folder, ensure_writable, output_error, tmp_path
from amps_eval.steering.mcs import MCSSettings
from amps_eval.steering.module import TrainSettings, train_mlp
from amps_eval.steering.scaling import ANCHOR_FLOOR, CONVENTIONS, DIRECTIONS, GAMMA_MAX, gamma

__all__ = ["FitSettings", "amps_targets", "category_anchors", "fit", "fit_fold", "split_folds"]

METHODS = ("mean", "l2s", "amps")
ALL = "__all__"  # the anchor over every item, next to the per-category ones


@dataclass(frozen=True)
class FitSettings:
    """Everything that decides a fit; recorded in the steering file (``to_dict``).

    hidden None -> the wrapper class's ``default_mlp_hidden`` (L2S: 100, 400 for Qwen). data None ->
    ``resolve_source()``, as the tasks. cache_dir None -> ``<out>.cache/``. limit: the first N items.
    folds=1 fits on everything (one fold "all" with no held-out items).
    """

    model: str
    pretrained: str
    method: str
    layer: int = 14
    folds: int = 2
    hidden: int | None = None
    train: TrainSettings = field(default_factory=TrainSettings)
    beta: float = 1.0
    convention: str = "prose"
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
        from amps_eval.model_wrappers.settings import DTYPES
        from amps_eval.plugin import MODEL_CLASSES

        def is_int(value, low, none_ok=False):
            return (none_ok and value is None) or (isinstance(value, int) and not isinstance(value, bool) and value >= low)

        checks = {
            "model": (self.model in MODEL_CLASSES, f"one of {tuple(MODEL_CLASSES)}"),
            "pretrained": (isinstance(self.pretrained, str) and bool(self.pretrained), "a hub id or a local folder"),
            "method": (self.method in METHODS, f"one of {METHODS}"),
            "layer": (is_int(self.layer, 0), "a decoder layer index >= 0"),
            "folds": (is_int(self.folds, 1), "an int >= 1"),
            "hidden": (is_int(self.hidden, 1, none_ok=True), "None or an int >= 1"),
            "train": (isinstance(self.train, TrainSettings), "a TrainSettings"),
            "beta": (isinstance(self.beta, (int, float)) and math.isfinite(self.beta), "a finite number"),
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
        if bad:
            raise ValueError("invalid fit settings: " + "; ".join(bad))

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("train", "mcs")}
        out.update(train=self.train.to_dict(), mcs=self.mcs.to_dict(), beta=float(self.beta))
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


def category_anchors(r_v: Tensor, categories: list[str]) -> dict[str, float]:
    """mu_v of Eq. 9: the mean visual ratio per category, plus ``"__all__"`` over every item."""
    anchors = {ALL: float(torch.as_tensor(r_v, dtype=torch.float64).mean())}
    for category in sorted(set(categories)):
        rows = [i for i, c in enumerate(categories) if c == category]
        anchors[category] = float(torch.as_tensor(r_v, dtype=torch.float64)[rows].mean())
    return anchors


def amps_targets(
    d: Tensor, r_v: Tensor, categories: list[str], anchors: dict[str, float], beta: float, direction: str,
    convention: str = "prose", gamma_max: float | None = GAMMA_MAX, anchor_floor: float = ANCHOR_FLOOR,
) -> Tensor:
    """Eq. 11 per item: (1 + gamma_i) * d_i toward the image, (1 + gamma_i) * (-d_i) toward the text.

    gamma_i is Eq. 9 (``scaling.gamma``) with the anchor of item i's category; with beta = 0 every
    gamma is 1 and the targets are 2 * (+-d). Pure: [N, D] float32 out.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    missing = sorted(set(categories) - set(anchors))
    if missing:
        raise ValueError(f"no anchor for categor(y/ies) {missing}; anchors cover {sorted(anchors)}")
    mu = torch.tensor([anchors[c] for c in categories], dtype=torch.float64)
    g = gamma(torch.as_tensor(r_v, dtype=torch.float64), mu, beta, direction, convention, cap=gamma_max,
              anchor_floor=anchor_floor)
    sign = 1.0 if direction == "vision" else -1.0
    return ((1.0 + g) * sign).to(torch.float32)[:, None].to(d.device) * d.float()


def fit_fold(
    method: str, x: Tensor, d: Tensor, settings: FitSettings, hidden: int,
    r_v: Tensor | None = None, categories: list[str] | None = None, progress: bool = False,
) -> tuple[dict[str, Tensor], dict[str, float], dict[str, float]]:
    """One fold on its fit items: (tensors for both directions, final train loss per direction,
    the fold's own anchors (mean and amps))."""
    if method == "mean":  # the fold's anchors are mean_mcs's: an item is scaled by anchors that did not see it
        v = d.float().mean(dim=0).cpu()
        anchors = category_anchors(r_v, categories) if r_v is not None and categories is not None else {}
        return {"vision.vector": v, "text.vector": -v}, {}, anchors
    if method == "l2s":
        mlp, history = train_mlp(x, d, hidden, settings.train, progress)
        state = {k: t.detach().cpu().clone() for k, t in mlp.state_dict().items()}
        tensors = {f"vision.{k}": t for k, t in state.items()}
        tensors.update({f"text.{k}": (-t if k == "decoder.weight" else t.clone()) for k, t in state.items()})
        return tensors, {"vision": history[-1], "text": history[-1]}, {}
    if r_v is None or categories is None:
        raise ValueError("amps needs each item's r_v and category")
    anchors = category_anchors(r_v, categories)
    tensors, losses = {}, {}
    for direction in DIRECTIONS:
        y = amps_targets(d, r_v, categories, anchors, settings.beta, direction, settings.convention,
                         settings.gamma_max, settings.anchor_floor)
        mlp, history = train_mlp(x, y, hidden, settings.train, progress)
        tensors.update({f"{direction}.{k}": t.detach().cpu().clone() for k, t in mlp.state_dict().items()})
        losses[direction] = history[-1]
    return tensors, losses, anchors


def fit(settings: FitSettings, out: Path, progress: bool = True):
    """Run a fit and write the steering file to ``out``; returns the SteeringFile (see module doc).

    ``out`` and the cache folder are checked first (an unwritable path fails before any weights
    load, naming the path); ``out`` is written through a temp file, so it is whole or untouched, and
    a failed write (disk full, read-only) raises `amps_eval.files.OutputError` naming it."""
    from amps_eval.extract import extract
    from amps_eval.fit_data import check_layer, load_items, load_wrapper, wrapper_class
    from amps_eval.steering.file import Fold, SteeringFile
    from amps_eval.steering.hooks import decoder_layers, hidden_size

    out = Path(out)
    cache = Path(settings.cache_dir) if settings.cache_dir is not None else Path(str(out) + ".cache")
    # Before anything is computed: a fit that trains and then cannot save loses the training.
    ensure_writable(out, "the steering file (--out)")
    ensure_folder(cache, "the extraction cache (--cache-dir)" if settings.cache_dir is not None
                  else "the extraction cache (<out>.cache; --cache-dir moves it)")
    check_layer(settings.pretrained, settings.layer)  # before loading any weights
    hidden = settings.hidden or getattr(wrapper_class(settings.model), "default_mlp_hidden", 100)
    items = load_items(settings.data, settings.limit)
    wrapper = load_wrapper(settings.model, settings.pretrained, settings.device, settings.dtype, settings.batch_size)
    needs_mcs = settings.method in ("mean", "amps")
    ex = extract(wrapper, items, settings.layer, cache, settings.mcs if needs_mcs else None, settings.batch_size, progress)

    model = wrapper.model
    train_device = wrapper.device if wrapper.device.type == "cuda" else torch.device("cpu")
    x_all, d_all = ex.hidden["none"].to(train_device), ex.d.to(train_device)
    position = {item: i for i, item in enumerate(ex.ids)}
    folds, losses, fold_anchors = [], {}, {}
    for name, fit_ids, held_out in split_folds(ex.ids, ex.categories, settings.folds, settings.seed):
        rows = [position[i] for i in fit_ids]
        tensors, losses[name], anchors = fit_fold(
            settings.method, x_all[rows], d_all[rows], settings, hidden,
            None if ex.r_v is None else ex.r_v[rows], [ex.categories[i] for i in rows], progress,
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
        folds=folds, settings=record, anchors=category_anchors(ex.r_v, ex.categories) if ex.r_v is not None else {},
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
