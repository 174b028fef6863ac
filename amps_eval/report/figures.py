"""The AMPS paper's figures from a results folder, as PNG and PDF (matplotlib, Agg canvas).

* Figure 1: mean steering, target share and collapse rate (answers following neither option)
  against alpha, one panel per target, one file per model;
* Figure 4: the distribution of the visual MCS ratio r_v per category and model (plain prompt);
* Figure 5: the same with the instruction toward the image and toward the text, one panel per model;
* Figure 6: AMPS against L2S, target share across alphas, one panel per target, one file per model.

Figures 1 and 6 read the Total cells of the index (the newest run per alpha); Figures 4 and 5 read
``amps-eval mcs`` outputs or wrapper diagnostics (``mcs_data``). A figure without data is skipped
with a note that says which runs or files would produce it. Figures are drawn on ``Figure``
objects, not pyplot, so nothing global (backend, current figure) is touched.
"""

from __future__ import annotations

import re
from pathlib import Path

from matplotlib.figure import Figure

from amps_eval.mc2.schema import CATEGORIES, CATEGORY_ABBREV
from amps_eval.report.cells import TOTAL
from amps_eval.report.mcs_data import load_mcs
from amps_eval.report.runs import Problem, model_display_name
from amps_eval.report.select import ResultIndex
from amps_eval.report.tables import TARGETS, pick_models


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def _save(fig: Figure, out: Path, stem: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=150 if path.suffix == ".png" else None, bbox_inches="tight")
    return paths


def alpha_series(index: ResultIndex, pretrained: str, method: str, target: str) -> dict[str, list[tuple]]:
    """label -> sorted [(alpha, target share, collapse)] of one method; one series per steering setup."""
    series: dict[str, list[tuple]] = {}
    several_data = len(index.data_groups()) > 1  # runs on different data are separate series
    for (variant, t), cells in index.cells.items():
        if t != target or variant.pretrained != pretrained or variant.method != method or TOTAL not in cells:
            continue
        label = ", ".join(f"{k}={v}" for k, v in variant.settings if k != "steering") or method
        if variant.orders == "both":
            label += " (both orders)"
        if several_data:
            label += f" [data: {variant.data.describe()}]"
        cell = cells[TOTAL]
        series.setdefault(label, []).append((variant.alpha, 100 * cell.target_acc,
                                             None if cell.others is None else 100 * cell.others))
    return {k: sorted(v) for k, v in series.items()}


def figure_alpha(index: ResultIndex, pretrained: str, methods: tuple[str, ...], collapse: bool, title: str) -> Figure | None:
    fig = Figure(figsize=(9, 3.6))
    axes = fig.subplots(1, 2, sharey=True)
    drawn = False
    for ax, target in zip(axes, TARGETS):
        for method in methods:
            for label, points in alpha_series(index, pretrained, method, target).items():
                alphas = [p[0] for p in points]
                line = ax.plot(alphas, [p[1] for p in points], marker="o", label=f"{method} target share"
                               + ("" if label == method else f" [{label}]"))[0]
                if collapse and all(p[2] is not None for p in points):
                    ax.plot(alphas, [p[2] for p in points], marker="x", linestyle="--", color=line.get_color(),
                            label=f"{method} collapse (others)")
                drawn = True
        ax.set_title(f"target: {target}")
        ax.set_xlabel("steering strength alpha")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("% of items")
    if not drawn:
        return None
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle(f"{title}: {model_display_name(pretrained)}")
    return fig


def figure_boxes(points, groups: list[str], group_of, title: str, panels: list[str], panel_of,
                 labels: dict[str, str] | None = None) -> Figure:
    """Box plots of r_v: one panel per ``panels`` entry, per category one box per group."""
    labels = labels or {}
    fig = Figure(figsize=(max(8, 1.2 * len(CATEGORIES) * max(1, len(groups)) / 2), 3.4 * len(panels)))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    width = 0.8 / max(1, len(groups))
    for ax, panel in zip(axes, panels):
        for g, group in enumerate(groups):
            data, positions = [], []
            for c, category in enumerate(CATEGORIES):
                values = [p.r_v for p in points if panel_of(p) == panel and group_of(p) == group and p.category == category]
                if values:
                    data.append(values)
                    positions.append(c - 0.4 + width * (g + 0.5))
            if data:
                parts = ax.boxplot(data, positions=positions, widths=width * 0.9, patch_artist=True,
                                   medianprops={"color": "black"})
                color = f"C{g}"
                for box in parts["boxes"]:
                    box.set_facecolor(color)
                    box.set_alpha(0.6)
                ax.plot([], [], color=color, linewidth=6, alpha=0.6, label=labels.get(group, group))
        ax.set_xticks(range(len(CATEGORIES)), [CATEGORY_ABBREV[c] for c in CATEGORIES])
        ax.set_ylabel("visual MCS ratio r_v")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(panel, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return fig


def write_figures(index: ResultIndex, out: Path, model: str | None, mcs_paths: list[Path]) -> tuple[list[Path], list[str]]:
    """Write every figure there is data for; return the files and a note per skipped figure."""
    written, notes = [], []
    for pretrained in pick_models(index, model) if index.cells else []:
        name = _slug(model_display_name(pretrained))
        fig = figure_alpha(index, pretrained, ("mean",), True, "Figure 1: mean steering")
        if fig is None:
            notes.append(f"Figure 1 for {name}: no method=mean runs (try `amps-eval sweep --method mean`)")
        else:
            written += _save(fig, out, f"figure1_mean_alpha_{name}")
        fig = figure_alpha(index, pretrained, ("l2s", "amps"), False, "Figure 6: AMPS vs L2S")
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
        fig = figure_boxes(instructed, ["visual", "text"], lambda p: p.prompt,
                           "Figure 5: visual MCS ratio with the instruction toward the image / the text",
                           [m for m in models if any(p.model == m for p in instructed)], lambda p: p.model,
                           {"visual": "instruction toward the image", "text": "instruction toward the text"})
        written += _save(fig, out, "figure5_mcs_ratio_instructed")
    else:
        notes.append("Figure 5: no MCS ratios with instructions (`amps-eval mcs --prompt visual|text --out FILE.jsonl`)")
    return written, notes
