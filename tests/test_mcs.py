"""Tests of the Modality Contribution Score (amps_eval.mcs.score) on tiny models of the two real
architectures (Qwen2.5-VL with 3-D mrope positions, LLaVA-1.5 with a CLIP tower + Llama), built
from configs here: no processor, no download."""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import json
import math
from dataclasses import dataclass

import pytest
import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)
from transformers.cache_utils import DynamicCache
from torch.utils._python_dispatch import TorchDispatchMode

from amps_eval.mcs.kv_cache import prefill_prompt
from amps_eval.mcs.score import (
    HOST_MEMORY_BUDGET,
    CopyFootprint,
    MCSResult,
    MCSSettings,
    NonFiniteMCSError,
    _build_copies,
    _Copy,
    _CopyPlan,
    _grad_sq_per_copy,
    _Sample,
    compute_mcs,
    copies_per_pass,
    memory_budget,
    modality_std,
    cross_entropy,
    forward_last_token,
    mcs_score,
    prefill,
    prompt_position_ids,
    sample_seed,
    visual_ratio,
)

VOCAB = 200
FIXED = MCSSettings(tolerance=None, draws=16)  # the fixed estimator (the sequential one: tests/test_mcs_sequential.py)
IMG = 190  # image placeholder token id in both tiny models
PAD = 0


# --------------------------------------------------------------------------------------------------
# tiny models and hand-made left-padded batches
# --------------------------------------------------------------------------------------------------


@dataclass
class Case:
    arch: str
    model: torch.nn.Module
    inputs: dict  # left-padded batch of 2 prompts of different lengths
    singles: list  # per sample: unpadded inputs dict of that sample alone
    ids: list  # sample ids


def _sharpen(model: torch.nn.Module, factor: float = 30.0) -> None:
    # Random init gives a near-uniform next-token distribution; scale the final norm so that p_x is
    # peaked like a trained model's (CE of a few tenths instead of log(vocab)).
    with torch.no_grad():
        model.model.language_model.norm.weight.mul_(factor)


def _left_pad(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    t = max(len(s) for s in seqs)
    ids = torch.tensor([[PAD] * (t - len(s)) + s for s in seqs])
    am = torch.tensor([[0] * (t - len(s)) + [1] * len(s) for s in seqs])
    return ids, am


MROPE = ("qwen2_5_vl", "qwen2_vl")  # the families with 3-D rope positions
QWEN2_VISION = dict(depth=1, embed_dim=32, mlp_ratio=2, num_heads=2, hidden_size=64, patch_size=14,
                    spatial_merge_size=2, temporal_patch_size=2)


def build_qwen(arch: str = "qwen2_5_vl") -> Case:
    config_class, model_class = ((Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration) if arch == "qwen2_5_vl"
                                 else (Qwen2VLConfig, Qwen2VLForConditionalGeneration))
    cfg = config_class(
        text_config=dict(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=PAD,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        ),
        vision_config=QWEN2_VISION if arch == "qwen2_vl" else dict(
            depth=1,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,
            fullatt_block_indexes=[0],
        ),
        image_token_id=IMG,
        video_token_id=191,
        vision_start_token_id=192,
        vision_end_token_id=193,
    )
    torch.manual_seed(0)
    model = model_class(cfg).eval()
    _sharpen(model)
    merge = cfg.vision_config.spatial_merge_size
    patch_dim = 3 * cfg.vision_config.temporal_patch_size * cfg.vision_config.patch_size**2
    grids = [torch.tensor([[1, 4, 4]]), torch.tensor([[1, 4, 6]])]
    seqs, pvs = [], []
    g = torch.Generator().manual_seed(1)
    for k, grid in enumerate(grids):
        n_patches = int(grid.prod())
        n_tok = n_patches // merge**2
        pvs.append(torch.randn(n_patches, patch_dim, generator=g))
        if k == 0:
            seqs.append([1, 5, 6, 192] + [IMG] * n_tok + [193, 7, 8, 9, 10, 11, 12, 13, 14])
        else:
            seqs.append([1, 192] + [IMG] * n_tok + [193, 20, 21, 22])
    ids, am = _left_pad(seqs)
    inputs = dict(input_ids=ids, attention_mask=am, pixel_values=torch.cat(pvs), image_grid_thw=torch.cat(grids))
    singles = [
        dict(
            input_ids=torch.tensor([s]),
            attention_mask=torch.ones(1, len(s), dtype=torch.long),
            pixel_values=pv,
            image_grid_thw=grid,
        )
        for s, pv, grid in zip(seqs, pvs, grids)
    ]
    return Case(arch, model, inputs, singles, ["doc-a", "doc-b"])


def build_llava() -> Case:
    vcfg = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
        projection_dim=32,
    )
    tcfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=PAD,
    )
    cfg = LlavaConfig(
        vision_config=vcfg,
        text_config=tcfg,
        image_token_id=IMG,
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=4,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg).eval()
    _sharpen(model)
    # "default" strategy drops CLS: (image_size / patch_size) ** 2 tokens per image.
    n_tok = (vcfg.image_size // vcfg.patch_size) ** 2
    g = torch.Generator().manual_seed(1)
    pv = torch.randn(2, 3, vcfg.image_size, vcfg.image_size, generator=g)
    seqs = [
        [1, 5, 6] + [IMG] * n_tok + [7, 8, 9, 10, 11, 12, 13],
        [1] + [IMG] * n_tok + [20, 21, 22],
    ]
    ids, am = _left_pad(seqs)
    inputs = dict(input_ids=ids, attention_mask=am, pixel_values=pv)
    singles = [
        dict(input_ids=torch.tensor([s]), attention_mask=torch.ones(1, len(s), dtype=torch.long), pixel_values=pv[k : k + 1])
        for k, s in enumerate(seqs)
    ]
    return Case("llava", model, inputs, singles, ["doc-a", "doc-b"])


@pytest.fixture(scope="module", params=["qwen2_5_vl", "llava", "qwen2_vl"])
def case(request) -> Case:
    return build_qwen(request.param) if request.param in MROPE else build_llava()


def masks(inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    vision = inputs["input_ids"] == IMG
    return vision, ~vision


def run(case: Case, settings: MCSSettings, inputs: dict | None = None, ids: list | None = None) -> MCSResult:
    inputs = case.inputs if inputs is None else inputs
    v, t = masks(inputs)
    return compute_mcs(case.model, inputs, v, t, settings, sample_ids=case.ids if ids is None else ids)


@contextlib.contextmanager
def as_dtype(case: Case, dtype: torch.dtype):
    """Temporarily swap in a ``dtype`` copy of the (float32) tiny model and cast the batch/single
    inputs (a copy, so that a lossy bf16 round trip never alters the module-scoped model)."""

    def cast(d):
        return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in d.items()}

    saved = case.model, case.inputs, case.singles
    case.model = copy.deepcopy(case.model).to(dtype)
    case.inputs, case.singles = cast(case.inputs), [cast(s) for s in case.singles]
    try:
        yield case
    finally:
        case.model, case.inputs, case.singles = saved


def assert_close(a: torch.Tensor, b: torch.Tensor, rtol: float, what: str) -> None:
    a, b = a.double(), b.double()
    err = ((a - b).abs() / b.abs().clamp_min(1e-30)).max().item()
    assert err <= rtol, f"{what}: max relative error {err:.3g} > {rtol}\n{a}\n{b}"


# --------------------------------------------------------------------------------------------------
# settings and pure math
# --------------------------------------------------------------------------------------------------


def test_settings_defaults_and_dict():
    # defaults chosen by benchmarks/bench_mcs_retest.py (benchmarks/README.md, "MCS reliability")
    s = MCSSettings()
    assert s.sigmas == (0.05, 0.1, 0.2) and s.draws == 8 and s.relative and s.batched
    assert s.ratio == "per_sigma" and not (s.antithetic or s.common_sigmas or s.common_modalities)
    assert s.noise_design == "gaussian"  # "orthogonal" did not help (benchmarks/README.md, "Orthogonal MCS noise")
    assert (s.tolerance, s.min_draws, s.round_draws) == (0.05, 4, 2) and s.rounds() == [4, 2, 2]
    assert s.perturbations_per_sample == 48  # the most an item takes; 24 the least
    d = s.to_dict()
    json.dumps(d)
    assert d["sigmas"] == [0.05, 0.1, 0.2] and d["draws"] == 8 and d["seed"] == 0 and d["ratio"] == "per_sigma"
    assert d["tolerance"] == 0.05
    assert MCSSettings(sigmas=[0.1, 1]).sigmas == (0.1, 1.0)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(sigmas=()), "sigmas"),
        (dict(sigmas=(0.1, -0.2)), "sigmas"),
        (dict(sigmas=(0.0,)), "sigmas"),
        (dict(sigmas=(float("nan"),)), "sigmas"),
        (dict(sigmas=("a",)), "sigmas"),
        (dict(draws=0), "draws"),
        (dict(draws=1.5), "draws"),
        (dict(eps=0.0), "eps"),
        (dict(eps=-1e-8), "eps"),
        (dict(seed=1.5), "seed"),
        (dict(relative="yes"), "relative"),
        (dict(batched=1), "batched"),
        (dict(max_copies_per_pass=0), "max_copies_per_pass"),
    ],
)
def test_settings_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MCSSettings(**kwargs)


