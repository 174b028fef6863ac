"""A family file's anatomy hooks take effect: the steering hooks, the MCS and the fit ask the loaded
model's adapter (`amps_eval.families.adapter_for`), never `amps_eval.anatomy` directly.

A test-only family adapter, registered for a tiny model's ``model_type`` by monkeypatching the
registry (a named family in ``FAMILIES``, or a ``type_hooks`` entry of `amps_auto`), overrides
``decoder_layers`` (the layers in reverse order), ``hidden_size``, ``kv_refusal`` and
``prompt_position_ids``; the steering hook then attaches where the override says (its logits equal
those of a hook on the generic rule's last layer), a steering vector is checked against the
overridden width, the MCS (and an extraction that scores it) refuses with the override's message
before any forward, and the prefill carries the override's positions. Without the override nothing changes (the generic
rules; the shipped organisms' outputs are checked by tests/test_generic_adapter.py).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from transformers import AutoConfig, LlavaConfig, LlavaForConditionalGeneration

from amps_eval import anatomy, families
from amps_eval.families import GENERIC, FamilyAdapter, adapter_for
from amps_eval.mcs.kv_cache import prefill_prompt, prompt_position_ids
from amps_eval.mcs.score import compute_mcs
from amps_eval.steering.hooks import capture, decoder_layers, hidden_size, steer

D, LAYERS, VOCAB = 32, 3, 128
REFUSAL = "test-only family: this model's K/V are not over the prompt"


class ReversedHooks(FamilyAdapter):
    """A family file overriding the model-level hooks (test only)."""

    def decoder_layers(self, model):
        return nn.ModuleList(list(anatomy.decoder_layers(model))[::-1])

    def kv_refusal(self, model, prompt_length=None):
        return REFUSAL

    def prompt_position_ids(self, model, inputs):
        return anatomy.position_ids(model, inputs) + 7


def _llava() -> LlavaForConditionalGeneration:
    torch.manual_seed(0)
    config = LlavaConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=D, intermediate_size=64, num_hidden_layers=LAYERS,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1,
                         eos_token_id=2, pad_token_id=0, model_type="llama"),
        vision_config=dict(model_type="clip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=28, patch_size=14),
        image_token_index=120)
    return LlavaForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def model():
    return _llava()


@pytest.fixture
def inputs():
    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [3, 4, 5, 6, 7, 8]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def _register(monkeypatch) -> ReversedHooks:
    """Register `ReversedHooks` as the family of ``model_type`` llava (replacing the named family's entry)."""
    llava = families.FAMILIES["llava"]
    cls = type("ReversedLlava", (ReversedHooks, type(llava)), {})  # the LLaVA family file plus the overrides
    hooks = cls(**{f.name: getattr(llava, f.name) for f in dataclasses.fields(llava)})
    monkeypatch.setitem(families.FAMILIES, "llava", hooks)
    return hooks


def _steered_logits(model, inputs, layer: int, vector: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), steer(model, layer, vector, 3.0, attention_mask=inputs["attention_mask"]):
        return model(**inputs).logits[:, -1]


def _captured(model, inputs, layer: int) -> torch.Tensor:
    with torch.no_grad(), capture(model, layer) as record:
        model(**inputs)
    return record.first


def test_without_an_override_the_adapter_gives_the_generic_rules(model, inputs):
    adapter = adapter_for(model)
    assert adapter is families.FAMILIES["llava"]
    assert all(getattr(type(adapter), hook) is getattr(FamilyAdapter, hook)
               for hook in ("decoder_layers", "hidden_size", "prompt_position_ids", "kv_refusal"))
    assert list(decoder_layers(model)) == list(anatomy.decoder_layers(model)) == list(model.model.language_model.layers)
    assert hidden_size(model) == anatomy.hidden_size(model) == D
    assert adapter.kv_refusal(model, 6) is None
    assert torch.equal(prefill_prompt(model, inputs).position_ids, anatomy.position_ids(model, inputs))


def test_decoder_layers_override_moves_the_steering_hook(model, inputs, monkeypatch):
    generic = list(anatomy.decoder_layers(model))
    vector = torch.randn(D, generator=torch.Generator().manual_seed(1))
    generic_last = _steered_logits(model, inputs, LAYERS - 1, vector)
    generic_first = _steered_logits(model, inputs, 0, vector)
    captured_last = _captured(model, inputs, LAYERS - 1)
    assert not torch.allclose(generic_first, generic_last)  # the layer matters: the check below can fail

    hooks = _register(monkeypatch)
    assert adapter_for(model) is hooks
    assert list(decoder_layers(model)) == generic[::-1]
    with steer(model, 0, vector, 1.0, attention_mask=inputs["attention_mask"]):
        assert [len(layer._forward_hooks) for layer in generic] == [0] * (LAYERS - 1) + [1]
    assert all(len(layer._forward_hooks) == 0 for layer in generic)
    torch.testing.assert_close(_steered_logits(model, inputs, 0, vector), generic_last, rtol=0, atol=0)
    torch.testing.assert_close(_captured(model, inputs, 0), captured_last, rtol=0, atol=0)


def test_hidden_size_override_is_what_a_steering_vector_is_checked_against(model, inputs, monkeypatch):
    class Wider(ReversedHooks):
        def hidden_size(self, model):
            return D + 1

    llava = families.FAMILIES["llava"]
    cls = type("WiderLlava", (Wider, type(llava)), {})
    monkeypatch.setitem(families.FAMILIES, "llava", cls(**{f.name: getattr(llava, f.name)
                                                            for f in dataclasses.fields(llava)}))
    assert hidden_size(model) == D + 1
    with pytest.raises(ValueError, match=rf"expected \[{D + 1}\]"):
        with steer(model, 0, torch.zeros(D), 1.0, attention_mask=inputs["attention_mask"]):
            pass
    with steer(model, 0, torch.zeros(D + 1), 1.0, attention_mask=inputs["attention_mask"]):
        pass  # the shape check passes (the hook is never called: no forward)


def test_kv_refusal_override_makes_the_mcs_refuse(model, inputs, monkeypatch):
    _register(monkeypatch)
    vision = torch.zeros_like(inputs["input_ids"], dtype=torch.bool)
    vision[:, 3] = True
    with pytest.raises(anatomy.KVSupportError, match=REFUSAL):
        compute_mcs(model, inputs, vision, ~vision & inputs["attention_mask"].bool())


def test_position_override_reaches_the_prefill(model, inputs, monkeypatch):
    _register(monkeypatch)
    want = anatomy.position_ids(model, inputs) + 7
    assert torch.equal(prompt_position_ids(model, inputs), want)
    monkeypatch.setattr(ReversedHooks, "kv_refusal", FamilyAdapter.kv_refusal)  # let the prefill run
    assert torch.equal(prefill_prompt(model, inputs).position_ids, want)


class _ConfigOnly(nn.Module):
    """A model of ``model_type`` as the MCS's check before any compute sees it: its config."""

    def __init__(self, model_type: str) -> None:
        super().__init__()
        self.config = AutoConfig.for_model(model_type, text_config={"hidden_size": 32, "num_attention_heads": 2,
                                                                    "vocab_size": 128, "num_hidden_layers": 2})

    def forward(self, **kwargs):
        raise AssertionError("the MCS ran a forward before refusing the model")


def test_type_hooks_override_of_amps_auto_takes_effect(monkeypatch):
    """A family file registered in `amps_auto`'s ``type_hooks`` (as Mistral3's and SmolVLM's are)
    answers for a model of that type, through `adapter_for` and through the generic adapter itself."""
    model = _ConfigOnly("gemma3")
    assert families.by_model_type("gemma3") is None and adapter_for(model) is GENERIC
    hooks = ReversedHooks(name="gemma3", display="Gemma3 (test)", lmms_model="amps_auto", model_types=("gemma3",))
    monkeypatch.setitem(GENERIC.type_hooks, "gemma3", hooks)
    assert adapter_for(model) is hooks
    assert GENERIC.kv_refusal(model, 6) == REFUSAL  # the generic adapter hands the question on
    ids = torch.ones((1, 6), dtype=torch.long)
    vision = torch.zeros_like(ids, dtype=torch.bool)
    vision[0, 1] = True
    with pytest.raises(anatomy.KVSupportError, match=REFUSAL):
        compute_mcs(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, vision, ~vision)


def test_kv_refusal_override_stops_an_extraction_that_scores_the_mcs(tiny_llava_path, synthetic_mc2_dir,
                                                                      monkeypatch):
    """The fit's extraction (`run_variants` with ``mcs_for``) asks the adapter before any forward;
    without the MCS it runs (steering still works on such a model)."""
    from amps_eval.encoding import load_encoder
    from amps_eval.fit_data import load_items
    from amps_eval.shared_prefix import run_variants

    encoder = load_encoder("amps_llava", tiny_llava_path, "cpu", "float32")
    items = load_items(synthetic_mc2_dir)
    conversations = {kind: items.conversations([0, 1], kind) for kind in ("none", "vision")}
    _register(monkeypatch)

    def no_forward(*args, **kwargs):
        raise AssertionError("a forward ran before the refusal")

    with monkeypatch.context() as m:
        m.setattr(encoder.model, "forward", no_forward)
        with pytest.raises(anatomy.KVSupportError, match=REFUSAL):
            run_variants(encoder, conversations, 1, mcs_for=("none",))
    passes = run_variants(encoder, conversations, 1)
    assert passes.variants["none"].hidden.shape[-1] == encoder.model.config.text_config.hidden_size


def test_processors_and_the_family_registry_do_not_import_each_other():
    """`amps_eval.processors` imports nothing of `amps_eval.families`; `families/base.py` imports
    `amps_eval.processors` only inside the hooks that build a processor (import-light registry)."""
    import ast
    from pathlib import Path

    root = Path(anatomy.__file__).parent

    def imports(path: Path, top_level_only: bool) -> set[str]:
        tree = ast.parse(path.read_text())
        nodes = tree.body if top_level_only else list(ast.walk(tree))
        found = set()
        for node in nodes:
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
        return found

    assert not {m for m in imports(root / "processors.py", False) if m.startswith("amps_eval.families")}
    assert "amps_eval.processors" not in imports(root / "families" / "base.py", True)
