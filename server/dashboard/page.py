"""What the dashboard shows, gathered from the hub, the drift monitor and the traffic history, and rendered."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from adapters.charts import Series, time_series_svg
from adapters.drift.report import STATUS_COLOURS, drift_section
from adapters.drift.summary import adapter_drift
from adapters.records import AdapterView
from server.state import ServerState
from server.traffic import Counters, Sample

REFRESH_S = 15
TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=select_autoescape(["html"])
)


def render_dashboard(state: ServerState) -> str:
    """The whole page (blocking: database reads and chart rendering; call it in a thread)."""
    adapters = state.hub.registry.list_adapters()
    samples = state.traffic.samples()
    drift = [
        adapter_drift(state.hub.drift, adapter, live=state.drift.versions(adapter.name), replica=state.drift.replica)
        for adapter in adapters
    ]
    context: dict[str, Any] = {
        "generated": datetime.now(UTC),
        "refresh_s": REFRESH_S,
        "base_model": state.resolver.base.name,
        "ready": state.engine is not None,
        "replica": state.drift.replica,
        "adapters": [_adapter_row(adapter) for adapter in adapters],
        "traffic": _traffic_rows(samples[-1]),
        "traffic_charts": [Markup(chart) for chart in _traffic_charts(samples)],
        "drift": [
            {
                "adapter": view.adapter,
                "status": view.status.value,
                "section": Markup(drift_section(view)) if view.versions or view.history else "",
            }
            for view in drift
        ],
        "feedback": sorted(state.hub.feedback.summary().items()),
        "colours": STATUS_COLOURS,
    }
    return TEMPLATES.get_template("dashboard.html").render(context)


def _adapter_row(adapter: AdapterView) -> dict[str, Any]:
    return {
        "name": adapter.name,
        "owner": adapter.owner or "ops",
        "versions": ", ".join(f"v{v.version}" for v in adapter.active_versions),
        "retired": sum(v.status != "active" for v in adapter.versions),
        "aliases": [
            {
                "name": alias.name,
                "targets": " · ".join(
                    f"v{target.version}" + (f" {target.weight:.0%}" if len(alias.targets) > 1 else "")
                    for target in alias.targets
                ),
            }
            for alias in adapter.aliases
        ],
    }


def _traffic_rows(now: Sample) -> list[dict[str, Any]]:
    rows = []
    for name, counters in sorted(now.adapters.items()):
        p50, p95 = counters.latency_quantile(0.5), counters.latency_quantile(0.95)
        rows.append(
            {
                "adapter": name,
                "requests": int(counters.requests),
                "errors": int(counters.errors),
                "p50_ms": None if p50 is None else round(p50 * 1000),
                "p95_ms": None if p95 is None else round(p95 * 1000),
            }
        )
    return rows


def _traffic_charts(samples: list[Sample]) -> list[str]:
    """Requests and errors per minute, and p95 latency, per adapter, between consecutive samples."""
    requests: Series = {}
    errors: Series = {}
    latency: Series = {}
    for earlier, later in itertools.pairwise(samples):
        minutes = (later.at - earlier.at).total_seconds() / 60
        if minutes <= 0:
            continue
        for name, counters in later.adapters.items():
            delta = counters.minus(earlier.adapters.get(name, Counters()))
            for series, value in (
                (requests, delta.requests / minutes),
                (errors, delta.errors / minutes),
                (latency, _ms(delta.latency_quantile(0.95))),
            ):
                if value is not None:
                    times, values = series.setdefault(name, ([], []))
                    times.append(later.at)
                    values.append(value)
    return [
        time_series_svg(requests, title="Requests per minute", ylabel="req/min"),
        time_series_svg(latency, title="p95 latency", ylabel="ms"),
        time_series_svg(errors, title="Error responses per minute", ylabel="errors/min"),
    ]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000
