"""An async load generator for any OpenAI-compatible server: streamed chat completions, timed token by token.

It speaks plain HTTP and server-sent events through httpx rather than through the `openai` client, so the
client's own parsing cost stays small and equal for every server it measures, and every failure (a refused
request, a broken stream, an error event inside a 200 stream) is counted as what it was.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass(frozen=True, slots=True)
class Request:
    """One chat completion to send: which model (base, adapter, alias), what to ask and how long to answer."""

    model: str
    messages: list[dict[str, str]]
    max_tokens: int
    fixed_length: bool = True
    """Send vLLM's `ignore_eos`, so every server under test writes exactly `max_tokens` (equal work)."""


@dataclass(slots=True)
class Result:
    """What one request measured; times are seconds since the run started (`perf_counter` based)."""

    model: str
    started: float
    ended: float = 0.0
    first_token: float | None = None
    token_gaps: list[float] = field(default_factory=list)
    """Seconds between consecutive content events after the first (inter-token latency)."""
    output_tokens: int = 0
    error: str | None = None
    """None for a success; otherwise `http_<status>`, `stream_error`, `timeout` or the transport error's name."""
    cold: bool = False
    """The first request of the run to its model (an adapter the server may not have loaded yet)."""

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.started

    @property
    def latency(self) -> float:
        return self.ended - self.started


Workload = Iterator[Request]
Hook = Callable[[float], Coroutine[Any, Any, None]]
"""Work run beside the load (registrations, alias moves, feedback): given the run's deadline (perf_counter), it
starts nothing new once the deadline passed and returns when what it started is done. It is not cancelled: a
request cut off client-side may still have reached the server, and then what the hook counted would not match
what the server did. `pause` is its wait between steps."""


async def pause(seconds: float, deadline: float) -> None:
    """Sleep `seconds`, or only until `deadline` (perf_counter): a hook's wait between steps."""
    await asyncio.sleep(max(0.0, min(seconds, deadline - time.perf_counter())))


def freeze_client_heap() -> None:
    """Take the measuring process's objects out of the garbage collector's full passes before it measures.

    A benchmark process that imported the training stack holds hundreds of thousands of objects (torch,
    transformers, TRL, peft and vLLM alone leave about 640,000); a full collection over them stops the client for
    about half a second, and the request in flight when it happens shows a stall that is not the server's. vLLM's
    `bench serve` freezes its heap for the same reason.
    """
    gc.collect()
    gc.freeze()


@dataclass(frozen=True, slots=True)
class Run:
    """A finished load run: every request's result and the wall time they were sent in."""

    results: list[Result]
    duration_s: float
    concurrency: int


async def run_load(
    base_url: str,
    workload: Workload,
    *,
    concurrency: int,
    requests: int | None = None,
    duration_s: float | None = None,
    api_key: str = "unused",
    timeout_s: float = 600.0,
    hooks: tuple[Hook, ...] = (),
) -> Run:
    """Keep `concurrency` streams busy until `requests` were sent or `duration_s` has passed (at least one of them).

    A timed run stops sending at the deadline and lets the streams in flight finish, so it stops by itself.
    """
    if requests is None and duration_s is None:
        raise ValueError("give requests, duration_s or both")
    start = time.perf_counter()
    deadline = start + duration_s if duration_s is not None else float("inf")
    results: list[Result] = []
    seen: set[str] = set()
    budget = iter(range(requests)) if requests is not None else iter(int, 1)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(
        base_url=base_url.rstrip("/"), headers=headers, limits=limits, timeout=timeout_s
    ) as client:

        async def stream_worker() -> None:
            while time.perf_counter() < deadline and next(budget, None) is not None:
                request = next(workload)
                result = Result(request.model, time.perf_counter() - start, cold=request.model not in seen)
                seen.add(request.model)
                results.append(result)
                await _stream(client, request, result, start)

        background = [asyncio.create_task(hook(deadline)) for hook in hooks]
        await asyncio.gather(*(stream_worker() for _ in range(concurrency)), *background)
    return Run(results, time.perf_counter() - start, concurrency)


async def _stream(client: httpx.AsyncClient, request: Request, result: Result, start: float) -> None:
    body: dict[str, Any] = {
        "model": request.model,
        "messages": request.messages,
        "max_tokens": request.max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.fixed_length:
        body["ignore_eos"] = True
    last_event: float | None = None
    counted = 0
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                result.error = f"http_{response.status_code}"
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                now = time.perf_counter() - start
                event = json.loads(line[6:])
                if "error" in event:
                    result.error = "stream_error"
                    continue
                usage = event.get("usage")
                if usage:
                    result.output_tokens = int(usage["completion_tokens"])
                if any(choice.get("delta", {}).get("content") for choice in event.get("choices", ())):
                    counted += 1
                    if last_event is None:
                        result.first_token = now
                    else:
                        result.token_gaps.append(now - last_event)
                    last_event = now
    except httpx.TimeoutException:
        result.error = "timeout"
    except httpx.HTTPError as exc:
        result.error = type(exc).__name__
    finally:
        result.ended = time.perf_counter() - start
        if result.error is None and result.output_tokens == 0:
            result.output_tokens = counted  # a server without usage in streams: one content event per token
