"""`TrainSettings`: how the steering MLP is trained (`amps_eval.steering.module` trains it).

Apart from the module, without torch, so that the command line reads its defaults at once.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

__all__ = ["LOSSES", "SVD_INITS", "TrainSettings"]

LOSSES = ("l2s", "mse")
SVD_INITS = ("unit", "scaled", "none")


@dataclass(frozen=True)
class TrainSettings:
    """How the steering MLP is trained (recorded in the steering file's settings).

    loss: "l2s" (per sample MSE + weight_l1 * L1 - weight_cos * min(1, epoch / cos_ramp_epochs) * cos)
    or "mse" (AMPS Eq. 12). warmup_fraction: share of the optimiser steps in the linear warm-up
    before the cosine decay. svd_init: "unit" (the reference), "scaled" (columns s_j / sqrt(N) * V_j)
    or "none". val_fraction: share of the fit items held out to pick the best epoch (0: keep the
    last epoch); val_weight_cos: the cosine weight of the validation loss.
    """

    loss: str = "l2s"
    lr: float = 5e-5
    batch_size: int = 64
    epochs: int = 100
    warmup_fraction: float = 0.5
    weight_cos: float = 0.1
    weight_l1: float = 1.0
    cos_ramp_epochs: int = 100
    weight_decay: float = 0.0
    svd_init: str = "unit"
    val_fraction: float = 100 / 1200
    val_weight_cos: float = 0.05
    seed: int = 0

    @classmethod
    def reference(cls, **overrides) -> "TrainSettings":
        """The L2S reference recipe (the defaults), with ``overrides``."""
        return replace(cls(), **overrides)

    @classmethod
    def mse_v1(cls, **overrides) -> "TrainSettings":
        """amps-eval 0.1's recipe: plain MSE, scaled SVD init, 10% warm-up, last epoch."""
        return replace(cls(loss="mse", warmup_fraction=0.1, weight_l1=1e-3, cos_ramp_epochs=0,
                           svd_init="scaled", val_fraction=0.0), **overrides)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.svd_init not in SVD_INITS:
            raise ValueError(f"svd_init must be one of {SVD_INITS}, got {self.svd_init!r}")
        checks = {
            "lr": self.lr > 0 and math.isfinite(self.lr),
            "batch_size": isinstance(self.batch_size, int) and self.batch_size >= 1,
            "epochs": isinstance(self.epochs, int) and self.epochs >= 1,
            "warmup_fraction": 0.0 <= self.warmup_fraction < 1.0,
            "weight_cos": self.weight_cos >= 0,
            "weight_l1": self.weight_l1 >= 0,
            "cos_ramp_epochs": isinstance(self.cos_ramp_epochs, int) and self.cos_ramp_epochs >= 0,
            "weight_decay": self.weight_decay >= 0,
            "val_fraction": 0.0 <= self.val_fraction < 1.0,
            "val_weight_cos": self.val_weight_cos >= 0,
            "seed": isinstance(self.seed, int),
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid TrainSettings: {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")

    def to_dict(self) -> dict:
        return asdict(self)

    def cos_weight(self, epoch: int) -> float:
        """The cosine weight of the training loss in ``epoch`` (counted from 0)."""
        ramp = 1.0 if self.cos_ramp_epochs == 0 else min(1.0, epoch / self.cos_ramp_epochs)
        return ramp * self.weight_cos
