"""Functions the MC2 task YAMLs name with `!function utils.<name>`.

lmms-eval loads this file by path from the YAML folder; everything here is a thin adapter over the
pure code in `amps_eval.mc2`.
"""

from __future__ import annotations

from amps_eval.logodds import answer_logodds
from amps_eval.mc2 import metrics
from amps_eval.mc2.docs import MC2TaskError
from amps_eval.mc2.parse import follows
from amps_eval.mc2.prompt import doc_prompt
from amps_eval.mc2.task import MC2Task  # noqa: F401  (the YAMLs' `class:`)


def doc_to_visual(doc: dict) -> list:
    image = doc.get("image")
    if image is None:
        raise MC2TaskError(
            f"MC2 item mc2_id={doc.get('mc2_id')} has no image; re-run `amps-eval prepare-mc2` "
            "with the COCO 2014 root that holds it (or --skip-missing to drop such items)"
        )
    return [image.convert("RGB")]


def doc_to_text(doc: dict) -> str:
    return doc_prompt(doc)


def doc_to_target(doc: dict) -> str:
    """The answer that follows the task's target modality (what lmms-eval logs as `target`)."""
    return doc["answer_vision"] if doc["target"] == "vision" else doc["answer_text"]


def process_results(doc: dict, results: list[str]) -> dict:
    """One record per metric; each carries mc2_id, category and which option the answer followed."""
    followed = follows(results[0], doc)
    logodds, kind = answer_logodds(results[0])
    return {name: metrics.answer_record(doc, followed, name, logodds, kind) for name in metrics.METRICS}


agg_target_acc = metrics.agg_target_acc
agg_vision_rate = metrics.agg_vision_rate
agg_text_rate = metrics.agg_text_rate
agg_others_rate = metrics.agg_others_rate
agg_vision_ratio = metrics.agg_vision_ratio
agg_image_logodds = metrics.agg_image_logodds
