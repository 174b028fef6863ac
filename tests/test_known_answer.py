"""The known-answer tests: pure statistics, the analysis on made-up sweeps with a known answer, and
`amps-eval validate` end to end on a tiny setting."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from amps_eval.known_answer.analysis import (
    SweepData,
    at_strength,
    interpolate,
    item_response,
    mcs_validity,
    premise,
    slope,
    susceptibility,
)
from amps_eval.known_answer.report import render
from amps_eval.correlation import average_ranks, pearson
from amps_eval.known_answer.stats import (
    bootstrap_interval,
    paired_difference,
    spearman,
    spearman_with_interval,
)


# ------------------------------------------------------------------ statistics


def test_ranks_and_spearman_against_numpy(rng):
    assert average_ranks([3.0, 1.0, 3.0, 2.0]).tolist() == [3.5, 1.0, 3.5, 2.0]
    x = rng.normal(size=40)
    y = x + rng.normal(size=40)
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))  # no ties: ranks by argsort
    assert spearman(x, y) == pytest.approx(float(np.corrcoef(rx, ry)[0, 1]))
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


def test_bootstrap_intervals(rng):
    x = list(rng.normal(size=60))
    y = [v + 0.1 * e for v, e in zip(x, rng.normal(size=60))]
    entry = spearman_with_interval(x, y, n_boot=300)
    lo, hi = entry["ci95"]
    assert lo <= entry["spearman"] <= hi and hi - lo < 0.1 and entry["n"] == 60
    same = paired_difference(x, x, n_boot=200)
    assert same["difference"] == 0 and same["ci95"] == [0, 0]
    shifted = paired_difference([v + 1 for v in x], x, n_boot=200)
    assert shifted["difference"] == pytest.approx(1.0) and shifted["ci95"] == pytest.approx([1.0, 1.0])
    assert all(math.isnan(v) for v in bootstrap_interval(0, lambda idx: 0.0))
    with pytest.raises(ValueError, match="length"):
        paired_difference([1.0], [1.0, 2.0])


# ------------------------------------------------------------------ analysis on made-up sweeps


def _sweep(method, target, responses, strengths, p):
    """A sweep whose item i at alpha a has image_logodds = logit(p_i) + sign * response(a) and
    relative_shift = strengths[a]; it follows the image when image_logodds > 0."""
    points = {}
    for alpha, s in strengths.items():
        points[alpha] = {}
        for i, pi in p.items():
            lo = math.log(pi / (1 - pi)) + (1 if target == "vision" else -1) * responses(i, s)
            points[alpha][i] = {"mc2_id": i, "category": "color" if i % 2 else "counting",
                                "follows": "vision" if lo > 0 else "text", "image_logodds": lo,
                                **({"relative_shift": s} if alpha else {})}
    return SweepData(method, target, points)


P = {i: 0.05 + 0.9 * i / 19 for i in range(20)}


def test_interpolate_and_at_strength():
    assert interpolate([0, 1, 3], [0, 2, 4], 2) == pytest.approx(3)
    assert interpolate([0, 1], [0, None], 0.5) is None
    assert interpolate([0, 1], [0, 1], 1.5) is None
    sweep = _sweep("l2s", "vision", lambda i, s: 2 * s, {0: 0.0, 1: 1.0, 2: 2.0}, P)
    half = at_strength(sweep, 0.5, "logodds")
    assert half[3] == pytest.approx(math.log(P[3] / (1 - P[3])) + 1.0)


def test_slope_and_flip_point_of_an_item():
    assert slope([0, 1, 2], [1, 3, 5]) == pytest.approx(2)
    assert slope([1, 1], [0, 5]) is None
    sweep = _sweep("l2s", "text", lambda i, s: 3 * s, {0: 0.0, 1: 0.5, 2: 1.0, 4: 2.0}, P)
    value, flip, censored = item_response(sweep, 19)  # p = 0.95: logit 2.94, flips past s = 0.98
    assert value == pytest.approx(3.0) and flip == pytest.approx(1.0) and not censored
    value, flip, censored = item_response(sweep, 0)  # already follows the text unsteered
    assert flip == 0.0 and not censored


def test_premise_sees_an_oracle_that_helps_and_mcs_validity_sees_a_perfect_mcs():
    strengths = {0: 0.0, 1: 0.5, 2: 1.0}
    # the oracle pushes each item in proportion to how far it is from the target; beta0 uniformly
    oracle = _sweep("amps_oracle", "vision", lambda i, s: 4 * s * (1 - P[i]) * 2, strengths, P)
    beta0 = _sweep("amps_beta0", "vision", lambda i, s: 2 * s, strengths, P)
    amps = _sweep("amps", "vision", lambda i, s: 2 * s, strengths, P)  # an MCS that carries nothing
    result = premise({("amps_oracle", "vision"): oracle, ("amps_beta0", "vision"): beta0, ("amps", "vision"): amps},
                     n_boot=200)
    top = result["vision"]["points"][-1]
    diffs = {(d["a"], d["b"]): d for d in top["differences"]}
    oracle_vs_beta0 = diffs[("amps_oracle", "amps_beta0")]["target_share_pct"]
    assert oracle_vs_beta0["difference"] > 0 and oracle_vs_beta0["ci95"][0] >= 0
    assert diffs[("amps", "amps_beta0")]["target_share_pct"]["difference"] == 0
    assert "note" in result["text"]
    categories = {i: "color" if i % 2 else "counting" for i in P}
    validity = mcs_validity({i: p ** 2 for i, p in P.items()}, P, categories, n_boot=100)
    assert validity["all"]["spearman"] == pytest.approx(1.0) and validity["color"]["n"] == 10
    rows = susceptibility({("amps_oracle", "vision"): oracle}, P, {i: p for i, p in P.items()}, n_boot=100)
    row = rows[0]
    # the oracle's slope is 8 (1 - p): perfectly ranked by the margin away from the image, -logit p
    assert row["slope"]["margin away"]["spearman"] == pytest.approx(1.0)
    assert row["slope"]["MCS reliance away"]["spearman"] == pytest.approx(1.0)
    text = render({"data": "d", "n_items": 20, "n_boot": 100, "seed": 0,
                   "models": {"m": {"mcs_validity": validity, "premise": result, "susceptibility": rows}}})
    assert "MCS validity" in text and "amps_oracle - amps_beta0" in text and "Susceptibility" in text


def test_premise_averages_the_training_seeds_item_by_item_at_matched_strength():
    """Two seeds of a method whose strengths differ: each seed is interpolated at the matched
    strength and an item's outcome is the mean over the seeds (computed here by hand); the largest
    strength every method reaches is the smallest over the seeds' largest strengths."""
    one = _sweep("amps", "vision", lambda i, s: 2 * s, {0: 0.0, 1: 0.5, 2: 1.0}, P)
    two = _sweep("amps", "vision", lambda i, s: 6 * s, {0: 0.0, 1: 0.4, 2: 0.8}, P)
    beta0 = _sweep("amps_beta0", "vision", lambda i, s: 2 * s, {0: 0.0, 1: 0.5, 2: 1.2}, P)
    result = premise({("amps", "vision"): [one, two], ("amps_beta0", "vision"): beta0}, n_boot=50)["vision"]
    assert result["common_max"] == pytest.approx(0.8)  # min(max 1.0 and 0.8 of amps' seeds, 1.2)
    top = result["points"][-1]
    assert top["strength"] == pytest.approx(0.8) and top["methods"]["amps"]["seeds"] == 2

    def logodds(i, response):  # toward the image, at strength 0.8
        return math.log(P[i] / (1 - P[i])) + response

    by_hand = sum((logodds(i, 2 * 0.8) + logodds(i, 6 * 0.8)) / 2 for i in P) / len(P)
    assert top["methods"]["amps"]["toward_logodds"] == pytest.approx(by_hand)
    # the share interpolates each seed's 0/1 outcomes linearly between its alphas
    def share(sweep, i):
        values = at_strength(sweep, 0.8, "share")
        return values[i]

    by_hand_share = 100 * sum((share(one, i) + share(two, i)) / 2 for i in P) / len(P)
    assert top["methods"]["amps"]["target_share_pct"] == pytest.approx(by_hand_share)
    # one seed given as a list or alone: the same
    alone = premise({("amps", "vision"): one, ("amps_beta0", "vision"): beta0}, n_boot=50)
    listed = premise({("amps", "vision"): [one], ("amps_beta0", "vision"): beta0}, n_boot=50)
    assert alone == listed
    # susceptibility reads the first seed
    rows = susceptibility({("amps", "vision"): [one, two]}, P, {}, n_boot=20)
    assert rows[0]["seed_sweeps"] == 2
    assert rows[0]["mean_slope"] == pytest.approx(susceptibility({("amps", "vision"): one}, P, {}, n_boot=20)[0]["mean_slope"])


