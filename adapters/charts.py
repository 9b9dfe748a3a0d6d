"""Time-series charts as inline SVG, for the drift report and the dashboard.

matplotlib's object API (a Figure with its own canvas) rather than pyplot: pyplot keeps global state and is not
safe in a server that renders pages from several threads.
"""

from __future__ import annotations

import io
from datetime import datetime

from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
from matplotlib.figure import Figure

Series = dict[str, tuple[list[datetime], list[float]]]
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def time_series_svg(
    series: Series,
    *,
    title: str,
    ylabel: str,
    line_at: float | None = None,
    line_label: str = "",
    step: bool = False,
) -> str:
    """One line per series against time; `line_at` draws a dashed reference line (an alert level, say)."""
    figure = Figure(figsize=(6.4, 2.6), dpi=100)
    axis = figure.add_subplot()
    plotted = False
    for index, (label, (times, values)) in enumerate(sorted(series.items())):
        if not times:
            continue
        colour = PALETTE[index % len(PALETTE)]
        if step:
            axis.step(date2num(times), values, where="post", label=label, color=colour, marker=".")
        else:
            axis.plot(date2num(times), values, label=label, color=colour, marker="." if len(times) < 30 else None)
        plotted = True
    if line_at is not None and plotted:
        axis.axhline(line_at, color="#d62728", linestyle="--", linewidth=1, label=line_label or None)
    if not plotted:
        axis.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=axis.transAxes, color="#888888")
        axis.set_xticks([])
    else:
        locator = AutoDateLocator()
        axis.xaxis.set_major_locator(locator)
        axis.xaxis.set_major_formatter(ConciseDateFormatter(locator))
        axis.legend(fontsize=7, loc="upper left", frameon=False)
    axis.set_title(title, fontsize=10)
    axis.set_ylabel(ylabel, fontsize=8)
    axis.tick_params(labelsize=7)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg")
    svg = buffer.getvalue()
    return svg[svg.index("<svg") :]
