"""Benchmark: one MC2 item through the real code paths at the real widths of a checkpoint.

    python benchmarks/bench_full_size.py --config qwen2.5-vl-7b --layers 1     # CPU, about a minute
    python benchmarks/bench_full_size.py --config llava-1.5-13b --device cuda  # full depth, bf16

Builds a RANDOMLY INITIALISED model with the checkpoint's real configuration (every width of both
towers, the real vocabulary size) cut to N decoder layers and N vision blocks (--layers, default:
full depth), and saves it next to the tokenizer, chat template and image-processor files of
amps_eval.tiny_models (a tiny tokenizer; the real image settings); the wrapper loads it with
pretrained=<folder>. One generated MC2 item (640x480 picture, the tasks' prompt) then runs, in
pipeline order, through extract (hidden states of [I,T], [I,T,P_v], [I,T,P_t]), the MCS (default
settings), fit (mean vector and AMPS modules fitted on that item, written as steering files) and
generate_until with methods none, mean, amps (the loaded model is reused: `load_steering` and the
steering diagnostics, which record the applied shift's norm, set up as the wrapper's constructor
does). One run per phase, no warm-up. Peak memory: CUDA
max_memory_allocated after reset_peak_memory_stats; CPU the RSS high-water mark (VmHWM, reset per
phase through /proc/self/clear_refs); delta = peak - value at the phase's start.
Cutting depth: Qwen2.5-VL keeps the full-attention block indexes below N, or block N-1 if none is
(the real tower ends with one). LLaVA feeds CLIP layer -2 to the projector, so min(N+1, 24) CLIP
layers are kept: N feed the projector and one more runs unused, as 23 + 1 of 24 in the real model.
Projection to full depth: measured parameters per decoder layer and per vision block x full depth,
plus the rest as measured; KV cache: 2 x kv_heads x head_dim x bytes, per token and layer.

Configurations, checked against config.json files found with the search tools:
* llava-1.5-13b-hf: the hub repository's own config.json (llava-hf/llava-1.5-13b-hf, main).
* llava-1.5-7b-hf: copies of its config.json in derived hub repositories (vision_config, vocab 32064,
  feature layer -2); its text_config leaves hidden size, layers, heads and intermediate size to
  LlamaConfig's defaults (4096 / 32 / 32 / 11008), used here.
* Qwen2.5-VL-7B-Instruct: language-model fields from Qwen/Qwen2.5-VL-7B-Instruct-AWQ's config.json,
  vision_config from copies of the original config.json in public code.
* Qwen2.5-VL-3B-Instruct: copies of its config.json in public code and a hub re-upload (tied
  embeddings, vision out 2048); min/max_pixels 3136/12845056: copies of preprocessor_config.json.
Not checked: fields that change no size (max_window_layers, sliding_window, initializer ranges).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import hashlib
import io
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, however this is run
from common import add_runtime_args, default_dtype, device_name, runtime, sync  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """The sizes of one released checkpoint (the module docstring says how they were checked)."""

    hub_id: str
    family: str  # a key of FAMILIES
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool  # the LM head shares the input embeddings
    rope: dict  # the language model's rope_parameters
    vision: dict  # vision_config at full depth


QWEN_VISION = dict(depth=32, hidden_size=1280, num_heads=16, intermediate_size=3420, patch_size=14,
                   spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
                   tokens_per_second=2)
CLIP_L14_336 = dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16, intermediate_size=4096,
                    image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
QWEN_ROPE = {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1_000_000.0}
LLAMA_ROPE = {"rope_type": "default", "rope_theta": 10_000.0}
CHECKPOINTS = {
    "qwen2.5-vl-3b": Checkpoint("Qwen/Qwen2.5-VL-3B-Instruct", "qwen2_5_vl", hidden=2048, layers=36, heads=16,
                                kv_heads=2, intermediate=11008, vocab=151936, tied=True, rope=QWEN_ROPE,
                                vision={**QWEN_VISION, "out_hidden_size": 2048}),
    "qwen2.5-vl-7b": Checkpoint("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl", hidden=3584, layers=28, heads=28,
                                kv_heads=4, intermediate=18944, vocab=152064, tied=False, rope=QWEN_ROPE,
                                vision={**QWEN_VISION, "out_hidden_size": 3584}),
    "llava-1.5-7b": Checkpoint("llava-hf/llava-1.5-7b-hf", "llava", hidden=4096, layers=32, heads=32, kv_heads=32,
                               intermediate=11008, vocab=32064, tied=False, rope=LLAMA_ROPE, vision=CLIP_L14_336),
    # not a released checkpoint: the dry run's (gpu_check.sh --dry-run, tests) tiny widths; vocab 0 = the tiny tokenizer's
    "tiny-qwen2.5-vl": Checkpoint("(dry run: tiny widths)", "qwen2_5_vl", hidden=64, layers=2, heads=4, kv_heads=2,
                                  intermediate=128, vocab=0, tied=False,
                                  rope={**QWEN_ROPE, "mrope_section": [2, 3, 3]},
                                  vision={**QWEN_VISION, "depth": 2, "hidden_size": 32, "num_heads": 2,
                                          "intermediate_size": 64, "fullatt_block_indexes": [1], "out_hidden_size": 64}),
    "llava-1.5-13b": Checkpoint("llava-hf/llava-1.5-13b-hf", "llava", hidden=5120, layers=40, heads=40, kv_heads=40,
                                intermediate=13824, vocab=32064, tied=False, rope=LLAMA_ROPE, vision=CLIP_L14_336),
}
# Per family: the lmms-eval model, the tiny builder's arguments for the real image processor, the
# language model's size-neutral fields, the vision config's depth key and where its blocks are.
FAMILIES = {
    "qwen2_5_vl": dict(model="amps_qwen", processor=dict(min_pixels=3136, max_pixels=12845056), depth_key="depth",
                       text=dict(rms_norm_eps=1e-6, max_position_embeddings=128000), blocks="model.visual.blocks"),
    "llava": dict(model="amps_llava", processor=dict(vision_config={"image_size": 336}), depth_key="num_hidden_layers",
                  text=dict(rms_norm_eps=1e-5, max_position_embeddings=4096),
                  blocks="model.vision_tower.encoder.layers"),
}
TASK, SPLIT = "mc2_visual", "test"
GEN_KWARGS = {"max_new_tokens": 16, "do_sample": False, "temperature": 0, "num_beams": 1}  # tasks/_mc2_common.yaml
IMAGE_SIZE = (640, 480)  # COCO-sized
STEER_LAYER = 14  # the AMPS paper's layer (the fit's default); the last one when fewer are built


def cut(ck: Checkpoint, n: int | None) -> tuple[int, dict]:
    """Decoder layers and vision_config with ``n`` layers and blocks (None: full depth; module docstring)."""
    vision = dict(ck.vision)
    if n is None:
        return ck.layers, vision
    if ck.family == "qwen2_5_vl":
        depth = min(n, vision["depth"])
        full = [i for i in vision["fullatt_block_indexes"] if i < depth] or [depth - 1]
        vision.update(depth=depth, fullatt_block_indexes=full)
    else:  # layer -2 feeds the projector: N blocks used and one more run, as 23 + 1 of 24 in the real model
        vision["num_hidden_layers"] = min(n + 1, vision["num_hidden_layers"])
    return min(n, ck.layers), vision


def write_checkpoint(ck: Checkpoint, n: int | None, folder: Path, device: torch.device, dtype: torch.dtype) -> None:
    """A random model with ``ck``'s widths, saved to ``folder`` next to the tiny models' tokenizer/processor files."""
    import transformers

    from amps_eval.tiny_models import build_tiny_llava, build_tiny_qwen

    family = FAMILIES[ck.family]
    builder = build_tiny_qwen if ck.family == "qwen2_5_vl" else build_tiny_llava
    builder(folder, **family["processor"])  # tokenizer, chat template, image processor, generation config
    (folder / "model.safetensors").unlink()  # the tiny weights, replaced below
    config = json.loads((folder / "config.json").read_text())  # the tiny config: its special-token ids
    layers, vision = cut(ck, n)
    text = config["text_config"]
    text.pop("layer_types", None)  # one entry per layer: rebuilt for the new depth
    text.update(family["text"], hidden_size=ck.hidden, intermediate_size=ck.intermediate, num_hidden_layers=layers,
                num_attention_heads=ck.heads, num_key_value_heads=ck.kv_heads, vocab_size=ck.vocab or text["vocab_size"],
                rope_parameters=ck.rope, tie_word_embeddings=ck.tied)
    if "head_dim" in text:
        text["head_dim"] = ck.hidden // ck.heads
    config["vision_config"].update(vision)
    config["tie_word_embeddings"] = ck.tied
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    config = transformers.AutoConfig.from_pretrained(folder)
    torch.manual_seed(0)
    with torch.device(device), default_dtype(dtype):  # built in place, in the target dtype
        model = getattr(transformers, config.architectures[0])(config)
    model.generation_config = transformers.GenerationConfig.from_pretrained(folder)
    model.save_pretrained(folder)


def mc2_item():
    """(ItemSet, lmms-eval request) of one generated MC2 item on a 640x480 picture, built as the tasks build it."""
    import datasets
    from PIL import Image

    from amps_eval.fit_data import ItemSet
    from amps_eval.mc2.docs import TaskSpec, task_docs
    from amps_eval.mc2.schema import PREPARED_COLUMNS, prepared_features
    from amps_eval.mc2.synthetic import encode_png, synthetic_item
    from amps_eval.tasks.utils import doc_to_text, doc_to_visual

    datasets.disable_progress_bars()
    row = synthetic_item(0, seed=0, image_size=IMAGE_SIZE[1])  # a square drawing, centred on a white 640x480 canvas
    canvas = Image.new("RGB", IMAGE_SIZE, "white")
    canvas.paste(Image.open(io.BytesIO(row["image"]["bytes"])), ((IMAGE_SIZE[0] - IMAGE_SIZE[1]) // 2, 0))
    row["image"] = {"bytes": encode_png(canvas), "path": row["image"]["path"]}
    docs = task_docs(datasets.Dataset.from_dict({k: [row[k]] for k in PREPARED_COLUMNS}, features=prepared_features()),
                     TaskSpec("vision"))
    digest = hashlib.sha256(row["image"]["bytes"] + json.dumps({k: row[k] for k in PREPARED_COLUMNS[:-1]}).encode())
    items = ItemSet(docs, [str(row["mc2_id"])], [row["category"]], [digest.hexdigest()], "one generated MC2 item")
    return items, SimpleNamespace(args=(doc_to_text(docs[0]), GEN_KWARGS, doc_to_visual, 0, TASK, SPLIT))


def fit_steering(wrapper, model_name: str, method: str, ex, mcs, layer: int, path: Path) -> Path:
    """Fit ``method`` on the one item (``fit.fit_fold``, one fold "all") and write its steering file as `fit` does."""
    from amps_eval.fit import FitSettings, category_anchors, fit_fold
    from amps_eval.steering.file import Fold, SteeringFile
    from amps_eval.steering.hooks import decoder_layers, hidden_size

    model, pretrained = wrapper.model, wrapper.settings.pretrained
    settings = FitSettings(model=model_name, pretrained=pretrained, method=method, layer=layer, folds=1,
                           hidden=wrapper.family.default_mlp_hidden, batch_size=1)
    device = wrapper.device if wrapper.device.type == "cuda" else torch.device("cpu")
    tensors, _, _ = fit_fold(method, ex.hidden["none"].to(device), ex.d.to(device), settings, settings.hidden,
                             mcs.r_v, ex.categories)
    folds = [Fold("all", list(ex.ids), [], tensors, None if method == "mean" else settings.hidden)]
    SteeringFile(method=method, layer=layer, hidden_size=hidden_size(model), num_layers=len(decoder_layers(model)),
                 model_id=pretrained, architecture=model.config.architectures[0], folds=folds,
                 settings=settings.to_dict(), anchors=category_anchors(mcs.r_v, ex.categories)).save(path)
    return path


def steer(wrapper, method: str, path: Path, diagnostics: Path) -> None:
    """Switch the loaded wrapper to a steering method: its settings, `load_steering` and the diagnostics
    writer, as its constructor sets them up (the diagnostics record the norm of the applied shift)."""
    from amps_eval.model_wrappers.diagnostics import DiagnosticsWriter
    from amps_eval.settings import load_steering

    wrapper.settings = dataclasses.replace(wrapper.settings, method=method, steering=str(path),
                                           diagnostics=str(diagnostics))
    wrapper.steering = load_steering(wrapper.settings, wrapper.model)
    wrapper.diagnostics = DiagnosticsWriter.for_run(wrapper.settings, wrapper.rank)


class Meter:
    """Wall time and peak memory of each phase (the module docstring says how)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.cuda, self.rows = device, device.type == "cuda", []

    @staticmethod
    def _proc(key: str) -> int:
        """VmRSS / VmHWM in bytes; without /proc, the process's lifetime peak (ru_maxrss)."""
        with contextlib.suppress(OSError, StopIteration):
            lines = Path("/proc/self/status").read_text().splitlines()
            return 1024 * int(next(line for line in lines if line.startswith(key + ":")).split()[1])
        return 1024 * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    @contextlib.contextmanager
    def phase(self, name: str):
        gc.collect()
        sync(self.device)
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            start = torch.cuda.memory_allocated(self.device)
        else:
            with contextlib.suppress(OSError):
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            start = self._proc("VmRSS")
        t0 = time.perf_counter()
        yield
        sync(self.device)
        wall = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(self.device) if self.cuda else self._proc("VmHWM")
        self.rows.append({"phase": name, "wall_s": wall, "peak_mib": peak / 2**20, "delta_mib": (peak - start) / 2**20})
        print(f"  {name}: {wall:.2f} s", flush=True)


