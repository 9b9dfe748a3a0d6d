"""Traffic, latency and errors per adapter over time, for the dashboard, sampled from the server's own metrics.

Every `dashboard_sample_s` the Prometheus counters are read and kept (the last SAMPLES of them); rates and
latency percentiles over time come from the differences between samples, the way Prometheus' `rate()` and
`histogram_quantile()` read them. Nothing new is counted on the request path. A deployment with Prometheus has
the same series there, across replicas; this history is one replica's, for a dashboard that works on its own.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

from server.metrics import ServerMetrics

SAMPLES = 360
UNRESOLVED = "(unresolved)"
"""Errors answered before a request named a servable model."""


@dataclass
class Counters:
    """Cumulative counters of one adapter (all its versions) at one moment."""

    requests: float = 0.0
    errors: float = 0.0
    latency_sum: float = 0.0
    latency_count: float = 0.0
    buckets: dict[float, float] = field(default_factory=lambda: defaultdict(float))
    """Upper bound -> requests at most that slow (cumulative, as Prometheus keeps them)."""

    def minus(self, earlier: Counters) -> Counters:
        return Counters(
            self.requests - earlier.requests,
            self.errors - earlier.errors,
            self.latency_sum - earlier.latency_sum,
            self.latency_count - earlier.latency_count,
            defaultdict(float, {le: count - earlier.buckets.get(le, 0.0) for le, count in self.buckets.items()}),
        )

    def latency_quantile(self, q: float) -> float | None:
        """Seconds, interpolated within the bucket that holds the q-quantile (None without requests)."""
        total = self.latency_count
        if total <= 0:
            return None
        rank, lower, below = q * total, 0.0, 0.0
        for upper in sorted(self.buckets):
            count = self.buckets[upper]
            if count >= rank:
                if math.isinf(upper):
                    return lower
                inside = count - below
                return lower + (upper - lower) * ((rank - below) / inside if inside else 1.0)
            lower, below = upper, count
        return lower


@dataclass(frozen=True)
class Sample:
    at: datetime
    adapters: dict[str, Counters]


def adapter_of(model: str) -> str:
    """`support-tickets@3` -> `support-tickets`; the base model's name stays as it is."""
    if model == "none":
        return UNRESOLVED
    return model.partition("@")[0]


class TrafficHistory:
    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics
        self._samples: deque[Sample] = deque(maxlen=SAMPLES)

    def record(self) -> None:
        self._samples.append(self.sample())

    def samples(self) -> list[Sample]:
        """The kept samples and one taken now."""
        return [*self._samples, self.sample()]

    def sample(self) -> Sample:
        adapters: dict[str, Counters] = defaultdict(Counters)
        for metric in self._metrics.registry.collect():
            for sample in metric.samples:
                model = sample.labels.get("model")
                if model is None:
                    continue
                counters = adapters[adapter_of(model)]
                if sample.name == "loradock_requests_total":
                    counters.requests += sample.value
                elif sample.name == "loradock_errors_total":
                    counters.errors += sample.value
                elif sample.name == "loradock_request_latency_seconds_sum":
                    counters.latency_sum += sample.value
                elif sample.name == "loradock_request_latency_seconds_count":
                    counters.latency_count += sample.value
                elif sample.name == "loradock_request_latency_seconds_bucket":
                    counters.buckets[float(sample.labels["le"])] += sample.value
        return Sample(datetime.now(UTC), dict(adapters))