def test_pure_math():
    g = torch.tensor([4.0, 0.0, 1e-12])
    ce = torch.tensor([2.0, 0.0, 0.0])
    s = mcs_score(g, ce, 1e-8)
    assert torch.allclose(s, torch.tensor([2.0, 0.0, 1e-4], dtype=torch.float64))
    assert torch.isfinite(s).all()
    r = visual_ratio(torch.tensor([1.0, 3.0]), torch.tensor([3.0, 1.0]))
    assert torch.allclose(r, torch.tensor([0.25, 0.75], dtype=torch.float64))
    logits = torch.tensor([[2.0, 1.0, -1.0]])
    p = torch.softmax(logits, -1)
    ent = -(p * p.log()).sum()
    assert torch.allclose(cross_entropy(p, logits), ent.unsqueeze(0))
    # zero-probability entries of p_x contribute nothing even against -inf logits
    p0 = torch.tensor([[1.0, 0.0]])
    assert cross_entropy(p0, torch.tensor([[0.0, float("-inf")]])).item() == 0.0
    assert sample_seed(0, "a") == sample_seed(0, "a") != sample_seed(1, "a") != sample_seed(0, "b")


# --------------------------------------------------------------------------------------------------
# model plumbing
# --------------------------------------------------------------------------------------------------


