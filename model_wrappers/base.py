"""What the Qwen2.5-VL and LLaVA-1.5 wrappers share: lmms-eval plumbing, prompts, batching.

A request becomes a `Prompt` (its conversation under the chosen method, its task document and its
generation settings); prompts are batched by generation settings and prompt length, encoded with
left padding, generated greedily inside `self.intervene(batch)` (the steering hook point: a no-op
for the prompt baselines) and returned in request order.

Generation budget: ``max(task's max_new_tokens, settings.max_new_tokens)`` new tokens (default 64,
room for a one-sentence answer); for ``method=cot`` ``cot_max_new_tokens`` (default 512) takes the
place of ``max_new_tokens``, and the task's stop strings (``until``) are not applied. Each row
stops at its first end-of-turn token (`stop_token_ids`: the generation config's EOS ids, the
tokenizer's EOS and the chat template's end-of-turn token), so a larger budget costs time only for
a model that keeps talking.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from loguru import logger
from lmms_eval.api.model import lmms
from tqdm import tqdm

from amps_eval.families import FamilyAdapter, check_pretrained
from amps_eval.mc2.prompt import answer_letter, doc_prompt
from amps_eval.methods.prompts import PROMPT_METHODS, Example, Turn, build_conversation, choose_examples
from amps_eval.model_wrappers.diagnostics import DiagnosticsWriter
from amps_eval.model_wrappers.settings import WrapperSettings, load_steering
from amps_eval.steering.hooks import SteeringNonFinite


@dataclass
class Prompt:
    """One request, ready to encode."""

    index: int  # position in the request list
    task: str
    doc_id: int
    doc: dict
    turns: list[Turn]
    max_new_tokens: int
    until: tuple[str, ...]

    @property
    def images(self) -> list:
        return [image for turn in self.turns for image in turn.images]

    @property
    def target(self) -> str | None:
        return self.doc.get("target")

    @property
    def item_id(self) -> str:
        """The item's MC2 id (``mc2_id``), or task/doc_id for documents of other tasks."""
        return str(self.doc["mc2_id"]) if "mc2_id" in self.doc else f"{self.task}/{self.doc_id}"


@dataclass
class Encoded:
    inputs: dict  # the processor's tensors, on the model's input device
    vision_mask: torch.Tensor  # [B, T] image-token positions
    text_mask: torch.Tensor  # [B, T] positions of the user's text


@dataclass
class Batch:
    prompts: list[Prompt]
    encoded: Encoded

    @property
    def inputs(self) -> dict:
        return self.encoded.inputs


