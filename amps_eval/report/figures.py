"""The AMPS paper's figures from a results folder, as PNG and PDF (matplotlib, Agg canvas).

* Figure 1: mean steering, target share and collapse rate (answers following neither option)
  against the effective strength (each point labelled with its alpha), one panel per target, one
  file per model (``figure1_mean_strength_<model>``; ``..._alpha_...`` when the runs recorded no
  strength and the axis is alpha); where the runs recorded ``image_logodds`` (the parse-free
  preference, ``amps_eval.logodds``), a second row of panels draws its mean ± 1 s.e. against the
  same axis (Figures 1 and 6 alike; older results without it keep the one row);
* Figure 4: the distribution of the visual MCS ratio r_v per category and model (plain prompt);
* Figure 5: the same with the instruction toward the image and toward the text, one panel per model;
* Figure 6: L2S, AMPS with beta = 0 (this project's ablation) and AMPS, target share and collapse against the
  effective strength, one panel per target, one file per model: methods compared at matched
  strength, not at matched alpha (AMPS's targets are up to twice L2S's on average).

Figures 1 and 6 read the Total cells of the index (the newest run per alpha); Figures 4 and 5 read
``amps-eval mcs`` outputs or wrapper diagnostics (``mcs_data``). A figure without data is skipped
with a note that says which runs or files would produce it. Figures are drawn on ``Figure``
objects, not pyplot, so nothing global (backend, current figure) is touched.

Style, the same in every figure: a method's name is its row name in the tables and its colour is
fixed by the registry's order (``style.py``; the leaderboard's charts use the same); shaded bands
are plus or minus one standard error over items (binomial, sqrt(p(1-p)/n)), hatched differently per
method where several methods share a panel; alpha labels never overlap (`place_labels`); marker
sizes differ by method only (a legend entry says so); every figure uses
constrained layout with one legend outside the axes (below them), so neither titles nor legends
cover data.
"""

from __future__ import annotations

import re
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from amps_eval.mc2.schema import CATEGORIES, CATEGORY_ABBREV
from amps_eval.report.mcs_data import load_mcs
from amps_eval.report.runs import Problem, model_display_name
from amps_eval.report.select import ResultIndex
from amps_eval.report.series import SweepPoint, alpha_series  # noqa: F401  (re-exported)
from amps_eval.report.style import TARGET_COLORS, method_color, method_label, series_color
from amps_eval.report.tables import TARGETS, pick_models

MARKERS = ("o", "s", "^", "D", "v")  # one per steering setup of a method (most methods have one)
STRENGTH_LABEL = "effective strength ‖shift‖ / ‖hidden state‖"
ALPHA_LABEL = "steering strength α (effective strength not recorded)"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def _save(fig: Figure, out: Path, stem: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=150 if path.suffix == ".png" else None)
    return paths


HATCHES = ("", "////", "\\\\\\\\", "....", "xxxx")  # one per method of a figure: overlapping bands stay apart
LABEL_OFFSETS = ((3, 4), (3, -10), (-16, 4), (-16, -10), (3, 12), (-16, 12), (3, -18))  # points, tried in order


def _band(ax, xs, ys, errors, color, hatch: str = "") -> None:
    if all(e is not None for e in errors):
        ax.fill_between(xs, [y - e for y, e in zip(ys, errors)], [y + e for y, e in zip(ys, errors)],
                        facecolor=color, alpha=0.12 if not hatch else 0.08, linewidth=0)
        if hatch:  # the hatch in the method's colour, over a paler fill: three bands do not blend into one
            ax.fill_between(xs, [y - e for y, e in zip(ys, errors)], [y + e for y, e in zip(ys, errors)],
                            facecolor="none", edgecolor=color, hatch=hatch, alpha=0.35, linewidth=0)