def sizes(ck: Checkpoint, model, dtype: torch.dtype, prompt_tokens: int, mcs_copies: int) -> dict:
    """Parameters measured and projected to full depth; KV cache per token and layer, and in total (bytes)."""
    from amps_eval.steering.hooks import decoder_layers

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    family, blocks = FAMILIES[ck.family], model
    for name in family["blocks"].split("."):
        blocks = getattr(blocks, name)
    layers, total = decoder_layers(model), count(model)
    per_layer, per_block = count(layers[0]), count(blocks[0])
    rest = total - len(layers) * per_layer - len(blocks) * per_block
    item = torch.empty((), dtype=dtype).element_size()
    kv = 2 * ck.kv_heads * (ck.hidden // ck.heads) * item  # K and V, per token per layer
    new = GEN_KWARGS["max_new_tokens"]
    mcs = (1 + 2 * mcs_copies) * kv * (prompt_tokens - 1)  # compute_mcs: clean cut cache + perturbed copies + grads
    return dict(lm_layers=len(layers), vision_blocks=len(blocks), full_vision_blocks=ck.vision[family["depth_key"]],
                params=total, params_per_layer=per_layer, params_per_block=per_block, params_rest=rest,
                params_full=rest + ck.layers * per_layer + ck.vision[family["depth_key"]] * per_block,
                bytes_per_param=item, kv_per_token_layer=kv, kv_tokens=prompt_tokens + new,
                kv=kv * len(layers) * (prompt_tokens + new), kv_full=kv * ck.layers * (prompt_tokens + new),
                mcs_kv=mcs * len(layers), mcs_kv_full=mcs * ck.layers)


def size_table(ck: Checkpoint, s: dict, dtype_name: str, mcs_copies: int) -> list[list[str]]:
    gib, mib = (lambda b: f"{b / 2**30:.2f} GiB"), (lambda b: f"{b / 2**20:.1f} MiB")
    weights, weights_full = s["params"] * s["bytes_per_param"], s["params_full"] * s["bytes_per_param"]
    return [
        ["parameters", f"{s['params']:,}", f"{s['params_full']:,}"],
        ["parameters per LM decoder layer", f"{s['params_per_layer']:,}", f"x {ck.layers}"],
        ["parameters per vision block", f"{s['params_per_block']:,}", f"x {s['full_vision_blocks']}"],
        ["other parameters (embeddings, LM head, ...)", f"{s['params_rest']:,}", f"{s['params_rest']:,}"],
        [f"weights ({dtype_name})", gib(weights), gib(weights_full)],
        ["KV cache per token per layer", f"{s['kv_per_token_layer']:,} B", f"{s['kv_per_token_layer']:,} B"],
        [f"KV cache, {s['kv_tokens']} tokens (prompt + new)", mib(s["kv"]), mib(s["kv_full"])],
        [f"MCS K/V (clean + {mcs_copies} copies + grads)", mib(s["mcs_kv"]), mib(s["mcs_kv_full"])],
        ["weights + KV cache (generate)", gib(weights + s["kv"]), gib(weights_full + s["kv_full"])],
    ]


def main() -> None:
    from tabulate import tabulate

    from amps_eval.encoding import LoadedModel
    from amps_eval.extract import extract, mcs_batch
    from amps_eval.plugin import wrapper_class
    from amps_eval.mcs.score import MCSSettings

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=list(CHECKPOINTS), required=True)
    ap.add_argument("--layers", type=int, default=None, help="decoder layers and vision blocks (default: full depth)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the checkpoint is written (default: system temp)")
    ap.add_argument("--keep", type=Path, default=None,
                    help="move the random checkpoint and the fitted steering files (mean, amps) into this new folder "
                    "(gpu_check.sh runs lmms-eval on them)")
    add_runtime_args(ap, dtype_choices=("float32", "bfloat16", "float16"))
    args = ap.parse_args()
    if args.layers is not None and args.layers < 1:
        ap.error("--layers must be >= 1")
    device, dtype_name = runtime(args)
    dtype, ck, family = getattr(torch, dtype_name), CHECKPOINTS[args.config], FAMILIES[CHECKPOINTS[args.config].family]
    meter, mcs_settings = Meter(device), MCSSettings()
    copies = mcs_settings.perturbations_per_sample
    print(f"bench_full_size: {args.config} ({ck.hub_id}), --layers {args.layers or 'full'}, {device} "
          f"({device_name(device)}), {dtype_name}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory(prefix="bench_full_size-", dir=args.workdir) as tmp:
        tmp = Path(tmp)
        with meter.phase("build + save (random init)"):
            write_checkpoint(ck, args.layers, tmp / "checkpoint", device, dtype)
        with meter.phase("load (wrapper)"):
            wrapper = wrapper_class(family["model"])(pretrained=str(tmp / "checkpoint"), device=str(device),
                                                     dtype=dtype_name, batch_size=1)
        # the core commands' view of the wrapper's loaded model (extract and the MCS take a LoadedModel)
        encoder = LoadedModel(wrapper.family, wrapper.model, wrapper.processor, wrapper.settings.pretrained,
                              wrapper.device, wrapper.torch_dtype)
        items, request = mc2_item()
        wrapper.task_dict = {TASK: {SPLIT: items.docs}}
        encoded = wrapper.encode_turns(items.conversations([0], "none"))
        prompt_tokens, image_tokens = encoded.inputs["input_ids"].shape[1], int(encoded.vision_mask.sum())
        size = sizes(ck, wrapper.model, dtype, prompt_tokens, copies)
        layer = min(STEER_LAYER, size["lm_layers"] - 1)
        with meter.phase("extract [I,T] [I,T,P_v] [I,T,P_t]"):
            ex = extract(encoder, items, layer, tmp / "cache", None, batch_size=1, progress=False)
        with meter.phase(f"mcs ({copies} perturbations)"):
            mcs = mcs_batch(encoder, items.conversations([0], "none"), items.ids, mcs_settings)
        with meter.phase("fit mean + amps (one item)"):
            files = {m: fit_steering(wrapper, family["model"], m, ex, mcs, layer, tmp / f"{m}.safetensors")
                     for m in ("mean", "amps")}
        answers, shifts = {}, {}
        for method in ("none", "mean", "amps"):
            if method != "none":
                steer(wrapper, method, files[method], tmp / "diagnostics")
            with meter.phase(f"generate {method} ({GEN_KWARGS['max_new_tokens']} new tokens)"):
                answers[method] = wrapper.generate_until([request])[0]
            if method != "none":
                shifts[method] = json.loads(wrapper.diagnostics.path.read_text().splitlines()[-1])["shift_norm"]
        if args.keep:
            args.keep.mkdir(parents=True)
            for name in ("checkpoint", "mean.safetensors", "amps.safetensors"):
                shutil.move(str(tmp / name), str(args.keep / name))

    print(f"\n{args.config}: LM {size['lm_layers']}/{ck.layers} layers, vision {size['vision_blocks']}/"
          f"{size['full_vision_blocks']} blocks, {image_tokens} image tokens of {prompt_tokens} prompt tokens, "
          f"r_v {float(mcs.r_v[0]):.4f}, steered at layer {layer} (shift norm: "
          + ", ".join(f"{m} {v:.4g}" for m, v in shifts.items()) + ")")
    print(tabulate([[r["phase"], f"{r['wall_s']:.2f}", f"{r['peak_mib']:.0f}", f"{r['delta_mib']:.0f}"]
                    for r in meter.rows], headers=["phase", "wall s", "peak MiB", "delta MiB"],
                   disable_numparse=True, colalign=("left", "right", "right", "right")))
    print(tabulate(size_table(ck, size, dtype_name, copies), disable_numparse=True, colalign=("left", "right", "right"),
                   headers=["", f"measured ({size['lm_layers']} layers)", f"projected ({ck.layers} layers)"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"config": args.config, "hub_id": ck.hub_id, "device": str(device),
                                        "dtype": dtype_name, "layers": args.layers, "image_tokens": image_tokens,
                                        "prompt_tokens": prompt_tokens, "r_v": float(mcs.r_v[0]), "phases": meter.rows,
                                        "sizes": size, "shift_norms": shifts, "answers": answers}, indent=2))


if __name__ == "__main__":
    main()
