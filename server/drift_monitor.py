"""Drift per adapter version, computed in one background thread from the completions the server answers.

The request path only puts a small record on a bounded queue (`observe`, no waiting). The thread takes them in
batches: while requests are in flight it holds them back until the server is idle, a batch is full or the oldest
has waited `drift_batch_s`, because work done the moment a completion finished took CPU from the next request's
prefill. It embeds prompts (at most `drift_embed_per_s` a second, so a flood of traffic cannot make it eat the CPU
the engine needs), keeps a count window and a time window per version, evaluates them against the version's
reference profile every `drift_evaluate_every` completions or `drift_evaluate_s` seconds, and publishes the result:
in memory for GET /v1/adapters/{name}/drift, as Prometheus gauges, as a log line when a status changes, and as
snapshots in the hub's database (for the history chart and `loradock drift`). A version with no profile is
profiled from its first `drift_profile_requests` production prompts.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from adapters.database import Database
from adapters.drift.checks import DriftDetector, Observation, feedback_check
from adapters.drift.embedding_model import EmbedderUnavailableError
from adapters.drift.features import Embedder, is_refusal, prompt_text
from adapters.drift.profile import DriftProfile, ReferenceAnswer, build_profile
from adapters.drift.reports import SEVERITY, CheckResult, Status, VersionDrift, WindowReport, worst
from adapters.drift.store import DriftStore, SnapshotView
from adapters.feedback import FeedbackStore
from adapters.redaction import Redactor
from adapters.settings import Settings
from server.metrics import ServerMetrics

logger = logging.getLogger(__name__)

BATCH = 64
IDLE_S = 0.2
"""No request in flight for this long: the server is idle, and a held-back batch goes to the drift thread's work."""
POLL_S = 0.1
TIME_WINDOW_CAP = 2000
"""Most completions a time window holds (the newest); beyond it the window is a sample of the span."""
FEEDBACK_WINDOW, FEEDBACK_BASELINE = 50, 500
PROFILE_RETRY_S = 30.0
IDLE_EVALUATE_S = 300.0
"""A version with no new completions is evaluated this often still: its time window empties and feedback arrives."""
EXAMPLE_CHARS = 300


@dataclass(frozen=True)
class Completion:
    """What the request path hands over: references only, nothing computed."""

    adapter: str
    version: int
    lora_id: int
    request: dict[str, Any]
    answer: str
    finish_reason: str | None
    keep_text: bool
    created: float = field(default_factory=time.time)


@dataclass
class VersionState:
    """The live state of one version: its windows, detector and latest reports."""

    adapter: str
    version: int
    lora_id: int
    count_window: deque[Observation]
    time_window: deque[Observation] = field(default_factory=lambda: deque(maxlen=TIME_WINDOW_CAP))
    detector: DriftDetector | None = None
    profiling: list[tuple[str, ReferenceAnswer]] = field(default_factory=list)
    profile_checked: float = 0.0
    pending: int = 0
    evaluated: float = 0.0
    observed: int = 0
    reports: dict[str, WindowReport] = field(default_factory=dict)
    stored: dict[str, tuple[float, Status]] = field(default_factory=dict)

    @property
    def status(self) -> Status:
        return worst([report.status for report in self.reports.values()])


