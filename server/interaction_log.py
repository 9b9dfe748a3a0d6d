"""The interaction log's writer: completions are queued on the request path and written by one background thread.

A request only decides whether it is logged (opt-out header, the adapter's sampling rate) and puts a record on a
bounded queue without waiting. Redaction and the database write happen in the writer thread, through its own
connection pool with a short lock timeout: a slow or unwritable database costs dropped records (counted in
`loradock_interactions_dropped`), never a slower or failed response. An unreachable database (an outage, a
failover) is waited out instead: records queue up to `log_queue_size` and are written when it is back.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time

from adapters.database import Database
from adapters.interactions import InteractionRecord, InteractionStore, LogPolicyView
from adapters.redaction import Redactor
from adapters.settings import Settings
from server.errors import database_unavailable
from server.metrics import ServerMetrics

logger = logging.getLogger(__name__)

OPT_OUT_HEADER = "x-loradock-log"
"""`X-Loradock-Log: off` on a request keeps it out of the log (and out of feedback and retraining)."""
OPT_OUT_VALUES = frozenset({"off", "false", "0", "no"})
BATCH = 256
POLICY_REFRESH_S = 5.0
UNREACHABLE_RETRY_S = 1.0


def opted_out(header: str | None) -> bool:
    return header is not None and header.strip().lower() in OPT_OUT_VALUES


class InteractionLog:
    def __init__(self, settings: Settings, metrics: ServerMetrics) -> None:
        self.enabled = settings.log_interactions
        self._metrics = metrics
        self._default = LogPolicyView(settings.log_sample_rate, settings.log_retention_days)
        self._sweep_s = settings.log_sweep_s
        self._redactor = Redactor(settings.log_redact, settings.log_redact_patterns)
        self._database = Database(settings.database, timeout_s=settings.log_write_timeout_s)
        self._store = InteractionStore(self._database)
        self._policies: dict[str, LogPolicyView] = {}
        self._queue: queue.Queue[InteractionRecord] = queue.Queue(settings.log_queue_size)
        self._progress = threading.Condition()
        self._submitted = 0
        self._settled = 0
        """Records written or dropped by the writer; flush() waits for it to reach what was submitted."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="interaction-log", daemon=True)

    def start(self) -> None:
        if self.enabled:
            self._refresh_policies()
            self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (up to `timeout_s`), then stop."""
        if self._thread.is_alive():
            self.flush(timeout_s)
            self._stop.set()
            self._thread.join(timeout_s)
        self._database.dispose()

    # --- the request path -------------------------------------------------------------------------------

    def wants(self, adapter: str | None, opt_out: str | None) -> bool:
        """Whether to record this request: logging on, not opted out, and inside the adapter's sample."""
        if not self.enabled:
            return False
        if opted_out(opt_out):
            self._metrics.interactions_skipped.labels("opted_out").inc()
            return False
        rate = self._policies.get(adapter or "", self._default).sample_rate
        if rate < 1 and random.random() >= rate:
            self._metrics.interactions_skipped.labels("sampled_out").inc()
            return False
        return True

    def submit(self, record: InteractionRecord) -> None:
        """Queue `record` without waiting; a full queue drops it (counted)."""
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._metrics.interactions_dropped.labels("queue_full").inc()
            return
        with self._progress:
            self._submitted += 1
        self._metrics.interaction_queue.set(self._queue.qsize())

    def flush(self, timeout_s: float) -> bool:
        """Wait until every record submitted so far is written or dropped; False on timeout."""
        with self._progress:
            target = self._submitted
            return self._progress.wait_for(lambda: self._settled >= target, timeout_s)

    # --- the writer thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        next_policy_refresh = time.monotonic() + POLICY_REFRESH_S
        next_sweep = time.monotonic()
        while not (self._stop.is_set() and self._queue.empty()):
            now = time.monotonic()
            if now >= next_policy_refresh:
                self._refresh_policies()
                next_policy_refresh = now + POLICY_REFRESH_S
            if now >= next_sweep:
                self._sweep()
                next_sweep = now + self._sweep_s
            try:
                batch = [self._queue.get(timeout=0.5)]
            except queue.Empty:
                continue
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._write(batch)
            self._metrics.interaction_queue.set(self._queue.qsize())

    def _write(self, batch: list[InteractionRecord]) -> None:
        try:
            redacted = self._write_when_reachable(batch)
        except Exception as exc:  # a locked or full database, or a record it refuses: drop this batch, keep serving
            logger.warning("interaction log: %d records dropped, the database refused them: %s", len(batch), exc)
            self._metrics.interactions_dropped.labels("database_error").inc(len(batch))
        else:
            for record in batch:
                self._metrics.interactions_logged.labels(record.adapter or "(base)").inc()
            self._metrics.redactions.inc(redacted)
        with self._progress:
            self._settled += len(batch)
            self._progress.notify_all()

    def _write_when_reachable(self, batch: list[InteractionRecord]) -> int:
        """Write `batch`; while the database is unreachable, hold it and retry, so an outage loses nothing.

        New records wait in the bounded queue meanwhile (beyond it they are dropped, counted); a server that stops
        during the outage gives up after its close timeout.
        """
        while True:
            try:
                return self._store.write(batch, self._redactor)
            except Exception as exc:
                if not database_unavailable(exc) or self._stop.is_set():
                    raise
                logger.warning("interaction log: database unreachable, holding %d records: %s", len(batch), exc)
                self._stop.wait(UNREACHABLE_RETRY_S)

    def _refresh_policies(self) -> None:
        try:
            self._policies = self._store.policies()
        except Exception as exc:  # keep the last known policies until the database answers again
            logger.warning("interaction log: could not read log policies: %s", exc)

    def _sweep(self) -> None:
        try:
            deleted = self._store.delete_expired(self._default.retention_days)
        except Exception as exc:
            logger.warning("interaction log: could not delete expired interactions: %s", exc)
            return
        if deleted:
            logger.info("interaction log: %d interactions past their retention deleted", deleted)
