"""The pure statistics of the MCS: the CE, the per-perturbation score, the visual ratio r_v in its
three forms and their Monte Carlo standard errors (formulas in each function's docstring)."""

from __future__ import annotations

import math
from typing import Any

import torch

from amps_eval.mcs.kv_cache import _work_dtype
from amps_eval.mcs.settings import RATIOS

__all__ = ["cross_entropy", "mcs_ratio", "mcs_score", "mcs_stderr", "visual_ratio"]


def cross_entropy(p_x: torch.Tensor, logits_z: torch.Tensor) -> torch.Tensor:
    """CE(p_x, p_z) = -sum_v p_x[v] log softmax(logits_z)[v] over the last dim, in float32
    (float64 for a float64 model).

    ``p_x`` is a probability vector (treated as a constant); entries with p_x == 0 contribute 0.
    """
    work = _work_dtype(logits_z.dtype)
    log_pz = torch.log_softmax(logits_z.to(work), dim=-1)
    p_x = p_x.to(work)
    terms = torch.where(p_x > 0, p_x * log_pz, torch.zeros((), dtype=log_pz.dtype, device=log_pz.device))
    return -terms.sum(dim=-1)


def mcs_score(grad_sq_norm: torch.Tensor, ce: torch.Tensor, eps: float) -> torch.Tensor:
    """Eq. 7 per perturbation: ||grad||^2 / max(L, eps) (elementwise, float64)."""
    return grad_sq_norm.double() / ce.double().clamp_min(eps)


def visual_ratio(c_v: torch.Tensor, c_t: torch.Tensor) -> torch.Tensor:
    """r_v = C_V / (C_V + C_T) (elementwise; NaN where both are 0, callers check)."""
    c_v = c_v.double()
    c_t = c_t.double()
    return c_v / (c_v + c_t)


_ESTIMATOR_KEYS = ("ratio", "antithetic", "common_sigmas", "common_modalities")


def _estimator(settings: dict[str, Any]) -> dict[str, Any]:
    """The `mcs_stderr` keywords recorded in a settings dict (absent keys: the plain estimator)."""
    return {k: settings[k] for k in _ESTIMATOR_KEYS if k in settings}


def mcs_ratio(scores: torch.Tensor, ratio: str = "sums") -> torch.Tensor:
    """r_v [B] from scores [B, S, 2, N] (float64; NaN where a denominator is 0, callers check).

    "sums": C_V / (C_V + C_T) with C_m the mean over sigmas and draws (the paper's Eq. 7);
    "per_sigma": mean over sigmas s of C_V(s) / (C_V(s) + C_T(s)), C_m(s) the mean over draws;
    "per_draw": mean over sigmas and draws of score_V / (score_V + score_T) (draw n of the vision
    perturbation paired with draw n of the text one).
    """
    scores = scores.double()
    if ratio == "sums":
        c = scores.mean(dim=(1, 3))
        return visual_ratio(c[:, 0], c[:, 1])
    if ratio == "per_sigma":
        c = scores.mean(dim=3)  # [B, S, 2]
        return visual_ratio(c[..., 0], c[..., 1]).mean(dim=1)
    if ratio == "per_draw":
        return visual_ratio(scores[:, :, 0], scores[:, :, 1]).mean(dim=(1, 2))
    raise ValueError(f"ratio must be one of {RATIOS}, got {ratio!r}")


def _se_of_weighted_mean(x: torch.Tensor, w: torch.Tensor, dependent: torch.Tensor) -> torch.Tensor:
    """Standard error of sum_k w_k mean_u x[k, u] over U independent units, [B]; x [B, K, U],
    w [B, K]; ``dependent`` [K, K] bool says which blocks share noise (only their sample
    covariances, ddof 1, enter; the others are independent by construction)."""
    units = x.shape[-1]
    xc = x - x.mean(dim=-1, keepdim=True)
    cov = xc @ xc.transpose(1, 2) / (units - 1)  # [B, K, K]
    cov = cov * dependent.to(cov.dtype)
    var = torch.einsum("bk,bkl,bl->b", w, cov, w) / units
    return var.clamp_min(0).sqrt()


