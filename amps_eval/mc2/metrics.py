"""MC2 scores from per-answer records (pure).

Every answer becomes one record (a plain dict, so that lmms-eval writes it into the samples file)::

    {"mc2_id": 17, "category": "color", "target": "vision", "order": "vision_first",
     "follows": "text", "score": 0}

``follows`` is "vision", "text" or "others" (the answer followed neither option: the AMPS paper's
"generation collapse"). ``score`` is the record's 0/1 value for the metric it is filed under, which
lets lmms-eval compute its CLT standard errors (``score_key``) and cluster them by ``mc2_id``.

An *item* (one ``mc2_id``) follows a modality when all of its answers do: with one option order per
item this is the answer itself; with both orders the two answers must agree, otherwise the item is
"others". Rates are shares of items, in [0, 1].
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

FOLLOWS = ("vision", "text", "others")
METRICS = ("target_acc", "vision_rate", "text_rate", "others_rate", "vision_ratio", "image_logodds")


def answer_record(doc: dict, follows: str, metric: str, image_logodds: float | None = None,
                  image_logodds_kind: str | None = None) -> dict:
    """The record of one answer, as filed under one metric. Every record carries the answer's
    ``image_logodds`` (:mod:`amps_eval.logodds`; None where it could not be measured) and its kind;
    under the metric ``image_logodds`` its ``score`` is that value (absent when None, so that
    lmms-eval's standard error counts only measured answers)."""
    if follows not in FOLLOWS:
        raise ValueError(f"follows must be one of {FOLLOWS}, got {follows!r}")
    hit = {
        "target_acc": follows == doc["target"],
        "vision_rate": follows == "vision",
        "text_rate": follows == "text",
        "others_rate": follows == "others",
    }
    record = {
        "mc2_id": int(doc["mc2_id"]),
        "category": doc["category"],
        "target": doc["target"],
        "order": doc["order"],
        "follows": follows,
        "image_logodds": None if image_logodds is None else float(image_logodds),
        "image_logodds_kind": image_logodds_kind,
    }
    if metric in hit:
        record["score"] = int(hit[metric])
    elif metric == "image_logodds" and image_logodds is not None:
        record["score"] = float(image_logodds)
    return record


def item_decisions(records: Iterable[dict]) -> dict[int, str]:
    """mc2_id -> what the item follows: the common answer of all its records, else "others"."""
    by_item: dict[int, set[str]] = defaultdict(set)
    for record in records:
        by_item[int(record["mc2_id"])].add(record["follows"])
    return {item: (next(iter(f)) if len(f) == 1 else "others") for item, f in by_item.items()}


@dataclass(frozen=True)
class Scores:
    """Item shares of an MC2 run: the numbers the paper's tables report."""

    n_items: int
    target: str
    vision: float
    text: float
    others: float

    @property
    def target_acc(self) -> float:
        return self.vision if self.target == "vision" else self.text

    @property
    def vision_ratio(self) -> float:
        """vision / (vision + text); NaN when no item follows either option."""
        decided = self.vision + self.text
        return self.vision / decided if decided > 0 else float("nan")


def score(records: Iterable[dict]) -> Scores:
    """Aggregate answer records (of one target) into item shares."""
    records = list(records)
    if not records:
        raise ValueError("no MC2 answers to score")
    targets = {r["target"] for r in records}
    if len(targets) != 1:
        raise ValueError(f"answers of different targets cannot be scored together: {sorted(targets)}")
    counts = Counter(item_decisions(records).values())
    n = sum(counts.values())
    return Scores(n, targets.pop(), counts["vision"] / n, counts["text"] / n, counts["others"] / n)


# lmms-eval aggregation functions (referenced from the task YAMLs through tasks/utils.py).
def agg_target_acc(records: list[dict]) -> float:
    return score(records).target_acc


def agg_vision_rate(records: list[dict]) -> float:
    return score(records).vision


def agg_text_rate(records: list[dict]) -> float:
    return score(records).text


def agg_others_rate(records: list[dict]) -> float:
    return score(records).others


def agg_vision_ratio(records: list[dict]) -> float:
    return score(records).vision_ratio


def agg_image_logodds(records: list[dict]) -> float:
    """Mean ``image_logodds`` over the measured answers (NaN if none was measured); its standard
    error is lmms-eval's CLT one over the records' ``score`` (clustered by ``mc2_id``)."""
    values = [r["image_logodds"] for r in records if r.get("image_logodds") is not None]
    return sum(values) / len(values) if values else float("nan")
