"""Pure logic of the serving layer: admission, context budgeting, stream merging."""

from __future__ import annotations

import asyncio
import gc
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Gauge

from adapters.database import open_database
from adapters.drift.features import Features
from adapters.settings import Settings
from server.admission import Admission
from server.app import freeze_startup_heap
from server.cli import start_without_collector
from server.drift_monitor import BATCH, Completion, DriftMonitor
from server.engine import ChoiceDelta, model_in_engine_core
from server.errors import ContextLengthExceededError, ServerOverloadedError
from server.metrics import ServerMetrics
from server.prompts import PromptBuilder, chat_messages
from server.protocol import ChatMessage, ContentPart
from server.serving.runner import merge


def test_admission_refuses_past_the_limit_and_frees_slots() -> None:
    gauge = Gauge("in_flight", "test", registry=CollectorRegistry())
    admission = Admission(2, gauge)
    admission.acquire()
    admission.acquire()
    with pytest.raises(ServerOverloadedError):
        admission.acquire()
    admission.release()
    admission.acquire()
    assert admission.in_flight == 2


def test_admission_tells_how_long_no_request_has_been_in_flight() -> None:
    """Drift runs its held-back work once the server is idle (see the drift monitor tests below)."""
    admission = Admission(2, Gauge("in_flight", "test", registry=CollectorRegistry()))
    assert admission.idle_s() >= 0
    admission.acquire()
    admission.acquire()
    admission.release()
    assert admission.idle_s() == 0
    admission.release()
    time.sleep(0.05)
    assert admission.idle_s() >= 0.05


def test_max_tokens_budget() -> None:
    prompts = PromptBuilder(tokenizer=None, max_model_len=100)
    assert prompts.max_tokens_for(40, None, "messages", "max_tokens") == 60
    assert prompts.max_tokens_for(40, 60, "messages", "max_tokens") == 60
    with pytest.raises(ContextLengthExceededError) as too_much:
        prompts.max_tokens_for(40, 61, "messages", "max_tokens")
    assert too_much.value.param == "max_tokens"
    with pytest.raises(ContextLengthExceededError) as too_long:
        prompts.max_tokens_for(100, None, "prompt", "max_tokens")
    assert too_long.value.param == "prompt"
    prompts.close()


def test_chat_messages_join_text_parts_and_map_developer_to_system() -> None:
    messages = [
        ChatMessage(role="developer", content="be brief"),
        ChatMessage(role="user", content=[ContentPart(type="text", text="a"), ContentPart(type="text", text="b")]),
    ]
    assert chat_messages(messages) == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "ab"},
    ]


def test_merge_replays_first_steps_and_interleaves() -> None:
    async def stream(tag: int, count: int):  # type: ignore[no-untyped-def]
        for step in range(count):
            await asyncio.sleep(0)
            yield [ChoiceDelta(index=0, text=f"{tag}:{step}", token_count=1)]

    async def run() -> list[tuple[int, str]]:
        first_a, first_b = stream(0, 3), stream(1, 2)
        started = [(await anext(first_a), first_a), (await anext(first_b), first_b)]
        return [(position, step[0].text) async for position, step in merge(started)]

    seen = asyncio.run(run())
    assert sorted(seen) == [(0, "0:0"), (0, "0:1"), (0, "0:2"), (1, "1:0"), (1, "1:1")]
    assert seen[:2] == [(0, "0:0"), (1, "1:0")]


def test_an_embedding_model_that_fails_to_load_does_not_stop_the_server_turning_ready(tmp_path: Path) -> None:
    """The server loads drift's model before it reports ready; drift must never take serving down with it."""

    class Broken:
        def load(self) -> None:
            raise RuntimeError("corrupt weights")

    monitor = DriftMonitor(Settings(home=tmp_path), ServerMetrics())
    monitor.embedder = Broken()  # type: ignore[assignment]
    try:
        monitor.load_embedder()  # logged, not raised
    finally:
        monitor.close()


