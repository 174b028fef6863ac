"""Build lmms-eval-style requests for the wrappers without running the whole harness."""

from __future__ import annotations

from types import SimpleNamespace

from amps_eval.mc2.docs import TaskSpec, task_docs
from amps_eval.mc2.prompt import doc_prompt
from amps_eval.mc2.source import load_mc2, resolve_source

SPLIT = "test"


def mc2_task_dict(data_dir, targets=("vision", "text")) -> dict:
    from datasets import DatasetDict

    items = load_mc2(resolve_source({"AMPS_MC2_DATA": str(data_dir)}))
    names = {"vision": "mc2_visual", "text": "mc2_text"}
    return {names[t]: DatasetDict({SPLIT: task_docs(items, TaskSpec(t))}) for t in targets}


def requests_for(task_dict: dict, task: str, n: int | None = None, max_new_tokens: int = 6) -> list:
    docs = task_dict[task][SPLIT]
    n = len(docs) if n is None else n
    gen_kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False, "temperature": 0}

    def doc_to_visual(doc):
        return [doc["image"].convert("RGB")]

    return [SimpleNamespace(args=(doc_prompt(docs[i]), gen_kwargs, doc_to_visual, i, task, SPLIT)) for i in range(n)]


def make_wrapper(cls, path, task_dict, **model_args):
    wrapper = cls(pretrained=str(path), device="cpu", **model_args)
    wrapper.task_dict = task_dict
    return wrapper
