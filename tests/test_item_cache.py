"""The item cache shared by `amps-eval mcs`, the fits and the mean_mcs wrapper: each prompt's MCS is
computed once, and what is read back is what would have been computed."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace
from unittest import mock

import pytest
import torch

import amps_eval.extract as extract_module
import amps_eval.methods.mean_mcs as mean_mcs_module
from amps_eval.item_cache import model_key
from amps_eval.mcs.score import MCSSettings
from amps_eval.model_wrappers.registered import AmpsQwen

from wrapper_helpers import make_wrapper, requests_for

MCS = MCSSettings(sigmas=(0.1,), draws=2)
WRAPPER_MCS = {"mcs_sigmas": "0.1", "mcs_draws": 2}
N = 4


def counted(monkeypatch, module):
    """Patch ``module.compute_mcs`` to record the batch size of every call."""
    calls, real = [], module.compute_mcs

    def compute(model, inputs, *args, **kwargs):
        calls.append(int(inputs["input_ids"].shape[0]))
        return real(model, inputs, *args, **kwargs)

    monkeypatch.setattr(module, "compute_mcs", compute)
    return calls


def diagnostics(folder):
    rows = [r for f in sorted(folder.glob("*.jsonl")) for r in map(json.loads, f.read_text().splitlines())]
    return {str(r["mc2_id"]): r for r in rows if "r_v" in r}


@pytest.fixture(scope="module")
def mean_file(tiny_qwen_path, synthetic_mc2_dir, tmp_path_factory):
    """A mean fit (its anchors from MCS), fitted on a cache of its own."""
    from amps_eval.fit import FitSettings, fit

    root = tmp_path_factory.mktemp("mean_fit")
    with mock.patch("builtins.print"):
        fit(FitSettings(model="amps_qwen", pretrained=str(tiny_qwen_path), method="mean", layer=1, folds=2, limit=N,
                        mcs=MCS, data=synthetic_mc2_dir, cache_dir=root / "cache", batch_size=2, device="cpu"),
            root / "mean.safetensors", progress=False)
    return root / "mean.safetensors"


def sweep(tiny_qwen_path, task_dict, mean_file, out, alphas, **args):
    """A mean_mcs sweep over ``alphas`` on mc2_visual; per alpha (answers, diagnostics by mc2_id)."""
    result = {}
    for alpha in alphas:
        diag = out / f"diag-{alpha}"
        wrapper = make_wrapper(AmpsQwen, tiny_qwen_path, task_dict, method="mean_mcs", steering=str(mean_file),
                               alpha=alpha, batch_size=2, diagnostics=str(diag), **WRAPPER_MCS, **args)
        answers = wrapper.generate_until(requests_for(task_dict, "mc2_visual", n=N))
        result[alpha] = (answers, diagnostics(diag))
    return result


def test_a_cached_sweep_scores_each_item_once_and_equals_an_uncached_one(
        tiny_qwen_path, task_dict, mean_file, tmp_path, monkeypatch):
    alphas = (0.5, 2.0, 8.0)
    calls = counted(monkeypatch, mean_mcs_module)
    plain = sweep(tiny_qwen_path, task_dict, mean_file, tmp_path / "plain", alphas)
    assert sum(calls) == N * len(alphas), "without a cache every alpha scores every item"
    calls.clear()
    cached = sweep(tiny_qwen_path, task_dict, mean_file, tmp_path / "cached", alphas, item_cache=str(tmp_path / "c"))
    assert sum(calls) == N, "with a cache each item is scored once over the whole sweep"
    for alpha in alphas:
        assert cached[alpha][0] == plain[alpha][0], f"answers differ at alpha {alpha}"
        for item, row in plain[alpha][1].items():
            got = cached[alpha][1][item]
            for key in ("r_v", "c_v", "c_t", "gamma"):
                assert got[key] == pytest.approx(row[key], abs=1e-6, rel=1e-6), (alpha, item, key)


def test_mcs_run_then_fit_then_sweep_compute_each_mcs_once(tiny_qwen_path, synthetic_mc2_dir, task_dict, tmp_path,
                                                           monkeypatch):
    """The study's order: `amps-eval mcs` (none prompt), a fit, a mean_mcs run, all on one cache."""
    from amps_eval.fit import FitSettings, fit
    from amps_eval.mcs_run import run_mcs

    cache = tmp_path / "cache"
    records = run_mcs("amps_qwen", str(tiny_qwen_path), tmp_path / "m.jsonl", data=synthetic_mc2_dir, settings=MCS,
                      batch_size=2, device="cpu", limit=N, progress=False, cache_dir=cache)
    again = run_mcs("amps_qwen", str(tiny_qwen_path), tmp_path / "m2.jsonl", data=synthetic_mc2_dir, settings=MCS,
                    batch_size=3, device="cpu", limit=N, progress=False, cache_dir=cache)
    assert again == records and json.loads((tmp_path / "m2.jsonl.meta.json").read_text())["n_from_cache"] == N
    assert [r["perturbations"] for r in records] == [MCS.perturbations_per_sample] * N  # each row says its cost
    uncached = run_mcs("amps_qwen", str(tiny_qwen_path), tmp_path / "m3.jsonl", data=synthetic_mc2_dir, settings=MCS,
                       batch_size=2, device="cpu", limit=N, progress=False)
    assert uncached == records, "the cache holds exactly what was computed (same batches: same bits)"

    fit_calls = counted(monkeypatch, extract_module)
    printed = []
    with mock.patch("builtins.print", lambda *a, **k: printed.append(" ".join(map(str, a)))):
        steering = fit(FitSettings(model="amps_qwen", pretrained=str(tiny_qwen_path), method="mean", layer=1, folds=2,
                                   limit=N, mcs=MCS, data=synthetic_mc2_dir, cache_dir=cache, batch_size=2,
                                   device="cpu"), tmp_path / "mean.safetensors", progress=False)
    assert fit_calls == [] and "MCS computed for 0" in printed[0]
    by_id = {str(r["mc2_id"]): r for r in records}
    from amps_eval.steering.anchors import category_anchors

    # the anchors come from these very records
    assert steering.anchors == category_anchors(torch.tensor([r["r_v"] for r in records], dtype=torch.float64),
                                                [r["category"] for r in records])

    wrapper_calls = counted(monkeypatch, mean_mcs_module)
    result = sweep(tiny_qwen_path, task_dict, tmp_path / "mean.safetensors", tmp_path, (1.0,), item_cache=str(cache))
    assert wrapper_calls == [], "the wrapper's prompts are the fit's none prompts: all from the cache"
    for item, row in result[1.0][1].items():
        assert row["r_v"] == by_id[item]["r_v"] and row["r_v_stderr"] == by_id[item]["r_v_stderr"]
        assert row["perturbations"] == by_id[item]["perturbations"]  # in the diagnostics too


def test_model_key_changes_with_the_checkpoint_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    model = SimpleNamespace(config=SimpleNamespace(_name_or_path=str(tmp_path)), dtype=torch.float32)
    first = model_key(model)
    assert model_key(model) == first and first["pretrained"] == str(tmp_path.resolve())
    os.utime(tmp_path / "model.safetensors", ns=(1, 1))  # rewritten in place
    assert model_key(model)["files"] != first["files"]
    assert model_key(SimpleNamespace(config=model.config, dtype=torch.bfloat16))["dtype"] != first["dtype"]