class AmpsWrapper(lmms):
    """The lmms-eval model over one family adapter (`amps_eval.families`); `registered` makes one
    subclass per family (`amps_qwen`, `amps_llava`, ...), naming its family and settings class."""

    is_simple = True
    settings_class: type[WrapperSettings] = WrapperSettings
    family: FamilyAdapter | None = None

    def __init__(self, **model_args) -> None:
        super().__init__()
        self.settings = self.settings_class.from_model_args(**model_args)
        # a checkpoint of another family, or a path that does not exist, is refused before any weights load
        check_pretrained(self.settings.pretrained, self.family.lmms_model)
        self._setup_devices()
        self.model = self.load_model()
        self.model.eval()
        self.processor = self.load_processor()
        self.processor.tokenizer.padding_side = "left"
        self.stop_ids = self.stop_token_ids()
        self._fewshot_columns: dict[tuple[str, str], tuple[list, list]] = {}
        self.steering = load_steering(self.settings, self.model)
        self.diagnostics = DiagnosticsWriter.for_run(self.settings, self.rank) if self.settings.diagnostics else None
        logger.info(f"{type(self).__name__} settings: {self.settings.to_dict()}")

    # --- the family's model and processor -----------------------------------------------------
    @property
    def architecture(self) -> str:
        return self.family.name

    def load_model(self) -> torch.nn.Module:
        return self.family.load_model(self.settings.pretrained, **self.model_load_kwargs())

    def load_processor(self):
        bounds = {k: getattr(self.settings, k) for k in self.family.image_kwargs if getattr(self.settings, k, None)}
        return self.family.load_processor(self.settings.pretrained, **bounds)

    @contextlib.contextmanager
    def intervene(self, batch: Batch) -> Iterator[None]:
        """Steering around one batch's generation; the prompt baselines change nothing."""
        if self.steering is None:
            yield
            return
        with self.steering.apply(self.model, batch) as rows:
            yield
        if self.diagnostics is not None:
            self.diagnostics.write(rows)

    # --- devices ------------------------------------------------------------------------------
    def _setup_devices(self) -> None:
        from accelerate import Accelerator

        accelerator = Accelerator()
        self.accelerator = accelerator
        self._rank = accelerator.process_index
        self._world_size = accelerator.num_processes
        device = self.settings.device
        if accelerator.num_processes > 1:
            # One model per process (lmms-eval shards the documents by rank).
            device = f"cuda:{accelerator.local_process_index}" if torch.cuda.is_available() else "cpu"
        elif device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device={device} was asked for but no GPU is visible; pass device=cpu")
        self._device = torch.device(device)
        dtype = self.settings.dtype
        if dtype == "auto":
            dtype = "bfloat16" if self._device.type == "cuda" else "float32"
        self.torch_dtype = getattr(torch, dtype)

    def model_load_kwargs(self) -> dict:
        kwargs = {"dtype": self.torch_dtype}
        if self.settings.attn_implementation:
            kwargs["attn_implementation"] = self.settings.attn_implementation
        kwargs["device_map"] = "auto" if self.settings.device_map == "auto" else str(self._device)
        return kwargs

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.settings.batch_size

    @property
    def input_device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    # --- requests -> prompts ------------------------------------------------------------------
    def _prompt(self, index: int, request) -> Prompt:
        context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
        doc = self.task_dict[task][split][doc_id]
        images = doc_to_visual(doc) if doc_to_visual is not None else []
        examples = self._examples(task, split, doc) if self.settings.method == "fewshot" else ()
        prompt_method = self.settings.method if self.settings.method in PROMPT_METHODS else "none"
        turns = build_conversation(prompt_method, context, images, doc.get("target"), examples,
                                   style=self.settings.instruction_style, context=doc.get("context"))
        gen_kwargs = dict(gen_kwargs or {})
        cot = self.settings.method == "cot"
        budget = self.settings.cot_max_new_tokens if cot else self.settings.max_new_tokens
        max_new_tokens = max(int(gen_kwargs.get("max_new_tokens") or 0), budget)
        until = gen_kwargs.get("until") or ()
        until = (until,) if isinstance(until, str) else tuple(until)
        if cot:
            # The reasoning runs over paragraphs: lmms-eval's default stop string "\n\n" (the task
            # sets no `until`) would cut it before its final "Answer: X". It ends at EOS instead.
            until = ()
        return Prompt(index, task, doc_id, doc, turns, max_new_tokens, until)

    def _examples(self, task: str, split: str, doc: dict) -> list[Example]:
        dataset = self.task_dict[task][split]
        if (task, split) not in self._fewshot_columns:
            self._fewshot_columns[(task, split)] = (list(dataset["mc2_id"]), list(dataset["category"]))
        mc2_ids, categories = self._fewshot_columns[(task, split)]
        rows = choose_examples(mc2_ids, categories, doc["mc2_id"], doc["category"], self.settings.fewshot_k, self.settings.seed)
        examples = []
        for row in rows:
            example = dataset[row]
            example = {**example, "target": doc["target"]}
            examples.append(Example(doc_prompt(example), (example["image"].convert("RGB"),), answer_letter(example, doc["target"])))
        return examples

    # --- encoding and generation --------------------------------------------------------------
    def stop_token_ids(self) -> list[int]:
        """The token ids that end an answer: the generation config's EOS ids, the tokenizer's EOS and
        the chat template's end-of-turn token (the special token the template writes right after an
        assistant turn, e.g. Qwen's ``<|im_end|>``; LLaVA-1.5's template writes none)."""
        tokenizer = self.processor.tokenizer
        config = getattr(self.model, "generation_config", None)
        eos = getattr(config, "eos_token_id", None)
        candidates = [*(eos if isinstance(eos, (list, tuple)) else [eos]), tokenizer.eos_token_id]
        marker = "AMPS_END_OF_TURN_PROBE"
        try:
            rendered = self.processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "text", "text": "?"}]},
                 {"role": "assistant", "content": [{"type": "text", "text": marker}]}],
                add_generation_prompt=False, tokenize=False)
            after = tokenizer(rendered.rsplit(marker, 1)[1], add_special_tokens=False)["input_ids"]
            if after and after[0] in set(tokenizer.all_special_ids):
                candidates.append(after[0])
        except (ValueError, IndexError, TypeError, KeyError):  # a template without assistant turns
            pass
        ids = list(dict.fromkeys(int(i) for i in candidates if i is not None))
        if not ids:
            raise RuntimeError(f"{self.settings.pretrained}: no EOS or end-of-turn token found; generation would "
                               "never stop before its token budget")
        return ids

    def render(self, turns: list[Turn]) -> str:
        messages = [
            {
                "role": turn.role,
                "content": [{"type": "image"} for _ in turn.images] + [{"type": "text", "text": turn.text}],
            }
            for turn in turns
        ]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def encode_turns(self, conversations: list[list[Turn]]) -> "Encoded":
        """Left-padded model inputs for a batch of conversations, with each row's modality masks.

        Vision positions are the image tokens. Text positions are the tokens of the last user turn's
        text (context, question, options and any instruction), not the chat template: found by
        character offsets, counted from the end of the prompt, which image-token expansion in the
        processor does not move.
        """
        texts = [self.render(turns) for turns in conversations]
        images = [image for turns in conversations for turn in turns for image in turn.images]
        inputs = self.processor(
            text=texts, images=images or None, padding=True, return_tensors="pt", return_offsets_mapping=True
        )
        offsets = inputs.pop("offset_mapping")
        attention = inputs["attention_mask"].bool()
        text_mask = torch.zeros_like(attention)
        for row, (rendered, turns) in enumerate(zip(texts, conversations)):
            user_text = next(t.text for t in reversed(turns) if t.role == "user")
            start = rendered.rfind(user_text)
            if start < 0:
                raise RuntimeError(f"the chat template dropped the user text of row {row}; cannot locate text tokens")
            end_of_prompt = int(offsets[row][attention[row]][:, 1].max())
            lo = end_of_prompt - (len(rendered) - start)
            hi = end_of_prompt - (len(rendered) - start - len(user_text))
            begins, ends = offsets[row][:, 0], offsets[row][:, 1]
            text_mask[row] = attention[row] & (begins >= lo) & (ends <= hi) & (ends > begins)
        vision_mask = (inputs["input_ids"] == self.model.config.image_token_id) & attention
        text_mask &= ~vision_mask
        device = self.input_device
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        return Encoded(inputs, vision_mask.to(device), text_mask.to(device))

    def _batches(self, prompts: list[Prompt]) -> list[list[Prompt]]:
        """Batches of equal generation settings, longest prompts first (less padding)."""
        groups: dict[tuple, list[Prompt]] = {}
        for p in prompts:
            groups.setdefault((p.max_new_tokens, p.until), []).append(p)
        batches = []
        for group in groups.values():
            group.sort(key=lambda p: (-sum(len(t.text) for t in p.turns), p.index))
            batches += [group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size)]
        return batches

    def _generate(self, batch: Batch) -> list[str]:
        max_new_tokens = batch.prompts[0].max_new_tokens
        tokenizer = self.processor.tokenizer
        try:
            with self.intervene(batch), torch.no_grad():
                output = self.model.generate(
                    **batch.inputs,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=self.stop_ids,
                )
        except SteeringNonFinite as error:  # fail the run (lmms-eval lets it through), naming the documents
            docs = [batch.prompts[r] for r in error.rows if r < len(batch.prompts)]
            where = ", ".join(f"task {p.task} doc {p.doc_id} (item {p.item_id})" for p in docs[:5])
            where += f" and {len(docs) - 5} more" if len(docs) > 5 else ""
            run = f"{type(self).__name__} method={self.settings.method} steering={self.settings.steering}"
            raise error.naming(f"{where} in the run {run}", alpha=self.settings.alpha) from None
        new_tokens = output[:, batch.inputs["input_ids"].shape[1] :]
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [truncate(text, p.until).strip() for text, p in zip(texts, batch.prompts)]

    def generate_until(self, requests) -> list[str]:
        prompts = [self._prompt(i, request) for i, request in enumerate(requests)]
        results: list[str | None] = [None] * len(prompts)
        batches = self._batches(prompts)
        progress = tqdm(total=len(prompts), desc=f"{type(self).__name__} ({self.settings.method})", disable=self.rank != 0)
        for chunk in batches:
            batch = Batch(chunk, self.encode_turns([p.turns for p in chunk]))
            for prompt, text in zip(chunk, self._generate(batch)):
                results[prompt.index] = text
                self.cache_hook.add_partial("generate_until", requests[prompt.index].args, text)
            progress.update(len(chunk))
        progress.close()
        return results

    def loglikelihood(self, requests):
        raise NotImplementedError(f"{type(self).__name__} answers generate_until tasks (such as the MC2 tasks) only")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError(f"{type(self).__name__} answers generate_until tasks (such as the MC2 tasks) only")


def truncate(text: str, until: tuple[str, ...]) -> str:
    """Cut a generation at the first stop string."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text
