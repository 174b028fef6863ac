"""What a study will run, said before it starts: the methods and tasks chosen (``--methods``,
``--targets``), the steps with their items and runs, and an estimate of the time.

`select` turns the chosen methods into the runs: the prompt baselines among them, the steered
methods (each swept over every alpha) and the steering files those need (``mean_mcs`` reads the
``mean`` file). `plan` counts the work; `amps_eval.study_cost` prices it.
"""

from __future__ import annotations

from dataclasses import dataclass

from amps_eval.methods.registry import FIT_METHODS, PROMPT_METHODS, STEERING_METHODS, info

__all__ = ["MCS_PROMPTS", "TASKS", "TRAINED", "Selection", "Step", "StudyPlan", "estimate_lines", "plan", "print_plan",
           "runnable_on", "select", "step_minutes", "StepClock"]

TRAINED = ("l2s", "amps_beta0", "amps", "amps_oracle")
"""The fitted methods whose fit trains an MLP from a random start (the mean fit is a plain average):
with ``seeds`` > 1 each is fitted once per training seed (`TrainSettings.seed` 0, 1, ...; the
cross-fit folds stay the same), and every steered method that reads it is swept once per file."""

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


def runnable_on(selection: Selection, columns) -> Selection:
    """``selection`` without the methods whose fit needs a data column that ``columns`` lacks
    (``amps_oracle`` runs only on graded data)."""
    columns = set(columns)

    def ok(method: str) -> bool:
        needs = info(info(method).file_method or method).needs_column
        return needs is None or needs in columns

    return Selection(selection.prompt_methods, tuple(m for m in selection.fit_methods if ok(m)),
                     tuple(m for m in selection.steering_methods if ok(m)), selection.tasks)


def plan(models: tuple[str, ...], items: int, selection: Selection, alphas: tuple[float, ...],
         seeds: int = 1) -> StudyPlan:
    """The steps of a study over ``items`` items (after ``--limit``); each lmms-eval run is one pass
    over the items per task; a steered method that reads a trained file is swept once per seed."""
    n_tasks = len(selection.tasks)
    sweeps = sum(seeds if info(m).file_method in TRAINED else 1 for m in selection.steering_methods)
    steps = [Step("mcs", f"MCS, prompts {', '.join(MCS_PROMPTS)}", len(MCS_PROMPTS), items)]
    if selection.fit_methods:
        steps.append(Step("fit", f"hidden states and MLP fits ({', '.join(selection.fit_methods)})", 1, items))
    if selection.prompt_methods:
        steps.append(Step("baselines", f"{', '.join(selection.prompt_methods)} on {', '.join(selection.tasks)}",
                          len(selection.prompt_methods) * n_tasks, items))
    if selection.steering_methods:
        steps.append(Step("sweeps", f"{', '.join(selection.steering_methods)} x alpha {', '.join(f'{a:g}' for a in alphas)}"
                          f" on {', '.join(selection.tasks)}" + (f", {seeds} training seeds" if seeds > 1 else ""),
                          sweeps * len(alphas) * n_tasks,
                          items))
    return StudyPlan(tuple(models), items, tuple(steps))


def step_minutes(the_plan: StudyPlan, selection: Selection, sizes, device, batch: int,
                 perturbations: int) -> list[tuple[str, float]]:
    """Projected minutes of each step for one model (`amps_eval.study_cost`; lower bounds)."""
    from amps_eval.cli_options import default_of
    from amps_eval.settings import WrapperSettings
    from amps_eval.study_cost import step_seconds

    budget, cot_budget = default_of(WrapperSettings, "max_new_tokens"), default_of(WrapperSettings, "cot_max_new_tokens")
    shots = default_of(WrapperSettings, "fewshot_k")
    items, n_tasks = the_plan.items, len(selection.tasks)
    out = []
    for step in the_plan.steps:
        if step.name == "mcs":
            seconds = step.item_passes * step_seconds("mcs", sizes, device, perturbations=perturbations)
        elif step.name == "fit":
            seconds = step.item_passes * step_seconds("fit", sizes, device)
        elif step.name == "baselines":
            seconds = sum(n_tasks * items * step_seconds(
                "generate", sizes, device, batch=batch, new_tokens=cot_budget if method == "cot" else budget,
                prompts=1 + shots if method == "fewshot" else 1) for method in selection.prompt_methods)
        else:
            seconds = step.item_passes * step_seconds("generate", sizes, device, batch=batch, new_tokens=budget)
        out.append((step.name, seconds / 60))
    return out


