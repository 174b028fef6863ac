"""``amps-eval report --susceptibility``: the MCS against each item's flip and collapse points.

Reads a results folder of sweeps (`runs.discover` + `select.build_index`: one variant per alpha,
grouped here by model, method, the other settings and the data, as `select` groups alpha variants)
and the ``amps-eval mcs --prompt none`` outputs of the same models, runs `susceptibility.analyse`
on every (sweep, target), and writes ``susceptibility.md`` (the table) and one figure per model
(``susceptibility_<model>.png/.pdf``: collapse point against r_v, one row of panels per method, one
panel per target, points coloured by category, censored points as open triangles drawn apart from
the observed ones, in a band or row of their own, and each panel's ρ of the item MCS with the
collapse point). ``susceptibility.md`` starts with its answer in one paragraph (`answer`).

MCS files: every ``*.jsonl`` under the given paths that is not an lmms-eval samples file, read with
its sidecar ``<file>.meta.json`` (``pretrained``, else ``model``) to name the model; only lines with
``prompt`` "none" (or no prompt) count, since the steered runs use the plain prompt. A sweep is
matched to the MCS of the same ``pretrained``, else of the same display name (last path component).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections import defaultdict
from pathlib import Path

from amps_eval.mc2.schema import CATEGORIES, CATEGORY_ABBREV
from amps_eval.report import METHOD_LABELS, STEERED
from amps_eval.report.runs import Problem, model_display_name
from amps_eval.report.seeds import seed_order, steering_files, training_seed
from amps_eval.vocabulary import TARGETS
from amps_eval.report.susceptibility import (
    EVENTS,
    MIN_OFF_MODE,
    Analysis,
    Correlation,
    MCSItem,
    Sweep,
    analyse,
    sweep_steps,
)

MARKDOWN = "susceptibility.md"
MCS_SCALED = ("mean_mcs", "amps")
"""Methods whose per-item strength is set from the item's own MCS (Eq. 9): on the alpha scale their
event points depend on the MCS by construction; only the effective strength removes that."""
SCALE_LABEL = {"strength": "effective strength ‖shift‖ / ‖h‖",
               "alpha": "alpha (no effective strength recorded: run with diagnostics=DIR)"}


# --------------------------------------------------------------------------- reading

def read_mcs(paths: list[Path], problems: list[Problem]) -> dict[str, dict[int, MCSItem]]:
    """pretrained (or model) -> mc2_id -> MCS item, from ``amps-eval mcs`` outputs (plain prompt)."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*.jsonl") if "_samples_" not in p.name)
        elif path.is_file():
            files.append(path)
    found: dict[str, dict[int, MCSItem]] = defaultdict(dict)
    for path in files:
        try:
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            problems.append(Problem(path, f"not readable as JSONL ({error}); rerun `amps-eval mcs` for it"))
            continue
        if not rows or not all(isinstance(r, dict) for r in rows) or "settings" in rows[0]:
            continue  # not an `amps-eval mcs` output (a diagnostics file, say)
        model = _mcs_model(path)
        for row in rows:
            r_v, se = row.get("r_v"), row.get("r_v_stderr")
            if str(row.get("prompt", "none")) != "none" or "mc2_id" not in row or "category" not in row:
                continue
            if not _finite(r_v):
                continue
            found[model][int(row["mc2_id"])] = MCSItem(int(row["mc2_id"]), str(row["category"]), float(r_v),
                                                       float(se) if _finite(se) else None)
    return dict(found)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _mcs_model(path: Path) -> str:
    try:
        meta = json.loads(Path(str(path) + ".meta.json").read_text(encoding="utf-8"))
        return str(meta.get("pretrained") or meta["model"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return path.stem


def match_mcs(pretrained: str, mcs: dict[str, dict[int, MCSItem]]) -> dict[int, MCSItem] | None:
    if pretrained in mcs:
        return mcs[pretrained]
    name = model_display_name(pretrained)
    matches = [v for k, v in mcs.items() if model_display_name(k) == name]
    return matches[0] if len(matches) == 1 else None


def find_sweeps(runs_dir: Path, problems: list[Problem]) -> list[Sweep]:
    """Every sweep (a steered method at >= 2 alphas, per-item records, one option order) in a folder."""
    from amps_eval.report.runs import discover
    from amps_eval.report.select import build_index

    runs, found_problems = discover(Path(runs_dir))
    problems += found_problems
    index = build_index(runs, problems)
    groups: dict[tuple, dict[float, tuple[dict, ...]]] = defaultdict(dict)
    for (variant, target), records in index.records.items():
        if variant.method not in STEERED or variant.alpha is None or variant.orders != "one":
            continue
        groups[(dataclasses.replace(variant, alpha=None), target)][variant.alpha] = records
    several_data = len({v.data for v, _ in groups}) > 1
    files = steering_files(runs)

    def without_steering(v) -> tuple:
        return tuple(kv for kv in v.settings if kv[0] != "steering")

    def file_order(v) -> tuple:  # training seeds in seed order (seeds.seed_order), never by run date
        steering = dict(v.settings).get("steering", "")
        return seed_order(steering, files.get(steering))

    seeded = defaultdict(set)  # (model, method, other settings, data) -> its steering files (several: training seeds)
    for v, _ in groups:
        seeded[(v.pretrained, v.method, without_steering(v), v.data)].add(dict(v.settings).get("steering", ""))
    sweeps = []
    for (variant, target), points in sorted(groups.items(), key=lambda kv: (
            kv[0][0].pretrained, kv[0][0].method, without_steering(kv[0][0]), file_order(kv[0][0]),
            kv[0][0].data.key, kv[0][1])):
        if len([a for a in points if a >= 0]) < 2:
            continue
        if any(len({r["mc2_id"] for r in records}) != len(records) for records in points.values()):
            continue  # an item answered twice in one run: not a one-order sweep
        steps, categories, scale, notes = sweep_steps(points)
        setup = ", ".join(f"{k}={v}" for k, v in variant.settings if k != "steering")
        if several_data:
            setup = ", ".join(filter(None, [setup, f"data: {variant.data.describe()}"]))
        steering = dict(variant.settings).get("steering")
        if steering:
            several = len(seeded[(variant.pretrained, variant.method, without_steering(variant), variant.data)]) > 1
            seed = f"training seed {training_seed(files.get(steering, steering))}, " if several else ""
            setup = ", ".join(filter(None, [setup, f"{seed}steering {steering}"]))
        sweeps.append(Sweep(model_display_name(variant.pretrained), variant.pretrained, variant.method, target, setup,
                            tuple(sorted(a for a in points if a >= 0)), scale, steps, categories, tuple(notes)))
    return sweeps


def susceptibility(runs_dir: Path, mcs_paths: list[Path], draws: int = 1000, seed: int = 0
                   ) -> tuple[list[Analysis], list[str]]:
    """Every analysis there is data for, and a note per sweep or file that could not be used."""
    problems: list[Problem] = []
    sweeps = find_sweeps(runs_dir, problems)
    mcs = read_mcs(mcs_paths, problems)
    analyses, notes = [], [f"skipped: {p}" for p in problems]
    if not sweeps:
        notes.append(f"no sweep under {runs_dir}: a steered method at two or more alphas with per-item samples "
                     "(`amps-eval sweep ... --alphas 0,0.5,1,2,4`, which logs samples)")
    for sweep in sweeps:
        items = match_mcs(sweep.pretrained, mcs)
        if items is None:
            notes.append(f"{sweep.model} {sweep.method} -> {sweep.target}: no MCS with the plain prompt for "
                         f"{sweep.pretrained} (`amps-eval mcs --pretrained {sweep.pretrained} --prompt none "
                         "--out FILE.jsonl`)")
            continue
        analyses.append(analyse(sweep, items, draws=draws, seed=seed, categories=CATEGORIES))
    return analyses, notes


# --------------------------------------------------------------------------- the table

def _rho(c: Correlation | None) -> str:
    if c is None or c.rho is None:
        return "—"
    if c.interval.low is None:
        return f"{c.rho:+.2f} ‡"
    return f"{c.rho:+.2f} [{c.interval.low:+.2f}, {c.interval.high:+.2f}]"


def _redrawn(interval) -> str:
    if interval is None or interval.median is None:
        return "—"
    return f"{interval.median:+.2f} [{interval.low:+.2f}, {interval.high:+.2f}]"


def _excludes_zero(c: Correlation) -> int:
    """+1 / -1 when the interval lies above / below 0, else 0."""
    if c.rho is None or c.interval.low is None:
        return 0
    return 1 if c.interval.low > 0 else -1 if c.interval.high < 0 else 0


def _method(name: str) -> str:
    return METHOD_LABELS.get(name, name)


def _label(a: Analysis) -> str:
    dagger = "†" if a.sweep.method in MCS_SCALED and a.sweep.scale == "alpha" else ""
    return f"{_method(a.sweep.method)}{dagger}" + (f" ({a.sweep.setup})" if a.sweep.setup else "")


def answer(analyses: list[Analysis]) -> str:
    """The file's answer in one paragraph (counts over the sweeps that test the claim: every sweep
    but the MCS-scaled methods on the alpha scale, the positive control)."""
    tests = [a for a in analyses if not (a.sweep.method in MCS_SCALED and a.sweep.scale == "alpha")]
    if not tests:
        return "**Answer.** No sweep that tests the claim (every sweep is an MCS-scaled method on the alpha scale)."
    parts = []
    for event in EVENTS:
        rows = [a.rows[event][0] for a in tests]
        item = [r.correlations["mcs"] for r in rows]
        above = sum(_excludes_zero(c) > 0 for c in item)
        below = sum(_excludes_zero(c) < 0 for c in item)
        beats = sum(1 for r in rows if r.correlations["mcs"].rho is not None and all(
            r.correlations[p].rho is None or r.correlations["mcs"].rho > r.correlations[p].rho
            for p in ("category", "category_mcs")))
        parts.append(f"for the {event} point, ρ > 0 (interval above 0) in {above}, ρ < 0 in {below}, and the item "
                     f"MCS beats both category predictors in {beats}")
    return (f"**Answer.** Over the {len(tests)} (sweep, target) pairs that test the paper's claim (the item's MCS "
            f"predicts where steering moves or breaks it): {'; '.join(parts)}. Only beating both category predictors "
            "shows that the item's own MCS adds something beyond its category (which AMPS's anchors already use). "
            "The counts, also within categories, are under \"Reading\"; the numbers in the tables below.")


def render_markdown(analyses: list[Analysis], notes: list[str], draws: int, seed: int) -> str:
    out = ["# Does the MCS predict which items steering moves and which it breaks?", "",
           *([answer(analyses), ""] if analyses else []),
           "Per item, from a sweep of one steered method (every item at every alpha): the **flip point**, the "
           "smallest strength at which its answer follows the target (an item that flips and later un-flips keeps "
           "the first one; an item already at the target unsteered has 0), and the **collapse point**, the "
           "smallest at which it follows neither option. An item without the event in the sweep is *censored* at "
           "its largest strength. Strength is the item's effective strength ‖shift‖/‖h‖ where the runs recorded "
           "it (`diagnostics=DIR`), else alpha (the *scale* column says which).", "",
           "ρ is Spearman's rank correlation of a predictor with the event point, censored points ranked as ties "
           "above every observed one. The paper's claim predicts **ρ > 0 for the item MCS**: the less an item "
           "relies on the modality steered away from (1 − r_v toward the image, r_v toward the text), the weaker "
           "the steering that moves or breaks it. Predictors: *item MCS* (that reliance, from `amps-eval mcs` with "
           "the plain prompt); *category (out-of-fold)*, the mean event point of the other items of the item's "
           "category, the best a category-only rule can do; *category-mean MCS*, the mean reliance of the item's "
           "category, what AMPS anchors on. The item MCS adds something beyond category only where it beats both, "
           "and within categories (the per-category tables).", "",
           f"Intervals: 95% percentile bootstrap over items ({draws} resamples, seed {seed}). *r_v redrawn*: ρ of "
           "the item MCS on the same items with every r_v redrawn from N(r_v, r_v_stderr) (median [95% range]): "
           "how much of the ranking survives re-measuring the MCS. *MCS reliability*: 1 − mean(stderr²)/"
           "var(reliance), the share of the MCS's spread between items that is not measurement noise. *at 0*: "
           "items with the event at the smallest strength; *in sweep*: items with the event within the sweep (the "
           f"rest are censored). ‡: no interval, fewer than {MIN_OFF_MODE} items differ from the most common "
           "event point; —: no ρ, every item has the same point.", "",
           f"Methods marked † ({', '.join(_method(m) for m in MCS_SCALED)}) set each item's strength from its own "
           "MCS (Eq. 9: more reliance on the modality steered away from, stronger shift). On the *alpha* scale their "
           "event points therefore depend on the MCS by construction (a negative ρ is built in); they test the "
           "claim only on the effective-strength scale. On the alpha scale they are a positive control: the "
           "table should see the MCS there.", ""]
    if not analyses:
        out += ["No sweep with a matching MCS was found.", ""]
    else:
        out += ["## Every item", "",
                "| model | method | target | event | scale | n | at 0 | in sweep | censored | ρ item MCS [95% CI] | "
                "ρ item MCS, r_v redrawn | ρ category (out-of-fold) | ρ category-mean MCS | MCS reliability |",
                "|---|---|---|---|---|---:|---:|---:|---:|---|---|---|---|---:|"]
        for a in analyses:
            for event in EVENTS:
                row = a.rows[event][0]
                rel = "—" if row.reliability is None else f"{row.reliability:.2f}"
                out.append(f"| {a.sweep.model} | {_label(a)} | {a.sweep.target} | {event} | {a.sweep.scale} | {row.n} | "
                           f"{row.at_start} | {row.observed} | {row.n - row.observed} | "
                           f"{_rho(row.correlations.get('mcs'))} | {_redrawn(row.redrawn)} | "
                           f"{_rho(row.correlations.get('category'))} | "
                           f"{_rho(row.correlations.get('category_mcs'))} | {rel} |")
        out += ["", *verdict(analyses), ""]
        by_sweep: dict[tuple, list[Analysis]] = defaultdict(list)
        for a in analyses:
            by_sweep[(a.sweep.model, _label(a))].append(a)
        out += ["## Within categories (item MCS only: the category predictors are constant there)", ""]
        for (model, label), group in by_sweep.items():
            out += [f"### {model}, {label}", "",
                    "| target | category | n | flip: at 0 / in sweep / censored | ρ item MCS, flip | "
                    "collapse: in sweep / censored | ρ item MCS, collapse |", "|---|---|---:|---|---|---|---|"]
            for a in group:
                for flip, collapse in zip(a.rows["flip"][1:], a.rows["collapse"][1:]):
                    out.append(f"| {a.sweep.target} | {CATEGORY_ABBREV.get(flip.scope, flip.scope)} | {flip.n} | "
                               f"{flip.at_start} / {flip.observed} / {flip.n - flip.observed} | "
                               f"{_rho(flip.correlations['mcs'])} | {collapse.observed} / "
                               f"{collapse.n - collapse.observed} | {_rho(collapse.correlations['mcs'])} |")
            out.append("")
    extra = [n for a in analyses for n in (f"{a.sweep.model} {_label(a)} -> {a.sweep.target}: {x}" for x in a.notes)]
    if notes or extra:
        out += ["## Notes", "", *(f"- {n}" for n in [*extra, *notes]), ""]
    return "\n".join(out)


def verdict(analyses: list[Analysis]) -> list[str]:
    """Counts that answer the question, for the reader: separately for the sweeps that test the claim
    and for the MCS-scaled methods on the alpha scale (the positive control)."""
    lines = ["**Reading.**"]
    control = [a for a in analyses if a.sweep.method in MCS_SCALED and a.sweep.scale == "alpha"]
    tests = [a for a in analyses if a not in control]
    for name, group in (("sweeps that test the claim", tests), ("† MCS-scaled methods on the alpha scale", control)):
        if not group:
            continue
        for event in EVENTS:
            rows = [a.rows[event][0] for a in group]
            item = [r.correlations["mcs"] for r in rows]
            defined = [c for c in item if c.rho is not None]
            above = sum(_excludes_zero(c) > 0 for c in item)
            below = sum(_excludes_zero(c) < 0 for c in item)
            beats = sum(1 for r in rows if r.correlations["mcs"].rho is not None and all(
                r.correlations[p].rho is None or r.correlations["mcs"].rho > r.correlations[p].rho
                for p in ("category", "category_mcs")))
            inner = [r.correlations["mcs"] for a in group for r in a.rows[event][1:]]
            inner_defined = [c for c in inner if c.rho is not None]
            inner_ci = [c for c in inner_defined if c.interval.low is not None]
            inner_above = sum(_excludes_zero(c) > 0 for c in inner)
            inner_below = sum(_excludes_zero(c) < 0 for c in inner)
            lines.append(
                f"- {name}, {event} point: over every item, the item MCS's ρ is defined in {len(defined)} of "
                f"{len(item)} (sweep, target) pairs, its interval lies above 0 in {above} and below 0 in {below}, and "
                f"it beats both category predictors in {beats}. Within categories: ρ defined in "
                f"{len(inner_defined)} of {len(inner)} cells (undefined where every item has the same point), with "
                f"an interval in {len(inner_ci)}: above 0 in {inner_above}, below 0 in {inner_below} (about "
                f"{0.025 * len(inner_ci):.1f} each way expected by chance if the MCS carried no within-category "
                "signal).")
    return lines


# --------------------------------------------------------------------------- the figure

def figure(analyses: list[Analysis], model: str):
    """Collapse point against r_v: one row per method setup, one column per target. On the alpha scale
    the sweep's alphas are evenly spaced rows (points jittered within a row) and censored items get a
    row of their own above them; on the strength scale censored items are drawn in a grey band above
    the observed points, not at their largest strength (which, for the MCS-scaled methods, depends on
    r_v through gamma: drawn there, they would make a trend by construction). Each panel shows its ρ."""
    from matplotlib.figure import Figure

    rows = list(dict.fromkeys(_label(a) for a in analyses))
    short = {_label(a): _method(a.sweep.method) + ("†" if "†" in _label(a) else "") for a in analyses}
    several = {v for v in short.values() if list(short.values()).count(v) > 1}
    titles = {label: label if short[label] in several else short[label] for label in rows}  # setup only if needed
    targets = TARGETS
    fig = Figure(figsize=(10, 3.2 * len(rows) + 0.8), layout="constrained")
    axes = fig.subplots(len(rows), 2, squeeze=False)
    colours = {c: f"C{k}" for k, c in enumerate(CATEGORIES)}
    for a in analyses:
        ax = axes[rows.index(_label(a)), targets.index(a.sweep.target)]
        points = a.event_points["collapse"]
        by_alpha = a.sweep.scale == "alpha"
        levels = {alpha: k for k, alpha in enumerate(a.sweep.alphas)}

        observed = [p.value for p in points.values() if not p.censored]
        top = max(observed, default=0.0) or 1.0
        band = (1.08 * top, 1.24 * top)  # strength scale: censored items in a band of their own above the data

        def y_of(i: int) -> float:
            p = points[i]
            jitter = (((i * 2654435761) % 1000) / 1000 - 0.5)
            if not by_alpha:  # not at their censoring strength: for MCS-scaled methods it depends on r_v
                return (band[0] + band[1]) / 2 + 0.8 * (band[1] - band[0]) * jitter / 2 if p.censored else p.value
            return (len(levels) if p.censored else levels[p.value]) + 0.3 * jitter

        for category in CATEGORIES:
            for censored in (False, True):
                ids = [i for i, p in points.items() if a.mcs[i].category == category and p.censored is censored]
                if ids:
                    ax.scatter([a.mcs[i].r_v for i in ids], [y_of(i) for i in ids], s=18,
                               marker="^" if censored else "o", facecolors="none" if censored else colours[category],
                               edgecolors=colours[category], linewidths=0.9, alpha=0.85)
        if by_alpha:
            ax.set_yticks(range(len(levels) + 1), [f"α={x:g}" for x in levels] + [f"none up to α={a.sweep.alphas[-1]:g}"])
            ax.set_ylabel("collapse point (alpha; jittered)", fontsize=8)
        else:
            ax.set_ylabel("collapse point, effective strength ‖shift‖/‖h‖", fontsize=8)
            ax.axhspan(*band, color="0.5", alpha=0.12, linewidth=0)
            ax.text(1.02, (band[0] + band[1]) / 2, "no collapse\nin the sweep", fontsize=6, va="center", ha="right",
                    color="0.3")
            ax.set_ylim(min(0.0, min(observed, default=0.0)) - 0.03 * top, band[1] + 0.02 * top)
        rho = a.rows["collapse"][0].correlations.get("mcs")
        ax.set_title(f"{titles[_label(a)]}: steered toward {a.sweep.target}\n"
                     f"ρ(item MCS, collapse point) = {_rho(rho)}", fontsize=9)
        ax.set_xlabel("visual MCS ratio r_v (plain prompt)")
        ax.set_xlim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    for ax in axes.flat:
        if not ax.collections:
            ax.set_visible(False)
    legend_ax = axes.flat[0]
    for category in CATEGORIES:
        legend_ax.scatter([], [], color=colours[category], s=18, label=CATEGORY_ABBREV[category])
    legend_ax.scatter([], [], marker="^", facecolors="none", edgecolors="grey", s=18,
                      label="censored: no collapse within the sweep (drawn apart, grey band)")
    fig.legend(*legend_ax.get_legend_handles_labels(), loc="outside lower center", ncols=5, fontsize=7)
    fig.suptitle(f"Collapse point against the MCS: {model}")
    return fig


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def _save(fig, out: Path, stem: str) -> list[Path]:
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=150 if path.suffix == ".png" else None, bbox_inches="tight")
    return paths


def write_susceptibility(runs_dir: Path, mcs_dir: Path | list[Path], out: Path, draws: int = 1000,
                         seed: int = 0, figures: Path | None = None) -> list[Path]:
    """Write ``out/susceptibility.md`` and ``<figures>/susceptibility_<model>.png/.pdf`` (``figures``
    defaults to ``out``); return the paths."""
    from amps_eval.report.render import write_text_atomic

    mcs_paths = list(mcs_dir) if isinstance(mcs_dir, (list, tuple)) else [Path(mcs_dir)]
    analyses, notes = susceptibility(Path(runs_dir), mcs_paths, draws=draws, seed=seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / MARKDOWN]
    write_text_atomic(written[0], render_markdown(analyses, notes, draws, seed))
    for model in dict.fromkeys(a.sweep.model for a in analyses):
        written += _save(figure([a for a in analyses if a.sweep.model == model], model), Path(figures or out),
                         f"susceptibility_{_slug(model)}")
    return written
