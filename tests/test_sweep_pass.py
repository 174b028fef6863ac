"""A sweep's alphas in one pass over the items (`amps_eval.sweep_pass`): every alpha's answers from the
same batches, the files of one run per alpha, on the tiny models and the generated MC2 set."""

import json
import math

import pytest
import torch

from amps_eval.model_wrappers.registered import AmpsLlava, AmpsQwen, AmpsQwen2
from amps_eval.runner import EvalSession
from amps_eval.steering import hooks
from amps_eval.steering.hooks import SteeringNonFinite
from amps_eval.sweep_pass import (Answer, SweepPass, answer_key, expand_inputs, expand_prefill,
                                  generated_lengths)

from test_eval_session import _files
from test_steered_wrappers import _layer_hooks, steered, write_file
from wrapper_helpers import make_wrapper, mc2_task_dict, requests_for

ALPHAS = (0.0, 4.0, 8.0)
MEASURED = ("vector_norm", "shift_norm", "relative_shift")
"""Diagnostics measured on hidden states: equal up to float rounding (a decode step's matrix products
over more rows may round otherwise in the last bit: 1e-8 on the tiny Qwen); every other field exactly."""
MCS_FIELDS = ("c_v", "c_t", "r_v", "r_v_stderr", "gamma", "strength")
"""mean_mcs's MCS and what follows from it: since the sequential MCS and the one home of an item's MCS
merged, the pass's MCS agrees with a run alone to ~2e-5 relative (float32 sums of scores ~1e-10 over
other chunkings), not bit for bit; compared to rel 1e-3. The answers are still identical."""


def same_rows(rows, others) -> bool:
    assert len(rows) == len(others)
    for row, other in zip(rows, others):
        loose = MEASURED + MCS_FIELDS
        assert {k: v for k, v in row.items() if k not in loose} == {k: v for k, v in other.items() if k not in loose}
        for key in MEASURED:
            if key in row or key in other:
                assert row[key] == pytest.approx(other[key], rel=1e-5, abs=1e-7), key
        for key in MCS_FIELDS:
            if key in row or key in other:
                assert row[key] == pytest.approx(other[key], rel=1e-3, abs=1e-12), key
    return True


# --- the pure parts -------------------------------------------------------------------------------

def test_a_pass_keeps_answers_per_key_and_alpha_and_gives_each_once():
    sweep = SweepPass((0, 2, 4))
    assert sweep.alphas == (0.0, 2.0, 4.0)
    keys = [("k", 1), ("k", 2)]
    assert sweep.take(keys, 2.0) is None and sweep.others(keys, 2.0) == (0.0, 4.0)
    sweep.keep(keys, 4.0, [Answer("A"), Answer("B", {"alpha": 4.0})])
    assert sweep.others(keys, 2.0) == (0.0,) and sweep.others(keys[:1], 0.0) == (2.0,)
    sweep.keep(keys[:1], 0.0, [Answer("C")])
    assert sweep.take(keys, 0.0) is None and len(sweep) == 3  # all or nothing: nothing was taken
    assert sweep.take(keys, 4) == [Answer("A"), Answer("B", {"alpha": 4.0})]
    assert sweep.take(keys, 4.0) is None and len(sweep) == 1  # taken once
    with pytest.raises(ValueError, match="distinct"):
        SweepPass((1.0, 1))
    with pytest.raises(ValueError, match="2 answers for 1 keys"):
        sweep.keep(keys[:1], 2.0, [Answer("x"), Answer("y")])


