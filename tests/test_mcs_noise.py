"""The MCS noise designs (`MCSSettings.noise_design`, `amps_eval.mcs.noise`): the orthogonalisation
against a Gram-Schmidt written out in NumPy, the marginal statistics of an orthogonalised draw over
many rounds (exactly N(0, I), Gaussian norms included), the noise the copies carry (orthogonal
within a round per (sample, sigma, modality), the generator advancing as with Gaussian draws),
determinism whatever the batch, the settings and the item cache key. (That the MCS with
``noise_design="orthogonal"`` equals an independent autograd computation that orthogonalises the
documented noise itself is `test_mcs.py::test_options_match_direct_autograd`.)"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from test_mcs_options import perturbations

from amps_eval.item_cache import mcs_values_key
from amps_eval.mcs.copies import _Copy, _Sample
from amps_eval.mcs.noise import NOISE_DESIGNS, orthogonal_draws
from amps_eval.mcs.settings import MCS_KEYS, MCSSettings


def numpy_gram_schmidt(z: np.ndarray) -> np.ndarray:
    """Modified Gram-Schmidt of the rows of z [k, D] (float64), each row rescaled to its own norm."""
    out = np.empty_like(z, dtype=np.float64)
    basis = []
    for n, row in enumerate(z.astype(np.float64)):
        w = row.copy()
        for q in basis:
            w -= (q @ w) * q
        basis.append(w / np.linalg.norm(w))
        out[n] = basis[-1] * np.linalg.norm(row)
    return out


# --------------------------------------------------------------------------------------------------
# the pure function
# --------------------------------------------------------------------------------------------------


def test_orthogonal_draws_are_gram_schmidt_with_the_gaussian_norms():
    z = torch.randn(5, 2, 2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = orthogonal_draws(z)
    assert out.shape == z.shape and out.dtype == z.dtype
    flat, ref = out.reshape(5, -1).numpy(), numpy_gram_schmidt(z.reshape(5, -1).numpy())
    np.testing.assert_allclose(flat, ref, rtol=1e-10, atol=1e-12)
    gram = flat @ flat.T
    norms = np.linalg.norm(z.reshape(5, -1).numpy(), axis=1)
    np.testing.assert_allclose(np.diag(gram), norms**2, rtol=1e-12)  # each draw keeps its norm
    off = gram - np.diag(np.diag(gram))
    assert np.abs(off).max() < 1e-10 * norms.max() ** 2  # and the draws are orthogonal
    assert np.abs(z.reshape(5, -1).numpy() @ z.reshape(5, -1).numpy().T - np.diag(norms**2)).max() > 1.0  # were not
    torch.testing.assert_close(out[0], z[0], rtol=1e-12, atol=1e-12)  # the first draw is unchanged


def test_orthogonal_draws_float32_one_draw_and_too_many_draws():
    z = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    out = orthogonal_draws(z)
    assert out.dtype == torch.float32
    flat = out.double()
    assert float((flat[0] @ flat[1]).abs()) < 1e-4 * float(flat[0].norm() * flat[1].norm())
    # the products run over column chunks; their size changes nothing but float64 rounding
    torch.testing.assert_close(orthogonal_draws(z, chunk=7), out, rtol=1e-6, atol=1e-6)
    one = torch.randn(1, 7)
    assert orthogonal_draws(one) is one  # a round of one draw: nothing to orthogonalise
    with pytest.raises(ValueError, match="more draws than dimensions"):
        orthogonal_draws(torch.randn(4, 3))
    with pytest.raises(ValueError, match="span of the earlier ones"):
        orthogonal_draws(torch.stack([torch.ones(6), torch.zeros(6)]))


def test_an_orthogonalised_draw_is_still_standard_normal():
    """Over many rounds of k = 4 draws in D = 6 dimensions (small D, where orthogonalising moves a
    draw most): every draw index has per-coordinate mean 0, covariance I and the squared norm of a
    chi-square with D degrees of freedom (mean D, variance 2D: a draw stretched to a fixed norm
    would fail this); draws of one round are uncorrelated coordinate by coordinate yet exactly
    orthogonal. Tolerances are about 5 standard errors of the estimates."""
    rounds, k, dim = 4000, 4, 6
    z = torch.randn(rounds, k, dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = torch.stack([orthogonal_draws(block) for block in z]).numpy()  # [rounds, k, D]
    se_mean, se_var = 1 / np.sqrt(rounds), np.sqrt(2 / rounds)
    for n in range(k):
        x = out[:, n]
        assert np.abs(x.mean(axis=0)).max() < 5 * se_mean, n
        cov = np.cov(x, rowvar=False)
        assert np.abs(np.diag(cov) - 1).max() < 5 * se_var, (n, np.diag(cov))
        assert np.abs(cov - np.diag(np.diag(cov))).max() < 5 * se_mean, n
        sq = (x**2).sum(axis=1)
        assert abs(sq.mean() - dim) < 5 * np.sqrt(2 * dim / rounds), (n, sq.mean())
        assert abs(sq.var() - 2 * dim) < 5 * np.sqrt(8 * dim * (dim + 6) / rounds), (n, sq.var())  # var of chi2 var
    cross = np.einsum("ri,rj->ij", out[:, 0], out[:, 3]) / rounds  # E[z_0 z_3'] = 0
    assert np.abs(cross).max() < 5 * se_mean
    inner = np.einsum("rkd,rld->rkl", out, out)
    off = inner - np.einsum("rkk->rk", inner)[:, :, None] * np.eye(k)
    assert np.abs(off).max() < 1e-10
    # the check has teeth: the draws without their Gaussian norms (unit vectors) fail it
    assert np.abs(np.cov(out[:, 3] / np.linalg.norm(out[:, 3], axis=1, keepdims=True), rowvar=False).diagonal() - 1).max() > 0.5


# --------------------------------------------------------------------------------------------------
# the noise of the copies
# --------------------------------------------------------------------------------------------------


def flat_draws(noise: dict, s: int, m: int, draws: int) -> torch.Tensor:
    return torch.stack([torch.cat([z.flatten() for z in noise[s, m, n]]).double() for n in range(draws)])


def test_copies_carry_orthogonal_draws_per_sigma_and_modality():
    base = MCSSettings(sigmas=(0.1, 0.2), draws=3, relative=False, tolerance=None)
    gauss = perturbations(base)
    orth = perturbations(dataclasses.replace(base, noise_design="orthogonal"))
    for s, sigma in enumerate(base.sigmas):
        for m in range(2):
            g, o = flat_draws(gauss, s, m, 3) / sigma, flat_draws(orth, s, m, 3) / sigma
            ref = torch.from_numpy(numpy_gram_schmidt(g.numpy()))
            torch.testing.assert_close(o, ref, rtol=1e-5, atol=1e-5)  # float32 noise, float64 reference
            gram = o @ o.T
            assert float((gram - torch.diag(gram.diagonal())).abs().max()) < 1e-4 * float(gram.diagonal().max())
            assert float((g @ g.T - torch.diag((g @ g.T).diagonal())).abs().max()) > 0.1  # Gaussian draws were not
            # the same normals, reshaped: draw 0 is the Gaussian draw 0, and the generator advanced alike
            torch.testing.assert_close(o[0], g[0], rtol=1e-6, atol=1e-6)


def test_common_sigmas_reuse_the_orthogonal_draws():
    sigmas = (0.1, 0.3)
    noise = perturbations(MCSSettings(sigmas=sigmas, draws=2, relative=False, tolerance=None,
                                      common_sigmas=True, noise_design="orthogonal"))
    for m in range(2):
        torch.testing.assert_close(flat_draws(noise, 1, m, 2) / sigmas[1], flat_draws(noise, 0, m, 2) / sigmas[0],
                                   rtol=1e-6, atol=1e-7)
        o = flat_draws(noise, 0, m, 2)
        assert float((o[0] @ o[1]).abs()) < 1e-4 * float(o[0].norm() * o[1].norm())


# --------------------------------------------------------------------------------------------------
# settings and cache key
# --------------------------------------------------------------------------------------------------


def test_settings_of_the_noise_design():
    assert MCSSettings().noise_design == "gaussian" and NOISE_DESIGNS == ("gaussian", "orthogonal")
    d = MCSSettings(noise_design="orthogonal").to_dict()
    json.dumps(d)
    assert d["noise_design"] == "orthogonal" and "noise_design" in MCS_KEYS
    for kwargs, message in [
        (dict(noise_design="sobol"), "noise_design must be one of"),
        (dict(noise_design="orthogonal", antithetic=True), "antithetic"),
        (dict(noise_design="orthogonal", common_modalities=True), "common_modalities"),
    ]:
        with pytest.raises(ValueError, match=message):
            MCSSettings(**kwargs)


def test_memory_plan_counts_the_orthogonalised_copy_of_a_noise_group():
    from amps_eval.mcs.copies import _CopyPlan

    keys = [torch.zeros(1, 2, 9, 4) for _ in range(2)]
    smp = _Sample(row=0, sample_id="x", positions=(torch.tensor([1, 2, 3]), torch.tensor([0, 4])),
                  generator=torch.Generator().manual_seed(0))
    copies = [_Copy(smp, 0, m, n) for m in range(2) for n in range(2)]
    model = torch.nn.Linear(2, 2)
    gauss = _CopyPlan(copies, keys, keys, MCSSettings(sigmas=(0.1,), draws=2, tolerance=None)).footprint(model, 10)
    orth = _CopyPlan(copies, keys, keys, MCSSettings(sigmas=(0.1,), draws=2, tolerance=None,
                                                     noise_design="orthogonal")).footprint(model, 10)
    assert gauss.fixed_bytes() == 2 * 2 * 2 * 2 * 2 * 3 * 4 * 4  # 2 groups x draws x layers x K/V x heads x width x dim x 4 B
    assert orth.fixed_bytes() * 2 == gauss.fixed_bytes() * 3 and orth.bytes_per_copy() == gauss.bytes_per_copy()


def test_item_cache_key_names_the_orthogonal_design_and_keeps_the_gaussian_key():
    """Caches written before the setting existed (Gaussian draws) keep their key; orthogonal draws
    get their own namespace."""
    default, orth = MCSSettings(), MCSSettings(noise_design="orthogonal")
    before = {k: v for k, v in default.to_dict().items() if k in MCS_KEYS and k != "noise_design"}
    assert mcs_values_key(default) == {**before, "seeding": mcs_values_key(default)["seeding"]}
    assert mcs_values_key(orth)["noise_design"] == "orthogonal" and mcs_values_key(orth) != mcs_values_key(default)


def test_mean_mcs_reads_a_file_without_the_setting_as_gaussian():
    from types import SimpleNamespace

    from amps_eval.methods.mean_mcs import check_mcs_settings

    recorded = {k: v for k, v in MCSSettings().to_dict().items() if k != "noise_design"}
    file = SimpleNamespace(settings={"mcs": recorded}, source="old.safetensors")
    check_mcs_settings(file, MCSSettings())  # a file written before the setting: Gaussian, accepted
    with pytest.raises(ValueError, match="noise_design"):
        check_mcs_settings(file, MCSSettings(noise_design="orthogonal"))


# --------------------------------------------------------------------------------------------------
# end to end: determinism whatever the batch
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["llava", "qwen2_5_vl"])
def case(request):
    from test_mcs import build_llava, build_qwen

    return build_llava() if request.param == "llava" else build_qwen(request.param)


def test_orthogonal_mcs_is_the_same_whatever_the_batch(case):
    """Sequential, orthogonal noise: a sample alone gives the r_v and the draws it gets in a padded
    batch of two, and a rerun gives the same bits; the orthogonal draws give another r_v than the
    Gaussian ones from the same seed."""
    from test_mcs import as_dtype, run

    settings = MCSSettings(sigmas=(0.1, 0.3), draws=6, min_draws=3, round_draws=2, tolerance=1e-12,
                           noise_design="orthogonal", seed=4)
    with as_dtype(case, torch.float64):
        batch = run(case, settings)
        again = run(case, settings)
        assert torch.equal(batch.r_v, again.r_v) and batch.draws == again.draws == [6, 6]
        for k, single in enumerate(case.singles):
            alone = run(case, settings, inputs=single, ids=[case.ids[k]])
            assert alone.draws == [batch.draws[k]]
            assert float(alone.r_v[0]) == pytest.approx(float(batch.r_v[k]), rel=1e-9)
            torch.testing.assert_close(alone.scores[0], batch.scores[k], rtol=1e-9, atol=0)
        gauss = run(case, dataclasses.replace(settings, noise_design="gaussian"))
    # round 1's first draw is the Gaussian one, so its scores agree; the others differ
    torch.testing.assert_close(gauss.scores[..., 0], batch.scores[..., 0], rtol=1e-9, atol=0)
    assert not torch.allclose(gauss.scores[..., 1:], batch.scores[..., 1:], rtol=1e-6)
    assert batch.settings["noise_design"] == "orthogonal"
