"""The MCS standard errors: the formula against an independent computation, and calibration
against the spread of repeated estimates."""

from __future__ import annotations

import math

import numpy as np
import torch

from amps_eval.mcs.score import mcs_stderr


def independent(scores: np.ndarray):
    """scores [S, 2, N] of one sample: (se C_V, se C_T, se r_v) written out."""
    s_count, _, n = scores.shape
    out = []
    for m in (0, 1):
        per_level = [np.var(scores[s, m], ddof=1) / n for s in range(s_count)]
        out.append(math.sqrt(sum(per_level)) / s_count)
    c_v, c_t = scores[:, 0].mean(), scores[:, 1].mean()
    d_v, d_t = c_t / (c_v + c_t) ** 2, -c_v / (c_v + c_t) ** 2
    out.append(math.sqrt((d_v * out[0]) ** 2 + (d_t * out[1]) ** 2))
    return out


def test_the_formula_equals_an_independent_computation():
    rng = np.random.default_rng(0)
    scores = rng.gamma(2.0, 1.0, size=(5, 3, 2, 4)) * np.array([1.0, 3.0])[None, None, :, None]
    se_v, se_t, se_r = mcs_stderr(torch.tensor(scores))
    for i in range(5):
        assert np.allclose([se_v[i], se_t[i], se_r[i]], independent(scores[i]), rtol=1e-12)


def test_one_draw_has_no_standard_error():
    se_v, se_t, se_r = mcs_stderr(torch.ones(2, 3, 2, 1))
    assert all(torch.isnan(t).all() for t in (se_v, se_t, se_r))


def test_the_standard_error_matches_the_spread_of_repeated_estimates():
    """Draw many independent estimates of r_v; their standard deviation is what se(r_v) claims."""
    rng = np.random.default_rng(1)
    repeats, draws = 4000, 16
    means = np.array([[1.0, 2.0, 4.0], [3.0, 1.5, 0.5]]).T  # [S, 2]: level and modality means
    scores = rng.exponential(1.0, size=(repeats, 3, 2, draws)) * means[None, :, :, None]
    c_v, c_t = scores[:, :, 0].mean(axis=(1, 2)), scores[:, :, 1].mean(axis=(1, 2))
    r_v = c_v / (c_v + c_t)
    _, _, se_r = mcs_stderr(torch.tensor(scores))
    assert abs(float(se_r.mean()) / r_v.std() - 1.0) < 0.1