def test_clean_single_token_pass_reproduces_prefill(case):
    """The positions/mask/cache plumbing is right iff the last token on the unperturbed cut cache
    gives the prefill's logits (a wrong mrope position for the last token would not)."""
    model, inputs = case.model, case.inputs
    with torch.no_grad():
        pos = prompt_position_ids(model, inputs)
        logits_x, keys, values = prefill(model, inputs, pos)
        last_pos = pos[:, :, -1:] if pos.dim() == 3 else pos[:, -1:]
        logits = forward_last_token(model, inputs["input_ids"][:, -1:], last_pos, inputs["attention_mask"], keys, values)
        # and the model's own unpadded forward of each sample agrees with the padded prefill
        for k, single in enumerate(case.singles):
            mm = {"mm_token_type_ids": (single["input_ids"] == IMG).int()} if case.arch in MROPE else {}
            own = model(**single, **mm).logits[0, -1].float()
            torch.testing.assert_close(own, logits_x[k], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits.float(), logits_x, rtol=1e-4, atol=1e-4)
    if case.arch in MROPE:
        assert pos.shape == (3, 2, inputs["input_ids"].shape[1])
        # mrope: the image spans fewer positions than tokens, so the last position < T - 1
        n_valid = int(inputs["attention_mask"][0].sum())
        assert int(pos[0, 0, -1]) < n_valid - 1


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-9), (torch.float32, 1e-3)])
def test_batched_equals_loop(case, dtype, rtol):
    # float64 shows that the two modes compute the same thing (same noise, same gradients); float32
    # only adds kernel rounding (squared gradients of a random tiny model: ~1e-4 relative).
    with as_dtype(case, dtype):
        batched = run(case, dataclasses.replace(FIXED, batched=True))
        loop = run(case, dataclasses.replace(FIXED, batched=False))
        chunked = run(case, dataclasses.replace(FIXED, batched=True, max_copies_per_pass=5))
    for other, name in ((loop, "loop"), (chunked, "chunked")):
        assert_close(batched.scores, other.scores, rtol, f"scores batched vs {name}")
        assert_close(batched.ce, other.ce, rtol, f"ce batched vs {name}")
        assert_close(batched.c_v, other.c_v, rtol, f"c_v batched vs {name}")
        assert_close(batched.c_t, other.c_t, rtol, f"c_t batched vs {name}")
        assert_close(batched.r_v, other.r_v, rtol, f"r_v batched vs {name}")
    if dtype == torch.float32:
        return
    # a different seed gives different noise, hence different scores
    with as_dtype(case, dtype):
        other_seed = run(case, dataclasses.replace(FIXED, seed=1))
    assert not torch.allclose(other_seed.scores, batched.scores, rtol=1e-3)


def _direct_mcs(case: Case, k: int, settings: MCSSettings, sample_id: str) -> tuple[float, float, torch.Tensor]:
    """Independent reference for sample k alone (no padding): prefill WITHOUT the last token using
    the model's own position logic, add the documented noise to a clone of the cache through an
    explicit noise tensor, forward the last token, CE, autograd.grad w.r.t. that noise tensor.
    Returns (C_V, C_T, scores [S, 2, N]). The noise follows the module docstring, including the
    reuse rules of antithetic / common_sigmas / common_modalities, and ``noise_design="orthogonal"``
    (`_gram_schmidt` of each (sigma, modality)'s fresh draws, written out)."""
    model = case.model
    single = case.singles[k]
    ids = single["input_ids"]
    t = ids.shape[1]
    extra = {k2: v for k2, v in single.items() if k2 not in ("input_ids", "attention_mask")}
    if case.arch in MROPE:
        extra["mm_token_type_ids"] = (ids == IMG).int()
    model.eval()
    with torch.no_grad():
        p_x = torch.softmax(model(input_ids=ids, **extra).logits[0, -1].double(), -1)
        if case.arch in MROPE:
            extra["mm_token_type_ids"] = extra["mm_token_type_ids"][:, :-1]
        pre = model(input_ids=ids[:, :-1], **extra, use_cache=True)
    clean = [(layer.keys.clone(), layer.values.clone()) for layer in pre.cache.layers]
    if case.arch in MROPE:
        delta = model.model.rope_deltas  # set by the model's own forward
        last_pos = (torch.full((1, 1), t - 1) + delta).view(1, 1, 1).expand(3, 1, 1)
        model.model.rope_deltas = None
    else:
        last_pos = None  # the model's default: arange from the cache length
    prompt = ids[0, :-1]
    idx_of = {"vision": (prompt == IMG).nonzero().flatten(), "text": (prompt != IMG).nonzero().flatten()}
    gen = torch.Generator().manual_seed(sample_seed(settings.seed, sample_id))
    widest = max(idx_of["vision"].numel(), idx_of["text"].numel())
    noise = {}  # (sigma index, modality index, draw) -> standard normals per (layer, K/V)
    for si in range(len(settings.sigmas)):
        for mi, mod in enumerate(("vision", "text")):
            for n in range(settings.draws):
                if settings.antithetic and n % 2 == 1:
                    noise[si, mi, n] = [-z for z in noise[si, mi, n - 1]]
                elif settings.common_sigmas and si > 0:
                    noise[si, mi, n] = noise[0, mi, n]
                elif settings.common_modalities and mi == 1:
                    noise[si, mi, n] = noise[si, 0, n]
                else:
                    width = widest if settings.common_modalities else idx_of[mod].numel()
                    noise[si, mi, n] = [
                        torch.randn((c.shape[1], width, c.shape[3]), generator=gen) for kc, vc in clean for c in (kc, vc)
                    ]
            fresh = not (settings.common_sigmas and si > 0)  # (antithetic, common_modalities: not with orthogonal)
            if settings.noise_design == "orthogonal" and fresh:
                draws = [noise[si, mi, n] for n in range(settings.draws)]
                for n, zs in enumerate(_gram_schmidt(draws)):
                    noise[si, mi, n] = zs
    scores = {"vision": [], "text": []}
    for si, sigma in enumerate(settings.sigmas):
        for mi, mod in enumerate(("vision", "text")):
            idx = idx_of[mod]
            for n in range(settings.draws):
                deltas, cache_kv = [], []
                zs = iter(noise[si, mi, n])
                for kc, vc in clean:
                    pair = []
                    for c in (kc, vc):
                        z = next(zs)[:, : idx.numel()]
                        std = sigma * float(c[0][:, idx, :].std(unbiased=False)) if settings.relative else sigma
                        d = (std * z.to(c.dtype)).requires_grad_(True)
                        deltas.append(d)
                        pert = c.clone()
                        pert[0, :, idx, :] = pert[0, :, idx, :] + d
                        pair.append(pert)
                    cache_kv.append(pair)
                cache = DynamicCache()
                for li, (kk, vv) in enumerate(cache_kv):
                    cache.update(kk, vv, li)
                out = model(input_ids=ids[:, -1:], cache=cache, position_ids=last_pos, use_cache=True)
                logp = torch.log_softmax(out.logits[0, -1].double(), -1)
                loss = -(p_x * logp).sum()
                grads = torch.autograd.grad(loss, deltas)
                gsq = sum(float(g.double().pow(2).sum()) for g in grads)
                scores[mod].append(gsq / max(float(loss.detach()), settings.eps))
    table = torch.tensor([scores["vision"], scores["text"]], dtype=torch.float64)  # [2, S * N]
    table = table.view(2, len(settings.sigmas), settings.draws).transpose(0, 1)  # [S, 2, N]
    return sum(scores["vision"]) / len(scores["vision"]), sum(scores["text"]) / len(scores["text"]), table


