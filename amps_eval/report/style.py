"""One name and one colour per method, shared by the tables, every figure and the leaderboard.

Names are the registry's row labels (`amps_eval.methods.registry.LABELS`, the names Tables 1-3
print). Colours are the Tableau-10 colours (matplotlib's ``tab10``) in the order of `PALETTE`,
taken by the methods in the registry's order, so a method keeps its colour whichever methods a
figure draws: MLLM-only is always grey, L2S blue, AMPS red. A method the registry does not know gets the palette's remaining
colours, in the order the names are first asked for (stable within a process), then grey.
"""

from __future__ import annotations

from amps_eval.methods.registry import LABELS, METHODS

# matplotlib's tab10 colours (as hex, so that HTML can use them too), in the order the registry's
# methods take them: the baseline grey, the prompt methods warm, the steering methods cool, AMPS red
PALETTE: tuple[str, ...] = ("#7f7f7f", "#ff7f0e", "#8c564b", "#e377c2", "#9467bd", "#17becf", "#1f77b4", "#2ca02c",
                            "#d62728", "#bcbd22")
MODEL_PALETTE: tuple[str, ...] = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                                   "#7f7f7f", "#bcbd22", "#17becf")  # tab10 in matplotlib's order
METHOD_COLORS: dict[str, str] = {m.name: PALETTE[i % len(PALETTE)] for i, m in enumerate(METHODS)}
_EXTRA: dict[str, str] = {}
TARGET_COLORS: dict[str, str] = {"vision": "#1f77b4", "text": "#d62728"}  # instruction toward the image / the text
FALLBACK = "#555555"


def method_label(method: str) -> str:
    """The method's row name in the tables (its ``method=`` value when the registry does not know it)."""
    return LABELS.get(method, method)


def method_color(method: str) -> str:
    """The method's fixed colour (hex)."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    if method not in _EXTRA:
        free = [c for c in PALETTE if c not in METHOD_COLORS.values() and c not in _EXTRA.values()]
        _EXTRA[method] = free[0] if free else FALLBACK
    return _EXTRA[method]


def series_color(index: int) -> str:
    """The ``index``-th colour of matplotlib's default cycle (for groups that are not methods: models)."""
    return MODEL_PALETTE[index % len(MODEL_PALETTE)]