def place_labels(fig: Figure, labels: list[tuple]) -> None:
    """Add the alpha labels (ax, x, y, text, colour) so that no two overlap: each label takes the first
    of `LABEL_OFFSETS` where it overlaps no label already placed, else it is left out (its point's
    alpha is in the legend's order and in the leaderboard's tooltips). Labels are placed after the
    layout is drawn and kept out of the layout, so the positions checked are the saved ones."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not labels:
        return
    if fig.canvas is None or not hasattr(fig.canvas, "get_renderer"):
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    placed = []
    for ax, x, y, text, color in labels:
        for offset in LABEL_OFFSETS:
            note = ax.annotate(text, (x, y), textcoords="offset points", xytext=offset, fontsize=6, color=color,
                               annotation_clip=True)
            note.set_in_layout(False)
            box = note.get_window_extent(renderer)
            inside = ax.get_window_extent(renderer).contains(box.x0, box.y0) and \
                ax.get_window_extent(renderer).contains(box.x1, box.y1)
            if inside and not any(box.overlaps(other) for other in placed):
                placed.append(box)
                break
            note.remove()


LOGODDS_LABEL = "mean image_logodds\nlog p(image option) − log p(text option)"


def figure_alpha(index: ResultIndex, pretrained: str, methods: tuple[str, ...], title: str) -> Figure | None:
    """Target share (solid) and collapse (dashed) of each method against its effective strength, each
    point labelled with its alpha, with bands of one standard error; against alpha when a series of
    the figure has no recorded strength (the axis says which: one axis, one quantity). When any run
    of the figure recorded ``image_logodds``, a second row of panels draws its mean (band: ± 1 s.e.)
    against the same axis, for the series whose every point has it; without it the figure has one row."""
    drawn = {(method, target): alpha_series(index, pretrained, method, target) for method in methods
             for target in TARGETS}
    if not any(drawn.values()):
        return None
    measured = all(p.strength is not None for found in drawn.values() for points in found.values() for p in points)
    logodds = any(p.logodds is not None for found in drawn.values() for points in found.values() for p in points)
    fig = Figure(figsize=(10, 8.2 if logodds else 4.8), layout="constrained")
    grid = fig.subplots(2 if logodds else 1, 2, sharex="col", squeeze=False,
                        **({"height_ratios": (1.5, 1)} if logodds else {}))
    axes = grid[0]
    for ax in axes[1:]:
        ax.sharey(axes[0])
    lower = grid[1] if logodds else ()
    for ax in lower[1:]:
        ax.sharey(lower[0])
    legend: dict[str, Line2D] = {}
    labels: list[tuple] = []
    for column, (ax, target) in enumerate(zip(axes, TARGETS)):
        for position, method in enumerate(methods):
            size = max(3.5, 7.5 - 1.5 * position)  # later methods' markers are smaller: coinciding points stay visible
            hatch = HATCHES[position % len(HATCHES)] if len(methods) > 1 else ""
            for number, (label, points) in enumerate(drawn[(method, target)].items()):
                points = sorted(points, key=lambda p: (p.strength if measured else p.alpha, p.alpha))
                xs = [p.strength if measured else p.alpha for p in points]
                color, marker = method_color(method), MARKERS[number % len(MARKERS)]
                name = label if label.startswith(method_label(method)) else f"{method_label(method)} [{label}]"
                shares = [p.share for p in points]
                ax.plot(xs, shares, marker=marker, color=color, markersize=size)
                _band(ax, xs, shares, [p.stderr for p in points], color, hatch)
                if all(p.collapse is not None for p in points):
                    collapse = [p.collapse for p in points]
                    ax.plot(xs, collapse, marker=marker, markerfacecolor="white", linestyle="--", color=color,
                            markersize=size - 1)
                    _band(ax, xs, collapse, [p.collapse_stderr for p in points], color, hatch)
                if logodds and all(p.logodds is not None for p in points):
                    values = [p.logodds for p in points]
                    lower[column].plot(xs, values, marker=marker, color=color, markersize=size)
                    _band(lower[column], xs, values, [p.logodds_stderr for p in points], color, hatch)
                if measured:
                    labels += [(ax, x, p.share, f"α={p.alpha:g}", color) for x, p in zip(xs, points)]
                legend.setdefault(name, Line2D([], [], color=color, marker=marker, linewidth=2, label=name))
        ax.set_title(f"target: {target}")
        ax.set_xmargin(0.08)  # room for the α labels of the last points
        ax.set_ylim(-2, 105)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("% of items")
    xlabel = STRENGTH_LABEL if measured else ALPHA_LABEL
    for ax in lower:
        ax.axhline(0, color="0.5", linewidth=0.8)
        ax.grid(alpha=0.3)
        ax.set_xlabel(xlabel, fontsize=9)
    if logodds:
        lower[0].set_ylabel(LOGODDS_LABEL, fontsize=9)
        for ax in axes:
            ax.tick_params(labelbottom=True)
    for ax in axes:
        ax.set_xlabel(xlabel, fontsize=9)
    styles = [Line2D([], [], color="0.35", marker="o", label="target share (band: ± 1 s.e.)"),
              Line2D([], [], color="0.35", marker="o", markerfacecolor="white", linestyle="--",
                     label="collapse: neither option")]
    if logodds:
        styles.append(Line2D([], [], color="0.35", marker="o", label="lower panels: mean image_logodds, + favours "
                                                                     "the image (band: ± 1 s.e.)"))
    if len(methods) > 1:
        styles.append(Line2D([], [], color="0.35", marker="o", markersize=7.5, linestyle="none",
                             label="marker size: by method only (coinciding points stay visible)"))
    handles = list(legend.values()) + styles
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3), fontsize=8, frameon=False)
    fig.suptitle(f"{title}: {model_display_name(pretrained)}")
    place_labels(fig, labels)
    return fig


def figure6_title(methods: tuple[str, ...]) -> str:
    """Figure 6's title, naming the methods it draws."""
    names = [method_label(m) for m in methods]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"Figure 6: {listed} against effective strength"


