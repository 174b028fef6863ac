"""Modality Contribution Score (MCS), AMPS (arXiv 2602.12533) Algorithm 1 / Eq. 7.

For one prompt ``x`` with clean next-token distribution ``p_x`` (at the last prompt token):

* for every noise level ``sigma`` in ``settings.sigmas``, every modality ``m`` in (vision, text) and
  every Monte Carlo draw ``n < settings.draws``: add Gaussian noise to the K and V entries of EVERY
  decoder layer at the prompt positions of modality ``m`` only, run the last prompt token against
  that perturbed cache to get ``p_z``, and compute ``L = CE(p_x, p_z) = -sum p_x log p_z``;
* score = ``||dL/d(perturbed KV entries)||^2 / max(L, eps)`` where the gradient is taken with
  respect to the perturbed K/V entries only (all layers, K and V, modality-``m`` positions);
* ``C_m`` = mean of the scores over draws and sigmas; ``r_v = C_V / (C_V + C_T)`` (Eq. 7; the default
  estimator forms this ratio per sigma and averages, see "Draws and ratio" below).

Decisions (the paper leaves them open, see docs/method.md, "MCS")
-----------------------------------------------------------------
* **Relative noise** (``relative=True``, default): the noise std for layer ``l``, K (resp. V),
  modality ``m`` is ``sigma * std(K_l[m-positions of this sample])`` (population std over heads,
  positions and head dims of the clean cache; `modality_std` computes all layers, samples and
  modalities at once on the device, two passes in float64 as torch.std accumulates a float32 tensor
  on CPU, then rounds it to the work dtype). Computed over the *perturbed positions of the
  sample* rather than over the whole layer cache because (a) the whole batch cache contains padding
  rows/columns, so its std would depend on batch composition and break padding invariance; (b) even
  the whole valid cache of one sample is dominated by a handful of attention-sink tokens (BOS /
  system prompt) with K/V norms orders of magnitude above the rest, which would make "sigma" mean a
  huge perturbation for one modality and none for the other. Per-modality scaling makes sigma mean
  "this fraction of that modality's own spread" in every layer and every model.
  ``relative=False`` uses ``sigma`` as an absolute std.
* **Sigmas** default ``(0.05, 0.1, 0.2)``: small enough that the perturbed cache stays in the
  neighbourhood where the gradient is informative (a local sensitivity probe), large enough that
  ``p_z`` differs measurably from ``p_x`` in bf16; three levels average out the dependence on one
  scale.
* **Draws and ratio** default: the sequential estimator (below) with ``tolerance=0.05``,
  ``min_draws=4``, ``round_draws=2``, at most ``draws=8``: 24 to 48 perturbations per sample (3
  sigmas x 2 modalities x 4 to 8 draws), 31.4 on average over the 256 demo items of both shipped
  organisms (32.9 Qwen, 30.0 LLaVA), where two ``--mcs-seed`` runs agree to Spearman 0.964 / 0.967
  and mean |r_v difference| 0.045 / 0.028 (benchmarks/README.md, "Sequential MCS"). Before it the
  default was a fixed ``draws=16`` (96 perturbations per sample; ``tolerance=None, draws=16``).
  r_v = mean over sigmas of C_V(s) / (C_V(s) + C_T(s)).
  Chosen with ``benchmarks/bench_mcs_retest.py`` (benchmarks/README.md, "MCS reliability"). With the
  former ``draws=2`` and the pooled ratio ``C_V / (C_V + C_T)``, two ``--mcs-seed`` runs over the 128
  demo items agreed only to Spearman 0.878-0.917 and mean |r_v difference| 0.090-0.125. With 16
  fixed draws they agree to Spearman >= 0.986 and mean |difference| <= 0.037 on both shipped
  organisms (two seed pairs each), inside the target of 0.95 and 0.05. A score grows about as
  sigma^2, so the pooled ratio is dominated by the largest sigma. The per-sigma mean weights the
  three levels equally and agreed better at every draw count. It has the same limit as the pooled
  ratio when both modalities scale alike with sigma. ``ratio="sums"`` is Eq. 7 as written.
  ``c_v`` / ``c_t`` are the plain means in every case.
* **Sequential draws** (``tolerance`` not None): a sample's draws come in rounds, ``min_draws``
  per (sigma, modality) first, then ``round_draws`` more per round (`MCSSettings.rounds`, the last
  cut to reach ``draws``). After each round the sample's r_v standard error (`mcs_stderr` over all
  its draws so far, the estimator's own formula) is compared with ``tolerance``: at most it, the
  sample stops; otherwise it takes the next round, up to ``draws``. So a sample takes between
  ``min_draws`` and ``draws`` draws (``MCSResult.draws``; ``MCSResult.perturbations`` = sigmas x 2 x
  draws), and its c_v, c_t, r_v and standard errors are those of its own draws. Each round draws
  its normals from the sample's generator in the order above (per round: for sigma, for modality,
  ``[round draws, ...]``), so a sample's noise, its rounds and its r_v depend on the settings,
  the seed and its sample id only, never on the other samples of the batch. A sample with
  non-finite scores stops and is refused as below. ``tolerance=None`` is one round of ``draws``,
  the fixed estimator, bit for bit as before.
* **Cache positions**: the prompt is prefilled once (full prompt, with explicit position ids) and the
  cache is cut to the first ``T-1`` positions; ``p_x`` is the prefill's distribution at the last
  prompt token, which is exactly the distribution the single-token pass yields on the unperturbed
  cut cache. The last prompt token itself is the query and is never perturbed (its K/V are computed
  fresh in the single-token pass), even when ``text_mask`` marks it. The modality masks are
  intersected with ``attention_mask`` (padding is never perturbed), so ``text_mask = ~vision_mask`` is
  an acceptable input.
* **Noise** comes from one ``torch.Generator`` per sample on the model's device, seeded with
  ``sample_seed(settings.seed, sample_id)`` (sample id defaults to its index in the batch). The noise
  of a sample therefore does not depend on the batch it is in, its padding, how its perturbations
  are split into passes (``max_copies_per_pass``), or ``batched``. Order of draws per sample: one
  standard normal ``z`` per (sigma, modality), in float32, of shape
  ``[draws, num_layers, 2, kv_heads, n_m, head_dim]`` (``z[n, l, 0]`` is draw ``n``'s K noise of
  layer ``l``, ``z[n, l, 1]`` its V noise; ``n_m`` = number of perturbed positions of modality ``m``,
  in increasing position order)::

      for sigma in sigmas: for m in ("vision", "text"): z = randn(draws, layers, 2, kv_heads, n_m, head_dim)

  On CPU this is the same sequence of numbers as the order used before (one ``[kv_heads, n_m,
  head_dim]`` draw per draw, layer, K then V) whenever ``kv_heads * n_m * head_dim`` is a multiple of
  16 (torch's CPU normal fill transforms its uniforms in blocks of 16), so for every head_dim that is a
  multiple of 16, as in all the supported models: results computed before keep their noise (and
  their r_v up to float32 summation order, ~1e-8 on the organisms). On CUDA the numbers may differ from
  the former order. The perturbed entry is ``(clean.to(w) + std * z.to(w)).to(cache dtype)`` with
  ``w`` = float32 (float64 for a float64 model) and ``std`` rounded to ``w``.
* **Variance-reduction options** (``MCSSettings`` fields, recorded by ``to_dict()``; measured by
  ``benchmarks/bench_mcs_retest.py``, see benchmarks/README.md). They change which standard normals a
  perturbation uses, never the order above, in which only the *fresh* (sigma, modality) draws consume
  the generator: with ``antithetic`` each draws ``[draws / 2, ...]`` normals, with
  ``common_sigmas`` only the first sigma's are drawn, with ``common_modalities`` only the vision
  ones, ``max(n_vision, n_text)`` positions wide (rules in this order, first match wins;
  ``z(s, m, n)`` = the per-layer K, V normals of draw ``n``):

  - ``antithetic``: draws come in pairs, ``z(s, m, 2k+1) = -z(s, m, 2k)`` (``draws`` must be even);
  - ``common_sigmas``: ``z(s, m, n) = z(0, m, n)`` for every later sigma;
  - ``common_modalities``: the fresh draw has ``max(n_vision, n_text)`` positions and each modality
    uses its first ``n_m``: ``z(s, text, n) = z(s, vision, n)`` on the shared leading positions;
  - ``ratio``: how r_v is formed from the scores (`mcs_ratio`): ``"sums"`` = C_V / (C_V + C_T)
    (Eq. 7 as written), ``"per_sigma"`` = mean over sigmas of C_V(s) / (C_V(s) + C_T(s)),
    ``"per_draw"`` = mean over sigmas and draws of score_V / (score_V + score_T). ``c_v`` and
    ``c_t`` are always the plain means.

  `mcs_stderr` accounts for the shared noise (antithetic pairs are one unit; shared sigmas or
  modalities contribute their covariances). All three noise options are off by default: none
  made two seeds agree better than plain draws at equal perturbations (``common_modalities`` tied
  with them; ``antithetic`` and ``common_sigmas`` did worse). Why: at these sigmas
  ``CE(p_x, p_z)`` stays very close to H(p_x) (KL / H ~ 1e-4 on the organisms during development),
  so the clean gradient is ~0 and a score is close to an even quadratic form ``z' A z / H`` in the
  noise. So ``-z`` repeats ``z``'s score (antithetic pairs are near duplicates), reusing ``z``
  across sigmas makes the levels nearly proportional (one level's information, not three), and
  the two modalities' forms live on disjoint positions (shared normals leave them nearly
  uncorrelated). The variance is that of ``z' A z`` for an ``A`` of low effective rank (one draw's
  score had a coefficient of variation of ~1.2-1.5), which only more draws reduce, or the
  per-sigma ratio, which gives the three levels equal weight instead of ~1 : 4 : 16.
* **Noise design** (``MCSSettings.noise_design``, `amps_eval.mcs.noise`): ``"gaussian"`` (default)
  uses the draws as the generator gives them; ``"orthogonal"`` makes the draws of each round of a
  (sample, sigma, modality) group mutually orthogonal (Gram-Schmidt in draw order of the flattened
  ``[layers, 2, kv_heads, n_m, head_dim]`` draws, in float64), each stretched back to the norm of
  the Gaussian draw it came from, so every draw is still exactly N(0, I) (`orthogonal_draws`
  explains why) and the generator advances exactly as with ``"gaussian"`` (no extra number drawn;
  the first draw of a round is unchanged). Rounds are orthogonalised separately (a sequential
  item's later rounds are not orthogonal to its earlier ones). It cannot be combined with
  ``antithetic`` or ``common_modalities``; with ``common_sigmas`` every sigma reuses the orthogonal
  draws. `mcs_stderr` treats the draws as independent, as before. Not the default: two seeds agree
  no better than with Gaussian draws (benchmarks/README.md, "Orthogonal MCS noise": Spearman and
  mean |r_v difference| within 0.001 of them, at about the same perturbations). Why: a round has a
  few draws (4, then 2, by default; at most ``draws``) in a space of ``layers x 2 x kv_heads x n_m x head_dim`` dimensions (thousands
  on the organisms, millions on a 7B model), where independent Gaussian draws are already
  orthogonal to ~1/sqrt(dim); and a score is close to ``(v' z)^2`` for about one direction ``v``
  (the low-rank form above), whose projections of orthogonal draws are as independent as those of
  Gaussian ones. Quasi-random (Sobol) draws were not implemented: the noise has far more
  dimensions than a Sobol sequence supports (torch's `SobolEngine`: 21201), and the same argument
  applies to any design that does not know ``v``.
* **Batched mode** replicates the cut cache once per perturbation (of all samples) along the batch
  dimension and runs ONE forward and ONE backward: the gradient of the summed losses w.r.t. copy
  ``p``'s cache is copy ``p``'s own gradient because copies never interact. The gradient is taken
  w.r.t. the perturbed entries only: per layer and K/V one autograd leaf ``[entries, kv_heads,
  head_dim]`` holds the perturbed entries of every copy of the pass and is scattered into the cache
  copies, and a copy's squared norm is a segment sum over its entries. Building the copies (noise,
  std, entries, copies) takes a few batched operations per pass and no host synchronisation: the
  positions and index tensors are computed once per call. ``max_copies_per_pass`` bounds the
  replication; its default ``None`` takes as many copies per pass as fit the memory budget
  (`copies_per_pass`: `CopyFootprint` estimates the bytes of one copy from the cache shapes, the
  budget is `memory_budget`: `CUDA_MEMORY_FRACTION` of a CUDA device's free memory,
  `HOST_MEMORY_BUDGET` elsewhere). How the copies are split never changes the noise, and the
  results only by float rounding of the batched kernels.
* **Degenerate samples**: a non-finite score, or ``C_V = C_T = 0`` (p_x one-hot to working
  precision, so that CE and every gradient underflow to exactly 0 and r_v is undefined), raises
  ``NonFiniteMCSError`` naming the sample ids; NaN is never returned. A CE below ``eps`` (a very
  peaked but not degenerate p_x) is guarded by ``max(L, eps)`` and gives finite scores.
* Only the perturbed K/V entries require grad; the model is put in eval mode with all parameters
  frozen for the call, and every module's training flag and every parameter's ``requires_grad`` are
  restored afterwards (try/finally). CE and the squared gradient norm are computed in float32.

Caveats for wrapper authors
---------------------------
* Left padding is required (``attention_mask[:, -1]`` must be 1 for every row).
* Qwen2.5-VL: positions are 3-D mrope from ``model.model.get_rope_index``, which in transformers
  5.x needs ``mm_token_type_ids`` (the Qwen2.5-VL processor returns it). Without it the model's own
  forward silently falls back to 1-D positions; here it is rebuilt from ``input_ids`` (image/video
  token ids) when absent. Positions are always passed explicitly, so the model's stateful
  ``rope_deltas`` is neither read nor written by ``compute_mcs``.
* LLaVA: positions are ``cumsum(attention_mask) - 1`` (as in ``generate``), so a left-padded sample
  gets the same positions as the same sample alone.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from amps_eval.mcs.copies import (  # noqa: F401  (re-exported for tests and benchmarks)
    _build_copies,
    _Copy,
    _CopyPlan,
    _grad_sq_per_copy,
    _run_copies,
    _Sample,
    modality_std,
)
from amps_eval.mcs.kv_cache import (
    Prefill,
    forward_last_token,
    frozen_eval,
    prefill,
    prefill_prompt,
    prompt_position_ids,
    uses_mrope,
)
from amps_eval.mcs.memory import (
    CUDA_MEMORY_FRACTION,
    HOST_MEMORY_BUDGET,
    CopyFootprint,
    copies_per_pass,
    memory_budget,
)
from amps_eval.mcs.seeding import noise_key, sample_seed
from amps_eval.mcs.settings import MCS_KEYS, MODALITIES, RATIOS, MCSSettings
from amps_eval.mcs.stats import (
    _estimator,
    _finite_or_none,
    cross_entropy,
    mcs_ratio,
    mcs_score,
    mcs_stderr,
    visual_ratio,
)


class NonFiniteMCSError(ValueError):
    """A sample's MCS came out non-finite (NaN/inf). ``sample_ids`` names the culprits."""

    def __init__(self, message: str, sample_ids: Sequence[str] = (), values: dict[str, Any] | None = None):
        super().__init__(message)
        self.sample_ids = list(sample_ids)
        self.values = values or {}


