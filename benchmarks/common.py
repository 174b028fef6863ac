"""Helpers shared by the benchmark scripts (bench_mcs.py, bench_steering.py).

The main one builds a Qwen2.5-VL model from a configuration alone, with random weights:

* ``tiny``: 2 decoder layers, hidden 64, a 1-block vision tower (CPU, seconds);
* ``full``: the full Qwen2.5-VL-7B-Instruct configuration (28 layers, hidden 3584, GQA 28/4, vocab
  152064, the 32-block vision tower), built directly on the device in the target dtype (~17 GB in
  bf16), with an MC2-sized image (grid 1x34x46 -> 391 image tokens). Timings do not depend on the
  weights' values, so no checkpoint is needed.

The model and its inputs are built separately (:func:`build_qwen_model`, :func:`qwen_inputs`) so a
benchmark can build the 7B model once and make inputs for several batch sizes;
:func:`build_qwen` does both, as bench_mcs.py uses it.
"""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass

import torch


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Temporarily set torch's default dtype (build parameters directly in ``dtype``)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


THREADS_HELP = (
    "torch.set_num_threads (default 1 on CPU: a tiny model has nothing to parallelise, and on a "
    "shared/loaded machine every multi-threaded op waits ~10-20 ms for its threads, which swamps the timings)"
)


def add_runtime_args(ap, dtype_choices=("float32", "bfloat16")) -> None:
    """--device, --dtype, --threads and --out, shared by the benchmark scripts."""
    from pathlib import Path

    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=list(dtype_choices), default=None, help="default: float32 on CPU, bfloat16 otherwise")
    ap.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")


def runtime(args) -> tuple[torch.device, str]:
    """The device and dtype name of a benchmark run; sets the CPU thread count."""
    device = torch.device(args.device)
    threads = args.threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    return device, args.dtype or ("float32" if device.type == "cpu" else "bfloat16")


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()


def left_pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask of token lists, left-padded to the longest."""
    t = max(len(s) for s in seqs)
    ids = torch.tensor([[pad] * (t - len(s)) + s for s in seqs])
    am = torch.tensor([[0] * (t - len(s)) + [1] * len(s) for s in seqs])
    return ids, am


def random_text(rng: torch.Generator, n: int, lo: int, hi: int) -> list[int]:
    """``n`` random token ids in [lo, hi)."""
    return torch.randint(lo, hi, (n,), generator=rng).tolist()


@dataclass(frozen=True)
class QwenSpec:
    """What is needed to make inputs for a model built by :func:`build_qwen_model`."""

    kind: str
    special: dict[str, int]  # image / video / vision_start / vision_end token ids
    pad_token_id: int
    grid: tuple[int, int, int]  # image_grid_thw of every image
    text_range: tuple[int, int]  # random text tokens are drawn from [lo, hi)

    @property
    def image_token_id(self) -> int:
        return self.special["image_token_id"]


def build_qwen_model(kind: str, device: torch.device, dtype: torch.dtype):
    """A randomly initialised ``Qwen2_5_VLForConditionalGeneration`` ("tiny" or "full"), in eval
    mode, and the :class:`QwenSpec` for :func:`qwen_inputs`. Seeded: the same weights every time."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    if kind == "tiny":
        text = dict(
            vocab_size=200,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        )
        vision = dict(
            depth=1,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            window_size=56,
            fullatt_block_indexes=[0],
        )
        special = dict(image_token_id=190, video_token_id=191, vision_start_token_id=192, vision_end_token_id=193)
        grid = (1, 8, 8)
        text_range = (3, 180)
    elif kind == "full":  # full Qwen2.5-VL-7B-Instruct configuration
        text = dict(
            vocab_size=152064,
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            max_position_embeddings=128000,
            rms_norm_eps=1e-6,
            bos_token_id=151643,
            eos_token_id=151645,
            pad_token_id=151643,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        )
        vision = dict(
            depth=32,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            out_hidden_size=3584,
            window_size=112,
            fullatt_block_indexes=[7, 15, 23, 31],
        )
        special = dict(
            image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653
        )
        grid = (1, 34, 46)
        text_range = (1000, 150000)
    else:
        raise ValueError(f"kind must be 'tiny' or 'full', got {kind!r}")
    vision.update(patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_chans=3)
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **special)
    torch.manual_seed(0)
    with torch.device(device), default_dtype(dtype):  # build in the target dtype: no fp32 copy of 8B params
        model = Qwen2_5_VLForConditionalGeneration(cfg).to(dtype).eval()
    if kind == "tiny":
        with torch.no_grad():  # a peaked p_x, like a trained model's
            model.model.language_model.norm.weight.mul_(30.0)
    spec = QwenSpec(kind=kind, special=special, pad_token_id=text["pad_token_id"], grid=grid, text_range=text_range)
    return model, spec


def qwen_inputs(spec: QwenSpec, batch: int, device: torch.device, dtype: torch.dtype, text_tokens: int) -> dict:
    """A left-padded batch of image prompts: per row <vision_start> image tokens <vision_end> text.

    Row b has ``max(4, text_tokens - 7 * b)`` random text tokens (different lengths, so real left
    padding) and its own random pixel values. Seeded: the same inputs every time.
    """
    rng = torch.Generator().manual_seed(0)
    grid, special = spec.grid, spec.special
    n_img = grid[0] * grid[1] * grid[2] // 4
    patch_dim = 3 * 2 * 14 * 14
    seqs, pvs = [], []
    for b in range(batch):
        n_txt = max(4, text_tokens - 7 * b)
        seqs.append(
            [special["vision_start_token_id"]]
            + [special["image_token_id"]] * n_img
            + [special["vision_end_token_id"]]
            + random_text(rng, n_txt, *spec.text_range)
        )
        pvs.append(torch.randn(grid[0] * grid[1] * grid[2], patch_dim, generator=rng))
    ids, am = left_pad(seqs, spec.pad_token_id)
    return dict(
        input_ids=ids.to(device),
        attention_mask=am.to(device),
        pixel_values=torch.cat(pvs).to(device=device, dtype=dtype),
        image_grid_thw=torch.tensor([grid] * batch, device=device),
    )


def build_qwen(kind: str, batch: int, device: torch.device, dtype: torch.dtype, text_tokens: int):
    """Model, inputs and image token id in one call (see :func:`build_qwen_model`, :func:`qwen_inputs`)."""
    model, spec = build_qwen_model(kind, device, dtype)
    return model, qwen_inputs(spec, batch, device, dtype, text_tokens), spec.image_token_id