def figure_boxes(points, groups: list[str], group_of, title: str, panels: list[str], panel_of,
                 labels: dict[str, str] | None = None, colors: dict[str, str] | None = None) -> Figure:
    """Box plots of r_v: one panel per ``panels`` entry (titled when there are several), per category
    one box per group; one legend below the panels."""
    labels = labels or {}
    colors = colors or {group: series_color(g) for g, group in enumerate(groups)}
    fig = Figure(figsize=(max(8, 1.2 * len(CATEGORIES) * max(1, len(groups)) / 2), 0.9 + 3.2 * len(panels)),
                 layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False, sharex=True)[:, 0]
    width = 0.8 / max(1, len(groups))
    shown: dict[str, Patch] = {}
    for ax, panel in zip(axes, panels):
        for g, group in enumerate(groups):
            data, positions = [], []
            for c, category in enumerate(CATEGORIES):
                values = [p.r_v for p in points if panel_of(p) == panel and group_of(p) == group and p.category == category]
                if values:
                    data.append(values)
                    positions.append(c - 0.4 + width * (g + 0.5))
            if data:
                color = colors.get(group, series_color(g))
                parts = ax.boxplot(data, positions=positions, widths=width * 0.9, patch_artist=True,
                                   medianprops={"color": "black"}, flierprops={"markersize": 3, "alpha": 0.6})
                for box in parts["boxes"]:
                    box.set_facecolor(color)
                    box.set_alpha(0.6)
                shown.setdefault(group, Patch(facecolor=color, alpha=0.6, edgecolor="black",
                                              label=labels.get(group, group)))
        ax.set_xticks(range(len(CATEGORIES)), [CATEGORY_ABBREV[c] for c in CATEGORIES])
        ax.set_xlim(-0.6, len(CATEGORIES) - 0.4)
        ax.set_ylabel("visual MCS ratio r_v")
        ax.set_ylim(-0.02, 1.02)
        if len(panels) > 1:
            ax.set_title(panel, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    fig.legend(handles=list(shown.values()), loc="outside lower center", ncols=min(len(shown), 4), fontsize=8,
               frameon=False)
    fig.suptitle(title)
    return fig


def write_figures(index: ResultIndex, out: Path, model: str | None, mcs_paths: list[Path]) -> tuple[list[Path], list[str]]:
    """Write every figure there is data for; return the files and a note per skipped figure."""
    written, notes = [], []
    for pretrained in pick_models(index, model) if index.cells else []:
        name = _slug(model_display_name(pretrained))
        fig = figure_alpha(index, pretrained, ("mean",), "Figure 1: mean steering")
        if fig is None:
            notes.append(f"Figure 1 for {name}: no method=mean runs (try `amps-eval sweep --method mean`)")
        else:  # the file name says what the x axis is
            axis = "strength" if fig.axes[0].get_xlabel() == STRENGTH_LABEL else "alpha"
            written += _save(fig, out, f"figure1_mean_{axis}_{name}")
        six = ("l2s", "amps_beta0", "amps")
        fig = figure_alpha(index, pretrained, six, figure6_title(six))
        if fig is None:
            notes.append(f"Figure 6 for {name}: no method=l2s or method=amps runs (`amps-eval sweep`)")
        else:
            written += _save(fig, out, f"figure6_amps_vs_l2s_{name}")
    problems: list[Problem] = []
    points = load_mcs(mcs_paths, problems)
    notes += [f"MCS file skipped: {p}" for p in problems]
    if model is not None:
        points = [p for p in points if model.lower() in p.model.lower()]
    plain = [p for p in points if p.prompt == "none"]
    models = sorted({p.model for p in points})
    if plain:
        fig = figure_boxes(plain, sorted({p.model for p in plain}), lambda p: p.model,
                           "Figure 4: visual MCS ratio per category (plain prompt)", ["plain prompt"], lambda p: "plain prompt")
        written += _save(fig, out, "figure4_mcs_ratio")
    else:
        notes.append("Figure 4: no MCS ratios with the plain prompt (`amps-eval mcs --prompt none --out FILE.jsonl`)")
    instructed = [p for p in points if p.prompt in ("visual", "text")]
    if instructed:
        panels = [m for m in models if any(p.model == m for p in instructed)]
        title = "Figure 5: visual MCS ratio with the instruction toward the image / the text"
        fig = figure_boxes(instructed, ["visual", "text"], lambda p: p.prompt,
                           title if len(panels) > 1 else f"{title}: {panels[0]}",  # one panel has no title of its own
                           panels, lambda p: p.model,
                           {"visual": "instruction toward the image", "text": "instruction toward the text"},
                           {"visual": TARGET_COLORS["vision"], "text": TARGET_COLORS["text"]})
        written += _save(fig, out, "figure5_mcs_ratio_instructed")
    else:
        notes.append("Figure 5: no MCS ratios with instructions (`amps-eval mcs --prompt visual|text --out FILE.jsonl`)")
    return written, notes