@dataclass
class MCSResult:
    """Per-sample MCS. Tensors are float64 on CPU, first dim = batch.

    c_v, c_t, r_v: [B] (r_v as ``settings["ratio"]`` says, see `mcs_ratio`). scores, ce: [B,
    len(sigmas), 2 (vision, text), draws] (the per-perturbation score ||grad||^2 / max(CE, eps) and
    the CE itself; with sequential settings ``draws`` is the most any sample took and a sample's
    later draws are NaN). ce_clean: [B], CE(p_x, p_x) = entropy of p_x (the floor of every CE).
    n_vision, n_text: perturbed positions per sample. c_v_stderr, c_t_stderr, r_v_stderr: [B] Monte
    Carlo standard errors (`mcs_stderr`; NaN with one draw). draws: [B] the draws per (sigma,
    modality) each sample took (all ``scores.shape[-1]`` unless sequential).
    """

    sample_ids: list[str]
    c_v: torch.Tensor
    c_t: torch.Tensor
    r_v: torch.Tensor
    scores: torch.Tensor
    ce: torch.Tensor
    ce_clean: torch.Tensor
    n_vision: list[int]
    n_text: list[int]
    settings: dict[str, Any] = field(default_factory=dict)
    c_v_stderr: torch.Tensor | None = None
    c_t_stderr: torch.Tensor | None = None
    r_v_stderr: torch.Tensor | None = None
    draws: list[int] | None = None

    def __post_init__(self) -> None:
        if self.r_v_stderr is None:
            self.c_v_stderr, self.c_t_stderr, self.r_v_stderr = mcs_stderr(self.scores, **_estimator(self.settings))
        if self.draws is None:
            self.draws = [int(self.scores.shape[-1])] * len(self.sample_ids)

    def __len__(self) -> int:
        return len(self.sample_ids)

    @property
    def perturbations(self) -> list[int]:
        """Perturbed passes per sample: sigmas x 2 modalities x its draws."""
        return [int(self.scores.shape[1]) * len(MODALITIES) * n for n in self.draws]

    def select(self, rows: Sequence[int]) -> MCSResult:
        """The samples at ``rows`` (in that order)."""
        index = torch.tensor(list(rows), dtype=torch.long)
        pick = lambda t: t.index_select(0, index)  # noqa: E731
        return MCSResult(
            sample_ids=[self.sample_ids[i] for i in rows], c_v=pick(self.c_v), c_t=pick(self.c_t),
            r_v=pick(self.r_v), scores=pick(self.scores), ce=pick(self.ce), ce_clean=pick(self.ce_clean),
            n_vision=[self.n_vision[i] for i in rows], n_text=[self.n_text[i] for i in rows],
            settings=dict(self.settings), c_v_stderr=pick(self.c_v_stderr), c_t_stderr=pick(self.c_t_stderr),
            r_v_stderr=pick(self.r_v_stderr), draws=[self.draws[i] for i in rows],
        )

    def to_records(self) -> list[dict[str, Any]]:
        """One JSON-serialisable dict per sample."""
        out = []
        for i, sid in enumerate(self.sample_ids):
            out.append(
                {
                    "sample_id": sid,
                    "c_v": float(self.c_v[i]),
                    "c_t": float(self.c_t[i]),
                    "r_v": float(self.r_v[i]),
                    "c_v_stderr": _finite_or_none(self.c_v_stderr[i]),
                    "c_t_stderr": _finite_or_none(self.c_t_stderr[i]),
                    "r_v_stderr": _finite_or_none(self.r_v_stderr[i]),
                    "perturbations": self.perturbations[i],
                    "ce_clean": float(self.ce_clean[i]),
                    "n_vision": self.n_vision[i],
                    "n_text": self.n_text[i],
                    "scores": self.scores[i].tolist(),
                    "ce": self.ce[i].tolist(),
                }
            )
        return out