class DriftMonitor:
    def __init__(
        self, settings: Settings, metrics: ServerMetrics, idle_s: Callable[[], float] = lambda: math.inf
    ) -> None:
        """`idle_s`: seconds since the server last had a request in flight (0 while it has one)."""
        self.enabled = settings.drift
        self._settings = settings
        self._metrics = metrics
        self._idle_s = idle_s
        self.embedder = Embedder(threads=1)
        """Shared with the API's profile building (it takes a lock per call)."""
        self._redactor = Redactor(settings.log_redact, settings.log_redact_patterns)
        self._database = Database(settings.database, timeout_s=settings.log_write_timeout_s)
        self._store = DriftStore(self._database)
        self._feedback = FeedbackStore(self._database)
        self.replica = f"{socket.gethostname()}:{os.getpid()}"
        self._queue: queue.Queue[Completion] = queue.Queue(settings.drift_queue_size)
        self._versions: dict[int, VersionState] = {}
        self._lock = threading.Lock()
        """Guards `_versions` between the drift thread and the API's readers."""
        self._embed_budget = self._embed_burst = max(settings.drift_embed_per_s, BATCH)
        """A whole held-back batch may be embedded at once; over time no more than `drift_embed_per_s` a second."""
        self._embed_refill = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drift-monitor", daemon=True)

    def start(self) -> None:
        if self.enabled:
            self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(timeout_s)
        self._database.dispose()

    def load_embedder(self) -> None:
        """Load the embedding model before the server reports ready, not at the first completion.

        Loaded then, its imports held the GIL while the first streams were answered: the event loop fell behind,
        and a stream's tokens reached the client in one chunk.
        """
        if not self.enabled:
            return
        try:
            self.embedder.load()
            logger.info("drift: embedding model %s loaded", self.embedder.name)
        except EmbedderUnavailableError as exc:  # the server serves on; each batch reports it again
            logger.error("drift: %s", exc)
        except Exception:  # a broken model must not keep the server from turning ready: drift never takes it down
            logger.exception("drift: the embedding model could not be loaded")

    # --- the request path -------------------------------------------------------------------------------

    def observe(self, completion: Completion) -> None:
        """Queue a finished completion without waiting; a full queue drops it (counted)."""
        try:
            self._queue.put_nowait(completion)
        except queue.Full:
            self._metrics.drift_observations.labels("dropped").inc()

    # --- readers ----------------------------------------------------------------------------------------

    def versions(self, adapter: str) -> list[VersionDrift]:
        """The live drift of each version of `adapter` this server has served."""
        with self._lock:
            states = sorted((s for s in self._versions.values() if s.adapter == adapter), key=lambda s: s.version)
            return [
                VersionDrift(
                    version=state.version,
                    status=state.status,
                    observed=state.observed,
                    profile=state.detector.profile.summary() if state.detector else None,
                    profiling=None
                    if state.detector
                    else {"collected": len(state.profiling), "needed": self._settings.drift_profile_requests},
                    windows=list(state.reports.values()),
                )
                for state in states
            ]

    # --- the drift thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        yield_cpu()
        next_prune = time.monotonic()
        held: list[Completion] = []
        while not self._stop.is_set():
            held += self._take(BATCH - len(held), POLL_S if held else 0.5)
            batch, held = (held, []) if held and self._due(held) else ([], held)
            try:
                if batch:
                    self._add(batch)
                self._evaluate_due()
                if time.monotonic() >= next_prune:
                    self._prune()
                    next_prune = time.monotonic() + 3600
            except Exception:  # drift must never take the server down; the next batch tries again
                logger.exception("drift: %d completions could not be processed", len(batch))
            finally:
                if batch:
                    self._metrics.drift_observations.labels("accepted").inc(len(batch))

    def _take(self, most: int, timeout_s: float) -> list[Completion]:
        """Up to `most` queued completions, waiting at most `timeout_s` for the first."""
        if most <= 0:
            return []
        try:
            taken = [self._queue.get(timeout=timeout_s)]
        except queue.Empty:
            return []
        while len(taken) < most:
            try:
                taken.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return taken

    def _due(self, held: list[Completion]) -> bool:
        """Whether the held-back completions are processed now."""
        return (
            len(held) >= BATCH
            or self._idle_s() >= IDLE_S
            or time.time() - held[0].created >= self._settings.drift_batch_s
        )

    def _add(self, batch: list[Completion]) -> None:
        texts = [prompt_text(completion.request) for completion in batch]
        features = self.embedder.features(texts + [c.answer for c in batch], embed=self._embed_flags(len(batch)))
        prompts, answers = features[: len(batch)], features[len(batch) :]
        now = time.monotonic()
        for completion, text, prompt, answer in zip(batch, texts, prompts, answers, strict=True):
            state = self._state(completion)
            state.observed += 1
            if not self._profile(state, now):
                state.profiling.append((text, ReferenceAnswer(completion.answer, completion.finish_reason)))
                if len(state.profiling) >= self._settings.drift_profile_requests:
                    self._profile_from_production(state)
                continue
            observation = Observation(
                created=completion.created,
                features=prompt,
                answer_length=answer.length,
                finish_reason=completion.finish_reason,
                empty=not completion.answer.strip(),
                refused=is_refusal(completion.answer),
                text=self._redactor.text(text)[0][:EXAMPLE_CHARS] if completion.keep_text else None,
            )
            state.count_window.append(observation)
            state.time_window.append(observation)
            state.pending += 1

    def _embed_flags(self, count: int) -> list[bool]:
        """Which prompts of a batch to embed (then no answer): a token bucket of `drift_embed_per_s`."""
        now = time.monotonic()
        rate = self._settings.drift_embed_per_s
        self._embed_budget = min(self._embed_burst, self._embed_budget + (now - self._embed_refill) * rate)
        self._embed_refill = now
        flags = []
        for _ in range(count):
            flags.append(self._embed_budget >= 1)
            self._embed_budget -= 1 if flags[-1] else 0
        return flags + [False] * count

    def _state(self, completion: Completion) -> VersionState:
        state = self._versions.get(completion.lora_id)
        if state is None:
            state = VersionState(
                completion.adapter,
                completion.version,
                completion.lora_id,
                deque(maxlen=self._settings.drift_window),
            )
            with self._lock:
                self._versions[completion.lora_id] = state
        return state

    def _profile(self, state: VersionState, now: float) -> bool:
        """Whether the version has a profile; the hub is asked again every PROFILE_RETRY_S, so that a profile
        stored (or replaced, `loradock drift --profile-from --replace`) after traffic started is picked up."""
        if state.profile_checked and now - state.profile_checked < PROFILE_RETRY_S:
            return state.detector is not None
        state.profile_checked = now
        created = self._store.profile_created(state.lora_id)
        if created is None:
            return state.detector is not None
        if state.detector is None or not _same_time(created, state.detector.profile.created_at):
            profile = self._store.load_profile(state.lora_id)
            if profile is not None:
                self._use(state, profile)
        return state.detector is not None

    def _profile_from_production(self, state: VersionState) -> None:
        prompts = [text for text, _ in state.profiling]
        answers = [answer for _, answer in state.profiling]
        profile = build_profile(prompts, answers, self.embedder, "production")
        if not self._store.save_profile(state.lora_id, profile, created_by=f"server:{self.replica}"):
            profile = self._store.load_profile(state.lora_id) or profile  # another replica was first: share its
        logger.info(
            "drift: %s@%d had no reference profile; profiled from its first %d production prompts",
            state.adapter,
            state.version,
            len(prompts),
        )
        self._use(state, profile)

    def _use(self, state: VersionState, profile: DriftProfile) -> None:
        with self._lock:
            state.detector = DriftDetector(profile)
            state.profiling = []

    def _evaluate_due(self) -> None:
        now = time.monotonic()
        for state in list(self._versions.values()):
            since = now - state.evaluated
            due = (
                state.pending >= self._settings.drift_evaluate_every
                or (state.pending > 0 and since >= self._settings.drift_evaluate_s)
                or since >= IDLE_EVALUATE_S
            )
            if state.detector is not None and due:
                self._evaluate(state, state.detector)

    def _evaluate(self, state: VersionState, detector: DriftDetector) -> None:
        started = time.perf_counter()
        cutoff = time.time() - self._settings.drift_window_s
        while state.time_window and state.time_window[0].created < cutoff:
            state.time_window.popleft()
        size = self._settings.drift_window
        reports = {
            "count": _window_report("count", f"{size} completions", list(state.count_window), detector),
            "time": _window_report("time", f"{self._settings.drift_window_s:g} s", list(state.time_window), detector),
            "feedback": self._feedback_report(state),
        }
        self._metrics.drift_evaluation_seconds.observe(time.perf_counter() - started)
        previous = {name: report.status for name, report in state.reports.items()}
        with self._lock:
            state.reports = reports
            state.pending = 0
            state.evaluated = time.monotonic()
        self._publish(state, reports, previous)

    def _feedback_report(self, state: VersionState) -> WindowReport:
        negatives = self._feedback.negatives(state.adapter, state.version, FEEDBACK_WINDOW + FEEDBACK_BASELINE)
        check = feedback_check(negatives[:FEEDBACK_WINDOW], negatives[FEEDBACK_WINDOW:])
        return WindowReport(
            window="feedback",
            size=f"{FEEDBACK_WINDOW} ratings",
            n=check.n,
            start=None,
            end=None,
            status=check.status,
            checks=[check],
            examples=[],
        )

    def _publish(self, state: VersionState, reports: dict[str, WindowReport], previous: dict[str, Status]) -> None:
        version = str(state.version)
        snapshots = []
        now = time.monotonic()
        for name, report in reports.items():
            self._metrics.drift_status.labels(state.adapter, version, name).set(SEVERITY[report.status])
            self._metrics.drift_window.labels(state.adapter, version, name).set(report.n)
            for check in report.checks:
                if check.score is not None:
                    self._metrics.drift_score.labels(state.adapter, version, name, check.test).set(check.score)
            before = previous.get(name, Status.INSUFFICIENT)
            if report.status != before:
                _log_change(state, report, before)
            last_stored, stored_status = state.stored.get(name, (0.0, None))
            if report.status != stored_status or now - last_stored >= self._settings.drift_snapshot_s:
                snapshots.append(
                    SnapshotView(
                        created_at=datetime.now(UTC),
                        adapter=state.adapter,
                        version=state.version,
                        replica=self.replica,
                        report=report,
                    )
                )
                state.stored[name] = (now, report.status)
        if snapshots:
            try:
                self._store.add_snapshots(snapshots)
            except Exception as exc:  # the live report and the gauges still hold; the history misses a point
                logger.warning("drift: could not store %d snapshots: %s", len(snapshots), exc)

    def _prune(self) -> None:
        before = datetime.now(UTC) - timedelta(days=self._settings.drift_history_days)
        try:
            self._store.prune(before)
        except Exception as exc:
            logger.warning("drift: could not delete old snapshots: %s", exc)


