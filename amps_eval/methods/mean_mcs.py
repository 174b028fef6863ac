"""Mean steering scaled per sample by the MCS (the AMPS paper's "Mean+MCS"): the mean vector of
the ``mean`` file at strength ``alpha * gamma_i``, gamma_i from Eq. 9 with the MCS of the row's own
prompt, computed right before its generation, and the anchor of its category taken on the fit items
of the fold that steers it (so a held-out item's own r_v never enters its anchor).

The MCS noise of a prompt depends only on (seed, mc2_id, prompt variant) (`noise_key`), so the r_v
computed here equals the one the fit computed for the same prompt with the same settings; a run
whose MCS settings differ from those that made the anchors is refused (`check_mcs_settings`).
"""

from __future__ import annotations


import torch

from amps_eval.methods.base import SteeringMethod
from amps_eval.mcs.score import compute_mcs, noise_key
from amps_eval.mcs.settings import ADDED_SETTINGS, MCS_KEYS, MCSSettings
from amps_eval.steering.scaling import gamma

LEGACY_MCS = {"ratio": "sums", "antithetic": False, "common_sigmas": False, "common_modalities": False,
              "tolerance": None, "min_draws": MCSSettings.min_draws, "round_draws": MCSSettings.round_draws,
              **ADDED_SETTINGS}
"""What a steering file written before these settings existed used."""


def check_mcs_settings(file, mcs) -> None:
    """Refuse a mean_mcs run whose MCS settings differ from those that made the file's anchors: its
    r_v would not be comparable with them (the scaling compares the two)."""
    recorded = (file.settings or {}).get("mcs")
    if not isinstance(recorded, dict):
        return  # a file written in code, without recorded fit settings
    recorded = {**LEGACY_MCS, **recorded}
    ours = mcs.to_dict()

    def norm(value):
        return [float(v) for v in value] if isinstance(value, (list, tuple)) else value

    differ = {k: (recorded.get(k), ours.get(k)) for k in MCS_KEYS if norm(recorded.get(k)) != norm(ours.get(k))}
    if differ:
        from amps_eval.settings import MCS_ARGS  # the model arguments that make a run's MCS settings

        what = ", ".join(f"{k} {a!r} (file) vs {b!r} (run)" for k, (a, b) in differ.items())
        args = [f"{arg}=" for arg in MCS_ARGS]
        raise ValueError(
            f"{file.source}: its MCS anchors were computed with other MCS settings than this mean_mcs run uses "
            f"({what}); pass {', '.join(args[:-1])} and {args[-1]} as the fit had them, or refit"
        )


class MeanMCS(SteeringMethod):
    name = "mean_mcs"
    prefills_at_inference = True

    def check_file(self, file, config) -> None:
        if not file.anchors:
            raise ValueError(f"method=mean_mcs needs MCS anchors; {file.source} has none: refit with "
                             "`amps-eval fit --method mean`")
        check_mcs_settings(file, config.mcs)

    def row_scales(self, model, batch, rows: list[dict], file, config, prefilled=None) -> list[float]:
        mcs = _row_mcs(model, batch.encoded, [str(r["mc2_id"]) for r in rows], config, prefilled)
        recorded = file.settings
        fold_anchors = recorded.get("fold_anchors") or {}
        scales = []
        for row, (c_v, c_t, r_v, r_v_se, perturbations) in zip(rows, mcs):
            # the anchors of the fold that steers the row (fitted without it); files from before
            # per-fold anchors fall back to the file's, which saw every item
            anchors = fold_anchors.get(file.folds[row["fold"]].name) or file.anchors
            mu_v = anchors.get(row["category"], anchors.get("__all__"))
            if mu_v is None:
                raise ValueError(f"no MCS anchor for category {row['category']!r} in {file.source}")
            g = float(gamma(torch.tensor(r_v), mu_v, config.beta, row["target"], config.convention,
                            cap=recorded.get("gamma_max"), anchor_floor=recorded.get("anchor_floor", 0.0)))
            row.update(c_v=c_v, c_t=c_t, r_v=r_v, r_v_stderr=r_v_se, perturbations=perturbations,
                       anchor=mu_v, gamma=g)
            scales.append(g)
        return scales


def _row_mcs(model, encoded, mc2_ids: list[str], config, prefilled=None) -> list[tuple]:
    """(c_v, c_t, r_v, r_v_stderr or None, perturbations) per row (`amps_eval.mcs.item.item_mcs`): from the item
    cache (``config.item_cache``) where the row's prompt is there, else computed for the batch (the
    batch's inputs are scored together) and stored. A sweep over alpha thus scores each prompt once;
    a fit's or `amps-eval mcs`'s entries for the same prompt are reused. ``prefilled``: the batch's
    clean prefill, when the caller has one."""
    from amps_eval.item_cache import MCSCache, model_key
    from amps_eval.mcs.item import entry_key, item_mcs

    cache = keys = None
    if getattr(config, "item_cache", None) and encoded.prompt_digests is not None:
        cache = MCSCache(config.item_cache, model_key(model), config.mcs)
        keys = [entry_key(d, i, "none") for d, i in zip(encoded.prompt_digests, mc2_ids)]
    batch: list = []

    def compute(rows: list[int]):
        if not batch:  # the inputs are one batch: score all of it once, take the rows asked for
            batch.append(compute_mcs(model, encoded.inputs, encoded.vision_mask, encoded.text_mask, config.mcs,
                                     sample_ids=[noise_key(i, "none") for i in mc2_ids], prefilled=prefilled))
        return batch[0].select(rows)

    records = item_mcs(mc2_ids, compute, cache, keys)
    return [(r["c_v"], r["c_t"], r["r_v"], r["r_v_stderr"], r["perturbations"]) for r in records]


METHODS = {"mean_mcs": MeanMCS()}
