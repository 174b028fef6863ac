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
* **Draws and ratio** default ``draws=16`` and ``ratio="per_sigma"``: 3 sigmas x 2 modalities x 16
  draws = 96 perturbations per sample, and r_v = mean over sigmas of C_V(s) / (C_V(s) + C_T(s)).
  Chosen with ``benchmarks/bench_mcs_retest.py`` (benchmarks/README.md, "MCS reliability"). With the
  former ``draws=2`` and the pooled ratio ``C_V / (C_V + C_T)``, two ``--mcs-seed`` runs over the 128
  demo items agreed only to Spearman 0.878-0.917 and mean |r_v difference| 0.090-0.125. With these
  defaults they agree to Spearman >= 0.986 and mean |difference| <= 0.037 on both shipped
  organisms (two seed pairs each), inside the target of 0.95 and 0.05. A score grows about as
  sigma^2, so the pooled ratio is dominated by the largest sigma. The per-sigma mean weights the
  three levels equally and agreed better at every draw count. It has the same limit as the pooled
  ratio when both modalities scale alike with sigma. ``ratio="sums"`` is Eq. 7 as written.
  ``c_v`` / ``c_t`` are the plain means in every case.
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
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from amps_eval.vocabulary import TARGETS
from amps_eval.mcs.kv_cache import (
    Prefill,
    _last_position_ids,
    _work_dtype,
    forward_last_token,
    frozen_eval,
    prefill,
    prefill_prompt,
    prompt_position_ids,
    uses_mrope,
)

from amps_eval.mcs.settings import MODALITIES, RATIOS, MCSSettings  # re-exported


class NonFiniteMCSError(ValueError):
    """A sample's MCS came out non-finite (NaN/inf). ``sample_ids`` names the culprits."""

    def __init__(self, message: str, sample_ids: Sequence[str] = (), values: dict[str, Any] | None = None):
        super().__init__(message)
        self.sample_ids = list(sample_ids)
        self.values = values or {}


# --------------------------------------------------------------------------------------------------
# settings and result
# --------------------------------------------------------------------------------------------------


