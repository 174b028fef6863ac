"""From prepared MC2 items to task documents (pure functions on `datasets.Dataset`).

A *task document* is a prepared item (``amps_eval.mc2.schema``) plus what one task asks of it:
``target`` (the modality the task rewards), ``order`` and ``vision_letter`` (which option the image
answer is) and ``option_a`` / ``option_b``. The wrapper reads ``target`` from the document, so one
``--model_args`` string serves ``mc2_visual`` and ``mc2_text`` alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from amps_eval.mc2.prompt import ORDER_MODES, TARGETS, options, orders_for

REQUIRED_COLUMNS = ("mc2_id", "category", "question", "context", "answer_vision", "answer_text", "image")


class MC2TaskError(ValueError):
    """A task cannot be built from the data it was given."""


def shown_error(message: str) -> MC2TaskError:
    """An `MC2TaskError` whose class name carries ``message``: lmms-eval 0.7.3 builds a task's
    documents inside a tenacity ``@retry`` (``ConfigurableTask.download``), so its CLI ends with
    ``Error during evaluation: RetryError[<Future ... raised CLASSNAME>]``, which names only the
    class of the error. With the reason in the class name, that last line says it. The error is
    still an `MC2TaskError` (and a ValueError) for every ``except``."""
    named = type(f"MC2TaskError: {message}", (MC2TaskError,), {"__module__": MC2TaskError.__module__})
    return named(message)


@dataclass(frozen=True)
class TaskSpec:
    """What an MC2 task asks: the target modality, one category or all, and the option orders."""

    target: str
    category: str | None = None
    orders: str = "one"

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise MC2TaskError(f"task target must be one of {TARGETS}, got {self.target!r}")
        if self.orders not in ORDER_MODES:
            raise MC2TaskError(f"task orders must be one of {ORDER_MODES}, got {self.orders!r}")

    @classmethod
    def from_metadata(cls, metadata: dict | None) -> "TaskSpec":
        metadata = dict(metadata or {})
        if "target" not in metadata:
            raise MC2TaskError("an MC2 task YAML needs `metadata: {target: vision|text, ...}`")
        return cls(metadata["target"], metadata.get("category"), metadata.get("orders", "one"))


def _order_columns(spec: TaskSpec, order_index: int):
    def columns(mc2_ids, answers_vision, answers_text):
        out = {"target": [], "order": [], "vision_letter": [], "option_a": [], "option_b": []}
        for mc2_id, vision, text in zip(mc2_ids, answers_vision, answers_text):
            order = orders_for(mc2_id, spec.orders)[order_index]
            a, b = options(vision, text, order)
            out["target"].append(spec.target)
            out["order"].append(order.name)
            out["vision_letter"].append(order.vision_letter)
            out["option_a"].append(a)
            out["option_b"].append(b)
        return out

    return columns


def task_docs(dataset, spec: TaskSpec):
    """The documents of one task: the category's items, each once per asked option order."""
    import datasets

    missing = [c for c in REQUIRED_COLUMNS if c not in dataset.column_names]
    if missing:
        raise shown_error(
            f"the MC2 data lacks column(s) {missing} (has {dataset.column_names}); "
            "write it with `amps-eval prepare-mc2` or `amps-eval synth-mc2` and point AMPS_MC2_DATA at it"
        )
    # `add_column`, `concatenate_datasets` and a final `select` keep the result in memory beside the
    # memory-mapped items: nothing is written into the data folder (`filter`, `map`, or `add_column`
    # after a `select`, would leave cache files there, and fail on a read-only folder).
    rows = list(range(len(dataset)))
    if spec.category is not None:
        rows = [i for i, c in enumerate(dataset["category"]) if c == spec.category]
        if not rows:
            present = sorted(set(dataset["category"]))
            raise shown_error(f"the MC2 data has no items of category {spec.category!r} (it has "
                              f"{', '.join(present) or 'no items'}): run a task of a category it has, or "
                              "prepare the data with that category")
    n_orders = len(orders_for(0, spec.orders))
    text = dataset.select_columns(["mc2_id", "answer_vision", "answer_text"]).to_dict()
    parts = []
    for k in range(n_orders):
        part = dataset
        for name, values in _order_columns(spec, k)(text["mc2_id"], text["answer_vision"], text["answer_text"]).items():
            part = part.add_column(name, values)
        parts.append(part)
    docs = parts[0] if n_orders == 1 else datasets.concatenate_datasets(parts)
    if spec.category is None:
        return docs
    return docs.select([k * len(dataset) + i for k in range(n_orders) for i in rows])