def _gram_schmidt(draws: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
    """Classical Gram-Schmidt in float64 of the draws (each a list of per-layer K, V normals, taken
    as one vector), each orthonormal direction stretched back to its own draw's norm; the results
    rounded to the normals' dtype, in the same per-layer pieces."""
    shapes = [z.shape for z in draws[0]]
    vectors = [torch.cat([z.double().flatten() for z in zs]) for zs in draws]
    basis, out = [], []
    for v in vectors:
        w = v.clone()
        for q in basis:
            w = w - (q @ v) * q
        basis.append(w / w.norm())
        scaled = basis[-1] * v.norm()
        pieces, start = [], 0
        for shape in shapes:
            size = math.prod(shape)
            pieces.append(scaled[start : start + size].view(shape).to(draws[0][0].dtype))
            start += size
        out.append(pieces)
    return out


@pytest.mark.parametrize("relative", [True, False])
def test_matches_direct_autograd(case, relative):
    settings = dataclasses.replace(FIXED, relative=relative, sigmas=(0.1, 0.3) if relative else (0.02,), seed=3)
    with as_dtype(case, torch.float64):
        res = run(case, settings)  # padded batch: sample "doc-b" is the shorter, left-padded one
        for k in (0, 1):
            c_v, c_t, _ = _direct_mcs(case, k, settings, case.ids[k])
            assert math.isclose(float(res.c_v[k]), c_v, rel_tol=1e-8), (k, float(res.c_v[k]), c_v)
            assert math.isclose(float(res.c_t[k]), c_t, rel_tol=1e-8), (k, float(res.c_t[k]), c_t)


def _direct_ratio(table: torch.Tensor, ratio: str) -> float:
    """r_v from one sample's scores [S, 2, N], written out as the MCSSettings docstring says."""
    n_s, _, n_d = table.shape
    if ratio == "sums":
        c_v, c_t = float(table[:, 0].sum()), float(table[:, 1].sum())
        return c_v / (c_v + c_t)
    if ratio == "per_sigma":
        return sum(float(table[s, 0].sum()) / float(table[s].sum()) for s in range(n_s)) / n_s
    return sum(float(table[s, 0, n]) / float(table[s, 0, n] + table[s, 1, n]) for s in range(n_s) for n in range(n_d)) / (
        n_s * n_d
    )


@pytest.mark.parametrize(
    "options",
    [
        dict(antithetic=True, ratio="per_sigma"),
        dict(common_sigmas=True, ratio="per_draw"),
        dict(common_modalities=True),
        dict(antithetic=True, common_sigmas=True, common_modalities=True, ratio="per_sigma"),
        dict(noise_design="orthogonal", ratio="per_sigma"),
        dict(noise_design="orthogonal", common_sigmas=True, ratio="sums"),
    ],
)
def test_options_match_direct_autograd(case, options):
    """Each variance-reduction option, batched and padded, equals the independent reference that
    draws the documented noise itself (scores draw by draw, C_V, C_T and r_v)."""
    settings = dataclasses.replace(FIXED, sigmas=(0.1, 0.3), draws=4, seed=5, **options)
    with as_dtype(case, torch.float64):
        res = run(case, settings)
        loop = run(case, dataclasses.replace(settings, batched=False))
        for k in (0, 1):
            c_v, c_t, table = _direct_mcs(case, k, settings, case.ids[k])
            assert_close(res.scores[k], table, 1e-8, f"scores sample {k} {options}")
            assert math.isclose(float(res.c_v[k]), c_v, rel_tol=1e-8)
            assert math.isclose(float(res.c_t[k]), c_t, rel_tol=1e-8)
            assert math.isclose(float(res.r_v[k]), _direct_ratio(table, settings.ratio), rel_tol=1e-8)
        assert_close(res.r_v, loop.r_v, 1e-9, f"r_v batched vs loop {options}")
    assert res.settings["ratio"] == settings.ratio and res.settings["antithetic"] == settings.antithetic


def test_ranges_and_record(case):
    res = run(case, FIXED)
    assert res.sample_ids == case.ids
    assert res.scores.shape == (2, 3, 2, 16) and res.ce.shape == (2, 3, 2, 16)
    assert (res.c_v > 0).all() and (res.c_t > 0).all()
    assert ((res.r_v >= 0) & (res.r_v <= 1)).all()
    # CE(p_x, p_z) >= H(p_x) (Gibbs), up to float32 rounding
    assert (res.ce >= res.ce_clean.view(2, 1, 1, 1) - 1e-5).all()
    n_img = [int((s["input_ids"] == IMG).sum()) for s in case.singles]
    assert res.n_vision == n_img
    assert res.n_text == [s["input_ids"].shape[1] - 1 - n for s, n in zip(case.singles, n_img)]
    recs = res.to_records()
    json.dumps(recs)
    assert recs[1]["sample_id"] == "doc-b" and 0 <= recs[1]["r_v"] <= 1
    assert res.settings["sigmas"] == [0.05, 0.1, 0.2]


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-9), (torch.float32, 1e-3)])
def test_padding_invariance(case, dtype, rtol):
    with as_dtype(case, dtype):
        batch = run(case, FIXED)
        for k, single in enumerate(case.singles):
            alone = run(case, FIXED, inputs=single, ids=[case.ids[k]])
            assert_close(alone.scores, batch.scores[k : k + 1], rtol, f"scores sample {k}")
            assert_close(alone.c_v, batch.c_v[k : k + 1], rtol, f"c_v sample {k}")
            assert_close(alone.c_t, batch.c_t[k : k + 1], rtol, f"c_t sample {k}")
            assert_close(alone.r_v, batch.r_v[k : k + 1], rtol, f"r_v sample {k}")
    if dtype == torch.float32:
        return
    # batch order does not matter either (noise is keyed by sample id, not by row)
    if case.arch == "llava":
        with as_dtype(case, dtype):
            rev = {k: v.flip(0) for k, v in case.inputs.items()}
            res = run(case, FIXED, inputs=rev, ids=case.ids[::-1])
        assert_close(res.c_v.flip(0), batch.c_v, rtol, "c_v reversed batch")