# ------------------------------------------------------------------ amps-eval validate, end to end


@pytest.mark.slow
def test_validate_end_to_end_on_a_tiny_setting(tiny_qwen_path, tmp_path):
    out = tmp_path / "validate"
    command = [sys.executable, "-m", "amps_eval.cli", "validate", "--model", "amps_qwen", "--pretrained",
               str(tiny_qwen_path), "--out", str(out), "--n-per-category", "1", "--alphas", "0,2", "--epochs", "1",
               "--device", "cpu", "--table-alpha", "2", "--seeds", "2",  # 2 training seeds, not 3: still several
               "--methods", "none,inst,l2s,amps_beta0,amps,amps_oracle"]  # no cot: a random model writes 512 tokens
    proc = subprocess.run(command, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = json.loads((out / "data" / "mc2_manifest.json").read_text())
    assert manifest["source"] == "synthetic_graded"
    assert (out / "steering" / "amps_qwen_amps_oracle.safetensors").is_file()
    result = json.loads((out / "known_answer.json").read_text())
    (model, tests), = result["models"].items()
    assert tests["mcs_validity"]["all"]["n"] == 8
    assert set(tests["premise"]) == {"vision", "text"}
    methods = {m for block in tests["premise"].values() for p in block.get("points", []) for m in p["methods"]}
    assert {"amps_oracle", "amps", "amps_beta0", "l2s"} <= methods
    assert {row["method"] for row in tests["susceptibility"]} >= {"amps_oracle", "amps", "l2s"}
    # image_logodds reached the samples through lmms-eval: the premise has log-odds means
    point = tests["premise"]["vision"]["points"][-1]
    assert all(math.isfinite(m["toward_logodds"]) for m in point["methods"].values()), point["methods"]
    text = (out / "known_answer.md").read_text()
    assert "MCS validity" in text and "AMPS premise" in text and "Susceptibility" in text
    assert "log-odds" in (out / "tables.md").read_text()


def test_the_oracle_runs_only_on_graded_data(synthetic_mc2_dir, tmp_path):
    from amps_eval.fit import data_reliance
    from amps_eval.fit_data import load_items
    from amps_eval.mc2.graded import write_graded_mc2
    from amps_eval.methods.registry import FIT_METHODS, STEERING_METHODS, usable_on

    assert "amps_oracle" not in usable_on(FIT_METHODS, ["mc2_id", "category"])
    assert usable_on(STEERING_METHODS, ["planted_p_vision"]) == STEERING_METHODS
    plain = load_items(synthetic_mc2_dir)
    with pytest.raises(ValueError, match="planted_p_vision"):
        data_reliance(plain, plain.ids, "planted_p_vision")
    write_graded_mc2(tmp_path / "graded", n_per_category=1, seed=3, image_size=56, progress=False)
    graded = load_items(tmp_path / "graded")
    r_v = data_reliance(graded, list(reversed(graded.ids)), "planted_p_vision")
    from amps_eval.mc2.graded import graded_item

    assert r_v.tolist() == [graded_item(int(i), 3, 56)["planted_p_vision"] for i in reversed(graded.ids)]


def test_study_writes_graded_data_for_a_graded_organism(tmp_path):
    from amps_eval.organism.train import MANIFEST_NAME
    from amps_eval.study import StudySettings, _data, is_graded_organism

    settings = StudySettings(out=tmp_path, n_per_category=1, image_size=56)
    graded = _data(settings, tmp_path / "a", graded=True)
    assert json.loads((graded / "mc2_manifest.json").read_text())["source"] == "synthetic_graded"
    plain = _data(settings, tmp_path / "b", previous=tmp_path / "a")  # not reused: another source
    assert json.loads((plain / "mc2_manifest.json").read_text())["source"] == "synthetic"
    folder = tmp_path / "organism"
    folder.mkdir()
    assert not is_graded_organism(str(folder))
    (folder / MANIFEST_NAME).write_text(json.dumps({"settings": {"design": "graded"}}))
    assert is_graded_organism(str(folder))


def test_the_rank_correlation_and_the_paired_difference_have_one_implementation(rng):
    """The known-answer statistics, the graded organism's check and the report use the same
    Spearman (`amps_eval.correlation`) and the same paired bootstrap (`amps_eval.report.paired`)."""
    from amps_eval import correlation
    from amps_eval.known_answer import stats
    from amps_eval.organism import graded_evaluate
    from amps_eval.report import paired, susceptibility

    assert stats.spearman is correlation.spearman is graded_evaluate.spearman
    x, y = list(rng.normal(size=30)), list(rng.normal(size=30))
    assert susceptibility.spearman(x, y) == correlation.spearman(x, y)
    ours = paired_difference(x, y, n_boot=300, seed=4)
    theirs = paired.paired_difference(dict(enumerate(x)), dict(enumerate(y)), n_boot=300, seed=4)
    assert ours == {"difference": theirs.difference, "ci95": [theirs.low, theirs.high], "n": 30}
    empty = paired_difference([], [])
    assert empty["n"] == 0 and math.isnan(empty["difference"])
