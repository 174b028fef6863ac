"""`SteeringConfig`: how a run steers (`amps_eval.methods.steering` applies it).

Apart from the steering code, without torch at import, so that the command line and the fit
settings read its defaults at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from amps_eval.methods.registry import STEERING_METHODS
from amps_eval.mcs.settings import MCSSettings

__all__ = ["FLOAT32_MAX", "SteeringConfig"]

FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True)
class SteeringConfig:
    """How a run steers: the one definition of these settings and of their defaults.

    The wrappers' model arguments ``alpha``, ``positions``, ``beta``, ``convention`` and ``mcs_*``
    default to these fields (`amps_eval.settings.WrapperSettings.steering_config` builds one), and
    ``amps-eval fit`` records its ``convention`` / ``beta`` / ``mcs`` with the same defaults.
    method None: only the strength settings, checked for a run that does not steer.
    """

    method: str | None
    alpha: float = 1.0  # the steering strength (every method)
    positions: str = "all"  # where the shift is added (`amps_eval.steering.hooks.POSITIONS`)
    beta: float = 1.0  # mean_mcs / AMPS: strength of the per-sample scaling (Eq. 9)
    convention: str = "prose"  # sign convention of Eq. 9 (`amps_eval.steering.scaling.CONVENTIONS`)
    mcs: MCSSettings = MCSSettings()  # mean_mcs: must equal those the file's anchors were made with
    item_cache: str | None = None  # mean_mcs: the item cache folder its MCS is read from / written to

    def __post_init__(self) -> None:
        from amps_eval.steering.scaling import CONVENTIONS
        from amps_eval.vocabulary import POSITIONS, did_you_mean

        if self.method is not None and self.method not in STEERING_METHODS:
            raise ValueError(f"unknown steering method {self.method!r}{did_you_mean(self.method, STEERING_METHODS)}; "
                             f"expected one of {STEERING_METHODS}")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions={self.positions!r} is not one of {POSITIONS}"
                             f"{did_you_mean(self.positions, POSITIONS)}")
        if self.convention not in CONVENTIONS:
            raise ValueError(f"convention={self.convention!r} is not one of {CONVENTIONS}"
                             f"{did_you_mean(self.convention, CONVENTIONS)}")
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and abs(value) < FLOAT32_MAX):
                raise ValueError(f"{name}={value} is not a finite number a float32 model can take "
                                 f"(|{name}| < {FLOAT32_MAX:.3g}); steer with a smaller {name}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if not isinstance(self.mcs, MCSSettings):
            raise ValueError(f"mcs must be an MCSSettings, got {type(self.mcs).__name__}")
