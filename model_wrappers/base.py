"""The generic lmms-eval wrapper over a model family (`amps_eval.families`): plumbing, prompts, batching.

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

from amps_eval.encoding import Encoded, PromptEncoder, model_load_kwargs, resolve_device, resolve_dtype
from amps_eval.families import FamilyAdapter, check_pretrained
from amps_eval.mc2.prompt import answer_letter, doc_prompt
from amps_eval.methods.prompts import PROMPT_METHODS, Example, Turn, build_conversation, choose_examples
from amps_eval.model_wrappers.diagnostics import DiagnosticsWriter
from amps_eval.settings import WrapperSettings, load_steering
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
        self.encoder = PromptEncoder(self.family, self.model, self.processor, name=str(self.settings.pretrained))
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
        self._device = resolve_device(device)
        self.torch_dtype = resolve_dtype(self.settings.dtype, self._device)

    def model_load_kwargs(self) -> dict:
        return model_load_kwargs(self.torch_dtype, self._device, self.settings.attn_implementation,
                                 self.settings.device_map)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.settings.batch_size

    @property
    def input_device(self) -> torch.device:
        return self.encoder.input_device

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
        """The token ids that end an answer (`amps_eval.encoding.PromptEncoder.stop_token_ids`)."""
        return self.encoder.stop_token_ids()

    def render(self, turns: list[Turn]) -> str:
        return self.encoder.render(turns)

    def encode_turns(self, conversations: list[list[Turn]]) -> Encoded:
        """Left-padded model inputs with each row's modality masks (`PromptEncoder.encode_turns`)."""
        return self.encoder.encode_turns(conversations)

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
