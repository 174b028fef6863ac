"""One loaded checkpoint for the lmms-eval wrappers: weights, processor, encoder and devices.

Loading is what a wrapper costs; its other state (method, alpha, steering file, diagnostics
folder) is light. A `LoadedModel` is loaded once from the settings that decide what is loaded
(`LOAD_FIELDS` plus the family's image-processor bounds) and handed to every wrapper that needs the
same checkpoint with the same loading settings (`AmpsWrapper(..., loaded=...)`,
`amps_eval.runner.EvalSession`). It holds no per-run state: the steering hooks live only inside
one batch's generation (`AmpsWrapper.intervene`), and each wrapper has its own steering, diagnostics
and few-shot columns.

With several processes (`accelerate launch`), each process loads its own copy on
``cuda:<local rank>`` (or the CPU), as the wrappers always did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from amps_eval.encoding import PromptEncoder, model_load_kwargs, resolve_device, resolve_dtype
from amps_eval.families import FamilyAdapter, check_pretrained

LOAD_FIELDS = ("pretrained", "device", "dtype", "attn_implementation", "device_map")
"""The wrapper settings that decide what is loaded (with the family's ``image_kwargs``)."""


def load_key(family: FamilyAdapter, settings) -> tuple:
    """What a checkpoint is loaded from and how: two runs with the same key share one load."""
    names = LOAD_FIELDS + tuple(family.image_kwargs)
    return (family.lmms_model,) + tuple((name, getattr(settings, name, None)) for name in names)


@dataclass(eq=False)
class LoadedModel:
    family: FamilyAdapter
    key: tuple  # `load_key` of the settings it was loaded with
    model: torch.nn.Module
    processor: Any
    encoder: PromptEncoder
    stop_ids: list[int]
    accelerator: Any
    rank: int
    world_size: int
    device: torch.device
    torch_dtype: torch.dtype

    @classmethod
    def load(cls, family: FamilyAdapter, settings) -> "LoadedModel":
        """The checkpoint of ``settings.pretrained``, refused before any weights load when it is of
        another family or does not exist."""
        from accelerate import Accelerator

        check_pretrained(settings.pretrained, family.lmms_model)
        accelerator = Accelerator()
        device = settings.device
        if accelerator.num_processes > 1:
            # One model per process (lmms-eval shards the documents by rank).
            device = f"cuda:{accelerator.local_process_index}" if torch.cuda.is_available() else "cpu"
        device = resolve_device(device)
        dtype = resolve_dtype(settings.dtype, device)
        # the processor first: one that cannot load here (e.g. it needs torchvision) is refused before the weights load
        bounds = {k: getattr(settings, k) for k in family.image_kwargs if getattr(settings, k, None)}
        processor = family.load_processor(settings.pretrained, **bounds)
        model = family.load_model(settings.pretrained,
                                  **model_load_kwargs(dtype, device, settings.attn_implementation, settings.device_map))
        model.eval()
        processor.tokenizer.padding_side = "left"
        encoder = PromptEncoder(family, model, processor, name=str(settings.pretrained))
        return cls(family, load_key(family, settings), model, processor, encoder, encoder.stop_token_ids(),
                   accelerator, accelerator.process_index, accelerator.num_processes, device, dtype)

    def check_serves(self, family: FamilyAdapter, settings) -> None:
        """Refuse settings that would load another checkpoint, or load it otherwise."""
        wanted = load_key(family, settings)
        if wanted != self.key:
            differ = [f"{a[0]}={a[1]!r} (loaded) vs {b[1]!r} (asked)" for a, b in zip(self.key[1:], wanted[1:]) if a != b]
            if wanted[0] != self.key[0]:
                differ.insert(0, f"model {self.key[0]} (loaded) vs {wanted[0]} (asked)")
            raise ValueError(f"the loaded model does not serve these settings ({', '.join(differ)}); "
                             "load one for them (`amps_eval.runner.EvalSession` does)")
