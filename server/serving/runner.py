"""One generation's trip through the engine, shared by the chat and text completion services.

It owns the admission slot and the request's metrics, so both stay right whichever way a request ends:
finished, failed, or abandoned by a client that hung up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import TypeVar

from fastapi import Request

from adapters.keys import Principal
from server.engine import ChoiceDelta, SamplingOptions, TokenLogprob
from server.errors import ApiError, error_body
from server.resolution import ServedModel
from server.serving.recording import Timing
from server.state import ReadyServer

logger = logging.getLogger(__name__)

T = TypeVar("T")

Steps = AsyncGenerator[list[ChoiceDelta], None]


@dataclass(frozen=True, slots=True)
class Job:
    """One prompt to generate for: a request with several prompts (completions) makes several jobs."""

    request_id: str
    prompt_token_ids: list[int]
    options: SamplingOptions
    position: int = 0
    """Which prompt of its request this is; choice indexes count on from position * n."""
    owner: Principal | None = None
    """The key that asked, whose limit on generations in flight this job counts against (None: the server's own)."""


@dataclass
class Collected:
    """Every choice of a finished, non-streamed job."""

    texts: list[str]
    finish_reasons: list[str | None]
    logprobs: list[list[TokenLogprob]] | None
    completion_tokens: int


async def generate(
    server: ReadyServer, served: ServedModel, job: Job, route: str, timing: Timing | None = None
) -> Steps:
    """The engine's steps for `job`, inside an admission slot and with its metrics recorded; `timing` (shared by a
    request's jobs) learns when the first token came."""
    with server.state.key_limits.generation_slot(job.owner):
        # aclosing: a client that hangs up closes this generator, which must close (abort) the inner one at once.
        async with aclosing(_generate(server, served, job, route, timing)) as steps:
            async for step in steps:
                yield step


async def _generate(server: ReadyServer, served: ServedModel, job: Job, route: str, timing: Timing | None) -> Steps:
    state = server.state
    state.admission.acquire()
    metrics = state.metrics
    started = time.perf_counter()
    first_token_at: float | None = None
    generated = 0
    outcome = "error"
    lora = served.lora
    if lora is not None:
        server.adapters.start_request(lora.int_id)
    try:
        if lora is not None:
            await server.adapters.ensure_loaded(lora)
        steps = server.engine.generate(job.prompt_token_ids, job.options, job.request_id, lora)
        async with aclosing(steps):  # closed at once when this generator is: the engine aborts the request
            async for step in steps:
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                    metrics.time_to_first_token.labels(served.name, route).observe(first_token_at - started)
                    if timing is not None and timing.first_token is None:
                        timing.first_token = first_token_at
                generated += sum(delta.token_count for delta in step)
                yield step
        outcome = "ok"
        metrics.latency.labels(served.name, route).observe(time.perf_counter() - started)
    except (GeneratorExit, asyncio.CancelledError):
        outcome = "aborted"
        raise
    finally:
        state.admission.release()
        if lora is not None:
            server.adapters.finish_request(lora.int_id)
        metrics.requests.labels(served.name, route, outcome).inc()
        metrics.prompt_tokens.labels(served.name).inc(len(job.prompt_token_ids))
        metrics.completion_tokens.labels(served.name).inc(generated)


async def collect(job: Job, stream: Steps) -> Collected:
    """Drain a job's stream into whole choices."""
    n = job.options.n
    result = Collected([""] * n, [None] * n, [[] for _ in range(n)] if job.options.logprobs is not None else None, 0)
    async for step in stream:
        for delta in step:
            result.texts[delta.index] += delta.text
            result.finish_reasons[delta.index] = delta.finish_reason or result.finish_reasons[delta.index]
            result.completion_tokens += delta.token_count
            if result.logprobs is not None and delta.logprobs is not None:
                result.logprobs[delta.index].extend(delta.logprobs)
    return result


async def start_all(streams: Sequence[Steps]) -> list[tuple[list[ChoiceDelta], Steps]]:
    """Wait for each stream's first step before any response byte is sent.

    Refusals (overload, a bad adapter, the engine down) then become a proper HTTP status instead of an error
    in the middle of a 200 stream, and every stream has started, so closing it reliably aborts its request.
    """
    started: list[tuple[list[ChoiceDelta], Steps]] = []
    try:
        for stream in streams:
            started.append((await anext(stream), stream))
    except BaseException:
        for stream in streams:
            await stream.aclose()
        raise
    return started


async def merge(
    started: Sequence[tuple[list[ChoiceDelta], Steps]],
) -> AsyncIterator[tuple[int, list[ChoiceDelta]]]:
    """Interleave several started streams as (stream position, step), in arrival order.

    vLLM has a helper like this (`merge_async_iterators`), but engine.py is the only module that may import
    vLLM and this one also has to replay each stream's first, already-fetched step.
    """
    for position, (first, _stream) in enumerate(started):
        yield position, first
    if len(started) == 1:
        async for step in started[0][1]:
            yield 0, step
        return
    queue: asyncio.Queue[tuple[int, list[ChoiceDelta] | BaseException | None]] = asyncio.Queue()

    async def pump(position: int, stream: Steps) -> None:
        try:
            async for step in stream:
                await queue.put((position, step))
            await queue.put((position, None))
        except Exception as exc:
            await queue.put((position, exc))

    tasks = [asyncio.create_task(pump(position, stream)) for position, (_, stream) in enumerate(started)]
    try:
        running = len(tasks)
        while running:
            position, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield position, item
    finally:
        for task in tasks:
            task.cancel()
        # Cancelling a pump mid-step aborts its request; only then may its stream be closed.
        await asyncio.gather(*tasks, return_exceptions=True)
        for _, stream in started:
            await stream.aclose()


async def until_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Run `work`, cancelling it (and so aborting its generation) if the client hangs up first.

    The pattern of vLLM's `with_cancellation`: the body is already read, so the next ASGI message can only
    be the disconnect.
    """

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(disconnected())
    done, pending = await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    if work_task in done:
        return work_task.result()
    await asyncio.gather(work_task, return_exceptions=True)
    return None


def response_headers(request_id: str, served: ServedModel) -> dict[str, str]:
    """Every response names its request id, and for adapters the exact version that answered."""
    headers = {"x-request-id": request_id}
    if served.version is not None:
        headers["x-loradock-adapter-version"] = str(served.version.version)
    return headers


def sse(payload: str) -> str:
    return f"data: {payload}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def sse_error(exc: BaseException) -> str:
    """The last event of a stream that failed after its 200 was sent (OpenAI clients raise on it)."""
    if isinstance(exc, ApiError):
        body = error_body(exc.message, exc.error_type, param=exc.param, code=exc.code)
    else:
        logger.exception("stream failed", exc_info=exc)
        body = error_body("The server had an error while processing your request.", "server_error")
    return sse(json.dumps(body))
