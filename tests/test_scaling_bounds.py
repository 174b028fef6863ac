"""The bounds of the per-sample scaling (gamma cap, anchor floor), the per-fold anchors of mean_mcs,
and the refusal of a mean_mcs run whose MCS settings differ from the fit's."""

from __future__ import annotations

import json

import pytest
import torch

from amps_eval.mcs.score import MCSSettings
from amps_eval.steering.scaling import ANCHOR_FLOOR, GAMMA_MAX, gamma


def test_an_anchor_near_zero_no_longer_gives_a_huge_strength():
    # the case seen in a demo: anchor 0.0059, the item's r_v 0.135, toward the text (r = r_v)
    assert float(gamma(torch.tensor(0.135), 0.0059, 1.0, "text")) == pytest.approx(1 + (0.135 - 0.0059) / 0.0059)
    bounded = float(gamma(torch.tensor(0.135), 0.0059, 1.0, "text", cap=GAMMA_MAX, anchor_floor=ANCHOR_FLOOR))
    assert bounded == GAMMA_MAX
    floored = float(gamma(torch.tensor(0.02), 0.0059, 1.0, "text", anchor_floor=ANCHOR_FLOOR))
    assert floored == pytest.approx(1 + (0.02 - ANCHOR_FLOOR) / ANCHOR_FLOOR)


def test_the_bounds_leave_ordinary_items_alone_and_are_validated():
    r = torch.tensor([0.3, 0.5, 0.7])
    assert torch.equal(gamma(r, 0.5, 1.0, "text", cap=GAMMA_MAX, anchor_floor=ANCHOR_FLOOR), gamma(r, 0.5, 1.0, "text"))
    with pytest.raises(ValueError, match="cap"):
        gamma(r, 0.5, 1.0, "text", cap=0.5)
    with pytest.raises(ValueError, match="anchor_floor"):
        gamma(r, 0.5, 1.0, "text", anchor_floor=1.0)


def _mean_file(path, model_path, task_dict, fold_anchors, mcs):
    from transformers import AutoConfig

    from amps_eval.steering.file import Fold, SteeringFile

    config = AutoConfig.from_pretrained(model_path)
    text = config.get_text_config()
    ids = sorted({str(i) for i in task_dict["mc2_visual"]["test"]["mc2_id"]}, key=int)
    v = torch.randn(text.hidden_size, generator=torch.Generator().manual_seed(0))
    folds = [Fold(f"fold{k}", [i for i in ids if i not in ids[k::2]], ids[k::2], {"vision.vector": v, "text.vector": -v})
             for k in range(2)]
    SteeringFile(method="mean", layer=1, hidden_size=text.hidden_size, num_layers=text.num_hidden_layers,
                 model_id=str(model_path), architecture=config.architectures[0], folds=folds,
                 anchors={"__all__": 0.5}, settings={"fold_anchors": fold_anchors, "mcs": mcs.to_dict(),
                                                     "gamma_max": GAMMA_MAX, "anchor_floor": ANCHOR_FLOOR}).save(path)
    return path


def test_mean_mcs_scales_each_item_with_the_anchors_of_the_fold_that_steers_it(tiny_qwen_path, task_dict, tmp_path):
    from amps_eval.model_wrappers.registered import AmpsQwen

    from wrapper_helpers import make_wrapper, requests_for

    anchors = {"fold0": {"__all__": 0.2}, "fold1": {"__all__": 0.8}}
    steering = _mean_file(tmp_path / "mean.safetensors", tiny_qwen_path, task_dict, anchors, MCSSettings())
    wrapper = make_wrapper(AmpsQwen, tiny_qwen_path, task_dict, method="mean_mcs", steering=str(steering),
                           diagnostics=str(tmp_path / "diag"))
    wrapper.generate_until(requests_for(task_dict, "mc2_text", n=6))
    rows = [r for f in (tmp_path / "diag").glob("*.jsonl") for r in map(json.loads, f.read_text().splitlines()) if "anchor" in r]
    assert {(r["fold"], r["anchor"]) for r in rows} == {(0, 0.2), (1, 0.8)}
    assert all(r["gamma"] <= GAMMA_MAX for r in rows)


def test_mean_mcs_refuses_a_file_whose_anchors_came_from_other_mcs_settings(tiny_qwen_path, task_dict, tmp_path):
    from amps_eval.model_wrappers.registered import AmpsQwen

    from wrapper_helpers import make_wrapper

    steering = _mean_file(tmp_path / "mean.safetensors", tiny_qwen_path, task_dict, {}, MCSSettings(draws=4))
    with pytest.raises(ValueError, match="draws 4"):
        make_wrapper(AmpsQwen, tiny_qwen_path, task_dict, method="mean_mcs", steering=str(steering))