def estimate_lines(the_plan: StudyPlan, selection: Selection, sizes, device, batch: int, perturbations: int,
                   gpu_name: str | None) -> list[str]:
    """The estimate as the study prints it: per step and in all, for one model and for every model."""
    minutes = step_minutes(the_plan, selection, sizes, device, batch, perturbations)
    total = sum(m for _, m in minutes) * len(the_plan.models)
    head = (f"estimate (projected lower bounds for {sizes.name} on an {device.name}, {device.assumption}; "
            f"docs/cost.md; your GPU: {gpu_name or 'unknown'}):")
    return [head, "  " + ", ".join(f"{name} {m:.0f} min" for name, m in minutes),
            f"  in all at least {total:.0f} min ({total / 60:.1f} h); the progress bars show each step's remaining time"]


def print_plan(settings, environ=None) -> None:
    """Print the plan of a study (its settings already resolved: data and lr) and, for a checkpoint
    of a size docs/cost.md lists, on a GPU, the estimate. Before any model loads."""
    from amps_eval.mcs.settings import MCSSettings
    from amps_eval.study_cost import DEVICES, by_config
    from amps_eval.study_data import DataChoice, n_items

    choice = DataChoice(settings.data, "")
    items = n_items(choice, settings.n_per_category, settings.limit)
    from amps_eval.study import is_graded_organism

    graded = settings.graded or (settings.pretrained is not None and all(map(is_graded_organism, settings.pretrained)))
    selection = runnable_on(select(settings.methods, settings.targets), {"planted_p_vision"} if graded else ())
    alphas = tuple(sorted(set(settings.alphas) | ({settings.table_alpha} if settings.table_alpha is not None else set())))
    the_plan = plan(settings.models, items, selection, alphas, settings.seeds)
    for line in the_plan.lines():
        print(line, flush=True)
    sizes = None
    if settings.pretrained is not None and len(settings.pretrained) == 1:  # several: see each model's bars
        try:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(settings.pretrained[0])
            text = config.get_text_config()
            sizes = by_config(config.model_type, text.hidden_size, text.num_hidden_layers)
        except (OSError, ValueError, AttributeError):
            sizes = None
    gpu = _gpu_name(settings.device)
    if sizes is None or gpu is None:
        why = "not on a GPU" if gpu is None else "no recorded sizes for this checkpoint"
        print(f"estimate: none ({why}; docs/cost.md lists 3B, 7B and 13B checkpoints on a GPU); the progress bars "
              "show each step's remaining time", flush=True)
        return
    perturbations = MCSSettings().perturbations_per_sample  # the most an item takes (sequential: fewer)
    for line in estimate_lines(the_plan, selection, sizes, DEVICES["h100"], settings.batch_size, perturbations, gpu):
        print(line, flush=True)


def _gpu_name(device: str | None) -> str | None:
    """The CUDA device the study will use, by name; None on the CPU."""
    import torch

    if (device is None and not torch.cuda.is_available()) or (device is not None and not device.startswith("cuda")):
        return None
    return torch.cuda.get_device_name(torch.device(device or "cuda"))


class StepClock:
    """A long step's progress over its passes, with the remaining time from the passes done so far
    (each lmms-eval run and each MCS pass also shows its own bar with its remaining time)."""

    def __init__(self, name: str, total: int, clock=None) -> None:
        import time

        self.name, self.total, self.done = name, total, 0
        self._clock = clock or time.monotonic
        self._start = self._clock()

    def advance(self, passes: int = 1) -> str:
        """Count ``passes`` more as done; the line the study prints."""
        self.done += passes
        elapsed = self._clock() - self._start
        left = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
        return (f"  [{self.name}] {self.done}/{self.total} passes done in {_duration(elapsed)}"
                + (f", about {_duration(left)} left" if self.done < self.total else ""))


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