def test_the_answer_key_holds_every_setting_but_alpha():
    settings = {"method": "mean", "alpha": 1.0, "positions": "all", "seed": 0, "diagnostics": "d1"}
    key = answer_key(settings, "mc2_visual", 3, "17", "question", {"max_new_tokens": 6, "until": ["\n\n"]})
    assert key == answer_key({**settings, "alpha": 5.0, "diagnostics": None}, "mc2_visual", 3, "17", "question",
                             {"until": ["\n\n"], "max_new_tokens": 6})
    for other in [answer_key({**settings, "seed": 1}, "mc2_visual", 3, "17", "question", {"max_new_tokens": 6, "until": ["\n\n"]}),
                  answer_key(settings, "mc2_text", 3, "17", "question", {"max_new_tokens": 6, "until": ["\n\n"]}),
                  answer_key(settings, "mc2_visual", 4, "17", "question", {"max_new_tokens": 6, "until": ["\n\n"]}),
                  answer_key(settings, "mc2_visual", 3, "18", "question", {"max_new_tokens": 6, "until": ["\n\n"]}),
                  answer_key(settings, "mc2_visual", 3, "17", "question?", {"max_new_tokens": 6, "until": ["\n\n"]}),
                  answer_key(settings, "mc2_visual", 3, "17", "question", {"max_new_tokens": 7, "until": ["\n\n"]})]:
        assert other != key


def test_expanded_inputs_and_prefills_repeat_the_rows_alpha_major():
    from amps_eval.mcs.kv_cache import Prefill

    ids = torch.arange(6).reshape(2, 3)
    patches = torch.arange(10.0).reshape(5, 2)  # 3 patches of row 0's image, 2 of row 1's
    grids = torch.tensor([[1, 1, 3], [1, 1, 2]])
    out = expand_inputs({"input_ids": ids, "pixel_values": patches, "image_grid_thw": grids, "flag": "x"}, 3)
    assert torch.equal(out["input_ids"], torch.cat([ids, ids, ids])) and out["flag"] == "x"
    assert torch.equal(out["pixel_values"], torch.cat([patches] * 3))
    assert torch.equal(out["image_grid_thw"][2:4], grids)  # copy 1's images follow copy 0's, in row order
    assert expand_inputs({"input_ids": ids}, 1)["input_ids"] is ids
    positions = torch.arange(3 * 2 * 4).reshape(3, 2, 4)  # mrope [3, B, T]
    prefill = Prefill(torch.randn(2, 5), [torch.randn(2, 1, 3, 4)], [torch.randn(2, 1, 3, 4)], positions)
    two = expand_prefill(prefill, 2)
    assert two.position_ids.shape == (3, 4, 4) and torch.equal(two.position_ids[:, 2:], positions)
    assert torch.equal(two.keys[0][3], prefill.keys[0][1]) and torch.equal(two.logits[2], prefill.logits[0])
    flat = expand_prefill(Prefill(prefill.logits, prefill.keys, prefill.values, positions[0]), 2)
    assert flat.position_ids.shape == (4, 4)


def test_generated_lengths_end_at_each_rows_first_stop_token():
    pad, eos, turn = 0, 7, 9
    new = torch.tensor([[5, 7, 0, 0], [5, 6, 6, 6], [9, 0, 0, 0], [3, 9, 7, 0]])
    assert generated_lengths(new, [eos, turn]) == [2, 4, 1, 2]
    assert generated_lengths(new[:, :0], [eos]) == [0] * 4
    assert pad not in (eos, turn)


def test_the_effective_strength_counts_each_rows_own_tokens():
    """`_NormMeter` against a by-hand mean of 1/||h|| over each row's prompt and own decode steps."""
    meter = hooks._NormMeter(batch=2)
    prompt = torch.tensor([[[3.0, 4.0], [0.0, 2.0]], [[1.0, 0.0], [0.0, 4.0]]])  # norms 5, 2 / 1, 4
    meter.observe(prompt, torch.tensor([[True, True], [False, True]]))
    steps = [torch.tensor([[[0.0, 1.0]], [[0.0, 8.0]]]), torch.tensor([[[0.0, 10.0]], [[0.0, 16.0]]])]
    for j, h in enumerate(steps, 1):
        meter.observe(h, None, step=j)
    every = meter.mean_inverse()
    assert every.tolist() == pytest.approx([(1 / 5 + 1 / 2 + 1 + 1 / 10) / 4, (1 / 4 + 1 / 8 + 1 / 16) / 3])
    # row 0 generated 2 tokens (decode step 1 fed its first; step 2 fed its last, a stop token),
    # row 1 generated 3: step 2 fed its second
    own = meter.mean_inverse([2, 3])
    assert own.tolist() == pytest.approx([(1 / 5 + 1 / 2 + 1) / 3, (1 / 4 + 1 / 8 + 1 / 16) / 3])
    assert meter.mean_inverse([1, 1]).tolist() == pytest.approx([(1 / 5 + 1 / 2) / 2, 1 / 4])