# --------------------------------------------------------------------------------------------------
# main entry point
# --------------------------------------------------------------------------------------------------


def _validate(inputs: dict[str, Any], vision_mask: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    if "input_ids" not in inputs:
        raise ValueError("inputs must contain input_ids")
    input_ids = inputs["input_ids"]
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
    attention_mask = inputs.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError("attention_mask must have the shape of input_ids")
    if not bool((attention_mask[:, -1] != 0).all()):
        raise ValueError("MCS needs LEFT-padded inputs (attention_mask[:, -1] must be 1 for every row)")
    for name, mask in (("vision_mask", vision_mask), ("text_mask", text_mask)):
        if tuple(mask.shape) != tuple(input_ids.shape):
            raise ValueError(f"{name} must have shape {tuple(input_ids.shape)}, got {tuple(mask.shape)}")
    if input_ids.shape[1] < 2:
        raise ValueError("the prompt must have at least 2 tokens")
    return attention_mask


def compute_mcs(
    model: torch.nn.Module,
    inputs: dict[str, Any],
    vision_mask: torch.Tensor,
    text_mask: torch.Tensor,
    settings: MCSSettings | None = None,
    sample_ids: Sequence[str] | None = None,
    prefilled: Prefill | None = None,
) -> MCSResult:
    """MCS of every sample of a LEFT-padded batch (see the module docstring).

    inputs: a HF processor output (input_ids, attention_mask, pixel_values, [image_grid_thw], ...).
    vision_mask / text_mask: bool [B, T], the positions of each modality (intersected with the
    attention mask; the last prompt token is never perturbed). Must not overlap.
    prefilled: the clean prefill of exactly these inputs (`kv_cache.prefill_prompt`), when the
    caller already has it; None prefills here. The result is the same either way.
    """
    settings = settings or MCSSettings()
    attention_mask = _validate(inputs, vision_mask, text_mask)
    input_ids = inputs["input_ids"]
    bsz, seq = input_ids.shape
    if sample_ids is None:
        sample_ids = [str(i) for i in range(bsz)]
    sample_ids = [str(s) for s in sample_ids]
    if len(sample_ids) != bsz:
        raise ValueError(f"sample_ids has {len(sample_ids)} entries for a batch of {bsz}")

    vision_mask = vision_mask.to(device=input_ids.device, dtype=torch.bool)
    text_mask = text_mask.to(device=input_ids.device, dtype=torch.bool)
    if bool((vision_mask & text_mask).any()):
        raise ValueError("vision_mask and text_mask overlap")
    valid = attention_mask.bool().clone()
    valid[:, -1] = False  # the query token is not in the cut cache
    vis = (vision_mask & valid)[:, :-1]
    txt = (text_mask & valid)[:, :-1]

    with contextlib.ExitStack() as stack:
        if torch.is_inference_mode_enabled():
            stack.enter_context(torch.inference_mode(False))
        stack.enter_context(frozen_eval(model))

        if prefilled is None:
            prefilled = prefill_prompt(model, {**inputs, "attention_mask": attention_mask})
        elif tuple(prefilled.keys[0].shape[::2]) != (bsz, seq - 1):
            raise ValueError(f"prefilled cache has batch x tokens {tuple(prefilled.keys[0].shape[::2])}, "
                             f"expected {(bsz, seq - 1)} (the inputs' prompt without its last token)")
        logits_x, keys, values, position_ids = (prefilled.logits, prefilled.keys, prefilled.values,
                                                prefilled.position_ids)
        p_x = torch.softmax(logits_x, dim=-1)
        bad = [sample_ids[i] for i in range(bsz) if not bool(torch.isfinite(logits_x[i]).all())]
        if bad:
            raise NonFiniteMCSError(
                f"non-finite clean logits p_x for sample(s) {bad}", bad, {"clean_logits_finite": False}
            )
        ce_clean = cross_entropy(p_x, logits_x)

        device = keys[0].device
        samples: list[_Sample] = []
        for i in range(bsz):
            iv = vis[i].nonzero().flatten().to(device)
            it = txt[i].nonzero().flatten().to(device)
            for name, idx in (("vision", iv), ("text", it)):
                if idx.numel() == 0:
                    raise ValueError(f"sample {sample_ids[i]!r} has no {name} positions to perturb")
            gen = torch.Generator(device=device)
            gen.manual_seed(sample_seed(settings.seed, sample_ids[i]))
            samples.append(_Sample(row=i, sample_id=sample_ids[i], positions=(iv, it), generator=gen))

        last_ids = input_ids[:, -1:].to(device)
        am = attention_mask.to(device)
        pos = position_ids.to(device)
        estimator = _estimator(settings.to_dict())
        rounds: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(bsz)]  # per sample: (grad_sq, ce)
        active = list(range(bsz))
        for size in settings.rounds():
            g, c = _score_round(model, [samples[i] for i in active], size, keys, values, settings, p_x, last_ids, pos,
                                am)
            for j, i in enumerate(active):
                rounds[i].append((g[j], c[j]))
            if not settings.sequential:
                break
            active = [i for i in active if not _precise_enough(rounds[i], settings, estimator)]
            if not active:
                break

    draws = [sum(int(g.shape[-1]) for g, _ in parts) for parts in rounds]
    n_s, n_d = len(settings.sigmas), max(draws)
    grad_sq = torch.full((bsz, n_s, 2, n_d), math.nan, dtype=torch.float64)
    ce = torch.full((bsz, n_s, 2, n_d), math.nan, dtype=torch.float64)
    for i, parts in enumerate(rounds):
        grad_sq[i, ..., : draws[i]] = torch.cat([g for g, _ in parts], dim=-1)
        ce[i, ..., : draws[i]] = torch.cat([c for _, c in parts], dim=-1)
    scores = mcs_score(grad_sq, ce, settings.eps)
    if all(n == n_d for n in draws):
        c_v = scores[:, :, 0, :].mean(dim=(1, 2))
        c_t = scores[:, :, 1, :].mean(dim=(1, 2))
        r_v = mcs_ratio(scores, settings.ratio)
        stderrs = mcs_stderr(scores, **estimator)
    else:  # each sample over its own draws
        own = [scores[i : i + 1, ..., : draws[i]] for i in range(bsz)]
        c_v = torch.cat([x[:, :, 0, :].mean(dim=(1, 2)) for x in own])
        c_t = torch.cat([x[:, :, 1, :].mean(dim=(1, 2)) for x in own])
        r_v = torch.cat([mcs_ratio(x, settings.ratio) for x in own])
        per_sample = [mcs_stderr(x, **estimator) for x in own]
        stderrs = tuple(torch.cat([se[k] for se in per_sample]) for k in range(3))

    bad_rows = [
        i
        for i in range(bsz)
        if not (
            bool(torch.isfinite(scores[i, ..., : draws[i]]).all())
            and bool(torch.isfinite(ce[i, ..., : draws[i]]).all())
            and math.isfinite(float(r_v[i]))
        )
    ]
    if bad_rows:
        vals = {
            sample_ids[i]: {
                "c_v": float(c_v[i]),
                "c_t": float(c_t[i]),
                "r_v": float(r_v[i]),
                "ce": ce[i, ..., : draws[i]].flatten().tolist(),
                "grad_sq": grad_sq[i, ..., : draws[i]].flatten().tolist(),
            }
            for i in bad_rows
        }
        ids = [sample_ids[i] for i in bad_rows]
        hint = ""
        if any(float(c_v[i]) == 0.0 and float(c_t[i]) == 0.0 for i in bad_rows):
            hint = (
                " (C_V = C_T = 0: no perturbation moved p_z at working precision, i.e. p_x is one-hot;"
                " r_v is undefined)"
            )
        raise NonFiniteMCSError(f"non-finite MCS for sample(s) {ids}{hint}: {vals}", ids, vals)

    return MCSResult(
        sample_ids=list(sample_ids),
        c_v=c_v,
        c_t=c_t,
        r_v=r_v,
        scores=scores,
        ce=ce,
        ce_clean=ce_clean.double().cpu(),
        n_vision=[int(s.positions[0].numel()) for s in samples],
        n_text=[int(s.positions[1].numel()) for s in samples],
        settings=settings.to_dict(),
        c_v_stderr=stderrs[0],
        c_t_stderr=stderrs[1],
        r_v_stderr=stderrs[2],
        draws=draws,
    )


