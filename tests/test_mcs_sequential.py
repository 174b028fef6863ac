"""The sequential MCS (`MCSSettings.tolerance`): each sample draws in rounds until its r_v standard
error is at most the tolerance, between ``min_draws`` and ``draws``; checked against an independent
computation of the standard error (the delta-method formula written out in NumPy) on the same
scores, and for its bounds and its independence of the batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_mcs import as_dtype, build_llava, build_qwen, run

from amps_eval.mcs.item import item_mcs
from amps_eval.mcs.settings import MCSSettings

SIGMAS = (0.1, 0.3)
BASE = dict(sigmas=SIGMAS, min_draws=2, round_draws=2, draws=10)


@pytest.fixture(scope="module", params=["llava", "qwen2_5_vl"])
def case(request):
    return build_llava() if request.param == "llava" else build_qwen(request.param)


def per_sigma_se(scores: np.ndarray) -> float:
    """se(r_v) of the per-sigma ratio from scores [S, 2, n] (independent draws): r_v = mean_s V_s /
    (V_s + T_s); by the delta method se^2 = sum_s (1/S)^2 [(T_s / (V_s + T_s)^2)^2 var(v_s) / n +
    (V_s / (V_s + T_s)^2)^2 var(t_s) / n], var with ddof 1."""
    n_s, _, n = scores.shape
    total = 0.0
    for s in range(n_s):
        v, t = scores[s, 0], scores[s, 1]
        mv, mt = v.mean(), t.mean()
        d = (mv + mt) ** 2
        total += ((mt / d) ** 2 * v.var(ddof=1) / n + (mv / d) ** 2 * t.var(ddof=1) / n) / n_s**2
    return math.sqrt(total)


def per_sigma_ratio(scores: np.ndarray) -> float:
    c = scores.mean(axis=-1)
    return float(np.mean(c[:, 0] / (c[:, 0] + c[:, 1])))


def test_rounds_and_validation():
    assert MCSSettings(tolerance=0.1, min_draws=4, round_draws=3, draws=12).rounds() == [4, 3, 3, 2]
    assert MCSSettings(tolerance=None, draws=7).rounds() == [7]  # fixed: one round of every draw
    assert MCSSettings(draws=7).rounds() == [4, 2, 1]  # the default: sequential
    assert MCSSettings(tolerance=0.1, min_draws=4, draws=4).rounds() == [4]
    assert MCSSettings(tolerance=0.1, min_draws=4, draws=2).rounds() == [2]  # draws is the most: the fixed estimator
    assert MCSSettings(tolerance=None, draws=16).rounds() == [16]
    for bad in (dict(tolerance=0.0), dict(tolerance=-1.0), dict(tolerance=float("inf")), dict(tolerance=True),
                dict(min_draws=0), dict(round_draws=0), dict(antithetic=True, round_draws=3)):
        with pytest.raises(ValueError):
            MCSSettings(**bad)


def test_stopping_rule_matches_an_independent_standard_error(case):
    """With a tolerance between the samples' standard errors, each sample stops at the first round
    whose independent se (same scores) is at most the tolerance, and its r_v is the per-sigma ratio
    of exactly its draws. The noise of a sample does not depend on the tolerance, so a run that
    never stops gives every prefix."""
    with as_dtype(case, torch.float64):
        full = run(case, MCSSettings(tolerance=1e-12, **BASE))
        assert full.draws == [10, 10]
        schedule = np.cumsum(MCSSettings(tolerance=1.0, **BASE).rounds())  # 2, 4, 6, 8, 10
        se = np.array([[per_sigma_se(full.scores[i, ..., :n].numpy()) for n in schedule] for i in range(2)])
        # a tolerance that stops one sample no earlier than round 2 and the samples at different rounds
        tol = None
        for candidate in sorted(se[:, 1:].flatten()):
            stops = [int(np.argmax(se[i] <= candidate)) if (se[i] <= candidate).any() else len(schedule) - 1
                     for i in range(2)]
            if stops[0] != stops[1] and max(stops) > 0:
                tol = float(candidate) * (1 + 1e-9)
                break
        assert tol is not None, se
        res = run(case, MCSSettings(tolerance=tol, **BASE))
    for i in range(2):
        below = np.nonzero(se[i] <= tol)[0]
        expected = int(schedule[below[0]]) if len(below) else int(schedule[-1])
        assert res.draws[i] == expected, (i, se[i], tol)
        assert res.perturbations[i] == len(SIGMAS) * 2 * expected
        own = full.scores[i, ..., :expected].numpy()
        np.testing.assert_allclose(res.scores[i, ..., :expected].numpy(), own, rtol=1e-9)
        assert bool(torch.isnan(res.scores[i, ..., expected:]).all())
        assert float(res.r_v[i]) == pytest.approx(per_sigma_ratio(own), rel=1e-9)
        assert float(res.r_v_stderr[i]) == pytest.approx(per_sigma_se(own), rel=1e-9)
    assert res.draws[0] != res.draws[1]


def test_min_and_max_bounds(case):
    lax = run(case, MCSSettings(tolerance=1e9, **BASE))
    assert lax.draws == [2, 2] and lax.perturbations == [8, 8]  # at least min_draws, even when precise at once
    strict = run(case, MCSSettings(tolerance=1e-12, **{**BASE, "draws": 7}))
    assert strict.draws == [7, 7] and strict.perturbations == [28, 28]  # never more than draws (last round cut)
    records = strict.to_records()
    assert [r["perturbations"] for r in records] == [28, 28]


def test_batch_composition_changes_neither_r_v_nor_the_perturbations(case):
    with as_dtype(case, torch.float64):
        batch = run(case, MCSSettings(tolerance=1e-12, **BASE))
        schedule = np.cumsum(MCSSettings(tolerance=1.0, **BASE).rounds())
        se = [per_sigma_se(batch.scores[0, ..., :n].numpy()) for n in schedule]
        settings = MCSSettings(tolerance=se[2] * (1 + 1e-6), **BASE)  # sample 0 stops at round 3 (or before)
        batch = run(case, settings)
        for k, single in enumerate(case.singles):
            alone = run(case, settings, inputs=single, ids=[case.ids[k]])
            assert alone.draws == [batch.draws[k]]
            assert float(alone.r_v[0]) == pytest.approx(float(batch.r_v[k]), rel=1e-9)
        assert batch.draws[0] <= 6


def test_item_mcs_reads_the_cache_computes_the_rest_and_records_perturbations(case, tmp_path):
    from amps_eval.item_cache import MCSCache

    settings = MCSSettings(tolerance=1e9, **BASE)
    result = run(case, settings)
    calls = []

    def compute(rows):
        calls.append(list(rows))
        return result.select(rows)

    cache = MCSCache(tmp_path, {"model": "tiny"}, settings)
    first = item_mcs(["a", "b"], compute, cache, ["ka", "kb"], batch_size=1)
    assert calls == [[0], [1]]
    assert [r["perturbations"] for r in first] == [8, 8]
    assert [r["r_v"] for r in first] == result.r_v.tolist()
    again = item_mcs(["a", "b", "c"], lambda rows: calls.append(list(rows)) or result.select([1]),
                     MCSCache(tmp_path, {"model": "tiny"}, settings), ["ka", "kb", "kc"])
    assert calls[-1] == [2] and again[:2] == first  # read back from the file, only "c" computed
    other = MCSCache(tmp_path, {"model": "tiny"}, MCSSettings(tolerance=0.5, **BASE))
    assert other.get("ka") is None  # another tolerance is another namespace