# --- the wrappers: every alpha of a pass answers as its run alone -----------------------------------

def _diagnostics(folder):
    return [json.loads(line) for f in sorted(folder.glob("*.jsonl")) for line in f.read_text().splitlines()[1:]]


def _pass_and_alone(cls, path, task_dict, tmp_path, method, positions, batch_size):
    """The answers and diagnostics rows of each alpha: from one pass (3 wrappers of one SweepPass,
    counting the rows of every ``generate``), and from a run of each alpha alone at ``batch_size``."""
    requests = requests_for(task_dict, "mc2_visual", n=5, max_new_tokens=8) + requests_for(task_dict, "mc2_text", n=4,
                                                                                           max_new_tokens=8)
    # the wrappers' budget is the requests' 8 new tokens too (their default of 64 would win)
    args = {"batch_size": 3, "mcs_draws": 2, "positions": positions, "max_new_tokens": 8}
    sweep = SweepPass(ALPHAS)
    in_pass, calls = {}, []
    for alpha in (ALPHAS[1], ALPHAS[0], ALPHAS[2]):  # the first run need not be the first alpha
        wrapper = steered(cls, path, task_dict, tmp_path, method, alpha=alpha, diagnostics=str(tmp_path / f"p{alpha}"),
                          **args)
        wrapper.sweep = sweep
        generate = wrapper.model.generate
        wrapper.model.generate = lambda *a, _g=generate, **k: calls.append((alpha, k["input_ids"].shape[0])) or _g(*a, **k)
        try:
            in_pass[alpha] = (wrapper.generate_until(requests), _diagnostics(tmp_path / f"p{alpha}"))
        finally:
            del wrapper.model.generate
        assert _layer_hooks(wrapper) == 0
    assert len(sweep) == 0  # every kept answer was taken
    alone = {}
    for alpha in ALPHAS:
        wrapper = steered(cls, path, task_dict, tmp_path, method, alpha=alpha, diagnostics=str(tmp_path / f"a{alpha}"),
                          **{**args, "batch_size": batch_size})
        alone[alpha] = (wrapper.generate_until(requests), _diagnostics(tmp_path / f"a{alpha}"))
    return requests, in_pass, alone, calls


@pytest.mark.parametrize("family, method, positions", [("qwen", "mean", "all"), ("llava", "amps", "generated"),
                                                       ("qwen2", "mean_mcs", "from_last_prompt")])
def test_each_alpha_of_a_pass_answers_as_its_run_alone(family, method, positions, task_dict, tmp_path, request):
    """Same batches: same answers and diagnostics rows, from one generate per batch of items x alphas."""
    cls, fixture = {"qwen": (AmpsQwen, "tiny_qwen_path"), "llava": (AmpsLlava, "tiny_llava_path"),
                    "qwen2": (AmpsQwen2, "tiny_qwen2_path")}[family]
    path = request.getfixturevalue(fixture)
    requests, in_pass, alone, calls = _pass_and_alone(cls, path, task_dict, tmp_path, method, positions, batch_size=3)
    # 9 requests (same generation settings) in 3 batches of 3 items, each generated once with its 3 alphas,
    # by the first run; the later runs generate nothing
    assert calls == [(ALPHAS[1], 9)] * 3
    for alpha in ALPHAS:
        assert in_pass[alpha][0] == alone[alpha][0], alpha
        assert same_rows(in_pass[alpha][1], alone[alpha][1])  # the diagnostics rows, in file order
        assert len(alone[alpha][1]) == len(requests) and {r["alpha"] for r in alone[alpha][1]} == {alpha}
    assert in_pass[0.0][0] != in_pass[8.0][0]  # the alphas answered differently: a real check
    none = make_wrapper(cls, path, task_dict, batch_size=3, max_new_tokens=8).generate_until(requests)
    assert in_pass[0.0][0] == none  # the alpha-0 rows of a pass answer as the unsteered model


