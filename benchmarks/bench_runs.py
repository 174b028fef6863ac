"""Benchmark: what computing nothing twice saves in the lmms-eval runs of a sweep or the study.

Part ``session``: K prompt-baseline runs (``none`` and ``inst`` in turn, ``--limit`` items of mc2_visual each, the shipped organism)
run by model name (`amps_eval.runner.run_lmms_eval` without a session: every run loads the model and
indexes the tasks, as sweeps and the study did) against the same K runs in one
`amps_eval.runner.EvalSession` (one load, one task index, a fresh wrapper per run). Rounds alternate
the two arms (by name, session, session, by name, ...). Reported: the median seconds per run of
each arm, their ratio, and the saving per run; and, timed on their own, the two costs a session
pays once instead of per run: loading the model (`LoadedModel.load`) and building the task index
(`TaskManager`).

Part ``cleanup``: K prompt-baseline runs in one session with the wrappers skipping lmms-eval's
clean-up after each run (``AmpsWrapper.clean``: the session owns the load) against the same runs
with lmms-eval's clean-up (two full garbage collections and the device caches emptied), rounds
alternating; CPU seconds per run and their ratio.

Part ``mean_mcs``: ``generate_until`` over the same requests (``--batch-size`` rows per batch,
left-padded) for ``none`` (no steering) and ``mean_mcs`` with the default MCS settings at
``positions=generated`` (generation continues from the MCS prefill), ``positions=generated`` with
the former path (the MCS prefills, then generate prefills again: ``generated-twice``) and
``positions=all`` (two prefills: the steering changes the prompt's cache). Repetitions rotate the arm
order. Reported: median seconds per call and the ratio to ``none``. Target: mean_mcs <= 1.3x none.

    .venv/bin/python benchmarks/bench_runs.py              # the qwen organism on CPU
    .venv/bin/python benchmarks/bench_runs.py --model amps_llava --out results/bench_runs.json
    .venv/bin/python benchmarks/bench_runs.py --dry-run    # the tests: 2 runs of 2 items, 1 round, 2 requests, 1 rep

``--dry-run`` checks that the script runs (its figures mean nothing): ``--runs 2 --rounds 1 --limit 2
--requests 2 --batch-size 2 --new-tokens 2 --reps 1``, the model load and the task index timed once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_runtime_args, runtime  # noqa: E402


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_session(model: str, pretrained: str, data: Path, device: str, runs: int, rounds: int, limit: int,
                  work: Path, timings: int = 3) -> dict:
    from amps_eval.model_wrappers.loaded import LoadedModel
    from amps_eval.model_wrappers.registered import WRAPPERS
    from amps_eval.runner import EvalSession, _task_manager, run_lmms_eval

    methods = [("none", "inst")[i % 2] for i in range(runs)]  # short answers (cot's budget is 512 tokens)
    args = [f"pretrained={pretrained},method={m},device={device}" for m in methods]
    common = {"data": data, "limit": limit, "batch_size": 4}
    times = {"by_name": [], "session": []}

    def by_name(r):
        for i, a in enumerate(args):
            run_lmms_eval(model, a, ["mc2_visual"], work / f"name_{r}_{i}", **common)

    def in_session(r):
        with EvalSession() as session:
            for i, a in enumerate(args):
                session.run(model, a, ["mc2_visual"], work / f"session_{r}_{i}", **common)

    in_session(-1)  # warm-up: imports, dataset cache
    for r in range(rounds):
        order = ["by_name", "session"] if r % 2 == 0 else ["session", "by_name"]
        for arm in order:
            seconds = _timed(lambda: (by_name if arm == "by_name" else in_session)(r))
            times[arm].append(seconds / len(args))
    cls = WRAPPERS[model]
    settings = cls.settings_class.from_model_args(pretrained=pretrained, device=device)
    load = [_timed(lambda: LoadedModel.load(cls.family, settings)) for _ in range(timings)]
    index = [_timed(lambda: _task_manager("WARNING")) for _ in range(timings)]
    per_name, per_session = statistics.median(times["by_name"]), statistics.median(times["session"])
    return {"runs_per_round": len(args), "rounds": rounds, "limit": limit, "seconds_per_run": times,
            "median_by_name": per_name, "median_session": per_session, "ratio_session_to_by_name": per_session / per_name,
            "saved_per_run": per_name - per_session, "load_seconds": statistics.median(load),
            "task_index_seconds": statistics.median(index)}


def bench_cleanup(model: str, pretrained: str, data: Path, device: str, runs: int, rounds: int, limit: int,
                  work: Path) -> dict:
    """``runs`` prompt-baseline runs in one session, the wrappers skipping lmms-eval's clean-up after
    each run (today: the session owns the load) against the same runs with it (``lmms.clean``: two
    full garbage collections and the device caches emptied); rounds alternate the arms. CPU seconds
    of this process per run (the clean-up is CPU work, and CPU time is less hurt by a loaded
    machine than wall time)."""
    import lmms_eval.api.model

    from amps_eval.model_wrappers.registered import WRAPPERS
    from amps_eval.runner import EvalSession

    cls = WRAPPERS[model]
    methods = [("none", "inst")[i % 2] for i in range(runs)]
    args = [f"pretrained={pretrained},method={m},device={device}" for m in methods]
    times = {"skipped": [], "lmms_eval": []}
    with EvalSession() as session:
        session.run(model, args[0], ["mc2_visual"], work / "cleanup_warm", data=data, limit=limit, batch_size=4)
        for r in range(rounds):
            for arm in (["skipped", "lmms_eval"] if r % 2 == 0 else ["lmms_eval", "skipped"]):
                real = cls.clean
                if arm == "lmms_eval":
                    cls.clean = lmms_eval.api.model.lmms.clean  # what lmms-eval does after every run
                try:
                    start = time.process_time()
                    for i, a in enumerate(args):
                        session.run(model, a, ["mc2_visual"], work / f"cleanup_{arm}_{r}_{i}", data=data, limit=limit,
                                    batch_size=4)
                    times[arm].append((time.process_time() - start) / len(args))
                finally:
                    cls.clean = real
    skipped, cleaned = statistics.median(times["skipped"]), statistics.median(times["lmms_eval"])
    return {"runs_per_round": runs, "rounds": rounds, "limit": limit, "cpu_seconds_per_run": times,
            "median_skipped": skipped, "median_lmms_eval": cleaned, "ratio_skipped_to_lmms_eval": skipped / cleaned,
            "saved_per_run": cleaned - skipped}


def _mean_file(path: Path, pretrained: str, layer: int, ids: list[str]) -> Path:
    """A mean steering file with random vectors, 2 folds over ``ids`` and a 0.5 anchor."""
    from transformers import AutoConfig

    from amps_eval.steering.file import Fold, SteeringFile

    config = AutoConfig.from_pretrained(pretrained)
    text = config.get_text_config()
    generator = torch.Generator().manual_seed(0)
    folds = []
    for k in range(2):
        v = torch.randn(text.hidden_size, generator=generator)
        folds.append(Fold(f"fold{k}", [i for i in ids if i not in ids[k::2]], ids[k::2],
                          {"vision.vector": v, "text.vector": -v}, None))
    SteeringFile(method="mean", layer=layer, hidden_size=text.hidden_size, num_layers=text.num_hidden_layers,
                 model_id=str(pretrained), architecture=config.architectures[0], folds=folds,
                 anchors={"__all__": 0.5}).save(path)
    return path


def bench_mean_mcs(model: str, pretrained: str, data: Path, device: str, n: int, batch_size: int, reps: int,
                   new_tokens: int, work: Path) -> dict:
    from types import SimpleNamespace

    from amps_eval.mc2.docs import TaskSpec, task_docs
    from amps_eval.mc2.prompt import doc_prompt
    from amps_eval.mc2.source import load_mc2, resolve_source
    from amps_eval.model_wrappers.registered import WRAPPERS
    from amps_eval.runner import EvalSession

    docs = task_docs(load_mc2(resolve_source({"AMPS_MC2_DATA": str(data)})), TaskSpec("vision"))
    gen = {"max_new_tokens": new_tokens, "do_sample": False, "temperature": 0}
    requests = [SimpleNamespace(args=(doc_prompt(docs[i]), gen, lambda d: [d["image"].convert("RGB")], i, "mc2_visual",
                                      "test")) for i in range(n)]
    from transformers import AutoConfig

    layer = AutoConfig.from_pretrained(pretrained).get_text_config().num_hidden_layers // 2
    steering = _mean_file(work / "mean.safetensors", pretrained, layer, sorted({str(i) for i in docs["mc2_id"]}))
    base = f"pretrained={pretrained},device={device},batch_size={batch_size},max_new_tokens={new_tokens}"
    arms = {"none": base, "generated": f"{base},method=mean_mcs,steering={steering},positions=generated",
            "generated-twice": f"{base},method=mean_mcs,steering={steering},positions=generated",
            "all": f"{base},method=mean_mcs,steering={steering},positions=all"}
    times = {arm: [] for arm in arms}
    answers = {}
    with EvalSession() as session:
        wrappers = {arm: session.wrapper(model, a) for arm, a in arms.items()}
        wrappers["generated-twice"].steering._prefill = lambda model, batch: None  # the former path
        for w in wrappers.values():
            w.task_dict = {"mc2_visual": {"test": docs}}
        names = list(arms)
        for arm in names:  # warm-up
            answers[arm] = wrappers[arm].generate_until(requests)
        for r in range(reps):
            for arm in names[r % len(names):] + names[: r % len(names)]:
                times[arm].append(_timed(lambda: wrappers[arm].generate_until(requests)))
    medians = {arm: statistics.median(t) for arm, t in times.items()}
    return {"requests": n, "batch_size": batch_size, "new_tokens": new_tokens, "reps": reps, "seconds": times,
            "median": medians, "ratio_to_none": {arm: medians[arm] / medians["none"] for arm in arms},
            "same_answers_generated_vs_twice": answers["generated"] == answers["generated-twice"]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="amps_qwen", help="lmms-eval model whose shipped organism is measured")
    ap.add_argument("--part", choices=("session", "mean_mcs", "cleanup", "all"), default="all")
    ap.add_argument("--runs", type=int, default=4, help="session: runs per round (none and inst in turn)")
    ap.add_argument("--rounds", type=int, default=4, help="session: rounds per arm")
    ap.add_argument("--limit", type=int, default=4, help="session: items of mc2_visual per run")
    ap.add_argument("--requests", type=int, default=8, help="mean_mcs: requests per generate_until call")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--reps", type=int, default=4, help="mean_mcs: timed calls per arm")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes, seconds (module docstring; the tests)")
    add_runtime_args(ap)
    args = ap.parse_args(argv)
    if args.dry_run:
        args.runs, args.rounds, args.limit, args.requests, args.batch_size, args.new_tokens, args.reps = 2, 1, 2, 2, 2, 2, 1
    device, _ = runtime(args)

    from amps_eval.mc2.synthetic import write_synthetic_mc2
    from amps_eval.organism import organism_path

    pretrained = str(organism_path(args.model))
    out = {"model": args.model, "pretrained": pretrained, "device": str(device), "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "mc2"
        write_synthetic_mc2(data, n_per_category=2, seed=3, progress=False)
        if args.part in ("session", "all"):
            s = bench_session(args.model, pretrained, data, str(device), args.runs, args.rounds, args.limit, work,
                              timings=1 if args.dry_run else 3)
            out["session"] = s
            print(f"session ({args.model} organism, {s['runs_per_round']} runs of {s['limit']} items, {s['rounds']} rounds):")
            print(f"  by name {s['median_by_name']:.3f} s/run, in one session {s['median_session']:.3f} s/run: "
                  f"ratio {s['ratio_session_to_by_name']:.3f}, saved {s['saved_per_run']:.3f} s/run")
            print(f"  on their own: model load {s['load_seconds']:.3f} s, task index {s['task_index_seconds']:.3f} s")
        if args.part in ("cleanup", "all"):
            c = bench_cleanup(args.model, pretrained, data, str(device), args.runs, args.rounds, args.limit, work)
            out["cleanup"] = c
            print(f"cleanup ({args.model} organism, {c['runs_per_round']} runs of {c['limit']} items in one session, "
                  f"{c['rounds']} rounds, CPU seconds of this process):")
            print(f"  lmms-eval's clean-up after each run {c['median_lmms_eval']:.3f} s/run, skipped (the session owns "
                  f"the load) {c['median_skipped']:.3f} s/run: ratio {c['ratio_skipped_to_lmms_eval']:.3f}, saved "
                  f"{c['saved_per_run']:.3f} s/run")
        if args.part in ("mean_mcs", "all"):
            m = bench_mean_mcs(args.model, pretrained, data, str(device), args.requests, args.batch_size, args.reps,
                               args.new_tokens, work)
            out["mean_mcs"] = m
            print(f"mean_mcs ({args.model} organism, {m['requests']} requests, batch {m['batch_size']}, "
                  f"{m['new_tokens']} new tokens, {m['reps']} reps; same answers generated vs twice: "
                  f"{m['same_answers_generated_vs_twice']}):")
            for arm, t in m["median"].items():
                print(f"  {arm:16s} {t:8.3f} s/call  x{m['ratio_to_none'][arm]:.2f} of none")
            verdict = "met" if m["ratio_to_none"]["generated"] <= 1.3 else "NOT met"
            print(f"  target mean_mcs (positions=generated) <= 1.3x none: {verdict}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
