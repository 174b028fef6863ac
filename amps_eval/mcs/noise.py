"""How the standard normals of one round of MCS draws are shaped (`MCSSettings.noise_design`):

* ``"gaussian"``: the draws as the generator gives them, independent;
* ``"orthogonal"``: the draws of a round orthogonalised (`orthogonal_draws`): Gram-Schmidt of the
  round's draws, each flattened to one vector over layers, K/V, heads, positions and head dims,
  then every orthonormal direction rescaled to the norm of the Gaussian draw it came from.

Why the marginal stays exactly Gaussian: draw ``n`` of ``g_1..g_k`` ~ N(0, I_D) splits into its
part along the directions of ``g_1..g_{n-1}`` and its orthogonal part, whose direction ``q_n`` is
uniform on the unit sphere of the complement and independent of the lengths of both parts
(rotational symmetry). So ``q_n`` is uniform on the sphere and independent of ``||g_n||``
(chi-distributed with D degrees of freedom), and ``||g_n|| q_n`` ~ N(0, I_D), draw by draw. The
draws of a round are then mutually orthogonal, with independent chi norms. No extra random number
is drawn, so a sample's generator advances exactly as with ``"gaussian"``.
"""

from __future__ import annotations

import torch

from amps_eval.mcs.settings import NOISE_DESIGNS  # declared with the settings (a module without torch)

__all__ = ["NOISE_DESIGNS", "orthogonal_draws"]


def orthogonal_draws(z: torch.Tensor, chunk: int = 2**20) -> torch.Tensor:
    """The draws ``z[0], z[1], ...`` (any shape ``[k, ...]``) made mutually orthogonal: Gram-Schmidt
    in draw order, each direction rescaled to its own draw's norm. So ``out[0] == z[0]`` (to
    rounding) and ``out[n]`` is ``z[n]`` less its projection on the earlier draws, stretched back to
    ``||z[n]||``. Returned in ``z``'s dtype and device.

    Computed as the Cholesky QR of the ``[k, D]`` matrix ``Z`` of flattened draws, in float64: the
    Gram matrix ``Z Z' = L L'`` (L lower triangular with a positive diagonal), then
    ``out = diag(||z_n||) L^-1 Z``, whose rows are Gram-Schmidt's orthonormal rows scaled (exactly
    Gram-Schmidt in exact arithmetic; the draws are near orthogonal already, so the Gram matrix is
    well conditioned). Both products run over ``chunk`` columns at a time, so the memory beyond the
    output is one float64 chunk (the order of the chunks is fixed: the same draws give the same bits).
    A round of one draw is returned as it is; more draws than dimensions cannot be orthogonal (error).
    """
    k = int(z.shape[0])
    if k <= 1:
        return z
    flat = z.reshape(k, -1)
    dims = int(flat.shape[1])
    if dims < k:
        raise ValueError(f"cannot orthogonalise {k} draws of {dims} numbers each (more draws than "
                         "dimensions); use noise_design='gaussian' or fewer draws per round")
    gram = torch.zeros((k, k), dtype=torch.float64, device=z.device)
    for start in range(0, dims, chunk):
        part = flat[:, start : start + chunk].to(torch.float64)
        gram += part @ part.T
    lower, info = torch.linalg.cholesky_ex(gram)
    if int(info) != 0:
        raise ValueError("cannot orthogonalise the draws of a round: one of them lies in the span of the "
                         "earlier ones (a zero draw?)")
    eye = torch.eye(k, dtype=torch.float64, device=z.device)
    coef = gram.diagonal().sqrt()[:, None] * torch.linalg.solve_triangular(lower, eye, upper=False)  # [k, k]
    out = torch.empty_like(flat)
    for start in range(0, dims, chunk):
        out[:, start : start + chunk] = (coef @ flat[:, start : start + chunk].to(torch.float64)).to(z.dtype)
    return out.view(z.shape)
