"""The MCS variance-reduction options (amps_eval.mcs.score): settings, the exact structure of the
noise they draw, the r_v estimators, and their standard errors against the spread of repeated
estimates. (That each option, end to end on a real tiny model, equals an independent autograd
computation is `test_mcs.py::test_options_match_direct_autograd`.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from amps_eval.mcs.score import (
    MCSSettings,
    _build_copies,
    _Copy,
    _Sample,
    mcs_ratio,
    mcs_stderr,
)

LAYERS, HEADS, DIM, T = 2, 2, 4, 9
VISION = torch.tensor([1, 2, 3, 4, 5])  # 5 vision positions
TEXT = torch.tensor([0, 6, 7])  # 3 text positions


def perturbations(settings: MCSSettings) -> dict[tuple[int, int, int], list[torch.Tensor]]:
    """The noise added to an all-zero cache (absolute noise: perturbation = sigma * z) by every copy
    of one sample, in the documented copy order: {(s, m, n): [K0, V0, K1, V1] at that modality's
    positions}."""
    keys = [torch.zeros(1, HEADS, T, DIM) for _ in range(LAYERS)]
    values = [torch.zeros(1, HEADS, T, DIM) for _ in range(LAYERS)]
    gen = torch.Generator().manual_seed(123)
    smp = _Sample(row=0, sample_id="x", positions=(VISION, TEXT), generator=gen)
    copies = [
        _Copy(smp, s, m, n) for s in range(len(settings.sigmas)) for m in range(2) for n in range(settings.draws)
    ]
    new_k, new_v, mask = _build_copies(copies, keys, values, settings)
    out = {}
    for p, c in enumerate(copies):
        idx = (VISION, TEXT)[c.m]
        assert mask[p].nonzero().flatten().tolist() == idx.tolist()
        out[c.s, c.m, c.n] = [t[p][:, idx, :].detach() for layer in range(LAYERS) for t in (new_k[layer], new_v[layer])]
        # nothing outside the modality's positions is touched
        others = torch.ones(T, dtype=torch.bool)
        others[idx] = False
        assert all(float(t[p][:, others, :].detach().abs().max()) == 0.0 for t in new_k + new_v)
    return out


def test_settings_of_the_options():
    s = MCSSettings(draws=4, antithetic=True, common_sigmas=True, common_modalities=True, ratio="per_draw")
    d = s.to_dict()
    json.dumps(d)
    assert (d["antithetic"], d["common_sigmas"], d["common_modalities"], d["ratio"]) == (True, True, True, "per_draw")
    for kwargs, field in [
        (dict(antithetic=True, draws=3), "draws must be even"),
        (dict(antithetic=1, draws=2), "antithetic"),
        (dict(common_sigmas="yes"), "common_sigmas"),
        (dict(common_modalities=None), "common_modalities"),
        (dict(ratio="mean"), "ratio"),
    ]:
        with pytest.raises(ValueError, match=field):
            MCSSettings(**kwargs)


def test_plain_noise_is_fresh_for_every_perturbation():
    noise = perturbations(MCSSettings(sigmas=(0.1, 0.2), draws=2, relative=False))
    flat = {key: torch.cat([z.flatten() for z in zs]) for key, zs in noise.items()}
    keys = list(flat)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            n = min(flat[a].numel(), flat[b].numel())
            assert not torch.allclose(flat[a][:n].abs(), flat[b][:n].abs()), (a, b)


def test_antithetic_second_draw_is_exactly_the_negative_of_the_first():
    sigmas = (0.1, 0.2)
    noise = perturbations(MCSSettings(sigmas=sigmas, draws=4, relative=False, antithetic=True))
    for s in range(2):
        for m in range(2):
            for pair in (0, 2):
                for a, b in zip(noise[s, m, pair], noise[s, m, pair + 1]):
                    assert torch.equal(b, -a)
            # the pairs themselves are independent draws
            assert not torch.allclose(noise[s, m, 0][0], noise[s, m, 2][0])


def test_common_sigmas_reuse_the_first_sigmas_normals():
    sigmas = (0.1, 0.3)
    noise = perturbations(MCSSettings(sigmas=sigmas, draws=2, relative=False, common_sigmas=True))
    for m in range(2):
        for n in range(2):
            for a, b in zip(noise[0, m, n], noise[1, m, n]):
                torch.testing.assert_close(b / sigmas[1], a / sigmas[0], rtol=1e-6, atol=0)
        assert not torch.allclose(noise[0, m, 0][0], noise[0, m, 1][0])


def test_common_modalities_share_the_leading_positions():
    noise = perturbations(MCSSettings(sigmas=(0.1,), draws=2, relative=False, common_modalities=True))
    n_text = TEXT.numel()
    for n in range(2):
        for vis, txt in zip(noise[0, 0, n], noise[0, 1, n]):
            assert vis.shape[1] == VISION.numel() and txt.shape[1] == n_text
            assert torch.equal(txt, vis[:, :n_text])
    assert not torch.allclose(noise[0, 0, 0][0], noise[0, 0, 1][0])


def test_ratio_estimators_written_out():
    rng = np.random.default_rng(0)
    scores = rng.gamma(2.0, 1.0, size=(3, 2, 2, 4))
    for b in range(3):
        x = scores[b]
        sums = x[:, 0].sum() / x.sum()
        per_sigma = np.mean([x[s, 0].sum() / x[s].sum() for s in range(2)])
        per_draw = np.mean(x[:, 0] / (x[:, 0] + x[:, 1]))
        got = [float(mcs_ratio(torch.tensor(scores), r)[b]) for r in ("sums", "per_sigma", "per_draw")]
        assert np.allclose(got, [sums, per_sigma, per_draw], rtol=1e-12)
    with pytest.raises(ValueError, match="ratio"):
        mcs_ratio(torch.tensor(scores), "mean")


def simulate(rng, repeats: int, draws: int, structure: str) -> np.ndarray:
    """Repeated score tables [repeats, 3, 2, draws] with the dependence that an option creates:
    scores are a level/modality scale times heavy-tailed positive variables, shared across the
    levels ("sigmas"), across the modalities ("modalities"), or nearly repeated within antithetic
    pairs ("antithetic": z and -z give almost the same quadratic score)."""
    means = np.array([[1.0, 2.0, 4.0], [3.0, 1.5, 0.5]]).T[None, :, :, None]  # [1, S, 2, 1]
    if structure == "sigmas":
        e = rng.chisquare(2, size=(repeats, 1, 2, draws)) * rng.uniform(0.9, 1.1, size=(repeats, 3, 2, draws))
    elif structure == "modalities":
        e = rng.chisquare(2, size=(repeats, 3, 1, draws)) * rng.uniform(0.8, 1.2, size=(repeats, 3, 2, draws))
    elif structure == "antithetic":
        half = rng.chisquare(2, size=(repeats, 3, 2, draws // 2))
        e = np.repeat(half, 2, axis=-1) * rng.uniform(0.9, 1.1, size=(repeats, 3, 2, draws))
    else:
        e = rng.chisquare(2, size=(repeats, 3, 2, draws))
    return e * means


@pytest.mark.parametrize("ratio", ["sums", "per_sigma", "per_draw"])
@pytest.mark.parametrize("structure", ["independent", "sigmas", "modalities", "antithetic"])
def test_standard_error_matches_the_spread_of_repeated_estimates(structure, ratio):
    """For every estimator and noise structure, se(r_v) (and se(C_V)) agree with the standard
    deviation of many repeated estimates; ignoring a shared-noise structure would not. (32 draws:
    the delta method is first order; per_sigma linearises a ratio per level, which with 16 draws
    per level reads ~10% low when the modalities share noise.)"""
    rng = np.random.default_rng(7)
    repeats, draws = 4000, 32
    scores = torch.tensor(simulate(rng, repeats, draws, structure))
    flags = dict(
        antithetic=structure == "antithetic",
        common_sigmas=structure == "sigmas",
        common_modalities=structure == "modalities",
    )
    r_v = mcs_ratio(scores, ratio).numpy()
    c_v = scores[:, :, 0].mean(dim=(1, 2)).numpy()
    se_v, _, se_r = mcs_stderr(scores, ratio=ratio, **flags)
    assert abs(float(se_r.mean()) / r_v.std() - 1.0) < 0.1, (float(se_r.mean()), r_v.std())
    assert abs(float(se_v.mean()) / c_v.std() - 1.0) < 0.1, (float(se_v.mean()), c_v.std())
    if structure != "independent":
        _, _, naive = mcs_stderr(scores, ratio=ratio)
        off = abs(float(naive.mean()) / r_v.std() - 1.0)
        if structure == "modalities" and ratio == "per_draw":
            return  # the per-draw ratio already pairs the modalities: nothing to ignore
        assert off > 0.2, (structure, ratio, off)
