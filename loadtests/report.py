"""Load-run summaries (percentiles, rates, errors) and the reports they go into: JSON, Markdown and PNG."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from loadtests.generator import Run

PERCENTILES = (50, 90, 99)


class Percentiles(BaseModel):
    p50: float | None
    p90: float | None
    p99: float | None
    mean: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Percentiles:
        """Linear-interpolated percentiles (numpy's default, as vLLM's benchmark reports them); None when empty."""
        if not values:
            return cls(p50=None, p90=None, p99=None, mean=None)
        p50, p90, p99 = (float(v) for v in np.percentile(values, PERCENTILES))
        return cls(p50=p50, p90=p90, p99=p99, mean=statistics.fmean(values))


class Summary(BaseModel):
    """One scenario on one server: the figures the benchmark tables compare (times in seconds)."""

    scenario: str
    server: str
    concurrency: int
    requests: int
    succeeded: int
    errors: dict[str, int]
    duration_s: float
    requests_per_s: float
    output_tokens_per_s: float
    ttft_s: Percentiles
    itl_s: Percentiles
    latency_s: Percentiles
    cold_ttft_s: Percentiles
    """Time to first token of each model's first request in the run (adapters the server had to load)."""
    warm_ttft_s: Percentiles
    extra: dict[str, Any] = {}
    """Scenario-specific figures: adapter load times read from the server, registrations made during load..."""

    @property
    def cold_penalty_s(self) -> float | None:
        """How much later a cold adapter's first token came than a warm one's, at the median."""
        if self.cold_ttft_s.p50 is None or self.warm_ttft_s.p50 is None:
            return None
        return self.cold_ttft_s.p50 - self.warm_ttft_s.p50


def summarize(run: Run, scenario: str, server: str, extra: dict[str, Any] | None = None) -> Summary:
    ok = [result for result in run.results if result.error is None]
    ttfts = [result.ttft for result in ok if result.ttft is not None]
    return Summary(
        scenario=scenario,
        server=server,
        concurrency=run.concurrency,
        requests=len(run.results),
        succeeded=len(ok),
        errors=dict(Counter(result.error for result in run.results if result.error is not None)),
        duration_s=run.duration_s,
        requests_per_s=len(ok) / run.duration_s,
        output_tokens_per_s=sum(result.output_tokens for result in ok) / run.duration_s,
        ttft_s=Percentiles.of(ttfts),
        itl_s=Percentiles.of([gap for result in ok for gap in result.token_gaps]),
        latency_s=Percentiles.of([result.latency for result in ok]),
        cold_ttft_s=Percentiles.of([r.ttft for r in ok if r.cold and r.ttft is not None]),
        warm_ttft_s=Percentiles.of([r.ttft for r in ok if not r.cold and r.ttft is not None]),
        extra=extra or {},
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def markdown_table(summaries: Sequence[Summary]) -> str:
    """Every run in one table: rates, then TTFT, ITL and end-to-end latency percentiles in milliseconds."""
    lines = [
        "| scenario | server | conc. | requests | errors | req/s | out tok/s | TTFT p50/p90/p99 ms "
        "| ITL p50/p90/p99 ms | latency p50/p90/p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        errors = sum(s.errors.values())

        def triple(p: Percentiles) -> str:
            return f"{_ms(p.p50)} / {_ms(p.p90)} / {_ms(p.p99)}"

        lines.append(
            f"| {s.scenario} | {s.server} | {s.concurrency} | {s.requests} | {errors} | {s.requests_per_s:.2f} "
            f"| {s.output_tokens_per_s:.1f} | {triple(s.ttft_s)} | {triple(s.itl_s)} | {triple(s.latency_s)} |"
        )
    return "\n".join(lines)


def write_reports(summaries: Sequence[Summary], out: Path, name: str, preamble: str = "") -> list[Path]:
    """`name`.json (every figure), `name`.md (the table) and `name`.png (throughput and latency bars)."""
    out.mkdir(parents=True, exist_ok=True)
    data = [summary.model_dump(mode="json") for summary in summaries]
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps(data, indent=2))
    md_path = out / f"{name}.md"
    md_path.write_text(f"{preamble}\n\n{markdown_table(summaries)}\n" if preamble else markdown_table(summaries) + "\n")
    return [json_path, md_path, plot(summaries, out / f"{name}.png")]


def plot(summaries: Sequence[Summary], path: Path) -> Path:
    """Output tokens/s and TTFT/latency p50 per run, servers side by side within each scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    labels = [f"{s.scenario}\nc={s.concurrency}" for s in summaries]
    servers = sorted({s.server for s in summaries})
    palette = ("#1f77b4", "#999999", "#ff7f0e", "#2ca02c")
    colors = {server: palette[index % len(palette)] for index, server in enumerate(servers)}
    figure, axes = plt.subplots(1, 3, figsize=(max(9.0, 1.1 * len(summaries) + 4), 4.2))
    panels = (
        ("output tokens/s", lambda s: s.output_tokens_per_s),
        ("TTFT p50 (ms)", lambda s: (s.ttft_s.p50 or 0) * 1000),
        ("latency p50 (ms)", lambda s: (s.latency_s.p50 or 0) * 1000),
    )
    for axis, (title, value) in zip(axes, panels, strict=True):
        axis.bar(range(len(summaries)), [value(s) for s in summaries], color=[colors[s.server] for s in summaries])
        axis.set_xticks(range(len(summaries)), labels, rotation=60, ha="right", fontsize=7)
        axis.set_title(title)
        axis.grid(axis="y", alpha=0.3)
    handles = [Patch(color=colors[server]) for server in servers]
    figure.legend(handles, servers, loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
