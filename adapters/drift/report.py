"""The drift of one adapter as a standalone HTML page (tables and history charts): `loradock drift --html`."""

from __future__ import annotations

import html
from collections import defaultdict
from datetime import datetime
from pathlib import Path

from adapters.charts import Series, time_series_svg
from adapters.drift.reports import SEVERITY, AdapterDrift, HistoryPoint, WindowReport

STATUS_COLOURS = {"ok": "#2ca02c", "warn": "#ff7f0e", "alert": "#d62728", "insufficient_data": "#888888"}


def status_badge(status: str) -> str:
    colour = STATUS_COLOURS.get(status, "#888888")
    return f'<span class="badge" style="background:{colour}" data-status="{status}">{html.escape(status)}</span>'


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def window_table(report: WindowReport) -> str:
    rows = "".join(
        f'<tr data-test="{check.test}"><td>{check.test}</td><td>{html.escape(check.method)}</td><td>{check.n}</td>'
        f'<td class="score">{number(check.score)}</td><td>{number(check.warn_at)}</td><td>{number(check.alert_at)}</td>'
        f"<td>{number(check.p_value)}</td><td>{status_badge(check.status.value)}</td></tr>"
        for check in report.checks
    )
    examples = "".join(
        f"<li><code>{example.similarity:.3f}</code> {html.escape(example.prompt)}</li>" for example in report.examples
    )
    return (
        f'<h4 data-window="{report.window}">{report.window} window ({html.escape(report.size)}, n={report.n}) '
        f"{status_badge(report.status.value)}</h4>"
        "<table><tr><th>test</th><th>method</th><th>n</th><th>score</th><th>warn at</th><th>alert at</th>"
        f"<th>p</th><th>status</th></tr>{rows}</table>"
        + (
            f"<p>Most drifted prompts (similarity to the nearest reference prompt):</p><ul>{examples}</ul>"
            if examples
            else ""
        )
    )


def history_charts(history: list[HistoryPoint], alert_at: dict[tuple[int, str, str], float]) -> str:
    """Status over time per version and window, and each test's score over its alert level (1 = alert)."""
    levels: Series = {}
    ratios: Series = defaultdict(lambda: ([], []))
    for point in history:
        key = f"v{point.version} {point.window}"
        times, values = levels.setdefault(key, ([], []))
        times.append(point.created_at)
        values.append(SEVERITY[point.status])
        for test, score in point.scores.items():
            limit = alert_at.get((point.version, point.window, test))
            if limit:
                ratio_times, ratio_values = ratios[f"v{point.version} {point.window} {test}"]
                ratio_times.append(point.created_at)
                ratio_values.append(score / limit)
    status_chart = time_series_svg(
        levels, title="Drift status (-1 no data, 0 ok, 1 warn, 2 alert)", ylabel="status", step=True
    )
    score_chart = time_series_svg(
        dict(ratios), title="Score / alert threshold", ylabel="ratio", line_at=1.0, line_label="alert"
    )
    return f'<div class="chart" data-chart="drift-status">{status_chart}</div><div class="chart">{score_chart}</div>'


def alert_levels(drift: AdapterDrift) -> dict[tuple[int, str, str], float]:
    return {
        (version.version, window.window, check.test): check.alert_at
        for version in drift.versions
        for window in version.windows
        for check in window.checks
        if check.alert_at
    }


def drift_section(drift: AdapterDrift) -> str:
    """The drift of one adapter as an HTML fragment (the dashboard embeds the same)."""
    parts = [
        f'<section class="drift" data-adapter="{drift.adapter}"><h3>{html.escape(drift.adapter)} '
        f"{status_badge(drift.status.value)}</h3>"
    ]
    for version in drift.versions:
        profile = version.profile or {}
        parts.append(
            f'<div data-version="{version.version}"><h4>version {version.version} {status_badge(version.status.value)}'
            f"</h4><p>profile: {html.escape(str(profile.get('source', 'none yet')))}, "
            f"{profile.get('prompts', '-')} prompts"
            + (
                f"; profiling from production: {version.profiling['collected']}/{version.profiling['needed']}"
                if version.profiling
                else ""
            )
            + "</p>"
        )
        parts.extend(window_table(window) for window in version.windows)
        parts.append("</div>")
    parts.append(history_charts(drift.history, alert_levels(drift)))
    parts.append("</section>")
    return "".join(parts)


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>{style}</style></head>
<body><h1>{title}</h1><p>{subtitle}</p>{body}</body></html>"""
STYLE = """body{font-family:system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 8px;font-size:13px;text-align:left}th{background:#f4f4f4}
.badge{color:#fff;border-radius:4px;padding:1px 6px;font-size:12px}.chart svg{max-width:100%;height:auto}
section{margin-bottom:32px}code{color:#555}"""


def write_html(drift: AdapterDrift, out: Path, generated: datetime) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    page = PAGE.format(
        title=f"Drift of {html.escape(drift.adapter)}",
        subtitle=f"{drift.source} data, generated {generated:%Y-%m-%d %H:%M:%S} UTC",
        style=STYLE,
        body=drift_section(drift),
    )
    out.write_text(page, encoding="utf-8")
    return out
