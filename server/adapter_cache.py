"""Hot-loading: adapters enter the engine on first use and leave it when the hub retires them.

vLLM keeps up to max_cpu_loras adapters in host memory (LRU) and max_loras of them in one batch. We load an
adapter explicitly on its first request (so its load time is measured and a broken file fails that request
cleanly before any byte is streamed), mirror vLLM's LRU to report hits, misses and residency, and drop versions
that were deprecated or purged once the requests still using them have finished.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict

from adapters.registry import Registry
from adapters.tables import ACTIVE
from server.engine import InferenceEngine, LoraTarget
from server.metrics import ServerMetrics

logger = logging.getLogger(__name__)


class AdapterCache:
    def __init__(self, engine: InferenceEngine, metrics: ServerMetrics, capacity: int) -> None:
        self._engine = engine
        self._metrics = metrics
        self._capacity = capacity
        self._resident: OrderedDict[int, str] = OrderedDict()
        self._loading: dict[int, asyncio.Future[None]] = {}
        self._in_flight: Counter[int] = Counter()

    @property
    def resident(self) -> list[int]:
        return list(self._resident)

    async def ensure_loaded(self, lora: LoraTarget) -> None:
        if lora.int_id in self._resident:
            self._resident.move_to_end(lora.int_id)
            self._metrics.adapter_cache.labels("hit").inc()
            return
        pending = self._loading.get(lora.int_id)
        if pending is not None:  # another request is loading it right now: wait for that load
            await asyncio.shield(pending)
            return
        self._metrics.adapter_cache.labels("miss").inc()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._loading[lora.int_id] = future
        started = time.perf_counter()
        try:
            await self._engine.add_lora(lora)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # consumed here; waiters re-raise it
            raise
        else:
            future.set_result(None)
        finally:
            del self._loading[lora.int_id]
        self._metrics.adapter_load_seconds.observe(time.perf_counter() - started)
        self._resident[lora.int_id] = lora.name
        while len(self._resident) > self._capacity:
            self._resident.popitem(last=False)  # vLLM's own LRU has evicted it as well
        self._metrics.adapters_resident.set(len(self._resident))

    def start_request(self, int_id: int) -> None:
        self._in_flight[int_id] += 1

    def finish_request(self, int_id: int) -> None:
        self._in_flight[int_id] -= 1
        if self._in_flight[int_id] <= 0:
            del self._in_flight[int_id]

    async def drop_retired(self, registry: Registry) -> list[int]:
        """Unload resident versions that are no longer active and that no request is using; returns their ids."""
        statuses = await asyncio.to_thread(registry.statuses, set(self._resident))
        dropped = []
        for int_id in list(self._resident):
            if statuses.get(int_id) == ACTIVE or self._in_flight.get(int_id):
                continue
            await self._engine.remove_lora(int_id)
            logger.info("unloaded retired adapter %s (lora id %d)", self._resident.pop(int_id), int_id)
            dropped.append(int_id)
        self._metrics.adapters_resident.set(len(self._resident))
        return dropped
