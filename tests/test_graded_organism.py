"""The graded organisms (amps_eval.organism.graded): the planted per-item preference, the soft-target
training, the graded data folder, and the shipped organisms' held-out targets measured through the
wrappers' image_logodds."""

from __future__ import annotations

import math

import pytest
import torch

from amps_eval.known_answer.stats import spearman
from amps_eval.logodds import answer_logodds
from amps_eval.mc2.graded import (
    CATEGORY_BASE,
    CERTAINTY_CUES,
    category_mean_p,
    graded_item,
    planted_p,
    planted_p_of,
    write_graded_mc2,
)
from amps_eval.mc2.schema import CATEGORIES
from amps_eval.mc2.synthetic import synthetic_item
from amps_eval.organism.design import CONDITIONS
from amps_eval.organism.graded import GRADED_FOLDERS, graded_organism_path, graded_settings, graded_training_example
from amps_eval.organism.train import OrganismSettings, read_manifest, soft_target_loss

from wrapper_helpers import make_wrapper, mc2_task_dict, requests_for

HELD_OUT_SEED = 7  # neither the graded training items' seed (1) nor the manifest's evaluation seed (2)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


# ------------------------------------------------------------------ design (pure)


def test_planted_p_spans_a_wide_range_in_every_category_and_category_means_differ():
    for category in CATEGORIES:
        values = [planted_p(category, k) for k in range(len(CERTAINTY_CUES))]
        assert values == sorted(values)  # less certain wording -> more image
        assert values[0] < 0.2 and values[-1] > 0.85, (category, values)
    means = [category_mean_p(c) for c in CATEGORIES]
    assert len({round(m, 3) for m in means}) == len(CATEGORIES)
    assert max(means) - min(means) > 0.2
    with pytest.raises(ValueError, match="cue level"):
        planted_p("color", len(CERTAINTY_CUES))
    with pytest.raises(ValueError, match="unknown MC2 category"):
        planted_p("weather", 0)


def test_graded_item_is_the_synthetic_item_with_a_hedged_context():
    for index in range(16):
        item, plain = graded_item(index, 3, 56), synthetic_item(index, 3, 56)
        assert item == graded_item(index, 3, 56)  # a pure function
        assert item["context"].startswith(CERTAINTY_CUES[item["cue_level"]])
        assert item["context"].endswith(plain["context"][1:])
        assert item["image"] == plain["image"] and item["answer_vision"] == plain["answer_vision"]
        assert item["planted_p_vision"] == planted_p(item["category"], item["cue_level"])
    levels = {graded_item(i, 3, 56)["cue_level"] for i in range(64)}
    assert levels == set(range(len(CERTAINTY_CUES)))


def test_graded_folder_records_planted_p_on_every_item_and_loads_as_mc2(tmp_path):
    from amps_eval.mc2.source import load_mc2, resolve_source

    out = tmp_path / "graded"
    write_graded_mc2(out, n_per_category=2, seed=3, image_size=56, progress=False)
    items = load_mc2(resolve_source(folder=out))  # the tasks' own check accepts it
    assert len(items) == 16 and "planted_p_vision" in items.column_names
    planted = planted_p_of(out)
    assert planted == {i: graded_item(i, 3, 56)["planted_p_vision"] for i in range(16)}
    task_dict = mc2_task_dict(out)
    assert "planted_p_vision" in task_dict["mc2_visual"]["test"].column_names


def test_planted_p_of_refuses_a_plain_folder(synthetic_mc2_dir):
    with pytest.raises(ValueError, match="not a graded data folder"):
        planted_p_of(synthetic_mc2_dir)


def test_graded_examples_soft_only_without_instruction():
    seen = set()
    for slot in range(120):
        example = graded_training_example(slot, 1, (84,))
        if example.kind == "conflict" and example.condition == CONDITIONS[0]:
            item = graded_item(example.index, 1, 84)
            p = item["planted_p_vision"]
            assert example.target_p == pytest.approx(max(p, 1 - p))
            assert example.context == item["context"]
            image_first = example.option_a == item["answer_vision"]
            follows_image = (example.answer == "A") == image_first
            assert follows_image == (p >= 0.5)
            flipped = example.flipped()
            assert flipped.answer != example.answer and flipped.target_p == pytest.approx(1 - example.target_p)
            seen.add("soft")
        else:
            assert example.target_p == 1.0
            seen.add(example.kind)
    assert seen == {"soft", "conflict", "consistent"}  # variants 4-5 became soft examples (SOFT_VARIANTS)


