"""Every method the tables compare, declared once: name, row label, kind, and what it needs.

The wrappers' ``method=`` choices, ``amps-eval fit --method``, the study's lists, the steering
file's accepted kinds and the report's row names and order all derive from `METHODS`. A steered
method's behaviour (fitting and inference) lives in its own file under ``amps_eval.methods``
(``module``), loaded by `implementation`; this table imports nothing heavy, so the report can read
it without torch.

Adding a steering method: one file with a `amps_eval.methods.base.SteeringMethod` subclass, and
one entry here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class MethodInfo:
    """One method.

    name: the ``method=`` value; label: its row name in Tables 1-3 and the leaderboard;
    steered: its strength is ``alpha`` and it reads a steering file (else a prompt method);
    file_method: the kind of steering file it reads (``amps-eval fit --method <file_method>``);
    module: the file under ``amps_eval.methods`` that implements it (steered methods);
    fit_beta: AMPS's scaling exponent fixed by the method (None: the fit's ``beta`` setting);
    ablation: an ablation this project adds (``amps_beta0``; the paper has no such row): shown in
    the ablation table (Table 3), and in the method table (Table 1) only when it ran.
    needs_column: a column of the data its fit reads (``amps_oracle``: ``planted_p_vision`` of a
    graded folder); a study fits and runs it only on data that has it.
    """

    name: str
    label: str
    steered: bool = False
    file_method: str | None = None
    module: str | None = None
    fit_beta: float | None = None
    ablation: bool = False
    needs_column: str | None = None  # a data column the fit needs (only data that has it can be fitted)

    @property
    def fits(self) -> bool:
        """Whether ``amps-eval fit --method <name>`` writes its own kind of steering file."""
        return self.steered and self.file_method == self.name


METHODS: tuple[MethodInfo, ...] = (
    MethodInfo("none", "MLLM-only"),
    MethodInfo("inst", "Inst Design"),
    MethodInfo("cot", "CoT"),
    MethodInfo("fewshot", "Few shot"),
    MethodInfo("mean", "Mean steering", steered=True, file_method="mean", module="mean"),
    MethodInfo("mean_mcs", "Mean+MCS", steered=True, file_method="mean", module="mean_mcs"),
    MethodInfo("l2s", "L2S", steered=True, file_method="l2s", module="l2s"),
    MethodInfo("amps_beta0", "AMPS β=0 (γ≡1)", steered=True, file_method="amps_beta0", module="amps", fit_beta=0.0,
               ablation=True),
    MethodInfo("amps", "AMPS", steered=True, file_method="amps", module="amps"),
    MethodInfo("amps_oracle", "AMPS oracle", steered=True, file_method="amps_oracle",
               module="amps", ablation=True, needs_column="planted_p_vision"),
)
"""In the tables' row order."""

BY_NAME: dict[str, MethodInfo] = {m.name: m for m in METHODS}
PROMPT_METHODS: tuple[str, ...] = tuple(m.name for m in METHODS if not m.steered)
STEERING_METHODS: tuple[str, ...] = tuple(m.name for m in METHODS if m.steered)
FIT_METHODS: tuple[str, ...] = tuple(m.name for m in METHODS if m.fits)
"""The kinds of steering file `amps-eval fit` writes."""
LABELS: dict[str, str] = {m.name: m.label for m in METHODS}


def usable_on(methods, columns) -> tuple[str, ...]:
    """The methods of ``methods`` whose fit can run on data with ``columns`` (``needs_column``)."""
    columns = set(columns)
    return tuple(m for m in methods if info(m).needs_column is None or info(m).needs_column in columns)


def info(name: str) -> MethodInfo:
    """The method called ``name``; an unknown name is an error that lists the valid ones."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(BY_NAME)}") from None


def implementation(name: str):
    """The `SteeringMethod` object of a steered method (imports its file, and torch)."""
    method = info(name)
    if not method.steered:
        raise ValueError(f"method {name!r} is a prompt method: it has no steering implementation")
    module = importlib.import_module(f"amps_eval.methods.{method.module}")
    return module.METHODS[name]