def _score_round(model, samples: list[_Sample], draws: int, keys, values, settings: MCSSettings, p_x, last_ids, pos,
                 am) -> tuple[torch.Tensor, torch.Tensor]:
    """One round: ``draws`` more draws per (sigma, modality) of each of ``samples`` (their
    generators continue where the last round stopped). Returns (grad_sq, ce) [len(samples),
    sigmas, 2, draws] float64 on the CPU."""
    n_s = len(settings.sigmas)
    copies = [_Copy(smp, s, m, n) for smp in samples for s in range(n_s) for m in range(2) for n in range(draws)]
    plan = _CopyPlan(copies, keys, values, settings, draws)
    if not settings.batched:
        chunk = 1
    elif settings.max_copies_per_pass is not None:
        chunk = settings.max_copies_per_pass
    else:
        chunk = copies_per_pass(plan.footprint(model, p_x.shape[-1]), memory_budget(keys[0].device), len(copies))
    grad_sq_parts, ce_parts = [], []
    for start in range(0, len(copies), chunk):
        g, c = _run_copies(model, plan, start, min(start + chunk, len(copies)), p_x, last_ids, pos, am)
        grad_sq_parts.append(g)
        ce_parts.append(c)
    del plan
    shape = (len(samples), n_s, 2, draws)
    return torch.cat(grad_sq_parts).double().cpu().view(shape), torch.cat(ce_parts).double().cpu().view(shape)