def test_an_items_answer_does_not_depend_on_the_rows_beside_it(tiny_qwen_path, task_dict, tmp_path):
    """Batch composition: each alpha's rows of a pass (3 items of different lengths, left-padded, beside
    the other alphas' rows) answer as the item alone in a batch of one, with the same diagnostics."""
    requests, in_pass, alone, _ = _pass_and_alone(AmpsQwen, tiny_qwen_path, task_dict, tmp_path, "amps", "all",
                                                  batch_size=1)
    wrapper = make_wrapper(AmpsQwen, tiny_qwen_path, task_dict, batch_size=3)
    prompts = [wrapper._prompt(i, r) for i, r in enumerate(requests)]
    mask = wrapper.encode_turns([p.turns for p in wrapper._batches(prompts)[0]]).inputs["attention_mask"]
    assert len(set(mask.sum(1).tolist())) > 1  # the batch's rows are left-padded to different widths
    for alpha in ALPHAS:
        assert in_pass[alpha][0] == alone[alpha][0], alpha
        by_doc = {(r["task"], r["doc_id"]): r for r in alone[alpha][1]}
        assert same_rows(in_pass[alpha][1], [by_doc[(r["task"], r["doc_id"])] for r in in_pass[alpha][1]])


def test_an_alpha_that_breaks_the_hidden_state_fails_only_its_own_run(tiny_qwen_path, task_dict, tmp_path):
    """1e30 overflows: the first run generates the other alphas without it, and the 1e30 run then fails
    as it does alone (same error); no hook is left behind."""
    requests = requests_for(task_dict, "mc2_visual", n=3)
    sweep = SweepPass((0.0, 1e30, 4.0))
    first = steered(AmpsQwen, tiny_qwen_path, task_dict, tmp_path, "mean", alpha=0.0, batch_size=3)
    first.sweep = sweep
    answers = first.generate_until(requests)
    assert len(sweep) == 3 and sweep.others(_keys(first, requests), 0.0) == (1e30,)
    broken = steered(AmpsQwen, tiny_qwen_path, task_dict, tmp_path, "mean", alpha=1e30, batch_size=3)
    broken.sweep = sweep
    with pytest.raises(SteeringNonFinite) as in_pass:
        broken.generate_until(requests)
    alone = steered(AmpsQwen, tiny_qwen_path, task_dict, tmp_path, "mean", alpha=1e30, batch_size=3)
    with pytest.raises(SteeringNonFinite) as by_itself:
        alone.generate_until(requests)
    assert str(in_pass.value) == str(by_itself.value) and "alpha=1e+30" in str(in_pass.value)
    assert _layer_hooks(first) == _layer_hooks(broken) == 0
    last = steered(AmpsQwen, tiny_qwen_path, task_dict, tmp_path, "mean", alpha=4.0, batch_size=3)
    last.sweep = sweep
    last.model.generate = None  # taken from the pass: nothing generated
    try:
        taken = last.generate_until(requests)
    finally:
        del last.model.generate
    assert taken == steered(AmpsQwen, tiny_qwen_path, task_dict, tmp_path, "mean", alpha=4.0,
                            batch_size=3).generate_until(requests)
    assert answers != taken


def _keys(wrapper, requests):
    prompts = [wrapper._prompt(i, r) for i, r in enumerate(requests)]
    return [answer_key(wrapper.settings.to_dict(), p.task, p.doc_id, p.item_id, r.args[0], r.args[1])
            for p, r in zip(prompts, requests)]


def test_a_run_with_other_settings_does_not_take_a_passes_answers(tiny_qwen_path, task_dict, tmp_path):
    requests = requests_for(task_dict, "mc2_text", n=2)
    sweep = SweepPass((1.0, 6.0))
    wrapper = steered(AmpsQwen, tiny_qwen_path, task_dict, tmp_path, "mean", alpha=1.0, batch_size=2)
    wrapper.sweep = sweep
    wrapper.generate_until(requests)
    other = steered(AmpsQwen, tiny_qwen_path, task_dict, tmp_path, "mean", alpha=6.0, batch_size=2, seed=1)
    assert sweep.take(_keys(other, requests), 6.0) is None and len(sweep) == 2
    prompt_method = make_wrapper(AmpsQwen, tiny_qwen_path, task_dict, method="inst", batch_size=2, sweep=sweep)
    assert prompt_method.generate_until(requests) == make_wrapper(AmpsQwen, tiny_qwen_path, task_dict, method="inst",
                                                                  batch_size=2).generate_until(requests)
    with pytest.raises(TypeError, match="SweepPass"):
        make_wrapper(AmpsQwen, tiny_qwen_path, task_dict, sweep=(1.0,))


