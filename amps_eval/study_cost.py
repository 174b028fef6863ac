"""What a study costs on a GPU, projected from a checkpoint's sizes (pure; docs/cost.md).

Nothing here is measured. The sizes of each checkpoint (`SIZES`) are those `bench_full_size.py`
measured on one layer and projected to full depth (benchmarks/README.md, "Full-size widths": the
parameters per decoder layer and per vision block, the other parameters, the K/V bytes per token
and layer, the prompt tokens of a 640x480 MC2 item). From them:

* memory, bf16: the weights (parameters x 2 bytes); generation adds the K/V cache of ``batch``
  prompts plus their token budget; the MCS adds its perturbed cache copies (each copy and its
  gradient: 2 x the cut cache of one prompt), as many per pass as fit half the free memory
  (`amps_eval.mcs.score.CUDA_MEMORY_FRACTION`): it needs room for one copy and uses the rest for speed;
* time: floating-point operations (2 per parameter and token in a forward pass, 3x that for a
  forward plus backward) at an assumed effective throughput, plus bytes moved at an assumed
  effective bandwidth (`Device`). Decoding one token reads every weight once per batch. Activations,
  Python overhead, data loading and the model load are left out, so read the times as lower bounds
  that say which step dominates and how the cost grows, not as a promise.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEVICES", "Device", "SIZES", "Sizes", "by_config", "generation_bytes", "mcs_copy_bytes",
           "step_seconds", "weights_bytes"]

GIB = 2**30
BF16 = 2  # bytes per element


@dataclass(frozen=True)
class Sizes:
    """A checkpoint's sizes as bench_full_size.py projected them (benchmarks/README.md)."""

    name: str
    hub_id: str
    model_type: str
    hidden: int
    layers: int
    params: int  # total, projected to full depth
    params_per_layer: int  # one LM decoder layer, measured
    vision_params: int  # every vision block (one block measured x the tower's depth)
    other_params: int  # embeddings, LM head, patch embedding, projector, norms: measured
    kv_bytes_f32: int  # K/V bytes per token and layer in float32, as printed
    prompt_tokens: int  # one MC2 item's prompt (640x480 image)
    vision_patches: int  # patches the vision tower runs on for that image

    @property
    def kv_bytes(self) -> int:
        """K/V bytes per token and layer in bf16."""
        return self.kv_bytes_f32 * BF16 // 4


SIZES: tuple[Sizes, ...] = (
    Sizes("qwen2.5-vl-3b", "Qwen/Qwen2.5-VL-3B-Instruct", "qwen2_5_vl", 2048, 36, 3_754_622_976, 77_076_992,
          19_702_200 * 32, 349_380_864, 2_048, 488, 391 * 4),
    Sizes("qwen2.5-vl-7b", "Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl", 3584, 28, 8_292_166_656, 233_057_792,
          19_702_200 * 32, 1_136_078_080, 4_096, 488, 391 * 4),
    Sizes("llava-1.5-7b", "llava-hf/llava-1.5-7b-hf", "llava", 4096, 32, 7_063_427_072, 202_383_360,
          12_596_224 * 24, 284_850_176, 32_768, 658, 577),
    Sizes("llava-1.5-13b", "llava-hf/llava-1.5-13b-hf", "llava", 5120, 40, 13_351_494_656, 317_204_480,
          12_596_224 * 24, 361_006_080, 40_960, 658, 577),
)


def by_config(model_type: str, hidden: int, layers: int) -> Sizes | None:
    """The recorded checkpoint with this language model's type, width and depth, if any."""
    return next((s for s in SIZES if (s.model_type, s.hidden, s.layers) == (model_type, hidden, layers)), None)


@dataclass(frozen=True)
class Device:
    """An assumed effective rate: ``flops`` bf16 operations per second, ``bandwidth`` bytes per second."""

    name: str
    flops: float
    bandwidth: float
    memory_gib: float
    assumption: str


DEVICES = {
    "h100": Device("H100 80GB (SXM)", 0.4 * 989e12, 0.6 * 3.35e12, 80,
                   "40% of the 989 TFLOP/s dense bf16 peak, 60% of the 3.35 TB/s memory bandwidth"),
}


def weights_bytes(s: Sizes) -> int:
    return s.params * BF16


def generation_bytes(s: Sizes, batch: int, new_tokens: int) -> int:
    """Weights plus the K/V cache of ``batch`` prompts and their ``new_tokens`` (bf16, activations left out)."""
    return weights_bytes(s) + batch * (s.prompt_tokens + new_tokens) * s.layers * s.kv_bytes


def mcs_copy_bytes(s: Sizes) -> int:
    """One perturbed copy of the cut cache (prompt - 1 tokens) and its gradient, bf16."""
    return 2 * (s.prompt_tokens - 1) * s.layers * s.kv_bytes


def _forward_flops(s: Sizes, tokens: int, image: bool = True) -> float:
    """A forward pass over ``tokens`` prompt tokens (and the image through the vision tower), one output position."""
    vision = 2 * s.vision_params * s.vision_patches if image else 0
    # the LM head at one position: 2 x vocabulary x hidden, about the other parameters (embeddings + head)
    return 2 * s.params_per_layer * s.layers * tokens + vision + s.other_params


INSTRUCTION_TOKENS = 40  # an instruction sentence, the suffix of the fit's [I,T,P_v] / [I,T,P_t] prompts


def step_seconds(step: str, s: Sizes, device: Device, *, batch: int = 8, perturbations: int = 96,
                 new_tokens: int = 64, prompts: int = 1) -> float:
    """Projected seconds per item of one pass of ``step``: "mcs" (one prompt), "fit" (the three
    prompts' hidden states; the MCS comes from the item cache; the MLP training is seconds in all),
    "generate" (one lmms-eval pass: prefill of ``prompts`` items' worth of prompt, 3 for few-shot,
    then ``new_tokens`` decoding steps at ``batch``: every answer runs to its budget, an upper bound
    on this part, since answers stop at the end of their turn)."""
    if step == "mcs":
        flops = _forward_flops(s, s.prompt_tokens) + perturbations * 3 * _forward_flops(s, 1, image=False)
        moved = perturbations * mcs_copy_bytes(s)
        return flops / device.flops + moved / device.bandwidth
    if step == "fit":
        flops = _forward_flops(s, s.prompt_tokens) + 2 * _forward_flops(s, INSTRUCTION_TOKENS, image=False)
        return flops / device.flops
    if step == "generate":
        prefill = prompts * _forward_flops(s, s.prompt_tokens) / device.flops
        decode = new_tokens * weights_bytes(s) / device.bandwidth / batch
        return prefill + decode
    raise ValueError(f"unknown step {step!r}; expected mcs, fit or generate")