def _precise_enough(parts: list[tuple[torch.Tensor, torch.Tensor]], settings: MCSSettings,
                    estimator: dict[str, Any]) -> bool:
    """The sequential stopping rule for one sample after a round: its r_v standard error
    (`mcs_stderr` over all its draws so far) is at most ``settings.tolerance``. A sample whose
    scores are not finite stops too (it is refused after the last round)."""
    grad_sq = torch.cat([g for g, _ in parts], dim=-1)[None]
    ce = torch.cat([c for _, c in parts], dim=-1)[None]
    scores = mcs_score(grad_sq, ce, settings.eps)
    if not bool(torch.isfinite(scores).all()):
        return True
    se = float(mcs_stderr(scores, **estimator)[2][0])
    return math.isfinite(se) and se <= settings.tolerance


__all__ = [
    "MCS_KEYS",
    "CUDA_MEMORY_FRACTION",
    "CopyFootprint",
    "HOST_MEMORY_BUDGET",
    "MCSResult",
    "MCSSettings",
    "MODALITIES",
    "NonFiniteMCSError",
    "Prefill",
    "RATIOS",
    "compute_mcs",
    "copies_per_pass",
    "cross_entropy",
    "forward_last_token",
    "frozen_eval",
    "mcs_ratio",
    "mcs_score",
    "mcs_stderr",
    "memory_budget",
    "modality_std",
    "noise_key",
    "prefill",
    "prefill_prompt",
    "prompt_position_ids",
    "sample_seed",
    "uses_mrope",
    "visual_ratio",
]
