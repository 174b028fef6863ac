"""Shared pytest fixtures.

Tiny checkpoints of the real architectures (see `amps_eval.tiny_models`) are built once
per test session into a temporary folder and loaded by each test through the same
`from_pretrained` / `load_processor` calls a real checkpoint goes through.
"""

from __future__ import annotations

import os

# One CPU thread per torch process, for the tests and the processes they start (lmms-eval, amps-eval),
# unless OMP_NUM_THREADS is already set: tiny models have nothing to parallelise, and on a shared
# machine every multi-threaded op waits for its threads (benchmarks/common.py: THREADS_HELP); a
# token of a tiny Qwen2.5-VL measured 13 ms with one thread and 200 ms with two on the loaded 2-core
# CI machine. Set before torch is imported, so torch and the child processes read it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from amps_eval.tiny_models import tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Cache folder for tiny checkpoints, shared by the whole session."""
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="session")
def tiny_qwen_path(tiny_models_root: Path) -> Path:
    """Folder of a tiny Qwen2.5-VL checkpoint (seed 0), hub layout."""
    return tiny_model("qwen2_5_vl", tiny_models_root, seed=0)


@pytest.fixture(scope="session")
def tiny_llava_path(tiny_models_root: Path) -> Path:
    """Folder of a tiny LLaVA-1.5 checkpoint (seed 0), hub layout."""
    return tiny_model("llava", tiny_models_root, seed=0)


@pytest.fixture(scope="session")
def tiny_qwen2_path(tiny_models_root: Path) -> Path:
    """Folder of a tiny Qwen2-VL checkpoint (seed 0), hub layout."""
    return tiny_model("qwen2_vl", tiny_models_root, seed=0)


@pytest.fixture
def rng() -> np.random.Generator:
    """A freshly seeded NumPy generator, so every test draws the same numbers in any order."""
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def synthetic_mc2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated MC2 set (3 items per category) written as a prepared folder."""
    from amps_eval.mc2.synthetic import write_synthetic_mc2

    out = tmp_path_factory.mktemp("mc2") / "synthetic"
    write_synthetic_mc2(out, n_per_category=3, seed=0, progress=False)
    return out


@pytest.fixture
def mc2_env(synthetic_mc2_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the MC2 tasks at the generated set for one test."""
    from amps_eval.mc2.source import ENV_VAR

    monkeypatch.setenv(ENV_VAR, str(synthetic_mc2_dir))
    return synthetic_mc2_dir


@pytest.fixture(scope="session")
def task_dict(synthetic_mc2_dir: Path) -> dict:
    """`lm.task_dict` as lmms-eval gives it to a model: the mc2_visual and mc2_text documents."""
    from wrapper_helpers import mc2_task_dict

    return mc2_task_dict(synthetic_mc2_dir)


@pytest.fixture(params=["qwen", "llava", "qwen2"])
def arch(request: pytest.FixtureRequest):
    """(wrapper class, tiny checkpoint folder) for each model family."""
    from amps_eval.model_wrappers.registered import AmpsLlava, AmpsQwen, AmpsQwen2

    cls, fixture = {"qwen": (AmpsQwen, "tiny_qwen_path"), "llava": (AmpsLlava, "tiny_llava_path"),
                    "qwen2": (AmpsQwen2, "tiny_qwen2_path")}[request.param]
    return cls, request.getfixturevalue(fixture)
