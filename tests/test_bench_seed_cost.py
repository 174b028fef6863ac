"""benchmarks/bench_seed_cost.py in its tiny dry-run form: every trained method fitted per seed, the
first fit (with the extraction) told apart from what one more seed costs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (ROOT / "results" / "demo" / "data").is_dir(), reason="no committed demo data")
def test_the_seed_cost_benchmark_dry_run(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_seed_cost import main

    from amps_eval.study import TRAINED

    rows = main(["--limit", "4", "--epochs", "2", "--seeds", "2", "--out", str(tmp_path / "t.json")])
    plain = [m for m in TRAINED if m != "amps_oracle"]  # the oracle needs graded data
    assert [(r["seed"], r["method"]) for r in rows] == [(s, m) for s in (0, 1) for m in plain]
    assert [r["extraction"] for r in rows] == [True] + [False] * 5
    assert json.loads((tmp_path / "t.json").read_text()) == rows
    assert "one more seed:" in capsys.readouterr().out