def test_near_one_hot_is_finite(case):
    model = case.model
    w = model.model.language_model.norm.weight
    saved = w.detach().clone()
    try:
        # sharpen p_x until CE < eps for some perturbation (the eps guard is in use) while the
        # gradients have not yet underflowed to exactly 0
        for factor in (10.0, 2.0, 2.0, 2.0):
            with torch.no_grad():
                w.mul_(factor)
            res = run(case, FIXED)
            if float(res.ce.min()) < 1e-8:
                break
        assert float(res.ce.min()) < 1e-8, "the test should exercise the eps guard"
        for t in (res.scores, res.c_v, res.c_t, res.r_v):
            assert torch.isfinite(t).all()
        assert ((res.r_v >= 0) & (res.r_v <= 1)).all()
    finally:
        with torch.no_grad():
            w.copy_(saved)


def test_one_hot_to_working_precision_raises(case):
    """CE and the gradient underflow to exactly 0 in both modalities: r_v is undefined -> error."""
    model = case.model
    w = model.model.language_model.norm.weight
    saved = w.detach().clone()
    try:
        with torch.no_grad():
            w.mul_(1000.0)
        with pytest.raises(NonFiniteMCSError) as info:
            run(case, FIXED)
        assert set(info.value.sample_ids) <= set(case.ids) and info.value.sample_ids
        assert info.value.sample_ids[0] in str(info.value)
    finally:
        with torch.no_grad():
            w.copy_(saved)


def test_nan_raises_naming_the_sample(case):
    model = case.model
    emb = model.get_input_embeddings().weight
    saved = emb.detach().clone()
    try:
        with torch.no_grad():
            emb[21] = float("nan")  # token 21 occurs only in the second prompt ("doc-b")
        with pytest.raises(NonFiniteMCSError) as info:
            run(case, FIXED)
        assert info.value.sample_ids == ["doc-b"]
        assert "doc-b" in str(info.value) and "doc-a" not in str(info.value)
        assert isinstance(info.value, ValueError)
    finally:
        with torch.no_grad():
            emb.copy_(saved)


def test_model_state_restored_and_no_param_grads(case):
    model = case.model
    params = list(model.parameters())
    # a mixed, non-default state: some frozen, some trainable, model in training mode, one
    # submodule in eval mode
    for i, p in enumerate(params):
        p.requires_grad_(i % 3 != 0)
        p.grad = None
    model.train()
    model.model.language_model.layers[0].eval()
    req_before = [p.requires_grad for p in params]
    train_before = [m.training for m in model.modules()]
    try:
        run(case, FIXED)
        assert [p.requires_grad for p in params] == req_before
        assert [m.training for m in model.modules()] == train_before
        assert all(p.grad is None for p in params)
        # also after an error in the middle of the computation
        emb = model.get_input_embeddings().weight
        saved = emb.detach().clone()
        with torch.no_grad():
            emb[21] = float("nan")
        with pytest.raises(NonFiniteMCSError):
            run(case, FIXED)
        with torch.no_grad():
            emb.copy_(saved)
        assert [p.requires_grad for p in params] == req_before
        assert [m.training for m in model.modules()] == train_before
        assert all(p.grad is None for p in params)
    finally:
        for p in params:
            p.requires_grad_(True)
        model.eval()


def test_dropout_does_not_leak_in(case):
    """MCS runs in eval mode even when the model is in training mode (dropout off)."""
    model = case.model
    ref = run(case, FIXED)
    attns = [layer.self_attn for layer in model.model.language_model.layers]
    model.train()
    for a in attns:
        a.attention_dropout = 0.5
    try:
        again = run(case, FIXED)
    finally:
        model.eval()
        for a in attns:
            a.attention_dropout = 0.0
    assert_close(again.scores, ref.scores, 1e-6, "train-mode model")


def test_bf16(case):
    with as_dtype(case, torch.bfloat16):
        b = run(case, FIXED)
        loop = run(case, dataclasses.replace(FIXED, batched=False))
    for t in (b.scores, b.c_v, b.c_t, b.r_v):
        assert t.dtype == torch.float64 and torch.isfinite(t).all()
    assert ((b.r_v >= 0) & (b.r_v <= 1)).all()
    assert_close(b.r_v, loop.r_v, 5e-2, "bf16 r_v batched vs loop")


def test_inference_mode_caller(case):
    ref = run(case, FIXED)
    with torch.inference_mode():
        res = run(case, FIXED)
    assert_close(res.c_v, ref.c_v, 1e-6, "inside inference_mode")
    with torch.no_grad():  # as a steered generation calls it
        res = run(case, FIXED)
    assert torch.equal(res.scores, ref.scores)


def test_given_prefill_gives_the_same_result(case):
    """A caller's own prefill (`prefill_prompt`, made under inference mode as a generation would)
    gives exactly the result of `compute_mcs` prefilling itself; a prefill of other inputs is refused."""
    from amps_eval.mcs.kv_cache import prefill_prompt

    settings = dataclasses.replace(FIXED, draws=2)
    ref = run(case, settings)
    v, t = masks(case.inputs)
    with torch.inference_mode():
        given = prefill_prompt(case.model, case.inputs)
    res = compute_mcs(case.model, case.inputs, v, t, settings, sample_ids=case.ids, prefilled=given)
    assert torch.equal(res.scores, ref.scores) and torch.equal(res.r_v, ref.r_v)
    single = case.singles[0]
    with pytest.raises(ValueError, match="prefilled cache"):
        compute_mcs(case.model, case.inputs, v, t, settings, sample_ids=case.ids,
                    prefilled=prefill_prompt(case.model, single))


