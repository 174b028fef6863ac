"""The study's plan and estimate, said before it starts, and the cost model behind docs/cost.md
(issue 22, "The cost known before the run"). The sizes are checked against the figures
bench_full_size.py printed (benchmarks/README.md), the times against a hand count."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from amps_eval.study import StudySettings
from amps_eval.study_cost import DEVICES, SIZES, by_config, generation_bytes, mcs_copy_bytes, step_seconds, weights_bytes
from amps_eval.mcs.settings import MCSSettings
from amps_eval.study_plan import StepClock, plan, print_plan, runnable_on, select, step_minutes

MIB, GIB = 2**20, 2**30
# benchmarks/README.md, "Full-size widths", float32 at full depth: weights GiB; "MCS K/V (clean + 12
# copies + grads)" MiB, i.e. 25 cut caches; "KV cache, N tokens (prompt + new)" MiB with 16 new tokens
PRINTED = {
    "qwen2.5-vl-3b": (13.99, 856.1, 35.4),
    "qwen2.5-vl-7b": (30.89, 1331.6, 55.1),
    "llava-1.5-7b": (26.31, 16425.0, 674.0),
    "llava-1.5-13b": (49.74, 25664.1, 1053.1),
}


@pytest.mark.parametrize("sizes", SIZES, ids=[s.name for s in SIZES])
def test_the_sizes_give_back_the_benchmark_s_printed_projections(sizes):
    weights_f32, mcs_f32, kv_f32 = PRINTED[sizes.name]
    assert weights_bytes(sizes) * 2 / GIB == pytest.approx(weights_f32, abs=0.01)  # bf16 is half of float32
    assert mcs_copy_bytes(sizes) / MIB == pytest.approx(mcs_f32 / 25, rel=1e-3)  # copy + gradient in bf16 = 1 float32 cut cache
    kv = generation_bytes(sizes, batch=1, new_tokens=16) - weights_bytes(sizes)
    assert kv * 2 / MIB == pytest.approx(kv_f32, rel=2e-3)
    assert sizes.params == sizes.params_per_layer * sizes.layers + sizes.vision_params + sizes.other_params
    assert by_config(sizes.model_type, sizes.hidden, sizes.layers) == sizes


def test_the_time_model_is_the_documented_count():
    qwen7b, h100 = SIZES[1], DEVICES["h100"]
    flops, bandwidth = 0.4 * 989e12, 0.6 * 3.35e12
    prefill = 2 * 233_057_792 * 28 * 488 + 2 * 19_702_200 * 32 * 1564 + 1_136_078_080
    decode = 64 * 8_292_166_656 * 2 / bandwidth / 8
    assert step_seconds("generate", qwen7b, h100) == pytest.approx(prefill / flops + decode)
    one_token = 2 * 233_057_792 * 28 + 1_136_078_080
    copies = 96 * 2 * 487 * 28 * 2048
    assert step_seconds("mcs", qwen7b, h100) == pytest.approx((prefill + 96 * 3 * one_token) / flops + copies / bandwidth)
    assert step_seconds("generate", qwen7b, h100, batch=16) < step_seconds("generate", qwen7b, h100)
    with pytest.raises(ValueError, match="unknown step"):
        step_seconds("train", qwen7b, h100)


def test_the_plan_counts_the_passes_of_each_step():
    settings = StudySettings()
    full = plan(("m",), 1000, select(settings.methods, settings.targets), settings.alphas)
    # 6 steered methods (amps_oracle included) x 5 alphas x 2 tasks; with 3 training seeds the four
    # methods that read a trained file (l2s, amps_beta0, amps, amps_oracle) are swept 3 times each
    assert [(s.name, s.runs) for s in full.steps] == [("mcs", 3), ("fit", 1), ("baselines", 8), ("sweeps", 60)]
    seeded = plan(("m",), 1000, select(settings.methods, settings.targets), settings.alphas, seeds=3)
    assert seeded.steps[-1].runs == (1 + 1 + 4 * 3) * 5 * 2
    plain = runnable_on(select(settings.methods, settings.targets), ())  # not graded data: no oracle
    assert "amps_oracle" not in plain.steering_methods + plain.fit_methods
    assert plan(("m",), 1000, plain, settings.alphas).steps[-1].runs == 50
    subset = plan(("m", "n"), 200, select(("none", "inst", "l2s", "amps"), ("vision",)), (0.0, 1.0))
    assert [(s.name, s.runs) for s in subset.steps] == [("mcs", 3), ("fit", 1), ("baselines", 2), ("sweeps", 4)]
    assert "2 model(s)" in subset.lines()[0] and "200 items" in subset.lines()[0]
    prompts_only = plan(("m",), 10, select(("none",), ("text",)), (1.0,))
    assert [s.name for s in prompts_only.steps] == ["mcs", "baselines"]


def test_the_minutes_of_a_step_are_its_passes_times_the_item_cost():
    settings = StudySettings()
    selection = select(settings.methods, settings.targets)
    the_plan = plan(("m",), 1000, selection, settings.alphas)
    minutes = dict(step_minutes(the_plan, selection, SIZES[0], DEVICES["h100"], 8, 96))
    assert minutes["sweeps"] == pytest.approx(60 * 1000 * step_seconds("generate", SIZES[0], DEVICES["h100"]) / 60)
    assert minutes["mcs"] == pytest.approx(3 * 1000 * step_seconds("mcs", SIZES[0], DEVICES["h100"]) / 60)
    plain = 1000 * 2 * step_seconds("generate", SIZES[0], DEVICES["h100"]) / 60
    assert minutes["baselines"] > 4 * plain  # cot's 512 tokens and fewshot's three images cost more


def test_the_step_clock_projects_the_rest_from_what_is_done():
    now = [0.0]
    clock = StepClock("sweeps", 10, clock=lambda: now[0])
    now[0] = 60.0
    assert clock.advance(2) == "  [sweeps] 2/10 passes done in 60 s, about 4.0 min left"
    now[0] = 300.0
    assert clock.advance(8) == "  [sweeps] 10/10 passes done in 5.0 min"


def test_the_study_prints_its_plan_before_it_starts(capsys, monkeypatch, tmp_path):
    print_plan(StudySettings(n_per_category=2, methods=("none", "amps"), targets=("vision",)))
    out = capsys.readouterr().out
    assert "plan: 1 model(s) (amps_qwen) x 16 items" in out and "sweeps" in out and "15 pass(es)" in out  # amps: 3 seeds
    assert "estimate: none (not on a GPU" in out
    from transformers import Qwen2_5_VLConfig

    Qwen2_5_VLConfig(text_config={"hidden_size": 3584, "num_hidden_layers": 28}).save_pretrained(tmp_path)
    monkeypatch.setattr("amps_eval.study_plan._gpu_name", lambda device: "Test GPU")
    print_plan(StudySettings(pretrained=str(tmp_path), data=None, n_per_category=125))  # 1,000 items
    out = capsys.readouterr().out
    assert "estimate (projected lower bounds for qwen2.5-vl-7b on an H100" in out and "your GPU: Test GPU" in out
    total = float(out.split("in all at least ")[1].split(" min")[0])
    settings = StudySettings()
    selection = runnable_on(select(settings.methods, settings.targets), ())  # a real checkpoint: no oracle
    the_plan = plan(("m",), 1000, selection, settings.alphas, settings.seeds)
    expected = sum(m for _, m in step_minutes(the_plan, selection, SIZES[1], DEVICES["h100"], settings.batch_size,
                                              MCSSettings().perturbations_per_sample))
    assert total == pytest.approx(expected, abs=0.5)


def test_the_cost_table_script_prints_every_size():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "cost_table.py"
    spec = importlib.util.spec_from_file_location("cost_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.main(["--items", "1000"])
    assert "PROJECTED" in text
    for sizes in SIZES:
        row = next(line for line in text.splitlines() if line.startswith(f"| {sizes.name} "))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[2]) == pytest.approx(weights_bytes(sizes) / GIB, abs=0.05)
        assert math.isclose(float(cells[-1]), sum(float(c) for c in cells[5:9]), abs_tol=1)
