"""A bound on generation requests in flight: past it, new requests get 503 at once instead of queueing.

vLLM queues without limit; a bounded front door keeps latency predictable for the requests already admitted
and tells load balancers (through 503 + Retry-After) to send traffic elsewhere.
"""

from __future__ import annotations

import time

from prometheus_client import Gauge

from server.errors import ServerOverloadedError


class Admission:
    def __init__(self, limit: int, gauge: Gauge) -> None:
        self.limit = limit
        self._in_flight = 0
        self._gauge = gauge
        self._idle_since: float | None = time.monotonic()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def idle_s(self) -> float:
        """Seconds since the last request in flight finished; 0 while any is. Read from other threads (drift's)."""
        since = self._idle_since
        return 0.0 if since is None else time.monotonic() - since

    def acquire(self) -> None:
        """Take a slot or raise ServerOverloadedError; every successful call must be paired with `release`."""
        if self._in_flight >= self.limit:
            raise ServerOverloadedError(
                f"The server is at its limit of {self.limit} concurrent requests; retry shortly."
            )
        self._in_flight += 1
        self._idle_since = None
        self._gauge.set(self._in_flight)

    def release(self) -> None:
        self._in_flight -= 1
        if not self._in_flight:
            self._idle_since = time.monotonic()
        self._gauge.set(self._in_flight)