# --------------------------------------------------------------------------------------------------
# the perturbed copies: noise order, relative std, no host syncs, chunking, memory per pass
# --------------------------------------------------------------------------------------------------


def _plan(case: Case, settings: MCSSettings, inputs: dict | None = None, ids: list | None = None):
    """The copy plan `compute_mcs` makes for a batch (positions as it computes them), and its prefill."""
    inputs = case.inputs if inputs is None else inputs
    ids = case.ids if ids is None else ids
    pre = prefill_prompt(case.model, inputs)
    vision, text = masks(inputs)
    valid = inputs["attention_mask"].bool().clone()
    valid[:, -1] = False
    samples = []
    for i, sid in enumerate(ids):
        gen = torch.Generator().manual_seed(sample_seed(settings.seed, sid))
        pos = tuple((mask[i] & valid[i])[:-1].nonzero().flatten() for mask in (vision, text))
        samples.append(_Sample(row=i, sample_id=sid, positions=pos, generator=gen))
    copies = [_Copy(smp, s, m, n) for smp in samples for s in range(len(settings.sigmas)) for m in range(2)
              for n in range(settings.draws)]
    return _CopyPlan(copies, pre.keys, pre.values, settings), pre


class _OpCounter(TorchDispatchMode):
    """Counts every dispatched aten op by name."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


# ops that copy a device value to the host (item / float / int / bool / index all end in
# _local_scalar_dense) or whose output size depends on the data; tolist / numpy are counted by name
SYNC_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "equal", "_unique2", "unique_dim",
            "tolist", "numpy")


@contextlib.contextmanager
def count_syncs(monkeypatch):
    """Counts host synchronisations: the aten ops above, plus tolist / numpy (no aten op on CPU)."""
    counter = _OpCounter()
    for name in ("tolist", "numpy"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, _name=name, **k):
            counter.ops[_name] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    with counter:
        yield counter
    monkeypatch.undo()


def test_building_copies_makes_no_host_sync(case, monkeypatch):
    """The per-pass path (noise, perturbed entries, cache copies, squared gradient norms) never
    copies a value to the host; the counter does see a sync (the former per-entry std's float())."""
    settings = dataclasses.replace(FIXED, sigmas=(0.1, 0.3), draws=4, antithetic=True, common_modalities=True)
    plan, pre = _plan(case, settings)
    n = len(plan.copies)
    with count_syncs(monkeypatch) as counter:
        built = [plan.build(0, 7), plan.build(7, n)]
    assert sum(counter.ops.values()) > 20 and not any(counter.ops[op] for op in SYNC_OPS), counter.ops
    grads = torch.autograd.grad(sum(t.sum() for t in built[1].keys + built[1].values), built[1].leaves)
    with count_syncs(monkeypatch) as counter:
        sq = _grad_sq_per_copy(grads, built[1], n - 7, plan.n_slots)
    assert sq.shape == (n - 7,) and not any(counter.ops[op] for op in SYNC_OPS), counter.ops
    with count_syncs(monkeypatch) as counter:
        float(pre.keys[0].std())
        pre.keys[0][0, 0, :2, 0].tolist()
    assert counter.ops["_local_scalar_dense"] == 1 and counter.ops["tolist"] == 1


def test_gradients_only_at_perturbed_entries(case):
    """The autograd leaves are exactly the perturbed entries: one [entries, kv_heads, head_dim]
    tensor per layer and K/V, placed at each copy's modality positions of its own cache copy."""
    settings = dataclasses.replace(FIXED, sigmas=(0.1,), draws=2)
    plan, pre = _plan(case, settings)
    built = plan.build(0, len(plan.copies))
    n_layers, (_, kv, _, dim) = len(pre.keys), pre.keys[0].shape
    entries = sum(int(c.sample.positions[c.m].numel()) for c in plan.copies)
    assert len(built.leaves) == 2 * n_layers
    assert all(leaf.is_leaf and leaf.requires_grad and leaf.shape == (entries, kv, dim) for leaf in built.leaves)
    start = 0
    for p, c in enumerate(plan.copies):
        idx = c.sample.positions[c.m]
        for layer in range(n_layers):
            for kind, t in enumerate((built.keys[layer], built.values[layer])):
                leaf = built.leaves[2 * layer + kind][start : start + idx.numel()]
                assert torch.equal(t[p][:, idx, :].detach(), leaf.detach().transpose(0, 1))
                clean = (pre.keys, pre.values)[kind][layer][c.sample.row]
                untouched = torch.ones(t.shape[2], dtype=torch.bool)
                untouched[idx] = False
                assert torch.equal(t[p][:, untouched, :].detach(), clean[:, untouched, :])
        start += idx.numel()


@pytest.mark.parametrize("heads, dim, positions", [(2, 16, (5, 3)), (2, 4, (5, 3))])
def test_noise_is_one_draw_per_sample_sigma_and_modality(heads, dim, positions):
    """The documented order: one standard normal [draws, layers, 2, kv_heads, n_m, head_dim] per
    (sample, sigma, modality). On CPU it is the former sequence of per-(draw, layer, K/V) draws of
    [kv_heads, n_m, head_dim] when kv_heads * n_m * head_dim is a multiple of 16 (torch fills
    normals in blocks of 16), and not otherwise."""
    layers, tokens, draws, seed = 3, 10, 3, 11
    settings = dataclasses.replace(FIXED, sigmas=(0.1, 0.2), draws=draws, relative=False)
    zeros = [torch.zeros(1, heads, tokens, dim) for _ in range(layers)]
    pos = (torch.arange(1, 1 + positions[0]), torch.tensor([0, 8, 9])[: positions[1]])
    smp = _Sample(row=0, sample_id="x", positions=pos, generator=torch.Generator().manual_seed(seed))
    copies = [_Copy(smp, s, m, n) for s in range(2) for m in range(2) for n in range(draws)]
    new_k, new_v, _ = _build_copies(copies, zeros, zeros, settings)
    gen, per_layer, per_group = torch.Generator().manual_seed(seed), [], []
    for s, sigma in enumerate(settings.sigmas):
        for m in range(2):
            n_m = pos[m].numel()
            group = torch.randn((draws, layers, 2, heads, n_m, dim), generator=gen) * torch.tensor(sigma)
            per_group.append(group)
    gen = torch.Generator().manual_seed(seed)
    for s, sigma in enumerate(settings.sigmas):
        for m in range(2):
            n_m = pos[m].numel()
            draws_ = [torch.randn((heads, n_m, dim), generator=gen) for _ in range(draws * layers * 2)]
            per_layer.append(torch.stack(draws_).view(draws, layers, 2, heads, n_m, dim) * torch.tensor(sigma))
    for k, (s, m) in enumerate((s, m) for s in range(2) for m in range(2)):
        got = torch.stack([torch.stack([torch.stack((new_k[layer][p], new_v[layer][p])) for layer in range(layers)])
                           for p, c in enumerate(copies) if (c.s, c.m) == (s, m)]).detach()[..., pos[m], :]
        assert torch.equal(got, per_group[k])
        assert torch.equal(got, per_layer[k]) == (heads * pos[m].numel() * dim % 16 == 0)


def test_modality_std_equals_torch_std(case):
    """The relative noise std of every (layer, K/V, sample, modality), computed batched, is
    torch.std (population) of that sample's entries at that modality's positions: exactly, once
    rounded to float32, for a float32 cache (as the former per-entry torch.std computed it), and
    to 1e-13 in float64. Padding never enters, even when it holds NaN."""
    plan, pre = _plan(case, FIXED)
    layers = [t for pair in zip(pre.keys, pre.values) for t in pair]
    samples = list({id(c.sample): c.sample for c in plan.copies}.values())
    bsz, _, tokens, _ = layers[0].shape
    mask = torch.zeros(bsz, 2, tokens, dtype=torch.bool)
    for smp in samples:
        for m, idx in enumerate(smp.positions):
            mask[smp.row, m, idx] = True
    poisoned = [t.clone() for t in layers]
    for t in poisoned:
        t[1, :, 0, :] = float("nan")  # a padding position of the left-padded second sample
    assert not mask[1, :, 0].any()
    got = modality_std(poisoned, mask)
    for j, t in enumerate(layers):
        for smp in samples:
            for m, idx in enumerate(smp.positions):
                entries = t[smp.row][:, idx, :]
                assert got[j, smp.row, m].float() == entries.std(correction=0), (j, smp.row, m)
                ref = float(entries.double().std(correction=0))
                assert math.isclose(float(got[j, smp.row, m]), ref, rel_tol=1e-13)


@pytest.mark.parametrize("relative", [True, False])
def test_noise_independent_of_batch_composition_and_chunking(relative):
    """A sample's perturbed entries do not depend on the other samples of its batch, its row, its
    padding or how the copies are split into passes (a cache made of the same entries at other
    positions)."""
    settings = dataclasses.replace(FIXED, sigmas=(0.1, 0.2), draws=3, relative=relative, antithetic=False, common_sigmas=True)
    g = torch.Generator().manual_seed(0)
    alone = [torch.randn(1, 2, 12, 16, generator=g) * 3 for _ in range(4)]
    pos = (torch.arange(2, 8), torch.tensor([0, 1, 8, 9, 10, 11]))

    def entries_of(cache, row, shift, other_first, chunk):
        """The leaves of sample "s" (at ``row``, positions shifted by ``shift``) in plan order."""
        smp = _Sample(row, "s", tuple(p + shift for p in pos), torch.Generator().manual_seed(sample_seed(0, "s")))
        other = _Sample(1 - row, "o", (torch.tensor([3]), torch.tensor([4, 5])), torch.Generator().manual_seed(1))
        order = [smp] if other_first is None else [other, smp] if other_first else [smp, other]
        copies = [_Copy(x, s, m, n) for x in order for s in range(2) for m in range(2) for n in range(3)]
        plan = _CopyPlan(copies, cache, cache, settings)
        out, start = [], 0
        while start < len(copies):
            stop = min(start + chunk, len(copies))
            built = plan.build(start, stop)
            rows = plan.entry_row[plan.offsets[start] : plan.offsets[stop]]
            out.append(torch.stack([leaf.detach()[rows == row] for leaf in built.leaves]))
            start = stop
        return torch.cat(out, dim=1)

    ref = entries_of(alone, 0, 0, None, 1000)
    padded = []
    for t in alone:  # sample "s" in row 1, left-padded by 3 positions; another sample in row 0
        big = torch.randn(2, 2, 15, 16, generator=g) * 10
        big[1, :, :3] = 1e6
        big[1, :, 3:] = t[0]
        padded.append(big)
    for other_first in (False, True):
        for chunk in (1, 7, 1000):
            got = entries_of(padded, 1, 3, other_first, chunk)
            if relative:  # the std: float64 sums over other paddings, rounded to float32
                torch.testing.assert_close(got, ref, rtol=1e-6, atol=0)
            else:
                assert torch.equal(got, ref), (other_first, chunk)


def test_chunking_never_changes_results(case, monkeypatch):
    """1, 7 or all copies per pass, or the memory-derived default (here forced below all copies):
    the same scores, to float64 rounding; the default makes ceil(copies / copies_per_pass) passes."""
    from amps_eval.mcs import copies as copies_module
    from amps_eval.mcs import memory as memory_module

    settings = dataclasses.replace(FIXED, sigmas=(0.1, 0.3), draws=4)
    with as_dtype(case, torch.float64):
        plan, pre = _plan(case, settings)
        per_copy = plan.footprint(case.model, pre.logits.shape[-1])
        budget = per_copy.fixed_bytes() + 5 * per_copy.bytes_per_copy() + 1
        assert copies_per_pass(per_copy, budget, len(plan.copies)) == 5
        monkeypatch.setattr(memory_module, "HOST_MEMORY_BUDGET", budget)
        passes = []
        real_forward = copies_module.forward_last_token
        monkeypatch.setattr(copies_module, "forward_last_token",
                            lambda model, ids, *a: passes.append(ids.shape[0]) or real_forward(model, ids, *a))
        derived = run(case, settings)
        assert passes == [5] * (len(plan.copies) // 5) + ([len(plan.copies) % 5] if len(plan.copies) % 5 else [])
        for chunk in (1, 7, len(plan.copies)):
            res = run(case, dataclasses.replace(settings, max_copies_per_pass=chunk))
            assert_close(res.scores, derived.scores, 1e-12, f"scores, {chunk} copies per pass")
            assert_close(res.r_v, derived.r_v, 1e-12, f"r_v, {chunk} copies per pass")


def test_copies_per_pass_from_memory():
    """The documented estimate, written out for a grouped-query model (8 query heads on 2 KV heads),
    and the largest pass that fits a budget (at least 1, at most all copies)."""
    fp = CopyFootprint(layers=4, kv_heads=2, head_dim=16, tokens=99, entries=60, group_width=60, draws=16,
                       cache_bytes=2, work_bytes=4, query_heads=8, vocab=1000, hidden=64, intermediate=256)
    per_position = 4 * 2 * 2 * 16
    expected = (per_position * 99 * 2  # the copy
                + per_position * 100 * 2 * (1 + 4 + 4 / 4)  # with the query token; repeated 4x; one layer's grad
                + per_position * 60 * (4 * 2 + 2 * 4)  # the entries
                + (4 * (12 * 64 + 4 * 256) + 4 * 1000) * 4)  # activations and logits
    assert fp.bytes_per_copy() == int(expected)
    assert fp.fixed_bytes() == 2 * 16 * per_position * 60 * 4
    per, fixed = fp.bytes_per_copy(), fp.fixed_bytes()
    assert copies_per_pass(fp, fixed + 10 * per, 96) == 10
    assert copies_per_pass(fp, fixed + 10 * per - 1, 96) == 9
    assert copies_per_pass(fp, 0, 96) == 1
    assert copies_per_pass(fp, fixed + 1000 * per, 96) == 96
    mha = dataclasses.replace(fp, query_heads=2)  # no repetition
    assert mha.bytes_per_copy() == int(expected - per_position * 100 * 2 * (4 + 1 - 1 / 4))
    assert memory_budget(torch.device("cpu")) == HOST_MEMORY_BUDGET


def test_input_validation(case):
    v, t = masks(case.inputs)
    right = dict(case.inputs)
    right["attention_mask"] = case.inputs["attention_mask"].flip(1)
    with pytest.raises(ValueError, match="LEFT"):
        compute_mcs(case.model, right, v, t, FIXED)
    with pytest.raises(ValueError, match="overlap"):
        compute_mcs(case.model, case.inputs, v, torch.ones_like(t), FIXED)
    with pytest.raises(ValueError, match="vision_mask"):
        compute_mcs(case.model, case.inputs, v[:, 1:], t, FIXED)
    with pytest.raises(ValueError, match="no vision positions"):
        compute_mcs(case.model, case.inputs, torch.zeros_like(v), t, FIXED, sample_ids=case.ids)
    with pytest.raises(ValueError, match="sample_ids"):
        compute_mcs(case.model, case.inputs, v, t, FIXED, sample_ids=["x"])


# --------------------------------------------------------------------------------------------------
# end to end with a saved tiny checkpoint and its real processor (optional: skipped when the
# project's tiny-model / processor helpers are not importable)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "llava", "qwen2_vl"])
def test_with_saved_checkpoint_and_processor(arch, tmp_path_factory):
    tm = pytest.importorskip("amps_eval.tiny_models")
    from amps_eval.anatomy import image_token_id
    path = tm.tiny_model(arch, tmp_path_factory.mktemp("tiny-ckpt"))
    from amps_eval.families import family

    model = family(arch).load_model_class().from_pretrained(path).eval()
    processor = family(arch).load_processor(path)
    texts = [
        "Text context: the dog is black and lies on a red sofa next to a window.\nWhat colour is the dog?",
        "What colour is the sky?",
    ]
    images = [tm.tiny_image(seed=0), tm.tiny_image(56, 84, seed=1)]
    prompts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": t}]}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for t in texts
    ]
    img = image_token_id(model.config)

    def encode(idx):
        return dict(processor(text=[prompts[i] for i in idx], images=[images[i] for i in idx], padding=True, return_tensors="pt"))

    batch = encode([0, 1])
    assert int(batch["attention_mask"][1, 0]) == 0, "the second prompt should be left-padded"
    vision = batch["input_ids"] == img
    ids = ["long", "short"]
    res = compute_mcs(model, batch, vision, ~vision, FIXED, sample_ids=ids)
    loop = compute_mcs(model, batch, vision, ~vision, dataclasses.replace(FIXED, batched=False), sample_ids=ids)
    assert_close(res.scores, loop.scores, 1e-3, "processor batch: batched vs loop")
    assert ((res.r_v >= 0) & (res.r_v <= 1)).all() and (res.c_v > 0).all() and (res.c_t > 0).all()
    alone = encode([1])
    v1 = alone["input_ids"] == img
    single = compute_mcs(model, alone, v1, ~v1, FIXED, sample_ids=["short"])
    assert_close(single.scores, res.scores[1:], 1e-3, "processor batch: padding invariance")
