"""What a study will run, said before it starts: the methods and tasks chosen (``--methods``,
``--targets``), the steps with their items and runs, and an estimate of the time.

`select` turns the chosen methods into the runs: the prompt baselines among them, the steered
methods (each swept over every alpha) and the steering files those need (``mean_mcs`` reads the
``mean`` file). `plan` counts the work; `amps_eval.study_cost` prices it.
"""

from __future__ import annotations

from dataclasses import dataclass

from amps_eval.methods.registry import FIT_METHODS, PROMPT_METHODS, STEERING_METHODS, info

__all__ = ["MCS_PROMPTS", "TASKS", "Selection", "StudyPlan", "Step", "plan", "select"]

TASKS = {"vision": "mc2_visual", "text": "mc2_text"}
"""The task of each target."""
MCS_PROMPTS = ("none", "visual", "text")
"""The MCS step scores every item without an instruction and with each instruction (Figures 4, 5)."""


@dataclass(frozen=True)
class Selection:
    prompt_methods: tuple[str, ...]
    fit_methods: tuple[str, ...]
    steering_methods: tuple[str, ...]
    tasks: tuple[str, ...]


def select(methods: tuple[str, ...], targets: tuple[str, ...]) -> Selection:
    """The runs of the chosen ``methods`` on the chosen ``targets``, in the tables' order."""
    steering = tuple(m for m in STEERING_METHODS if m in methods)
    files = {info(m).file_method for m in steering}
    return Selection(
        prompt_methods=tuple(m for m in PROMPT_METHODS if m in methods),
        fit_methods=tuple(m for m in FIT_METHODS if m in files),
        steering_methods=steering,
        tasks=tuple(TASKS[t] for t in TASKS if t in targets),
    )


@dataclass(frozen=True)
class Step:
    """One step of the study for one model: ``runs`` passes over ``items`` items each."""

    name: str
    what: str
    runs: int
    items: int

    @property
    def item_passes(self) -> int:
        return self.runs * self.items


@dataclass(frozen=True)
class StudyPlan:
    models: tuple[str, ...]
    items: int
    steps: tuple[Step, ...]  # per model

    def lines(self) -> list[str]:
        """The plan as the study prints it."""
        out = [f"plan: {len(self.models)} model(s) ({', '.join(self.models)}) x {self.items} items, per model:"]
        out += [f"  {step.name:<10} {step.what}: {step.runs} pass(es) over the items" for step in self.steps]
        return out


def plan(models: tuple[str, ...], items: int, selection: Selection, alphas: tuple[float, ...]) -> StudyPlan:
    """The steps of a study over ``items`` items (after ``--limit``); each lmms-eval run is one pass
    over the items per task."""
    n_tasks = len(selection.tasks)
    steps = [Step("mcs", f"MCS, prompts {', '.join(MCS_PROMPTS)}", len(MCS_PROMPTS), items)]
    if selection.fit_methods:
        steps.append(Step("fit", f"hidden states and MLP fits ({', '.join(selection.fit_methods)})", 1, items))
    if selection.prompt_methods:
        steps.append(Step("baselines", f"{', '.join(selection.prompt_methods)} on {', '.join(selection.tasks)}",
                          len(selection.prompt_methods) * n_tasks, items))
    if selection.steering_methods:
        steps.append(Step("sweeps", f"{', '.join(selection.steering_methods)} x alpha {', '.join(f'{a:g}' for a in alphas)}"
                          f" on {', '.join(selection.tasks)}", len(selection.steering_methods) * len(alphas) * n_tasks,
                          items))
    return StudyPlan(tuple(models), items, tuple(steps))