@dataclass
class MCSResult:
    """Per-sample MCS. Tensors are float64 on CPU, first dim = batch.

    c_v, c_t, r_v: [B] (r_v as ``settings["ratio"]`` says, see `mcs_ratio`). scores, ce: [B, len(sigmas), 2 (vision, text), draws] (the per-perturbation
    score ||grad||^2 / max(CE, eps) and the CE itself). ce_clean: [B], CE(p_x, p_x) = entropy of p_x
    (the floor of every CE). n_vision, n_text: perturbed positions per sample. c_v_stderr,
    c_t_stderr, r_v_stderr: [B] Monte Carlo standard errors (`mcs_stderr`; NaN with one draw).
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

    def __post_init__(self) -> None:
        if self.r_v_stderr is None:
            self.c_v_stderr, self.c_t_stderr, self.r_v_stderr = mcs_stderr(self.scores, **_estimator(self.settings))

    def __len__(self) -> int:
        return len(self.sample_ids)

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
                    "ce_clean": float(self.ce_clean[i]),
                    "n_vision": self.n_vision[i],
                    "n_text": self.n_text[i],
                    "scores": self.scores[i].tolist(),
                    "ce": self.ce[i].tolist(),
                }
            )
        return out


# --------------------------------------------------------------------------------------------------
# pure math
# --------------------------------------------------------------------------------------------------


def cross_entropy(p_x: torch.Tensor, logits_z: torch.Tensor) -> torch.Tensor:
    """CE(p_x, p_z) = -sum_v p_x[v] log softmax(logits_z)[v] over the last dim, in float32
    (float64 for a float64 model).

    ``p_x`` is a probability vector (treated as a constant); entries with p_x == 0 contribute 0.
    """
    work = _work_dtype(logits_z.dtype)
    log_pz = torch.log_softmax(logits_z.to(work), dim=-1)
    p_x = p_x.to(work)
    terms = torch.where(p_x > 0, p_x * log_pz, torch.zeros((), dtype=log_pz.dtype, device=log_pz.device))
    return -terms.sum(dim=-1)


def mcs_score(grad_sq_norm: torch.Tensor, ce: torch.Tensor, eps: float) -> torch.Tensor:
    """Eq. 7 per perturbation: ||grad||^2 / max(L, eps) (elementwise, float64)."""
    return grad_sq_norm.double() / ce.double().clamp_min(eps)


def visual_ratio(c_v: torch.Tensor, c_t: torch.Tensor) -> torch.Tensor:
    """r_v = C_V / (C_V + C_T) (elementwise; NaN where both are 0, callers check)."""
    c_v = c_v.double()
    c_t = c_t.double()
    return c_v / (c_v + c_t)


_ESTIMATOR_KEYS = ("ratio", "antithetic", "common_sigmas", "common_modalities")


def _estimator(settings: dict[str, Any]) -> dict[str, Any]:
    """The `mcs_stderr` keywords recorded in a settings dict (absent keys: the plain estimator)."""
    return {k: settings[k] for k in _ESTIMATOR_KEYS if k in settings}


def mcs_ratio(scores: torch.Tensor, ratio: str = "sums") -> torch.Tensor:
    """r_v [B] from scores [B, S, 2, N] (float64; NaN where a denominator is 0, callers check).

    "sums": C_V / (C_V + C_T) with C_m the mean over sigmas and draws (the paper's Eq. 7);
    "per_sigma": mean over sigmas s of C_V(s) / (C_V(s) + C_T(s)), C_m(s) the mean over draws;
    "per_draw": mean over sigmas and draws of score_V / (score_V + score_T) (draw n of the vision
    perturbation paired with draw n of the text one).
    """
    scores = scores.double()
    if ratio == "sums":
        c = scores.mean(dim=(1, 3))
        return visual_ratio(c[:, 0], c[:, 1])
    if ratio == "per_sigma":
        c = scores.mean(dim=3)  # [B, S, 2]
        return visual_ratio(c[..., 0], c[..., 1]).mean(dim=1)
    if ratio == "per_draw":
        return visual_ratio(scores[:, :, 0], scores[:, :, 1]).mean(dim=(1, 2))
    raise ValueError(f"ratio must be one of {RATIOS}, got {ratio!r}")


def _se_of_weighted_mean(x: torch.Tensor, w: torch.Tensor, dependent: torch.Tensor) -> torch.Tensor:
    """Standard error of sum_k w_k mean_u x[k, u] over U independent units, [B]; x [B, K, U],
    w [B, K]; ``dependent`` [K, K] bool says which blocks share noise (only their sample
    covariances, ddof 1, enter; the others are independent by construction)."""
    units = x.shape[-1]
    xc = x - x.mean(dim=-1, keepdim=True)
    cov = xc @ xc.transpose(1, 2) / (units - 1)  # [B, K, K]
    cov = cov * dependent.to(cov.dtype)
    var = torch.einsum("bk,bkl,bl->b", w, cov, w) / units
    return var.clamp_min(0).sqrt()


def mcs_stderr(
    scores: torch.Tensor,
    ratio: str = "sums",
    antithetic: bool = False,
    common_sigmas: bool = False,
    common_modalities: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Monte Carlo standard errors (C_V, C_T, r_v), each [B], from scores [B, S, 2, N].

    The independent units are the draws (the antithetic pairs (2k, 2k+1) with ``antithetic``, whose
    two scores are averaged first). C_m is the mean over the S noise levels of the mean over the
    units, so with independent levels Var(C_m) = sum_s var_s / U / S^2 (var_s the sample variance,
    ddof 1, of the units at level s). r_v is linearised (delta method): r_v ~ sum_k w_k mean_u x_ku
    over blocks k = (level, modality) (for "per_draw": k = level and x the per-draw ratio), and
    Var(r_v) = sum_kl w_k w_l cov(x_k, x_l) / U, where only blocks that share noise contribute a
    covariance: the same block; the same modality at two levels with ``common_sigmas``; the two
    modalities at one level with ``common_modalities``; both with both. For the plain estimator this
    is se(r_v)^2 = ((C_T se_V)^2 + (C_V se_T)^2) / (C_V + C_T)^4. NaN with fewer than 2 units.
    """
    scores = scores.double()
    bsz, n_sigmas, _, draws = scores.shape
    units = draws // 2 if antithetic else draws
    if antithetic and draws % 2:
        raise ValueError(f"antithetic scores need an even number of draws, got {draws}")
    if ratio not in RATIOS:
        raise ValueError(f"ratio must be one of {RATIOS}, got {ratio!r}")
    if units < 2:
        nan = torch.full((bsz,), math.nan, dtype=torch.float64)
        return nan, nan.clone(), nan.clone()

    def per_unit(x: torch.Tensor) -> torch.Tensor:  # [..., N] -> [..., U]
        return x.reshape(*x.shape[:-1], units, 2).mean(dim=-1) if antithetic else x

    eye_s = torch.eye(n_sigmas, dtype=torch.bool)
    sig_dep = torch.ones_like(eye_s) if common_sigmas else eye_s
    se_c = []
    for m in (0, 1):
        w = torch.full((bsz, n_sigmas), 1.0 / n_sigmas, dtype=torch.float64)
        se_c.append(_se_of_weighted_mean(per_unit(scores[:, :, m]), w, sig_dep))
    if ratio == "per_draw":
        x = per_unit(visual_ratio(scores[:, :, 0], scores[:, :, 1]))  # [B, S, U]
        w = torch.full((bsz, n_sigmas), 1.0 / n_sigmas, dtype=torch.float64)
        return se_c[0], se_c[1], _se_of_weighted_mean(x, w, sig_dep)
    mod_dep = torch.ones(2, 2, dtype=torch.bool) if common_modalities else torch.eye(2, dtype=torch.bool)
    dependent = (sig_dep[:, None, :, None] & mod_dep[None, :, None, :]).reshape(2 * n_sigmas, 2 * n_sigmas)
    if ratio == "sums":
        c = scores.mean(dim=(1, 3))[:, None, :].expand(bsz, n_sigmas, 2)  # [B, S, 2], the same at every level
    else:  # per_sigma
        c = scores.mean(dim=3)  # [B, S, 2]
    total = c.sum(dim=-1)
    w = torch.stack((c[..., 1], -c[..., 0]), dim=-1) / total[..., None] ** 2 / n_sigmas  # [B, S, 2]
    x = per_unit(scores)  # [B, S, 2, U]
    se_r = _se_of_weighted_mean(x.reshape(bsz, 2 * n_sigmas, units), w.reshape(bsz, 2 * n_sigmas), dependent)
    return se_c[0], se_c[1], se_r


def _finite_or_none(value: torch.Tensor) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


def noise_key(mc2_id: Any, prompt: str = "none") -> str:
    """The sample id that seeds an MC2 item's MCS noise: a function of the item and the prompt
    variant only, so that `fit` (which computes the anchors) and `mean_mcs` at inference give the
    same r_v for the same prompt, in any batch."""
    return f"mc2_id={mc2_id}/prompt={prompt}"


def sample_seed(seed: int, sample_id: str) -> int:
    """Deterministic 63-bit generator seed for one sample (independent of batch and process)."""
    digest = hashlib.sha256(f"amps-mcs:{int(seed)}:{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# --------------------------------------------------------------------------------------------------
# memory of one batched pass
# --------------------------------------------------------------------------------------------------

HOST_MEMORY_BUDGET = 4 * 2**30
"""Bytes that the perturbed copies of one pass may take on a device other than CUDA, when
``max_copies_per_pass`` is None (`copies_per_pass`)."""
CUDA_MEMORY_FRACTION = 0.5
"""Share of a CUDA device's free memory (``torch.cuda.mem_get_info`` plus what torch's allocator
holds unused) that the perturbed copies of one pass may take, when ``max_copies_per_pass`` is None."""


@dataclass(frozen=True)
class CopyFootprint:
    """The sizes that set the memory of one batched MCS pass (`bytes_per_copy`, `fixed_bytes`).

    layers, kv_heads, head_dim: the cache's; tokens: the cut cache's length (prompt - 1);
    entries: the most positions one copy perturbs; group_width, draws: the positions and draws of
    the widest noise group; cache_bytes / work_bytes: element sizes of the cache dtype and of the
    work dtype; query_heads: attention heads (> kv_heads for grouped-query attention); vocab,
    hidden, intermediate: the language model's sizes (hidden / intermediate 0 when unknown).
    """

    layers: int
    kv_heads: int
    head_dim: int
    tokens: int
    entries: int
    group_width: int
    draws: int
    cache_bytes: int
    work_bytes: int
    query_heads: int
    vocab: int
    hidden: int = 0
    intermediate: int = 0

    def bytes_per_copy(self) -> int:
        """Estimated bytes one perturbed copy adds to a pass: its cache copy; inside the pass, the
        copy concatenated with the query token's K/V and, for grouped-query attention, repeated to
        the query heads (both kept for the backward), plus one layer's gradient of those; its
        perturbed entries (leaves, their gradients, the gathered clean entries and the stacked
        gradients in the cache dtype, the noise and the squared gradients in the work dtype); the
        one-token activations (about 12 hidden + 4 intermediate vectors per layer) and 4 vectors of
        vocabulary size (logits, log-softmax, their gradients)."""
        per_position = self.layers * 2 * self.kv_heads * self.head_dim  # K/V elements, all layers
        repeat = self.query_heads // self.kv_heads if self.query_heads > self.kv_heads else 0
        cache = per_position * self.tokens * self.cache_bytes
        in_pass = per_position * (self.tokens + 1) * self.cache_bytes * (1 + repeat + max(repeat, 1) / self.layers)
        entries = per_position * self.entries * (4 * self.cache_bytes + 2 * self.work_bytes)
        activations = (self.layers * (12 * self.hidden + 4 * self.intermediate) + 4 * self.vocab) * self.work_bytes
        return int(cache + in_pass + entries + activations)

    def fixed_bytes(self) -> int:
        """Bytes a pass holds whatever its size: up to two noise groups (float32) drawn ahead."""
        return 2 * self.draws * self.layers * 2 * self.kv_heads * self.group_width * self.head_dim * 4


def copies_per_pass(footprint: CopyFootprint, budget_bytes: int, total: int) -> int:
    """The most perturbed copies (at least 1, at most ``total``) whose `CopyFootprint` fits
    ``budget_bytes``."""
    room = budget_bytes - footprint.fixed_bytes()
    return max(1, min(total, room // max(footprint.bytes_per_copy(), 1)))


def memory_budget(device: torch.device) -> int:
    """Bytes the perturbed copies of one pass may take on ``device``: `CUDA_MEMORY_FRACTION` of the
    free memory of a CUDA device, `HOST_MEMORY_BUDGET` elsewhere."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(CUDA_MEMORY_FRACTION * free)
    return HOST_MEMORY_BUDGET


def _language_sizes(model: torch.nn.Module) -> dict[str, int]:
    """The language model's num_attention_heads, hidden_size and intermediate_size from its
    config (the keys it lacks are left out)."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    sizes = {}
    for name in ("num_attention_heads", "hidden_size", "intermediate_size"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            sizes[name] = value
    return sizes


# --------------------------------------------------------------------------------------------------
# perturbation plan and noise
# --------------------------------------------------------------------------------------------------


@dataclass
class _Sample:
    row: int
    sample_id: str
    positions: tuple[torch.Tensor, torch.Tensor]  # (vision idx, text idx) into the cut cache, increasing
    generator: torch.Generator


@dataclass
class _Copy:
    sample: _Sample
    s: int
    m: int
    n: int


def modality_std(layers: Sequence[torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
    """Population std of each of ``layers`` (cache tensors [B, kv_heads, T, head_dim]) over the heads,
    the positions of ``masks`` (bool [B, M, T]) and the head dims: [len(layers), B, M] float64.

    Two passes (mean, then mean squared deviation) in float64, as torch.std accumulates a float32
    tensor on CPU; positions outside the mask never enter (not even as NaN). A row/mask with no
    position gives NaN."""
    heads, dim = layers[0].shape[1], layers[0].shape[3]
    mask = masks[:, :, None, :, None]  # [B, M, 1, T, 1]
    count = masks.sum(dim=-1).to(torch.float64) * (heads * dim)
    zero = torch.zeros((), dtype=torch.float64, device=masks.device)
    out = []
    for x in layers:
        x = x.to(torch.float64)[:, None]  # [B, 1, H, T, D]
        mean = torch.where(mask, x, zero).sum(dim=(2, 3, 4)) / count  # [B, M]
        dev = torch.where(mask, x - mean[:, :, None, None, None], zero)
        out.append(dev.square_().sum(dim=(2, 3, 4)) / count)
    return torch.stack(out).sqrt_()


@dataclass
class _Built:
    """The perturbed cache copies of one pass: per layer keys / values [P, kv_heads, T-1, head_dim],
    the autograd leaves (the perturbed entries, [E, kv_heads, head_dim] per layer and K/V, in the
    order layer 0 K, layer 0 V, layer 1 K, ...), and for each entry its copy in the pass and its
    slot (index among that copy's perturbed positions)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    leaves: list[torch.Tensor]
    entry_copy: torch.Tensor
    entry_slot: torch.Tensor


class _CopyPlan:
    """What the perturbed copies of one call share, computed once (host synchronisation is
    allowed here, never in `build`): the copies in order; their perturbed entries (entry ``e`` is
    position ``entry_pos[e]`` of batch row ``entry_row[e]``; copy ``p`` owns entries
    ``offsets[p]:offsets[p + 1]``, its modality's positions in increasing order); the clean K/V
    stacked as [layers, 2, B, T-1, kv_heads, head_dim]; the noise std of every (layer, K/V, copy)
    in the work dtype; and the noise groups drawn and not yet used up."""

    def __init__(self, copies: Sequence[_Copy], keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor],
                 settings: MCSSettings):
        device = keys[0].device
        self.copies = list(copies)
        self.keys, self.values, self.settings = list(keys), list(values), settings
        self.work = _work_dtype(keys[0].dtype)
        self.counts = [int(c.sample.positions[c.m].numel()) for c in self.copies]
        self.offsets = [0]
        for n in self.counts:
            self.offsets.append(self.offsets[-1] + n)
        self.n_slots = max(self.counts)
        counts = torch.tensor(self.counts)
        self.copy_row = torch.tensor([c.sample.row for c in self.copies], device=device)
        self.entry_copy = torch.repeat_interleave(torch.arange(len(self.copies)), counts).to(device)
        starts = torch.repeat_interleave(torch.tensor(self.offsets[:-1]), counts)
        self.entry_slot = (torch.arange(self.offsets[-1]) - starts).to(device)
        self.entry_row = self.copy_row.index_select(0, self.entry_copy)
        self.entry_pos = torch.cat([c.sample.positions[c.m].to(device) for c in self.copies])
        self.clean = torch.stack([torch.stack((k, v)) for k, v in zip(keys, values)]).transpose(3, 4)
        n_layers, n_copies = len(self.keys), len(self.copies)
        sigma = torch.tensor([settings.sigmas[c.s] for c in self.copies], dtype=torch.float64, device=device)
        if settings.relative:
            bsz, _kv, tokens, _dim = keys[0].shape
            masks = torch.zeros(bsz, len(MODALITIES), tokens, dtype=torch.bool, device=device)
            for smp in {id(c.sample): c.sample for c in self.copies}.values():
                for m, idx in enumerate(smp.positions):
                    masks[smp.row, m, idx.to(device)] = True
            layers = [t for pair in zip(keys, values) for t in pair]
            # rounded to the work dtype, as the std of the work-dtype entries
            std = modality_std(layers, masks).to(self.work).to(torch.float64).view(n_layers, 2, bsz, len(MODALITIES))
            copy_m = torch.tensor([c.m for c in self.copies], device=device)
            self.scale = (sigma * std[:, :, self.copy_row, copy_m]).to(self.work)  # [L, 2, P]
        else:
            self.scale = sigma.to(self.work).expand(n_layers, 2, n_copies)
        self.groups: dict[tuple[int, int, int], torch.Tensor] = {}
        self.uses: dict[tuple[int, int, int], int] = {}
        for c in self.copies:
            self.uses[self._source(c)] = self.uses.get(self._source(c), 0) + 1

    def _source(self, c: _Copy) -> tuple[int, int, int]:
        """The noise group whose normals copy ``c`` uses: (row, sigma index, modality index) of the
        fresh draw (the module docstring's reuse rules)."""
        st = self.settings
        return c.sample.row, 0 if st.common_sigmas else c.s, 0 if st.common_modalities else c.m

    def _group(self, c: _Copy) -> torch.Tensor:
        """The standard normals of copy ``c``'s noise group, [draws, layers, 2, kv_heads, width,
        head_dim] float32, drawn from the sample's generator the first time it is needed."""
        key = self._source(c)
        if key not in self.groups:
            st, smp = self.settings, c.sample
            if st.common_modalities:
                width = max(int(smp.positions[0].numel()), int(smp.positions[1].numel()))
            else:
                width = int(smp.positions[key[2]].numel())
            n_layers, _, _, _, kv, dim = self.clean.shape
            fresh = st.draws // 2 if st.antithetic else st.draws
            z = torch.randn((fresh, n_layers, 2, kv, width, dim), generator=smp.generator, dtype=torch.float32,
                            device=self.clean.device)
            if st.antithetic:  # draw 2k + 1 is -(draw 2k)
                z = torch.stack((z, -z), dim=1).flatten(0, 1)
            self.groups[key] = z
        return self.groups[key]

    def _release(self, c: _Copy, used: int) -> None:
        key = self._source(c)
        self.uses[key] -= used
        if self.uses[key] == 0:
            del self.groups[key]

    def _run_end(self, p: int, stop: int) -> int:
        """The end of the run of copies from ``p`` (before ``stop``) with consecutive draws of one
        (sample, sigma, modality)."""
        c, q = self.copies[p], p + 1
        while q < stop:
            d = self.copies[q]
            if d.sample is not c.sample or (d.s, d.m, d.n) != (c.s, c.m, c.n + q - p):
                break
            q += 1
        return q

    def build(self, start: int, stop: int) -> _Built:
        """The perturbed cache copies of ``copies[start:stop]`` (no host synchronisation)."""
        e0, e1 = self.offsets[start], self.offsets[stop]
        n_layers, _, _, _, kv, dim = self.clean.shape
        z = torch.empty((n_layers, 2, e1 - e0, kv, dim), dtype=self.work, device=self.clean.device)
        p = start
        while p < stop:  # one run of consecutive draws of one (sample, sigma, modality) at a time
            c, q = self.copies[p], self._run_end(p, stop)
            n_m = self.counts[p]
            src = self._group(c)[c.n : c.n + q - p, :, :, :, :n_m].permute(1, 2, 0, 4, 3, 5)
            z[:, :, self.offsets[p] - e0 : self.offsets[q] - e0].unflatten(2, (q - p, n_m)).copy_(src)
            self._release(c, q - p)
            p = q
        copy_ids = self.entry_copy[e0:e1]
        z.mul_(self.scale.index_select(2, copy_ids)[..., None, None])
        z.add_(self.clean[:, :, self.entry_row[e0:e1], self.entry_pos[e0:e1]])  # = clean + std * z
        leaves = list(z.to(self.keys[0].dtype).flatten(0, 1).unbind(0))
        for leaf in leaves:
            leaf.requires_grad_(True)
        rows, local, pos = self.copy_row[start:stop], copy_ids - start, self.entry_pos[e0:e1]
        new_k, new_v = [], []
        with torch.enable_grad():  # the scatter of the leaves must be recorded, even for a no_grad caller
            for layer, (k, v) in enumerate(zip(self.keys, self.values)):
                for kind, (clean, out) in enumerate(((k, new_k), (v, new_v))):
                    copy = clean.index_select(0, rows)
                    copy[local, :, pos, :] = leaves[2 * layer + kind]
                    out.append(copy)
        return _Built(new_k, new_v, leaves, local, self.entry_slot[e0:e1])

    def footprint(self, model: torch.nn.Module, vocab: int) -> CopyFootprint:
        n_layers, _, _, tokens, kv, dim = self.clean.shape
        widths = [max(int(c.sample.positions[0].numel()), int(c.sample.positions[1].numel())) for c in self.copies]
        sizes = _language_sizes(model)
        return CopyFootprint(
            layers=n_layers, kv_heads=kv, head_dim=dim, tokens=tokens, entries=self.n_slots, group_width=max(widths),
            draws=self.settings.draws, cache_bytes=self.keys[0].element_size(),
            work_bytes=torch.empty((), dtype=self.work).element_size(),
            query_heads=sizes.get("num_attention_heads", kv), vocab=vocab, hidden=sizes.get("hidden_size", 0),
            intermediate=sizes.get("intermediate_size", 0),
        )


def _build_copies(
    copies: Sequence[_Copy],
    keys: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    settings: MCSSettings,
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """All of ``copies`` in one pass, as `compute_mcs` builds them: per layer perturbed keys and
    values [P, kv_heads, T-1, head_dim] (their perturbed entries are the autograd leaves), plus the
    boolean mask [P, T-1] of each copy's perturbed positions (to look at the noise)."""
    plan = _CopyPlan(copies, keys, values, settings)
    built = plan.build(0, len(plan.copies))
    mask = torch.zeros(len(plan.copies), keys[0].shape[2], dtype=torch.bool, device=keys[0].device)
    mask[built.entry_copy, plan.entry_pos] = True
    return built.keys, built.values, mask


def _grad_sq_per_copy(grads: Sequence[torch.Tensor], built: _Built, n_copies: int, n_slots: int) -> torch.Tensor:
    """Squared norm of each copy's gradient from the leaves' gradients (per layer and K/V
    [E, kv_heads, head_dim]): per entry in the work dtype, then a segment sum over each copy's
    entries (written to [copies, slots] and summed: deterministic, unlike an atomic index_add)."""
    sq = torch.stack(list(grads)).to(_work_dtype(grads[0].dtype))
    per_entry = sq.square_().sum(dim=(0, 2, 3))
    slots = per_entry.new_zeros((n_copies, n_slots))
    slots[built.entry_copy, built.entry_slot] = per_entry
    return slots.sum(dim=1)


def _run_copies(
    model: torch.nn.Module,
    plan: _CopyPlan,
    start: int,
    stop: int,
    p_x: torch.Tensor,
    last_ids: torch.Tensor,
    position_ids: torch.Tensor,
    attention_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward + one backward over ``plan.copies[start:stop]``. Returns (grad_sq_norm [P], ce [P])
    in the work dtype."""
    built = plan.build(start, stop)
    rows = plan.copy_row[start:stop]
    with torch.enable_grad():
        logits = forward_last_token(
            model,
            last_ids.index_select(0, rows),
            _last_position_ids(position_ids, rows),
            attention_mask.index_select(0, rows),
            built.keys,
            built.values,
        )
        ce = cross_entropy(p_x.index_select(0, rows), logits)
        grads = torch.autograd.grad(ce.sum(), built.leaves)
    grad_sq = _grad_sq_per_copy(grads, built, stop - start, plan.n_slots)
    return grad_sq.detach(), ce.detach()


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

        n_s, n_d = len(settings.sigmas), settings.draws
        copies = [
            _Copy(smp, s, m, n) for smp in samples for s in range(n_s) for m in range(2) for n in range(n_d)
        ]
        plan = _CopyPlan(copies, keys, values, settings)
        if not settings.batched:
            chunk = 1
        elif settings.max_copies_per_pass is not None:
            chunk = settings.max_copies_per_pass
        else:
            chunk = copies_per_pass(plan.footprint(model, p_x.shape[-1]), memory_budget(device), len(copies))
        last_ids = input_ids[:, -1:].to(device)
        am = attention_mask.to(device)
        pos = position_ids.to(device)
        grad_sq_parts, ce_parts = [], []
        for start in range(0, len(copies), chunk):
            g, c = _run_copies(model, plan, start, min(start + chunk, len(copies)), p_x, last_ids, pos, am)
            grad_sq_parts.append(g)
            ce_parts.append(c)
        del plan

    grad_sq = torch.cat(grad_sq_parts).double().cpu().view(bsz, n_s, 2, n_d)
    ce = torch.cat(ce_parts).double().cpu().view(bsz, n_s, 2, n_d)
    scores = mcs_score(grad_sq, ce, settings.eps)
    c_v = scores[:, :, 0, :].mean(dim=(1, 2))
    c_t = scores[:, :, 1, :].mean(dim=(1, 2))
    r_v = mcs_ratio(scores, settings.ratio)

    bad_rows = [
        i
        for i in range(bsz)
        if not (
            bool(torch.isfinite(scores[i]).all())
            and bool(torch.isfinite(ce[i]).all())
            and math.isfinite(float(r_v[i]))
        )
    ]
    if bad_rows:
        vals = {
            sample_ids[i]: {
                "c_v": float(c_v[i]),
                "c_t": float(c_t[i]),
                "r_v": float(r_v[i]),
                "ce": ce[i].flatten().tolist(),
                "grad_sq": grad_sq[i].flatten().tolist(),
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
    )


__all__ = [
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