def test_soft_target_loss_is_cross_entropy_and_its_optimum_is_logit_p():
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 5)
    targets = torch.tensor([[1, 2], [3, -100], [0, 4]])
    plain = torch.nn.functional.cross_entropy(logits.reshape(-1, 5), targets.reshape(-1), ignore_index=-100)
    assert soft_target_loss(logits, targets, torch.ones(3)) == pytest.approx(float(plain), abs=1e-6)
    # one question, two one-token answers (tokens 1 and 2) weighted p and 1 - p: the optimum's log-odds is logit(p)
    p = 0.8
    free = torch.zeros(1, 1, 5, requires_grad=True)
    optimizer = torch.optim.Adam([free], lr=0.1)
    for _ in range(500):
        loss = soft_target_loss(free.expand(2, 1, 5), torch.tensor([[1], [2]]), torch.tensor([p, 1 - p]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    log_probs = torch.log_softmax(free.detach()[0, 0], dim=-1)
    assert float(log_probs[1] - log_probs[2]) == pytest.approx(logit(p), abs=0.02)


def test_graded_settings_are_validated():
    settings = graded_settings("llava")
    assert settings.design == "graded" and settings.init == "shipped" and settings.vision_pretrain_steps == 0
    with pytest.raises(ValueError, match="design"):
        OrganismSettings(design="curved")
    with pytest.raises(ValueError, match="init"):
        OrganismSettings(init="elsewhere")
    with pytest.raises(ValueError, match="no graded organism"):
        graded_organism_path("mystery")


# ------------------------------------------------------------------ the shipped graded organisms


@pytest.fixture(scope="module", params=sorted(GRADED_FOLDERS))
def graded(request):
    from amps_eval.organism.architectures import architecture

    arch = architecture(request.param)
    return arch, graded_organism_path(request.param)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """The held-out graded items as task documents: mc2_visual / mc2_text (one option order, for the
    inst baselines) and mc2_visual_both_orders (every item in both option orders)."""
    from datasets import DatasetDict

    from amps_eval.mc2.docs import TaskSpec, task_docs
    from amps_eval.mc2.source import load_mc2, resolve_source

    out = tmp_path_factory.mktemp("graded") / "held_out"
    write_graded_mc2(out, n_per_category=16, seed=HELD_OUT_SEED, image_size=84, progress=False)
    task_dict = mc2_task_dict(out)
    items = load_mc2(resolve_source(folder=out))
    task_dict["mc2_visual_both_orders"] = DatasetDict({"test": task_docs(items, TaskSpec("vision", None, "both"))})
    return out, task_dict


def test_shipped_graded_organism_is_recorded(graded):
    arch, folder = graded
    manifest = read_manifest(folder)
    assert manifest["settings"]["design"] == "graded" and manifest["settings"]["init"] == "shipped"
    assert manifest["design"]["category_base"] == CATEGORY_BASE
    assert manifest["init"]["from"] == arch.folder
    targets = manifest["evaluation"]["targets"]
    assert targets["inst_vision>=0.95"] and targets["inst_text>=0.95"], targets
    if not all(targets.values()):
        pytest.xfail(f"{arch.name}: the manifest's held-out evaluation misses {[k for k, v in targets.items() if not v]}")


def test_shipped_graded_organism_tracks_logit_p_on_held_out_items(graded, held_out):
    """Measured through the wrapper (image_logodds of generate_until, method none; an item's value
    is the mean over its two option orders, so the order is not part of the item's preference):
    Spearman with logit(planted p) >= 0.9 over all items and >= 0.7 within every category; the
    inst baselines follow the instructed modality on >= 95% of the answers."""
    arch, folder = graded
    data, task_dict = held_out
    planted = planted_p_of(data)
    cls = arch.load_wrapper_class()
    wrapper = make_wrapper(cls, folder, task_dict, batch_size=16)
    docs = task_dict["mc2_visual_both_orders"]["test"]
    answers = wrapper.generate_until(requests_for(task_dict, "mc2_visual_both_orders"))
    per_item: dict[int, list[float]] = {}
    categories = {}
    for doc, answer in zip(docs, answers):
        value, kind = answer_logodds(answer)
        assert kind == "text" and value is not None
        per_item.setdefault(int(doc["mc2_id"]), []).append(value)
        categories[int(doc["mc2_id"])] = doc["category"]
    assert all(len(v) == 2 for v in per_item.values())
    rows = [(categories[i], sum(v) / 2, logit(planted[i])) for i, v in sorted(per_item.items())]
    overall = spearman([r[1] for r in rows], [r[2] for r in rows])
    within = {c: spearman([r[1] for r in rows if r[0] == c], [r[2] for r in rows if r[0] == c]) for c in CATEGORIES}
    print(f"{arch.name}: Spearman all {overall:.3f}; within " + ", ".join(f"{c} {v:.2f}" for c, v in within.items()))
    from amps_eval.mc2.parse import follows

    inst = make_wrapper(cls, folder, task_dict, batch_size=16, method="inst", loaded=wrapper.loaded)
    following = {}
    for task, target in (("mc2_visual", "vision"), ("mc2_text", "text")):
        answers = inst.generate_until(requests_for(task_dict, task))
        shares = [follows(a, d) == target for a, d in zip(answers, task_dict[task]["test"])]
        following[target] = sum(shares) / len(shares)
    print(f"{arch.name}: inst following {following}")
    # a regression guard below what the shipped organisms measured here (qwen: 0.909 / min 0.64 in
    # positional_reasoning; llava: 0.889 / min 0.76; inst >= 0.94) ...
    assert overall >= 0.85 and min(within.values()) >= 0.6, within
    assert min(following.values()) >= 0.9, following
    # ... and the targets, which the shipped organisms do not all meet yet (docs/organisms.md)
    missed = [f"Spearman {overall:.3f} overall"] if overall < 0.9 else []
    missed += [f"{c} {v:.2f} within" for c, v in within.items() if v < 0.7]
    missed += [f"inst {t} {v:.3f}" for t, v in following.items() if v < 0.95]
    if missed:
        pytest.xfail(f"{arch.name}: targets (0.9 overall, 0.7 within, inst 0.95) not met: {', '.join(missed)}")