def _window_report(name: str, size: str, window: list[Observation], detector: DriftDetector) -> WindowReport:
    checks, examples = detector.check(window)
    return WindowReport(
        window=name,
        size=size,
        n=len(window),
        start=datetime.fromtimestamp(window[0].created, UTC) if window else None,
        end=datetime.fromtimestamp(window[-1].created, UTC) if window else None,
        status=worst([check.status for check in checks]),
        checks=checks,
        examples=examples,
    )


def _log_change(state: VersionState, report: WindowReport, before: Status) -> None:
    flagged: list[CheckResult] = [check for check in report.checks if check.status in (Status.WARN, Status.ALERT)]
    detail = ", ".join(f"{check.test} {check.score:g} (alert at {check.alert_at:g})" for check in flagged)
    level = logging.WARNING if SEVERITY[report.status] > SEVERITY[before] else logging.INFO
    logger.log(
        level,
        "drift: %s@%d %s window %s -> %s over %d completions%s",
        state.adapter,
        state.version,
        report.window,
        before.value,
        report.status.value,
        report.n,
        f": {detail}" if detail else "",
    )


def _same_time(stored: datetime, built: datetime) -> bool:
    """SQLite hands back naive UTC datetimes, PostgreSQL aware ones."""
    if stored.tzinfo is None:
        stored = stored.replace(tzinfo=UTC)
    if built.tzinfo is None:
        built = built.replace(tzinfo=UTC)
    return abs((stored - built).total_seconds()) < 1e-3


def yield_cpu() -> None:
    """Give the calling thread the lowest CPU priority (nice 19; on Linux, niceness is per thread).

    Embedding prompts is CPU work beside the engine. On the CPU backend vLLM's OpenMP threads wait for each other at
    every step, so a drift thread competing for one core stalled every stream: the benchmark saw inter-token gaps of
    1.3 s at p99 against 0.17 s on vLLM's own server. At nice 19 the drift thread gets what the engine leaves idle.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except OSError as exc:  # some sandboxes forbid it; drift still works, with the old cost
        logger.warning("drift: could not lower the drift thread's priority: %s", exc)
