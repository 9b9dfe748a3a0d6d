"""Per-key limits: requests per minute and generations in flight, each 429 with Retry-After when exceeded.

The rate uses the `limits` library's moving window (no burst at a window's edge, unlike a fixed window). Both
limits are kept in this replica's memory: with N replicas behind a load balancer a key gets up to N times its
limit, which is the usual trade of API gateways that do not share state (it keeps the request path off the
database). A key's own limits (`loradock keys create --rpm --max-concurrent`) override the server's defaults;
requests without a key (auth off on a loopback-only server) and the bootstrap admin key (`LORADOCK_ADMIN_KEY`, the
operator's way in) are not limited per key.
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

from adapters.keys import Principal
from adapters.settings import Settings
from server.errors import InvalidRequestError, RateLimitedError

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
        if rpm is None or principal.key_id is None:  # no key, or the operator's bootstrap key: never locked out
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

    def concurrency_limit(self, principal: Principal | None) -> int | None:
        if principal is None or principal.key_id is None:  # no key, or the operator's bootstrap key
            return None
        return principal.max_concurrent or self._default_concurrent

    def check_prompts(self, principal: Principal, prompts: int) -> None:
        """A request whose prompts alone exceed the key's generations in flight could never be served."""
        limit = self.concurrency_limit(principal)
        if limit is not None and prompts > limit:
            raise InvalidRequestError(
                f"This API key may have {limit} generations in flight and each prompt is one; "
                f"this request has {prompts} prompts.",
                param="prompt",
            )

    @contextmanager
    def generation_slot(self, principal: Principal | None) -> Iterator[None]:
        """Hold one of the key's slots for generations in flight (one per prompt) while the block runs."""
        limit = self.concurrency_limit(principal)
        if principal is None or limit is None:
            yield
            return
        label = principal.label
        if self._in_flight[label] >= limit:
            raise RateLimitedError(
                f"This API key already has {limit} generations in flight (each prompt of a request is one), "
                "its limit; retry when one finishes.",
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
