"""Paired bootstrap intervals (amps_eval.report.paired) against independent computations."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from amps_eval.report.paired import item_means, paired_difference


def test_a_constant_item_difference_has_a_zero_width_interval():
    a = {i: 0.7 + 0.01 * i for i in range(30)}
    b = {i: v - 0.25 for i, v in a.items()}
    d = paired_difference(a, b, n_boot=500)
    assert d.difference == pytest.approx(0.25)
    assert d.low == pytest.approx(0.25) and d.high == pytest.approx(0.25)
    assert d.distinguishable and d.n_items == 30


def test_identical_methods_are_not_distinguishable_and_differ_by_zero():
    a = {i: float(i % 3 == 0) for i in range(50)}
    d = paired_difference(a, dict(a))
    assert (d.difference, d.low, d.high) == (0.0, 0.0, 0.0)
    assert not d.distinguishable


def test_the_interval_matches_the_exact_bootstrap_distribution_of_a_small_sample():
    """4 items: the bootstrap distribution is the n**n equally likely resamples, enumerated here
    without numpy; the Monte Carlo quantiles must land on the exact ones."""
    a = {"x": 1.0, "y": 0.0, "z": 1.0, "w": 1.0}
    b = {"x": 0.0, "y": 0.0, "z": 0.0, "w": 1.0}
    diffs = [a[i] - b[i] for i in sorted(a)]
    means = sorted(sum(diffs[j] for j in draw) / 4 for draw in itertools.product(range(4), repeat=4))

    def exact_quantile(q: float) -> float:  # numpy's default (linear) rule on the exact distribution
        position = q * (len(means) - 1)
        lo = math.floor(position)
        return means[lo] + (position - lo) * (means[min(lo + 1, len(means) - 1)] - means[lo])

    d = paired_difference(a, b, n_boot=40000, level=0.8, seed=3)
    assert d.difference == pytest.approx(0.5)
    # the exact 10% / 90% quantiles are atoms (0.25 and 0.75): Monte Carlo lands on them exactly
    assert d.low == pytest.approx(exact_quantile(0.1), abs=1e-9)
    assert d.high == pytest.approx(exact_quantile(0.9), abs=1e-9)


def test_a_large_sample_matches_the_normal_approximation():
    rng = random.Random(1)
    n = 2000
    b = {i: float(rng.random() < 0.5) for i in range(n)}
    a = {i: float(rng.random() < 0.6) if b[i] == 0 else float(rng.random() < 0.9) for i in range(n)}
    diffs = [a[i] - b[i] for i in range(n)]
    mean = sum(diffs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / n)
    d = paired_difference(a, b, n_boot=4000, seed=5)
    assert d.difference == pytest.approx(mean)
    half = 1.959964 * sd / math.sqrt(n)
    assert d.low == pytest.approx(mean - half, abs=0.15 * half)
    assert d.high == pytest.approx(mean + half, abs=0.15 * half)


def test_pairing_makes_correlated_methods_far_more_precise_than_unpaired_errors():
    rng = np.random.default_rng(0)
    base = rng.random(400) < 0.5
    flips = rng.random(400) < 0.05
    a = {i: float(v) for i, v in enumerate(base)}
    b = {i: float(v ^ f) for i, (v, f) in enumerate(zip(base, flips))}
    d = paired_difference(a, b)
    unpaired_se = math.sqrt(2 * 0.25 / 400)
    assert (d.high - d.low) < 0.5 * 2 * 1.96 * unpaired_se


def test_items_pair_by_id_not_by_position_and_unshared_items_are_left_out():
    a = {1: 1.0, 2: 0.0, 3: 1.0, 99: 1.0}
    b = {3: 1.0, 2: 1.0, 1: 0.0, 42: 0.0}
    d = paired_difference(a, b, n_boot=200)
    assert d.n_items == 3
    assert d.difference == pytest.approx(((1 - 0) + (0 - 1) + (1 - 1)) / 3)


def test_same_seed_same_interval_and_bad_arguments_are_refused():
    a = {i: float(i % 2) for i in range(20)}
    b = {i: float(i % 3 == 0) for i in range(20)}
    assert paired_difference(a, b, seed=7) == paired_difference(a, b, seed=7)
    with pytest.raises(ValueError, match="share no item"):
        paired_difference({1: 1.0}, {2: 1.0})
    with pytest.raises(ValueError, match="level"):
        paired_difference(a, b, level=1.5)


def test_item_means_average_an_items_records_and_drop_incomplete_items():
    records = [{"mc2_id": 1, "logodds": 2.0}, {"mc2_id": 1, "logodds": 4.0},  # both orders of item 1
               {"mc2_id": 2, "logodds": -1.0}, {"mc2_id": 2},  # item 2 lacks one value
               {"mc2_id": 3, "logodds": float("nan")}, {"mc2_id": 4, "logodds": True}]
    assert item_means(records, "logodds") == {1: 3.0}


def test_describe_scales_to_percent():
    a = {i: 1.0 for i in range(10)}
    b = {i: 0.0 if i < 3 else 1.0 for i in range(10)}
    text = paired_difference(a, b, n_boot=300).describe()
    assert text.startswith("+30.0 [")
