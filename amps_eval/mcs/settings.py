"""The MCS settings, declared once: `MCSSettings` (every field validated here), the noise and
ratio vocabularies, and `MCS_KEYS`, the fields that change an MCS value (the item cache's key and
the comparison of a steering file's recorded settings both use it). The decisions behind the
defaults are in `amps_eval.mcs.score`'s docstring."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from typing import Any

from amps_eval.vocabulary import TARGETS

__all__ = ["ADDED_SETTINGS", "BATCHING", "MCSSettings", "MCS_KEYS", "MODALITIES", "NOISE_DESIGNS", "RATIOS"]

NOISE_DESIGNS: tuple[str, ...] = ("gaussian", "orthogonal")
"""The noise of a round of draws (`amps_eval.mcs.noise`): independent Gaussian, or orthogonalised."""

MODALITIES: tuple[str, str] = TARGETS  # the order of every per-modality axis: vision, then text
RATIOS: tuple[str, ...] = ("sums", "per_sigma", "per_draw")


@dataclass(frozen=True)
class MCSSettings:
    """Settings of the MCS estimate (module docstring explains the defaults).

    sigmas: noise levels (relative to the perturbed entries' std when ``relative``).
    relative: noise std = sigma * std of that layer's K (resp. V) at the perturbed positions.
    draws: Monte Carlo draws N per (sigma, modality); with ``tolerance``, the most an item takes.
    seed: base seed; each sample's noise uses ``sample_seed(seed, sample_id)``.
    eps: lower bound on the CE in the score's denominator.
    batched: all perturbations of the batch in one forward/backward (False: one per pass).
    max_copies_per_pass: in batched mode, at most this many perturbed cache copies per pass
        (None = as many as fit the memory budget, see `copies_per_pass`; the split never changes
        the noise).
    antithetic: draws come in pairs (z, -z): draw 2k+1 reuses draw 2k's noise negated (draws must be even).
    common_sigmas: every sigma reuses the standard normals of the first sigma (same draw index).
    common_modalities: the text perturbation reuses the vision perturbation's standard normals (one
        draw of max(n_vision, n_text) positions per layer and K/V, each modality takes its first n_m).
    ratio: how r_v is formed from the scores: "sums" (C_V / (C_V + C_T), the paper's Eq. 7),
        "per_sigma" (the mean over sigmas of C_V(s) / (C_V(s) + C_T(s))), "per_draw" (the mean over
        sigmas and draws of the per-draw ratio score_V / (score_V + score_T)).
    tolerance: None: every item takes ``draws`` draws. A number: the sequential estimator
        (`amps_eval.mcs.score`, "Sequential draws"): an item takes ``min_draws`` draws, then
        ``round_draws`` more per round until its r_v standard error (`mcs_stderr`) is at most
        ``tolerance``, or it has ``draws``.
    min_draws: the draws of an item's first round (sequential only; at most ``draws``: with
        ``draws <= min_draws`` the sequential estimator is the fixed one). A standard error needs two
        draws, so a sample with one draw always takes the next round.
    round_draws: the draws each later round adds (sequential only; the last round stops at ``draws``).
    noise_design: ``"gaussian"`` (independent draws) or ``"orthogonal"`` (the draws of each round
        of a (sample, sigma, modality) made mutually orthogonal, each keeping its Gaussian norm, so
        every draw is still exactly N(0, I); `amps_eval.mcs.noise`). ``"orthogonal"`` cannot be
        combined with ``antithetic`` (its pairs are collinear) or ``common_modalities`` (the text
        perturbation takes a slice of the vision draw, which orthogonality does not survive).
    """

    sigmas: tuple[float, ...] = (0.05, 0.1, 0.2)
    relative: bool = True
    draws: int = 8
    seed: int = 0
    eps: float = 1e-8
    batched: bool = True
    max_copies_per_pass: int | None = None
    antithetic: bool = False
    common_sigmas: bool = False
    common_modalities: bool = False
    ratio: str = "per_sigma"
    tolerance: float | None = 0.05
    min_draws: int = 4
    round_draws: int = 2
    noise_design: str = "gaussian"

    def __post_init__(self) -> None:
        sigmas = self.sigmas
        if isinstance(sigmas, (int, float)):
            sigmas = (sigmas,)
        try:
            sigmas = tuple(float(s) for s in sigmas)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"sigmas must be a sequence of positive numbers, got {self.sigmas!r}") from exc
        if not sigmas:
            raise ValueError("sigmas must not be empty")
        if any(not math.isfinite(s) or s <= 0 for s in sigmas):
            raise ValueError(f"sigmas must be finite and > 0, got {sigmas!r}")
        object.__setattr__(self, "sigmas", sigmas)
        if not isinstance(self.relative, bool):
            raise ValueError(f"relative must be a bool, got {self.relative!r}")
        if isinstance(self.draws, bool) or not isinstance(self.draws, int) or self.draws < 1:
            raise ValueError(f"draws must be an int >= 1, got {self.draws!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)):
            raise ValueError(f"eps must be a positive float, got {self.eps!r}")
        if not math.isfinite(self.eps) or self.eps <= 0:
            raise ValueError(f"eps must be finite and > 0, got {self.eps!r}")
        object.__setattr__(self, "eps", float(self.eps))
        if not isinstance(self.batched, bool):
            raise ValueError(f"batched must be a bool, got {self.batched!r}")
        m = self.max_copies_per_pass
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ValueError(f"max_copies_per_pass must be None or an int >= 1, got {m!r}")
        for name in ("antithetic", "common_sigmas", "common_modalities"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.antithetic and self.draws % 2:
            raise ValueError(f"antithetic draws come in pairs: draws must be even, got {self.draws!r}")
        if self.ratio not in RATIOS:
            raise ValueError(f"ratio must be one of {RATIOS}, got {self.ratio!r}")
        t = self.tolerance
        if t is not None:
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
                raise ValueError(f"tolerance must be None or a finite number > 0, got {t!r}")
            object.__setattr__(self, "tolerance", float(t))
        for name in ("min_draws", "round_draws"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
            if self.antithetic and value % 2:
                raise ValueError(f"antithetic draws come in pairs: {name} must be even, got {value!r}")
        if self.noise_design not in NOISE_DESIGNS:
            raise ValueError(f"noise_design must be one of {NOISE_DESIGNS}, got {self.noise_design!r}")
        if self.noise_design == "orthogonal":
            for name in ("antithetic", "common_modalities"):
                if getattr(self, name):
                    raise ValueError(f"noise_design='orthogonal' cannot be combined with {name}=True (antithetic "
                                     "pairs are collinear; common_modalities slices the draws); turn one off")

    @property
    def perturbations_per_sample(self) -> int:
        """Perturbations of one sample; with ``tolerance``, the most one sample takes."""
        return len(self.sigmas) * len(MODALITIES) * self.draws

    @property
    def sequential(self) -> bool:
        return self.tolerance is not None

    def rounds(self) -> list[int]:
        """The draws of each round of an item, in order: ``[draws]`` with a fixed count; else
        ``min_draws``, then ``round_draws`` each, the last cut to reach ``draws`` exactly."""
        if not self.sequential:
            return [self.draws]
        first = min(self.min_draws, self.draws)  # draws is the most an item takes
        out, total = [first], first
        while total < self.draws:
            out.append(min(self.round_draws, self.draws - total))
            total += out[-1]
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sigmas"] = list(self.sigmas)
        d["modalities"] = list(MODALITIES)
        d["noise"] = "relative_to_perturbed_entries_std" if self.relative else "absolute"
        return d


BATCHING = ("batched", "max_copies_per_pass")
MCS_KEYS = tuple(f.name for f in dataclasses.fields(MCSSettings) if f.name not in BATCHING)
"""The MCS settings that change its values: every field but the batching ones (derived, so a new
setting is compared without being listed here)."""

ADDED_SETTINGS: dict[str, Any] = {"noise_design": "gaussian"}
"""MCS settings added after item caches and steering files recorded the MCS settings, with the value
everything recorded before them used: at that value a setting is left out of the item cache's key
(`amps_eval.item_cache.mcs_values_key`, so caches written before stay valid), and a steering file
that does not record it is read as having it (`amps_eval.methods.mean_mcs.check_mcs_settings`)."""
