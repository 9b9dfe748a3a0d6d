"""Per-key limits: requests per minute and generations in flight, each 429 with Retry-After when exceeded.

The rate uses the `limits` library's moving window (no burst at a window's edge, unlike a fixed window). Both
limits are kept in this replica's memory: with N replicas behind a load balancer a key gets up to N times its
limit, which is the usual trade of API gateways that do not share state (it keeps the request path off the
database). A key's own limits (`loradock keys create --rpm --max-concurrent`) override the server's defaults;
requests without a key (auth off on a loopback-only server) are not limited per key.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from adapters.keys import ANONYMOUS_ADMIN, Principal
from adapters.settings import Settings
from server.errors import RateLimitedError

CONCURRENCY_RETRY_S = 1


class KeyLimits:
    def __init__(self, settings: Settings) -> None:
        self._default_rpm = settings.key_requests_per_minute
        self._default_concurrent = settings.key_max_concurrent
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._in_flight: Counter[str] = Counter()

    def check_rate(self, principal: Principal) -> None:
        """Count one request against the key's rate; raise RateLimitedError past it."""
        rpm = principal.requests_per_minute or self._default_rpm
        if rpm is None or principal == ANONYMOUS_ADMIN:
            return
        item = RateLimitItemPerMinute(rpm)
        if self._limiter.hit(item, principal.label):
            return
        reset_at = self._limiter.get_window_stats(item, principal.label).reset_time
        retry_after = max(1, math.ceil(reset_at - time.time()))
        raise RateLimitedError(
            f"Rate limit reached: this API key may make {rpm} requests per minute. Retry in {retry_after} s.",
            retry_after_s=retry_after,
        )

    @contextmanager
    def generation_slot(self, principal: Principal | None) -> Iterator[None]:
        """Hold one of the key's slots for generations in flight while the block runs."""
        limit = None if principal is None else principal.max_concurrent or self._default_concurrent
        if principal is None or limit is None or principal == ANONYMOUS_ADMIN:
            yield
            return
        label = principal.label
        if self._in_flight[label] >= limit:
            raise RateLimitedError(
                f"This API key already has {limit} generations in flight, its limit; retry when one finishes.",
                retry_after_s=CONCURRENCY_RETRY_S,
                code="concurrency_limit_exceeded",
            )
        self._in_flight[label] += 1
        try:
            yield
        finally:
            self._in_flight[label] -= 1
            if not self._in_flight[label]:
                del self._in_flight[label]
