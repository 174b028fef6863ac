"""Choosing a steered method's alpha on items its number is not scored on (pure).

A sweep evaluates every item at every alpha. The items are split into two halves, stratified by
category (within a category, items ordered by the sha256 of their mc2_id alternate between the
halves, so the split depends on nothing but the ids). For each half, alpha is chosen on the *other*
half by `AlphaRule`, and the half's items are scored with their answers at that alpha. Every item is
scored once, with an alpha chosen without it (two-fold cross-fitting of the choice), so the row is
not the optimistic "best alpha on the evaluated items". Alpha 0 is never a candidate: it is the
unsteered model.

The rule: among the alphas whose collapse rate (answers that follow neither option) on the
choosing half is at most ``max_collapse``, the one with the highest target share (ties: the smaller
alpha); when none qualifies, the one with the lowest collapse (ties: the smaller alpha). When every
alpha gives the same share and collapse on both choosing halves, the "choice" is only the tie rule:
`HeldOutChoice.describe` says so (``TIED``) and the tables print "α tied" instead of an alpha.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from amps_eval.mc2.metrics import score

CHOICES = ("held-out", "optimistic")
TIED = "every alpha gave the same share and collapse on both choosing halves: no real choice"


@dataclass(frozen=True)
class AlphaRule:
    max_collapse: float = 0.05


@dataclass(frozen=True)
class HeldOutChoice:
    records: tuple[dict, ...]  # every item's answer records, at the alpha chosen on the other half
    alphas: tuple[float, float]  # the alpha each half is scored with
    n_choosing: tuple[int, int]  # how many items each choice was made on
    tied: tuple[bool, bool] = (False, False)  # every candidate alpha gave the same share and collapse there

    def describe(self) -> str:
        a, b = (f"{x:g}" for x in self.alphas)
        how = a if a == b else f"{a} / {b}"
        text = f"α {how}, chosen on held-out halves of {self.n_choosing[0]}+{self.n_choosing[1]} items"
        return text + (f"; {TIED}" if all(self.tied) else "")


def halves(records: Iterable[dict]) -> dict[str, int]:
    """mc2_id -> 0 or 1: a split of the items stratified by category, a function of the ids only."""
    by_category: dict[str, set[str]] = defaultdict(set)
    for record in records:
        by_category[str(record["category"])].add(str(record["mc2_id"]))
    half, position = {}, 0
    for category in sorted(by_category):  # the count runs on across categories, so that categories of
        ids = by_category[category]       # one item (a tiny study) still fill both halves
        ordered = sorted(ids, key=lambda i: hashlib.sha256(f"amps-alpha:{i}".encode()).hexdigest())
        for item in ordered:
            half[item] = position % 2
            position += 1
    return half


def _pick(records_by_alpha: dict[float, list[dict]], items: set[str], rule: AlphaRule) -> tuple[float, bool]:
    """The alpha the rule chooses on ``items``, and whether every candidate scored the same there."""
    candidates = []
    for alpha, records in records_by_alpha.items():
        mine = [r for r in records if str(r["mc2_id"]) in items]
        if alpha != 0 and mine:
            s = score(mine)
            candidates.append((alpha, s.target_acc, s.others))
    if not candidates:
        raise ValueError("no non-zero alpha has answers on the items to choose on")
    tied = len(candidates) > 1 and len({(c[1], c[2]) for c in candidates}) == 1
    allowed = [c for c in candidates if c[2] <= rule.max_collapse]
    if allowed:
        return min(allowed, key=lambda c: (-c[1], abs(c[0])))[0], tied
    return min(candidates, key=lambda c: (c[2], abs(c[0])))[0], tied


def held_out_choice(records_by_alpha: dict[float, list[dict]], rule: AlphaRule | None = None) -> HeldOutChoice:
    """Score every item at the alpha chosen on the other half (see the module docstring)."""
    rule = rule or AlphaRule()
    steered = {a: list(r) for a, r in records_by_alpha.items() if a != 0 and r}
    if not steered:
        raise ValueError("held-out alpha choice needs answers at one non-zero alpha or more")
    split = halves(r for records in steered.values() for r in records)
    members = [{i for i, h in split.items() if h == k} for k in (0, 1)]
    if not all(members):
        raise ValueError("held-out alpha choice needs two items or more")
    chosen, out, tied = [], [], []
    for k in (0, 1):
        alpha, flat = _pick(steered, members[1 - k], rule)
        chosen.append(alpha)
        tied.append(flat)
        out += [r for r in steered[alpha] if str(r["mc2_id"]) in members[k]]
    return HeldOutChoice(tuple(out), (chosen[0], chosen[1]), (len(members[1]), len(members[0])), (tied[0], tied[1]))