def mcs_stderr(
    scores: torch.Tensor,
    ratio: str = "sums",
    antithetic: bool = False,
    common_sigmas: bool = False,
    common_modalities: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Monte Carlo standard errors (C_V, C_T, r_v), each [B], from scores [B, S, 2, N].

    The independent units are the draws (the antithetic pairs (2k, 2k+1) with ``antithetic``, whose
    two scores are averaged first). C_m is the mean over the S noise levels of the mean over the
    units, so with independent levels Var(C_m) = sum_s var_s / U / S^2 (var_s the sample variance,
    ddof 1, of the units at level s). r_v is linearised (delta method): r_v ~ sum_k w_k mean_u x_ku
    over blocks k = (level, modality) (for "per_draw": k = level and x the per-draw ratio), and
    Var(r_v) = sum_kl w_k w_l cov(x_k, x_l) / U, where only blocks that share noise contribute a
    covariance: the same block; the same modality at two levels with ``common_sigmas``; the two
    modalities at one level with ``common_modalities``; both with both. For the plain estimator this
    is se(r_v)^2 = ((C_T se_V)^2 + (C_V se_T)^2) / (C_V + C_T)^4. NaN with fewer than 2 units.
    """
    scores = scores.double()
    bsz, n_sigmas, _, draws = scores.shape
    units = draws // 2 if antithetic else draws
    if antithetic and draws % 2:
        raise ValueError(f"antithetic scores need an even number of draws, got {draws}")
    if ratio not in RATIOS:
        raise ValueError(f"ratio must be one of {RATIOS}, got {ratio!r}")
    if units < 2:
        nan = torch.full((bsz,), math.nan, dtype=torch.float64)
        return nan, nan.clone(), nan.clone()

    def per_unit(x: torch.Tensor) -> torch.Tensor:  # [..., N] -> [..., U]
        return x.reshape(*x.shape[:-1], units, 2).mean(dim=-1) if antithetic else x

    eye_s = torch.eye(n_sigmas, dtype=torch.bool)
    sig_dep = torch.ones_like(eye_s) if common_sigmas else eye_s
    se_c = []
    for m in (0, 1):
        w = torch.full((bsz, n_sigmas), 1.0 / n_sigmas, dtype=torch.float64)
        se_c.append(_se_of_weighted_mean(per_unit(scores[:, :, m]), w, sig_dep))
    if ratio == "per_draw":
        x = per_unit(visual_ratio(scores[:, :, 0], scores[:, :, 1]))  # [B, S, U]
        w = torch.full((bsz, n_sigmas), 1.0 / n_sigmas, dtype=torch.float64)
        return se_c[0], se_c[1], _se_of_weighted_mean(x, w, sig_dep)
    mod_dep = torch.ones(2, 2, dtype=torch.bool) if common_modalities else torch.eye(2, dtype=torch.bool)
    dependent = (sig_dep[:, None, :, None] & mod_dep[None, :, None, :]).reshape(2 * n_sigmas, 2 * n_sigmas)
    if ratio == "sums":
        c = scores.mean(dim=(1, 3))[:, None, :].expand(bsz, n_sigmas, 2)  # [B, S, 2], the same at every level
    else:  # per_sigma
        c = scores.mean(dim=3)  # [B, S, 2]
    total = c.sum(dim=-1)
    w = torch.stack((c[..., 1], -c[..., 0]), dim=-1) / total[..., None] ** 2 / n_sigmas  # [B, S, 2]
    x = per_unit(scores)  # [B, S, 2, U]
    se_r = _se_of_weighted_mean(x.reshape(bsz, 2 * n_sigmas, units), w.reshape(bsz, 2 * n_sigmas), dependent)
    return se_c[0], se_c[1], se_r


def _finite_or_none(value: torch.Tensor) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None