# --- lmms-eval runs: `amps-eval sweep` and the study ------------------------------------------------

pytest.importorskip("lmms_eval")


@pytest.mark.slow
def _close(a, b, path: str = "") -> bool:
    """``a == b``, except that floats under a key naming image_logodds need only agree to rel 1e-5."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], f"{path}/{k}") for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, path) for x, y in zip(a, b))
    if "image_logodds" in path and isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7)
    return a == b


def test_a_sweep_in_one_pass_writes_the_files_of_one_run_per_alpha(tiny_qwen_path, synthetic_mc2_dir, tmp_path,
                                                                  monkeypatch):
    from amps_eval.report.sweep import SweepSettings, run_sweep

    task_dict = mc2_task_dict(synthetic_mc2_dir)
    steering = write_file(tmp_path / "mean.safetensors", tiny_qwen_path, "mean", task_dict)
    rows = []
    real = EvalSession.wrapper

    def counted(self, *args, **kwargs):
        wrapper = real(self, *args, **kwargs)
        generate = wrapper.model.generate
        if not hasattr(generate, "counted"):  # the session's one model: counted once
            wrapper.model.generate = lambda *a, **k: rows.append(k["input_ids"].shape[0]) or generate(*a, **k)
            wrapper.model.generate.counted = True
        return wrapper

    monkeypatch.setattr(EvalSession, "wrapper", counted)
    folders = {}
    for one_pass in (True, False):
        out = tmp_path / ("pass" if one_pass else "per_alpha")
        settings = SweepSettings(model="amps_qwen", pretrained=str(tiny_qwen_path), method="mean_mcs", steering=steering,
                                 alphas=(0.0, 3.0, 9.0), out=out, batch_size=2, limit=3, device="cpu",
                                 data=synthetic_mc2_dir, one_pass=one_pass,
                                 extra_model_args={"positions": "generated", "mcs_draws": "2",
                                                   "item_cache": str(tmp_path / f"cache_{one_pass}"),
                                                   "diagnostics": str(out / "diagnostics")})
        rows.clear()
        with EvalSession() as session:
            files = run_sweep(settings, progress=lambda _: None, session=session)
            assert session._sweep is None and session.loads == 1
            (loaded,) = session.models
            assert sum(len(layer._forward_hooks) for layer in hooks.decoder_layers(loaded.model)) == 0
        folders[one_pass] = (out, files, list(rows))
    (one, files_one, rows_one), (per, files_per, rows_per) = folders[True], folders[False]
    # 2 tasks x 3 documents in batches of 2: each batch generated once for 3 alphas, or once per alpha
    assert sum(rows_per) == 3 * 6 and rows_per == rows_per[: len(rows_per) // 3] * 3
    assert rows_one == [3 * n for n in rows_per[: len(rows_per) // 3]]
    assert [f.parent.parent.name for f in files_one] == ["alpha_0", "alpha_3", "alpha_9"]
    answers = set()
    for f_one, f_per in zip(files_one, files_per):
        results_one, samples_one, _ = _files(f_one.parent.parent)
        results_per, samples_per, _ = _files(f_per.parent.parent)

        def same_paths(value, a=str(one), b=str(per), c=str(tmp_path / "cache_True"), d=str(tmp_path / "cache_False")):
            return json.loads(json.dumps(value).replace(a, b).replace(c, d))

        # equal, but image_logodds (a float of the first step's logits) to rel 1e-5: a step over 3x the rows
        # rounds differently in the last bits, as the diagnostics' norms do (docs/sweeps.md)
        assert _close(same_paths(results_one), results_per)
        assert samples_one.keys() == samples_per.keys() and len(samples_one) == 2
        for task in samples_one:
            lines_one = [json.loads(line) for line in samples_one[task].splitlines()]
            lines_per = [json.loads(line) for line in samples_per[task].splitlines()]
            assert _close(lines_one, lines_per)
        answers.add(tuple(json.loads(line)["filtered_resps"] for text in samples_one.values() for line in text.splitlines()))
    assert len(answers) > 1  # the alphas answered differently

    def diagnostics(folder, same=lambda x: x):
        """alpha -> (the settings line, the rows) of each run's diagnostics file."""
        files = [[json.loads(same(line)) for line in p.read_text().splitlines()] for p in folder.glob("*.jsonl")]
        return {f[0]["settings"]["alpha"]: (f[0], f[1:]) for f in files}

    by_alpha_one = diagnostics(one / "diagnostics", lambda x: x.replace(str(one), str(per)).replace(
        str(tmp_path / "cache_True"), str(tmp_path / "cache_False")))
    by_alpha_per = diagnostics(per / "diagnostics")
    assert sorted(by_alpha_per) == [0.0, 3.0, 9.0] and sorted(by_alpha_one) == sorted(by_alpha_per)
    for alpha, (settings_per, rows_per) in by_alpha_per.items():
        settings_one, rows_one = by_alpha_one[alpha]
        assert settings_one == settings_per and len(rows_per) == 6  # one row per document
        assert same_rows(rows_one, rows_per)