class BatchRecorder:
    """Features without a model: these tests are about when the drift thread works, not what it computes."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def features(self, texts: list[str], embed: list[bool] | None = None) -> list[Features]:
        self.batches.append(len(texts) // 2)  # a batch's prompts, then its answers
        return [Features(len(text.split()), np.zeros(1, np.int32), None) for text in texts]


def drift_monitor(tmp_path: Path, batch_s: float, idle_s: Callable[[], float]) -> tuple[DriftMonitor, BatchRecorder]:
    settings = Settings(home=tmp_path, drift_batch_s=batch_s)
    open_database(settings.database).dispose()  # the schema, as the server's hub makes it
    monitor = DriftMonitor(settings, ServerMetrics(), idle_s)
    recorder = BatchRecorder()
    monitor.embedder = recorder  # type: ignore[assignment]
    monitor.start()
    return monitor, recorder


def observe(monitor: DriftMonitor, count: int = 1) -> None:
    request = {"messages": [{"role": "user", "content": "My parcel is late."}]}
    for _ in range(count):
        monitor.observe(Completion("watched", 1, 1, request, '{"category": "shipping"}', "stop", keep_text=False))


def observed(monitor: DriftMonitor) -> int:
    return sum(version.observed for version in monitor.versions("watched"))


def wait_observed(monitor: DriftMonitor, count: int, timeout_s: float = 30) -> float:
    """Seconds until the drift thread has taken in `count` completions."""
    started = time.monotonic()
    while observed(monitor) < count:
        assert time.monotonic() - started < timeout_s, f"drift took in {observed(monitor)} of {count}"
        time.sleep(0.05)
    return time.monotonic() - started


def test_drift_holds_completions_back_while_requests_are_in_flight_and_takes_them_in_when_idle(
    tmp_path: Path,
) -> None:
    """Embedding a prompt the moment its completion finished took CPU from the next request's prefill: at
    concurrency 1, adapters' time to first token was 30 ms above drift off (docs/benchmarks.md)."""
    idle = [0.0]
    monitor, recorder = drift_monitor(tmp_path, batch_s=3600, idle_s=lambda: idle[0])
    try:
        observe(monitor)
        time.sleep(1)
        assert observed(monitor) == 0 and recorder.batches == []
        observe(monitor, BATCH - 1)  # a full batch does not wait for the server to go idle
        wait_observed(monitor, BATCH)
        assert recorder.batches == [BATCH]
        observe(monitor, 3)
        time.sleep(1)
        assert observed(monitor) == BATCH
        idle[0] = math.inf
        wait_observed(monitor, BATCH + 3)
        assert recorder.batches == [BATCH, 3]
    finally:
        monitor.close()


def test_drift_takes_in_what_waited_drift_batch_s_even_when_the_server_is_never_idle(tmp_path: Path) -> None:
    monitor, recorder = drift_monitor(tmp_path, batch_s=2, idle_s=lambda: 0.0)
    try:
        observe(monitor, 2)
        assert wait_observed(monitor, 2) >= 1.5
        assert recorder.batches == [2]
    finally:
        monitor.close()


def test_freezing_the_startup_heap_takes_live_objects_out_of_full_collections_and_turns_the_collector_on() -> None:
    """A full collection over the API process's startup heap paused every stream for about half a second.
    `loradock serve` starts with the collector off; the freeze turns it back on."""
    kept = [[index] for index in range(10_000)]
    gc.disable()
    try:
        freeze_startup_heap()
        assert gc.isenabled()
        assert gc.get_freeze_count() >= len(kept)
        collected = {id(item) for item in gc.get_objects()}  # every generation a collection walks
        assert not any(id(item) in collected for item in kept)
    finally:
        gc.unfreeze()
        gc.enable()


def test_the_server_starts_without_the_collector_but_a_forked_engine_process_collects() -> None:
    start_without_collector()
    try:
        assert not gc.isenabled()
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # the child only reports and leaves, without pytest's cleanup
            os.write(write, b"on" if gc.isenabled() else b"no")
            os._exit(0)
        os.waitpid(child, 0)
        assert os.read(read, 2) == b"on"
    finally:
        gc.enable()


@pytest.mark.parametrize(
    ("options", "cpu", "inside"),
    [
        ({}, True, True),
        ({"cpu_pinned_worker": True}, True, False),
        ({"tensor_parallel_size": 2}, True, False),
        ({}, False, False),
    ],
)
def test_the_model_runs_in_the_engine_core_only_for_one_cpu_worker_not_asked_to_be_pinned(
    options: dict[str, object], cpu: bool, inside: bool, tmp_path: Path
) -> None:
    assert model_in_engine_core(Settings(home=tmp_path, **options), cpu=cpu) is inside  # type: ignore[arg-type]
