"""`FitSettings`: everything that decides a fit (`amps_eval.fit` runs it).

Apart from the fit, without torch, so that the command line reads its defaults at once.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from amps_eval.mcs.settings import MCSSettings
from amps_eval.methods.registry import FIT_METHODS, info
from amps_eval.methods.steering_config import SteeringConfig
from amps_eval.steering.scaling import ANCHOR_FLOOR, GAMMA_MAX
from amps_eval.steering.train_settings import TrainSettings
from amps_eval.vocabulary import PAPER_LAYER

__all__ = ["FitSettings"]


@dataclass(frozen=True)
class FitSettings:
    """Everything that decides a fit; recorded in the steering file (``to_dict``).

    ``beta``, ``convention`` and ``mcs`` are the runs' steering settings: their defaults and their
    validation are `SteeringConfig`'s (the one declaration), not repeated here.
    beta None -> the method's (``amps``: `SteeringConfig`'s 1, as the paper; ``amps_beta0``: 0, which is also the only
    value it accepts). hidden None -> the family's ``mlp_hidden`` (L2S: 100, 400 for the Qwen-VL types). data None ->
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
    convention: str = SteeringConfig.convention
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
        from amps_eval.plugin import MODEL_CLASSES
        from amps_eval.vocabulary import DTYPES

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
            "gamma_max": (isinstance(self.gamma_max, (int, float)) and math.isfinite(self.gamma_max)
                          and self.gamma_max >= 1, "a finite number >= 1"),
            "anchor_floor": (isinstance(self.anchor_floor, (int, float)) and 0 <= self.anchor_floor < 1,
                             "a number in [0, 1)"),
            "batch_size": (is_int(self.batch_size, 1), "an int >= 1"),
            "dtype": (self.dtype in DTYPES, f"one of {DTYPES}"),
            "limit": (is_int(self.limit, 1, none_ok=True), "None or an int >= 1"),
            "seed": (is_int(self.seed, -(2**63)), "an int"),
        }
        bad = [f"{name}={getattr(self, name)!r} (expected {what})" for name, (ok, what) in checks.items() if not ok]
        try:  # beta, convention and mcs: validated where they are declared
            SteeringConfig(None, beta=SteeringConfig.beta if self.beta is None else self.beta,
                           convention=self.convention, mcs=self.mcs)
        except ValueError as error:
            bad.append(str(error))
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
        return float(fixed if fixed is not None else SteeringConfig.beta if self.beta is None else self.beta)

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("train", "mcs")}
        out.update(train=self.train.to_dict(), mcs=self.mcs.to_dict(), beta=self.fit_beta)
        for key in ("data", "cache_dir"):
            out[key] = None if out[key] is None else str(out[key])
        return out
