"""The figures' layout and style on a hand-made results folder: legends outside the axes, titles
that do not collide, one name and one colour per method (the tables' names), error bands, the
effective strength on the x axis with alpha at each point, PNG and PDF."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from test_leaderboard import ALPHA, make_results

from amps_eval.mc2.schema import CATEGORIES
from amps_eval.methods.registry import LABELS, METHODS
from amps_eval.report.figures import ALPHA_LABEL, STRENGTH_LABEL, figure_alpha, figure_boxes, write_figures
from amps_eval.report.mcs_data import MCSPoint
from amps_eval.report.runs import discover
from amps_eval.report.select import build_index
from amps_eval.report.style import METHOD_COLORS, method_color


def _index(tmp_path):
    runs, problems = discover(make_results(tmp_path / "site"))
    return build_index(runs, problems, defaults={})


def _drawn(fig):
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def _assert_legends_outside_axes(fig):
    renderer = _drawn(fig)
    assert fig.legends, "a figure legend"
    for legend in fig.legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), (legend, ax)
        assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1)  # not cut off
    assert all(ax.get_legend() is None for ax in fig.axes)  # no legend inside a panel
    title = fig._suptitle.get_window_extent(renderer)
    for ax in fig.axes:
        assert not title.overlaps(ax.title.get_window_extent(renderer)) and not title.overlaps(ax.get_window_extent(renderer))
    labels = [t.get_window_extent(renderer) for ax in fig.axes for t in (ax.xaxis.label,) if t.get_text()]
    for a in range(len(labels)):
        for b in range(a + 1, len(labels)):
            assert not labels[a].overlaps(labels[b])


def test_every_method_has_one_colour_in_registry_order():
    colours = [METHOD_COLORS[m.name] for m in METHODS]
    assert len(set(colours)) == len(colours)
    assert method_color("someone_elses_method") not in colours  # an unknown method gets a free colour
    assert method_color("someone_elses_method") == method_color("someone_elses_method")


def test_sweep_figure_layout_names_colours_and_bands(tmp_path):
    index = _index(tmp_path)
    fig = figure_alpha(index, ALPHA, ("l2s", "amps_beta0", "amps", "mean"), "Figure 6: AMPS vs L2S")
    _assert_legends_outside_axes(fig)
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    # the tables' names; l2s ran at alpha 0 only, which is a sweep point (the unsteered model)
    assert texts[:3] == [LABELS["l2s"], LABELS["amps"], LABELS["mean"]]
    assert "collapse: neither option" in texts and any(t.startswith("target share") for t in texts)
    for handle, text in zip(fig.legends[0].legend_handles, texts[:3]):
        method = next(m for m, label in LABELS.items() if label == text)
        assert to_hex(handle.get_color()) == method_color(method)
    # l2s and amps recorded no effective strength: the whole figure is against alpha (one axis, one quantity)
    assert fig.axes[0].get_xlabel() == ALPHA_LABEL
    fig = figure_alpha(index, ALPHA, ("mean",), "Figure 1: mean steering")
    _assert_legends_outside_axes(fig)
    vision = fig.axes[0]
    assert vision.get_xlabel() == STRENGTH_LABEL  # every point of the mean sweep recorded its effective strength
    mean = [line for line in vision.get_lines() if to_hex(line.get_color()) == method_color("mean")]
    share = next(line for line in mean if line.get_linestyle() == "-")
    assert list(share.get_xdata()) == pytest.approx([0.0, 0.1, 0.2]) and list(share.get_ydata()) == [50.0, 100.0, 75.0]
    collapse = next(line for line in mean if line.get_linestyle() == "--")
    assert list(collapse.get_ydata()) == [0.0, 0.0, 25.0]
    assert {t.get_text() for t in vision.texts} >= {"α=0", "α=1", "α=2"}
    assert len(vision.collections) == 2  # a band of one standard error around the share and the collapse line


def test_box_figures_keep_their_legend_off_the_data():
    points = [MCSPoint(model, prompt, CATEGORIES[i % 8], str(i), (i % 7) / 7) for model in ("m-a", "m-b")
              for prompt in ("visual", "text") for i in range(32)]
    fig = figure_boxes(points, ["visual", "text"], lambda p: p.prompt, "Figure 5", ["m-a", "m-b"], lambda p: p.model,
                       {"visual": "instruction toward the image", "text": "instruction toward the text"})
    _assert_legends_outside_axes(fig)
    assert [ax.get_title() for ax in fig.axes] == ["m-a", "m-b"]
    single = figure_boxes(points, ["m-a", "m-b"], lambda p: p.model, "Figure 4", ["plain"], lambda p: "plain")
    _assert_legends_outside_axes(single)
    assert single.axes[0].get_title() == ""  # one panel: the figure's title says it all


def test_write_figures_writes_png_and_pdf(tmp_path):
    index = _index(tmp_path)
    written, notes = write_figures(index, tmp_path / "figures", None, [])
    names = sorted(p.name for p in written)
    assert names == ["figure1_mean_strength_alpha-vl.pdf", "figure1_mean_strength_alpha-vl.png",
                     "figure6_amps_vs_l2s_alpha-vl.pdf", "figure6_amps_vs_l2s_alpha-vl.png"]
    assert all(p.stat().st_size > 1000 for p in written)
    assert any("Figure 1 for beta-vl" in n for n in notes) and any("Figure 4" in n for n in notes)


DEMO = Path(__file__).resolve().parents[1] / "results" / "demo" / "runs"


@pytest.mark.skipif(not DEMO.is_dir(), reason="no committed demo")
def test_figure6_on_the_demo_is_readable_no_two_labels_overlap_bands_differ_and_the_title_names_the_methods():
    from amps_eval.report.figures import figure6_title

    runs, problems = discover(DEMO)
    index = build_index(runs, problems)
    methods = ("l2s", "amps_beta0", "amps")
    for pretrained in index.models():
        fig = figure_alpha(index, pretrained, methods, figure6_title(methods))
        renderer = _drawn(fig)
        labels = [t for ax in fig.axes for t in ax.texts if t.get_text().startswith("α=")]
        assert len(labels) >= 10  # most points keep their label
        boxes = [t.get_window_extent(renderer) for t in labels]
        for a in range(len(boxes)):
            for b in range(a + 1, len(boxes)):
                assert not boxes[a].overlaps(boxes[b]), (labels[a].get_text(), labels[b].get_text())
        for ax in fig.axes:  # every label inside its panel
            panel = ax.get_window_extent(renderer)
            assert all(panel.contains(bx.x0, bx.y0) and panel.contains(bx.x1, bx.y1)
                       for t, bx in zip(labels, boxes) if t.axes is ax)
        title = fig._suptitle.get_text()
        assert all(LABELS[m] in title for m in methods) and "AMPS vs L2S" not in title
        hatches = {c.get_hatch() for ax in fig.axes for c in ax.collections if c.get_hatch()}
        assert len(hatches) == 2  # L2S plain, the other two hatched apart
        legend = [t.get_text() for t in fig.legends[0].get_texts()]
        assert any(t.startswith("marker size") for t in legend)


def test_figures_draw_the_mean_image_logodds_below_the_shares_where_the_runs_recorded_it(tmp_path):
    from test_report_seeds import MODEL, make_seeded

    runs, problems = discover(make_seeded(tmp_path / "runs"))
    index = build_index(runs, problems)
    fig = figure_alpha(index, MODEL, ("l2s",), "Figure 6")
    _assert_legends_outside_axes(fig)
    assert len(fig.axes) == 4  # shares above, log-odds below, per target
    vision_logodds = fig.axes[2]
    assert "image_logodds" in vision_logodds.get_ylabel()
    lines = [line for line in vision_logodds.get_lines() if line.get_marker() != "None" and len(line.get_xdata()) > 1]
    # one series per training seed (seed k from the file name); every item's log-odds is i - 3 + k: mean 0.5 + k
    assert sorted(tuple(line.get_ydata()) for line in lines) == [(0.5, 0.5), (1.5, 1.5), (2.5, 2.5)]
    assert [list(line.get_xdata()) for line in lines] == [[1.0, 2.0]] * 3
    assert len(vision_logodds.collections) == 3  # a band of one standard error per series
    assert not fig.axes[3].get_lines()[1:]  # no text runs: the text panels hold no series (only the zero line)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("image_logodds" in t for t in legend)
    assert sorted(t for t in legend if t.startswith("L2S")) == [f"L2S (seed {k})" for k in range(3)]


def test_figures_without_recorded_logodds_keep_one_row(tmp_path):
    index = _index(tmp_path)
    fig = figure_alpha(index, ALPHA, ("mean",), "Figure 1: mean steering")
    assert len(fig.axes) == 2
    assert not any("image_logodds" in t.get_text() for t in fig.legends[0].get_texts())
