"""Benchmark: what the interaction log costs a request, and how fast its writer drains, on SQLite or PostgreSQL.

    python -m loadtests.interaction_log [--records 20000] [--database-url URL]

Prints the request-path cost of deciding and queueing one record (what a completion pays), the writer's sustained
rate (records redacted and written per second), and what a queue too small for a burst drops.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from adapters.database import open_database
from adapters.interactions import InteractionRecord
from adapters.settings import Settings
from server.interaction_log import InteractionLog
from server.metrics import ServerMetrics

MESSAGES = [
    {"role": "system", "content": "Classify the ticket."},
    {"role": "user", "content": "Hi, I was charged twice, call me on +1 415 555 0101 or mail ana@example.com."},
]


def record() -> InteractionRecord:
    return InteractionRecord(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        model="support-tickets@1",
        adapter="support-tickets",
        version=1,
        tenant="apps",
        route="chat",
        request={"messages": MESSAGES},
        parameters={"temperature": 0, "max_tokens": 32},
        outputs=['{"category": "billing", "priority": "urgent"}'],
        finish_reasons=["stop"],
        prompt_tokens=60,
        completion_tokens=14,
        latency_ms=120.0,
        ttft_ms=30.0,
    )


def run(database_url: str, records: int, queue_size: int) -> tuple[list[float], float, float]:
    """(per-call request-path seconds, writer records/s, records dropped)."""
    settings = Settings(home=Path(tempfile.mkdtemp()), database_url=database_url, log_queue_size=queue_size)
    open_database(settings.database).dispose()  # migrate, as the server's hub does at start
    metrics = ServerMetrics()
    log = InteractionLog(settings, metrics)
    log.start()
    prepared = [record() for _ in range(records)]
    costs = []
    started = time.perf_counter()
    for item in prepared:
        before = time.perf_counter()
        if log.wants(item.adapter, None):
            log.submit(item)
        costs.append(time.perf_counter() - before)
    log.flush(600)
    elapsed = time.perf_counter() - started
    dropped = sum(
        sample.value
        for family in metrics.interactions_dropped.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    )
    log.close()
    return costs, (records - dropped) / elapsed, dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--database-url", default=None, help="Default: SQLite in a temporary folder.")
    args = parser.parse_args()
    url = args.database_url or f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    costs, rate, dropped = run(url, args.records, queue_size=args.records)
    micro = sorted(cost * 1e6 for cost in costs)
    print(f"database: {url.split('://')[0]}, {args.records} records")
    print(
        f"request path (decide + queue): median {statistics.median(micro):.1f} us, "
        f"p99 {micro[int(len(micro) * 0.99)]:.1f} us"
    )
    print(f"writer (redact + insert, batches of up to 256): {rate:,.0f} records/s, {dropped:.0f} dropped")
    burst_url = args.database_url or f"sqlite:///{tempfile.mkdtemp()}/burst.db"
    _, _, burst_dropped = run(burst_url, args.records, queue_size=1000)
    print(f"a burst of {args.records} with a queue of 1000: {burst_dropped:.0f} dropped and counted, none waited")


if __name__ == "__main__":
    main()
