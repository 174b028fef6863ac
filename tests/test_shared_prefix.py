"""One prefill of the shared [image, text] prefix plus each variant's own tokens equals a full prefill
of every prompt (hidden states, and the MCS from the reused prefill), for all three families, on
left-padded batches of different lengths; a batch whose variants cannot share falls back."""

from __future__ import annotations

import pytest
import torch

from amps_eval.encoding import load_encoder
from amps_eval.fit_data import load_items
from amps_eval.mcs.score import MCSSettings, compute_mcs, noise_key
from amps_eval.methods.prompts import Turn
from amps_eval.shared_prefix import common_prefix_lengths, run_variants

FAMILIES = {"qwen": ("amps_qwen", "tiny_qwen_path"), "llava": ("amps_llava", "tiny_llava_path"),
            "qwen2": ("amps_qwen2", "tiny_qwen2_path")}
LAYER = 1


@pytest.fixture(params=list(FAMILIES))
def encoder(request):
    name, fixture = FAMILIES[request.param]
    return load_encoder(name, request.getfixturevalue(fixture), "cpu", "float32")


def _rows(items):
    """Rows of different prompt lengths, so the batch is left-padded and the suffixes differ."""
    lengths = [len(items.docs[i]["question"]) + len(items.docs[i].get("context") or "") for i in range(len(items))]
    order = sorted(range(len(items)), key=lambda i: lengths[i])
    return [order[0], order[len(order) // 2], order[-1]]


def _alone(encoder, conversation, layer):
    """An independent reference: the prompt alone (no padding), full prefill, its layer output."""
    return run_variants(encoder, {"x": [conversation]}, layer, share=False).variants["x"].hidden[0]


def test_common_prefix_lengths_pure():
    t = torch.tensor
    assert common_prefix_lengths([[t([1, 2, 3, 4])], [t([1, 2, 5])], [t([1, 2, 3, 9, 9])]]) == [2]
    assert common_prefix_lengths([[t([1, 2, 3])], [t([1, 2, 3, 4])]]) == [2]  # every variant keeps a token
    assert common_prefix_lengths([[t([7, 1])], [t([8, 1])]]) == [0]


def test_shared_prefix_equals_a_full_prefill_of_each_prompt(encoder, synthetic_mc2_dir):
    items = load_items(synthetic_mc2_dir)
    rows = _rows(items)
    conversations = {kind: items.conversations(rows, kind) for kind in ("none", "vision", "text")}
    shared = run_variants(encoder, conversations, LAYER)
    full = run_variants(encoder, conversations, LAYER, share=False)
    assert shared.shared and not full.shared
    mask = encoder.encode_turns(conversations["none"]).inputs["attention_mask"]
    assert len(set(mask.sum(-1).tolist())) == 3, "the rows must have different lengths (left padding)"
    for kind in conversations:
        got, want = shared.variants[kind].hidden, full.variants[kind].hidden
        assert got.shape == want.shape and got.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        for j in range(len(rows)):  # and each prompt alone, without any padding
            torch.testing.assert_close(got[j], _alone(encoder, conversations[kind][j], LAYER), rtol=1e-4, atol=1e-5)
    # the prefix ends at the end of the user's text at the latest: the variants differ right after it
    for j, n in enumerate(shared.prefix_lengths):
        assert 0 < n < int(mask[j].sum())
        assert bool(encoder.encode_turns([conversations["none"][j]]).vision_mask[0, :n].any())


def test_mcs_from_the_reused_prefill_equals_compute_mcs_on_the_full_prompt(encoder, synthetic_mc2_dir):
    items = load_items(synthetic_mc2_dir)
    rows = _rows(items)
    conversations = {kind: items.conversations(rows, kind) for kind in ("none", "vision", "text")}
    ids = [noise_key(items.ids[i], "none") for i in rows]
    settings = MCSSettings(sigmas=(0.1,), draws=2)
    passes = run_variants(encoder, conversations, LAYER, mcs_for=("none",))
    assert passes.shared
    none = passes.variants["none"]
    reused = compute_mcs(encoder.model, none.inputs, none.vision_mask, none.text_mask, settings, ids,
                         prefilled=none.prefill)
    enc = encoder.encode_turns(conversations["none"])
    plain = compute_mcs(encoder.model, enc.inputs, enc.vision_mask, enc.text_mask, settings, ids)
    assert reused.n_vision == plain.n_vision and reused.n_text == plain.n_text
    torch.testing.assert_close(reused.ce_clean, plain.ce_clean, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(reused.scores, plain.scores, rtol=1e-3, atol=1e-9)
    torch.testing.assert_close(reused.r_v, plain.r_v, rtol=1e-4, atol=1e-6)


def test_variants_that_differ_before_the_image_fall_back_to_full_prefills(encoder, synthetic_mc2_dir):
    """A system turn in one variant only: no shared prefix holds the image, so every variant gets a
    full prefill, with the same results as asking for full prefills."""
    items = load_items(synthetic_mc2_dir, limit=2)
    plain = items.conversations([0, 1], "none")
    other = [[Turn("system", "Answer briefly."), *conversation] for conversation in plain]
    conversations = {"none": plain, "system": other}
    got = run_variants(encoder, conversations, LAYER, mcs_for=("none",))
    want = run_variants(encoder, conversations, LAYER, mcs_for=("none",), share=False)
    assert not got.shared and got.prefix_lengths == [0, 0]
    for kind in conversations:
        assert torch.equal(got.variants[kind].hidden, want.variants[kind].hidden)
    for j in range(2):
        torch.testing.assert_close(got.variants["system"].hidden[j], _alone(encoder, other[j], LAYER),
                                   rtol=1e-4, atol=1e-5)
    assert torch.equal(got.variants["none"].prefill.logits, want.variants["none"].prefill.logits)