def test_the_study_runs_each_sweep_in_one_pass(tmp_path, monkeypatch):
    """Step 5 of the study: every run of a method's sweep inside one `EvalSession.sweep` of its alphas."""
    from types import SimpleNamespace

    from amps_eval import study
    from amps_eval.methods.registry import STEERING_METHODS, info

    seen = []

    def run(self, model, args, tasks, out, **kwargs):
        values = dict(kv.split("=", 1) for kv in args.split(","))
        seen.append((values["method"], values.get("alpha"), None if self._sweep is None else self._sweep.alphas))
        results_file = out / "m" / "r_results.json"
        return SimpleNamespace(results={"results": {t: {"target_acc,none": 0.5} for t in tasks}},
                               results_file=results_file)

    monkeypatch.setattr(EvalSession, "run", run)
    files = {}  # one steering file per fitted method (one training seed)
    for method in STEERING_METHODS:
        files[info(method).file_method] = [tmp_path / f"{info(method).file_method}.safetensors"]
        files[info(method).file_method][0].write_bytes(b"")
    settings = study.StudySettings(out=tmp_path / "study", alphas=(0.0, 2.0), table_alpha=1.0)
    with EvalSession() as session:
        study._baselines_and_sweeps(settings, "amps_qwen", "some/checkpoint", files, tmp_path, tmp_path / "study",
                                    session, tmp_path / "cache")
    steered = [s for s in seen if s[0] in STEERING_METHODS]
    assert len(steered) == 3 * len(STEERING_METHODS)
    assert all(sweep == (0.0, 1.0, 2.0) for _, _, sweep in steered)
    assert all(sweep is None for m, _, sweep in seen if m not in STEERING_METHODS)


def test_the_sweep_command_runs_one_pass_unless_asked_per_alpha(tmp_path):
    from amps_eval.cli import build_parser
    from amps_eval.report.cli_parsers import sweep_settings

    (tmp_path / "s.safetensors").write_bytes(b"")
    line = ["sweep", "--model", "amps_qwen", "--pretrained", "p", "--method", "mean", "--steering",
            str(tmp_path / "s.safetensors"), "--alphas", "0,1", "--out", "o"]
    assert sweep_settings(build_parser().parse_args(line)).one_pass is True
    assert sweep_settings(build_parser().parse_args(line + ["--per-alpha"])).one_pass is False


@pytest.mark.slow
def test_the_sweep_benchmark_runs_in_its_dry_run_form(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_sweep.py"
    done = subprocess.run([sys.executable, str(script), "--dry-run", "--out", str(tmp_path / "bench.json")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "one pass" in done.stdout and "same answers: True" in done.stdout
    (sweep,) = json.loads((tmp_path / "bench.json").read_text())["sweeps"]
    assert sweep["alphas"] == [0.0, 2.0] and sweep["same_answers"] is True and sweep["ratio_one_pass_to_per_alpha"] > 0
