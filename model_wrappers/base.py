"""The generic lmms-eval wrapper over a model family (`amps_eval.families`): plumbing, prompts, batching.

A request becomes a `Prompt` (its conversation under the chosen method, its task document and its
generation settings); prompts are batched by generation settings and prompt length, encoded with
left padding, generated greedily inside `self.intervene(batch)` (the steering hook point: a no-op
for the prompt baselines) and returned in request order. A run of a sweep (``sweep=``, a
`amps_eval.sweep_pass.SweepPass`) generates each batch once for every alpha of the sweep, or takes
the answers an earlier run of the sweep generated for it (docs/sweeps.md).

Generation budget: ``max(task's max_new_tokens, settings.max_new_tokens)`` new tokens (default 64,
room for a one-sentence answer); for ``method=cot`` ``cot_max_new_tokens`` (default 512) takes the
place of ``max_new_tokens``, and the task's stop strings (``until``) are not applied. Each row
stops at its first end-of-turn token (`stop_token_ids`: the generation config's EOS ids, the
tokenizer's EOS and the chat template's end-of-turn token), so a larger budget costs time only for
a model that keeps talking.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from loguru import logger
from lmms_eval.api.model import lmms
from tqdm import tqdm

from amps_eval.encoding import Encoded
from amps_eval.families import FamilyAdapter
from amps_eval.logodds import ScoredAnswer, candidate_pairs, logodds_from_steps
from amps_eval.mc2.prompt import answer_letter, doc_prompt
from amps_eval.methods.prompts import PROMPT_METHODS, Example, Turn, build_conversation, choose_examples
from amps_eval.model_wrappers.diagnostics import DiagnosticsWriter
from amps_eval.model_wrappers.loaded import LoadedModel, load_key
from amps_eval.mcs.kv_cache import Prefill
from amps_eval.settings import WrapperSettings, load_steering
from amps_eval.steering.hooks import SteeringNonFinite
from amps_eval.sweep_pass import Answer, SweepPass, answer_key, expand_inputs, generated_lengths


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
    alpha: float | None = None  # this row's steering strength; None: the run's (a sweep pass sets the others')

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
    """One generation's rows. ``encoded``: the items' inputs; with ``copies`` > 1 the prompts are
    the items repeated once per alpha (alpha-major, the run's own first: `amps_eval.sweep_pass`) and
    ``inputs`` repeats the encoded items the same way."""

    prompts: list[Prompt]
    encoded: Encoded
    copies: int = 1
    generated: list[int] | None = None  # tokens each row generated through its end of turn (set by `_generate`)
    rows: list[dict] | None = None  # the steering's diagnostics per row (set when the steering closes)

    @functools.cached_property
    def inputs(self) -> dict:
        return expand_inputs(self.encoded.inputs, self.copies)

    @property
    def base(self) -> "Batch":
        """The items once (this batch when it does not repeat them)."""
        if self.copies == 1:
            return self
        return Batch(self.prompts[: len(self.prompts) // self.copies], self.encoded)


class AmpsWrapper(lmms):
    """The lmms-eval model over one family adapter (`amps_eval.families`); `registered` makes one
    subclass per family (`amps_qwen`, `amps_llava`, ...), naming its family and settings class."""

    is_simple = True
    settings_class: type[WrapperSettings] = WrapperSettings
    family: FamilyAdapter | None = None

    @classmethod
    def load_key(cls, settings: WrapperSettings) -> tuple:
        """What this wrapper's checkpoint is loaded from and how (`loaded.load_key`): runs with the
        same key can share one `load_checkpoint`."""
        return load_key(cls.family, settings)

    @classmethod
    def load_checkpoint(cls, settings: WrapperSettings) -> LoadedModel:
        """Load the checkpoint of ``settings`` once, to hand to several wrappers (``loaded=``)."""
        return LoadedModel.load(cls.family, settings)

    def __init__(self, *, loaded: LoadedModel | None = None, sweep: SweepPass | None = None,
                 settings: WrapperSettings | None = None, **model_args) -> None:
        """``loaded``: a checkpoint already loaded with the same loading settings (`LoadedModel`),
        shared by several runs in one process (`amps_eval.runner.EvalSession`); None loads it here.
        ``sweep``: the `SweepPass` of the sweep this run belongs to (its batches are generated for
        every alpha of the sweep at once, or taken from an earlier run of it); None: this alpha only.
        ``settings``: the run's settings already built from its model arguments (in code, in place of
        ``model_args``: its steering file was read once, when they were built); None: built here from
        ``model_args``, as lmms-eval passes them."""
        super().__init__()
        if sweep is not None and not isinstance(sweep, SweepPass):
            raise TypeError(f"sweep= takes a SweepPass, not {type(sweep).__name__}")
        self.sweep = sweep
        if settings is None:
            settings = self.settings_class.from_model_args(**model_args)
        elif not isinstance(settings, self.settings_class):
            raise TypeError(f"settings= takes a {self.settings_class.__name__} (built in code), "
                            f"not {type(settings).__name__}")
        elif model_args:
            raise TypeError(f"pass settings= or model arguments, not both (got {sorted(model_args)})")
        self.settings = settings
        self.owns_load = loaded is None  # whether lmms-eval's clean-up after the run may free it (`clean`)
        if loaded is None:
            loaded = LoadedModel.load(self.family, self.settings)
        elif not isinstance(loaded, LoadedModel):
            raise TypeError(f"loaded= takes a LoadedModel (loaded in code), not {type(loaded).__name__}")
        else:
            loaded.check_serves(self.family, self.settings)
        self.loaded = loaded
        self.accelerator = loaded.accelerator
        self._rank, self._world_size = loaded.rank, loaded.world_size
        self._device, self.torch_dtype = loaded.device, loaded.torch_dtype
        self.model, self.processor, self.encoder = loaded.model, loaded.processor, loaded.encoder
        self.stop_ids = list(loaded.stop_ids)
        self._fewshot_columns: dict[tuple[str, str], tuple[list, list]] = {}
        self.steering = load_steering(self.settings, self.model)
        self.diagnostics = DiagnosticsWriter.for_run(self.settings, self.rank) if self.settings.diagnostics else None
        logger.info(f"{type(self).__name__} settings: {self.settings.to_dict()}")

    # --- the family's model and processor -----------------------------------------------------
    @property
    def architecture(self) -> str:
        return self.family.name

    @contextlib.contextmanager
    def intervene(self, batch: Batch) -> Iterator[Prefill | None]:
        """Steering around one batch's generation; the prompt baselines change nothing. Yields the
        prompt's prefill when the generation must continue from it (`Steered.prefill`), else None."""
        if self.steering is None:
            yield None
            return
        with self.steering.apply(self.model, batch) as steered:
            yield steered.prefill
        batch.rows = steered.rows
        if self.diagnostics is not None:  # this run's rows (a sweep pass keeps the other alphas')
            self.diagnostics.write([row for row, p in zip(steered.rows, batch.prompts) if p.alpha is None])

    # --- devices ------------------------------------------------------------------------------
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
            with self.intervene(batch) as prefill, torch.no_grad():
                inputs = batch.inputs if prefill is None else continuation_inputs(batch.inputs, prefill)
                output = self.model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=self.stop_ids,
                    return_dict_in_generate=True,
                    output_logits=True,  # the raw logits of each step: image_logodds, no extra forward
                )
                prompt_length = batch.inputs["input_ids"].shape[1]
                batch.generated = generated_lengths(output.sequences[:, prompt_length:], self.stop_ids)
        except SteeringNonFinite as error:  # fail the run (lmms-eval lets it through), naming the documents
            docs = [batch.prompts[r] for r in error.rows if r < len(batch.prompts)]
            where = ", ".join(f"task {p.task} doc {p.doc_id} (item {p.item_id})" for p in docs[:5])
            where += f" and {len(docs) - 5} more" if len(docs) > 5 else ""
            run = f"{type(self).__name__} method={self.settings.method} steering={self.settings.steering}"
            alphas = sorted({self.settings.alpha if p.alpha is None else p.alpha for p in docs}) or [self.settings.alpha]
            raise error.naming(f"{where} in the run {run}", alpha=alphas[0] if len(alphas) == 1 else None) from None
        new_tokens = output.sequences[:, batch.inputs["input_ids"].shape[1] :]
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        measured = self._image_logodds(batch, new_tokens, output.logits)
        return [ScoredAnswer(truncate(text, p.until).strip(), *m) for text, p, m in zip(texts, batch.prompts, measured)]

    def _image_logodds(self, batch: Batch, new_tokens: torch.Tensor, step_logits) -> list[tuple]:
        """Per row, ``(image_logodds, kind)`` (`amps_eval.logodds`) from the raw logits of the
        generation's steps: the same prompt and steering as the answer, no extra forward."""
        tokenizer = self.processor.tokenizer

        def tokenize(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        out = []
        for r, prompt in enumerate(batch.prompts):
            pairs = candidate_pairs(prompt.doc, tokenize, self.stop_ids[0])
            generated = new_tokens[r].tolist()

            def log_prob(step: int, token: int, r: int = r) -> float:
                return float(torch.log_softmax(step_logits[step][r].float(), dim=-1)[token])

            out.append(logodds_from_steps(pairs, generated, log_prob))
        return out

    def generate_until(self, requests) -> list[str]:
        prompts = [self._prompt(i, request) for i, request in enumerate(requests)]
        results: list[str | None] = [None] * len(prompts)
        batches = self._batches(prompts)
        progress = tqdm(total=len(prompts), desc=f"{type(self).__name__} ({self.settings.method})", disable=self.rank != 0)
        for chunk in batches:
            for prompt, text in zip(chunk, self._answers(chunk, requests)):
                results[prompt.index] = text
                self.cache_hook.add_partial("generate_until", requests[prompt.index].args, text)
            progress.update(len(chunk))
        progress.close()
        return results

    def _answers(self, chunk: list[Prompt], requests) -> list[str]:
        """One batch's answers: generated for this run's alpha, or in a sweep pass taken from an
        earlier run of the sweep, else generated for this alpha and every alpha of the sweep still
        unanswered at once (the others' answers and diagnostics kept for their runs)."""
        if self.sweep is None or self.steering is None:
            return self._generate(Batch(chunk, self.encode_turns([p.turns for p in chunk])))
        settings = self.settings.to_dict()
        keys = [answer_key(settings, p.task, p.doc_id, p.item_id, requests[p.index].args[0], requests[p.index].args[1])
                for p in chunk]
        kept = self.sweep.take(keys, self.settings.alpha)
        if kept is not None:
            if self.diagnostics is not None:
                self.diagnostics.write([a.diagnostics for a in kept if a.diagnostics is not None])
            return [a.text for a in kept]
        others = self.sweep.others(keys, self.settings.alpha)
        encoded = self.encode_turns([p.turns for p in chunk])
        while True:
            batch = Batch(chunk + [dataclasses.replace(p, alpha=a) for a in others for p in chunk], encoded,
                          copies=1 + len(others))
            try:
                texts = self._generate(batch)
                break
            except SteeringNonFinite as error:
                if not others:
                    raise
                # without the alphas that failed (their own runs fail as they would alone)
                failed = {batch.prompts[r].alpha for r in error.rows if r < len(batch.prompts)}
                others = () if None in failed else tuple(a for a in others if a not in failed)
        n = len(chunk)
        for k, alpha in enumerate(others, 1):
            rows = batch.rows[k * n : (k + 1) * n] if batch.rows else [None] * n
            self.sweep.keep(keys, alpha, [Answer(t, r) for t, r in zip(texts[k * n : (k + 1) * n], rows)])
        return texts[:n]

    def clean(self) -> None:
        """lmms-eval's clean-up after a run (a full garbage collection, the device caches emptied,
        the modules dropped), for a wrapper that loaded its checkpoint itself. Over a shared load
        (an `amps_eval.runner.EvalSession`'s) the weights outlive the run and the session frees
        them when it closes: nothing to free here, and the two full collections would cost about
        1 s of CPU per run (a study makes hundreds of runs; benchmarks/README.md)."""
        if self.owns_load:
            super().clean()

    def loglikelihood(self, requests):
        raise NotImplementedError(f"{type(self).__name__} answers generate_until tasks (such as the MC2 tasks) only")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError(f"{type(self).__name__} answers generate_until tasks (such as the MC2 tasks) only")


def continuation_inputs(inputs: dict, prefill: Prefill) -> dict:
    """``generate`` inputs that continue from ``prefill`` (the prompt's cache cut before its last
    token): the full ``input_ids`` and ``attention_mask`` (generate runs only the uncached last
    token), a fresh `DynamicCache` over the prefill's keys and values (a forward appends to its
    cache by concatenation, so the prefill's tensors are not changed), and the position ids that
    generate computes from the whole prompt, given explicitly: ``cumsum(attention_mask) - 1`` for a
    1-D rope, and for the mrope families (Qwen2/2.5-VL) that text row above the prefill's 3-D
    positions, as their ``_prepare_position_ids_for_generation`` builds them. With explicit
    positions the model's stateful ``rope_deltas`` is neither read nor written. The pixels stay out:
    the image is in the cache."""
    from transformers.cache_utils import DynamicCache

    mask = inputs["attention_mask"]
    text = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    positions = prefill.position_ids.to(text.device)
    if positions.dim() == 3:
        positions = torch.cat([text[None], positions], dim=0)
    else:
        positions = text
    cache = DynamicCache(ddp_cache_data=list(zip(prefill.keys, prefill.values)))
    return {"input_ids": inputs["input_ids"], "attention_mask": mask, "position_ids": positions, "cache": cache}


def truncate(text: str, until: tuple[str, ...]) -> str:
    """Cut a generation at the first stop string."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text
