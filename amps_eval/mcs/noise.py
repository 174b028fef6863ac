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

__all__ = ["NOISE_DESIGNS", "orthogonal_draws"]

NOISE_DESIGNS: tuple[str, ...] = ("gaussian", "orthogonal")


def orthogonal_draws(z: torch.Tensor) -> torch.Tensor:
    """The draws ``z[0], z[1], ...`` (any shape ``[k, ...]``) made mutually orthogonal: Gram-Schmidt
    in draw order (the QR factorisation of the ``[D, k]`` matrix of flattened draws, its columns'
    signs fixed so that R has a positive diagonal), each direction rescaled to its own draw's norm.
    So ``out[0] == z[0]`` (to rounding) and ``out[n]`` is ``z[n]`` less its projection on the earlier
    draws, stretched back to ``||z[n]||``. Computed in float64, returned in ``z``'s dtype and device.
    A round of one draw is returned as it is; more draws than dimensions cannot be orthogonal (error).
    """
    k = int(z.shape[0])
    if k <= 1:
        return z
    flat = z.reshape(k, -1).to(torch.float64)
    if flat.shape[1] < k:
        raise ValueError(f"cannot orthogonalise {k} draws of {flat.shape[1]} numbers each (more draws than "
                         "dimensions); use noise_design='gaussian' or fewer draws per round")
    q, r = torch.linalg.qr(flat.T)  # [D, k], [k, k]
    sign = torch.sign(torch.diagonal(r))
    if bool((sign == 0).any()):
        raise ValueError("cannot orthogonalise the draws of a round: one of them lies in the span of the "
                         "earlier ones (a zero draw?)")
    directions = (q * sign).T  # [k, D], orthonormal rows, Gram-Schmidt's order and signs
    out = directions * flat.norm(dim=1, keepdim=True)
    return out.reshape(z.shape).to(z.dtype)
