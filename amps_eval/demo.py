"""`make demo`: the whole pipeline end to end on the embedded default, offline, on CPU.

1. write the generated MC2-format dataset (`amps_eval.mc2.synthetic`) and point the tasks at it;
2. build tiny models of both real architectures (`amps_eval.testing.tiny_models`);
3. evaluate every prompt method on `mc2_visual` and `mc2_text` through lmms-eval;
4. print a table of target share and collapse rate per model, method and target.

The tiny models are randomly initialised: their answers mostly follow neither option, so the
numbers show that the pipeline runs, not a modality preference.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from amps_eval.mc2.source import ENV_VAR

MODELS = {"amps_qwen": "build_tiny_qwen", "amps_llava": "build_tiny_llava"}


@dataclass(frozen=True)
class DemoSettings:
    out: Path = Path("results/demo")
    methods: tuple[str, ...] = ("none", "inst", "cot", "fewshot")
    models: tuple[str, ...] = tuple(MODELS)
    tasks: tuple[str, ...] = ("mc2_visual", "mc2_text")
    n_per_category: int = 4
    limit: int | None = None
    batch_size: int = 4
    seed: int = 0
    extra_model_args: dict = field(default_factory=dict)


def run_demo(settings: DemoSettings) -> list[dict]:
    from tabulate import tabulate

    from amps_eval.mc2.synthetic import write_synthetic_mc2
    from amps_eval.runner import run_lmms_eval
    from amps_eval.testing import tiny_models

    out = Path(settings.out)
    data = out / "data"
    if not (data / "mc2_manifest.json").exists():
        write_synthetic_mc2(data, n_per_category=settings.n_per_category, seed=settings.seed)
    os.environ[ENV_VAR] = str(data.resolve())
    print(f"[demo] data: {data} (generated MC2 set; {ENV_VAR} set for this run)")

    rows = []
    for model in settings.models:
        path = getattr(tiny_models, MODELS[model])(out / "models" / model, seed=settings.seed)
        print(f"[demo] {model}: tiny random model at {path}")
        for method in settings.methods:
            args = {"pretrained": str(path), "method": method, "device": "cpu", **settings.extra_model_args}
            if method == "cot":  # a random tiny model never stops early: keep the demo short
                args.setdefault("cot_max_new_tokens", 32)
            run = run_lmms_eval(
                model,
                ",".join(f"{k}={v}" for k, v in args.items()),
                list(settings.tasks),
                out / "lmms-eval" / model / method,
                batch_size=settings.batch_size,
                limit=settings.limit,
            )
            for task in settings.tasks:
                metrics = run.results["results"][task]
                rows.append(
                    {
                        "model": model,
                        "method": method,
                        "task": task,
                        "target %": 100 * metrics["target_acc,none"],
                        "others %": 100 * metrics["others_rate,none"],
                        "n": run.results["n-samples"][task]["effective"],
                    }
                )
    print(tabulate(rows, headers="keys", floatfmt=".1f", tablefmt="github"))
    print(f"[demo] lmms-eval result files under {out / 'lmms-eval'}")
    return rows
