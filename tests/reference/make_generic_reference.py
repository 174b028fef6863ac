"""Record what the family-specific code path gave (before the generic adapter, issue 21), so that
`tests/test_generic_adapter.py` can check that the generic path changes no number.

Run once, from the repository root, on the code to freeze:
    .venv/bin/python tests/reference/make_generic_reference.py
It writes ``tests/reference/generic_reference.json``: for the two shipped organisms and the tiny
Qwen2-VL checkpoint (seed 0), the encoded inputs and modality masks of three prompts, the greedy
answers (12 new tokens), the last prompt token's hidden state after the steering layer of each row,
and the MCS (C_V, C_T) of the batch.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
OUT = HERE / "generic_reference.json"

PROMPTS = (
    "Text context: the dog is black and lies on a red sofa.\nWhat colour is the dog?\nA. black\nB. white",
    "What is on the left of the red circle?",
    "Which shape is larger?\nA. the square\nB. the circle\nAnswer with the option's letter.",
)
LAYER = 1
NEW_TOKENS = 12


def cases(tmp: Path) -> list[tuple[str, str]]:
    from amps_eval.organism import organism_path
    from amps_eval.tiny_models import tiny_model

    return [("amps_qwen", str(organism_path("amps_qwen"))), ("amps_llava", str(organism_path("amps_llava"))),
            ("amps_qwen2", str(tiny_model("qwen2_vl", tmp, seed=0)))]


def measure(model_name: str, pretrained: str) -> dict:
    """Inputs, masks, answers, hidden states and MCS of `PROMPTS` through the public entry points."""
    from amps_eval.encoding import load_encoder
    from amps_eval.mcs.score import MCSSettings, compute_mcs
    from amps_eval.methods.prompts import Turn
    from amps_eval.steering.hooks import decoder_layers
    from amps_eval.tiny_models import tiny_image

    torch.manual_seed(0)
    encoder = load_encoder(model_name, pretrained, device="cpu", dtype="float32")
    conversations = [[Turn("user", text, (tiny_image(56 + 8 * i, 48, seed=i),))] for i, text in enumerate(PROMPTS)]
    encoded = encoder.encode_turns(conversations)
    model = encoder.model
    captured = {}

    def keep(module, args, out) -> None:
        captured.setdefault("h", (out[0] if isinstance(out, tuple) else out)[:, -1].clone())

    handle = decoder_layers(model)[LAYER].register_forward_hook(keep)
    with torch.no_grad():
        model(**{k: v for k, v in encoded.inputs.items()})
    handle.remove()
    with torch.no_grad():
        out = model.generate(**encoded.inputs, max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1,
                             pad_token_id=encoder.processor.tokenizer.pad_token_id)
    answers = encoder.processor.tokenizer.batch_decode(out[:, encoded.inputs["input_ids"].shape[1]:],
                                                       skip_special_tokens=True)
    mcs = compute_mcs(model, encoded.inputs, encoded.vision_mask, encoded.text_mask, MCSSettings(seed=0, tolerance=None, draws=16),  # the estimator the reference was made with
                      sample_ids=["a", "b", "c"])
    return {
        "input_ids": encoded.inputs["input_ids"].tolist(),
        "vision_mask": encoded.vision_mask.int().tolist(),
        "text_mask": encoded.text_mask.int().tolist(),
        "answers": answers,
        "hidden": captured["h"].tolist(),
        "c_v": mcs.c_v.tolist(),
        "c_t": mcs.c_t.tolist(),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = {name: measure(name, path) for name, path in cases(Path(tmp))}
    data["_meta"] = {"layer": LAYER, "new_tokens": NEW_TOKENS, "prompts": list(PROMPTS)}
    OUT.write_text(json.dumps(data) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
