"""The load generator measured against a small streaming server whose timings and failures are known."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from itertools import cycle
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from loadtests.generator import Request, pause, run_load
from loadtests.report import Percentiles, markdown_table, summarize, write_reports
from tests.helpers import free_port

TOKEN_DELAY_S = 0.02
FIRST_TOKEN_DELAY_S = 0.05


async def chat(request: HttpRequest) -> Response:
    """`ok` streams max_tokens words then usage; `refused` is a 429; `broken` fails inside its 200 stream."""
    body = await request.json()
    if body["model"] == "refused":
        return JSONResponse({"error": {"message": "slow down", "type": "rate_limit_error"}}, status_code=429)

    async def events() -> AsyncIterator[str]:
        await asyncio.sleep(FIRST_TOKEN_DELAY_S)
        for index in range(body["max_tokens"]):
            if index:
                await asyncio.sleep(TOKEN_DELAY_S)
            if body["model"] == "broken" and index == 2:
                yield f"data: {json.dumps({'error': {'message': 'engine died', 'type': 'server_error'}})}\n\n"
                break
            yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': f'w{index} '}}]})}\n\n"
        else:
            usage = {
                "prompt_tokens": 3,
                "completion_tokens": body["max_tokens"],
                "total_tokens": 3 + body["max_tokens"],
            }
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture(scope="module")
def small_server() -> Iterator[str]:
    port = free_port()
    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def requests_for(models: list[str], max_tokens: int = 5) -> Iterator[Request]:
    return (Request(model, [{"role": "user", "content": "hi"}], max_tokens) for model in cycle(models))


def test_counts_tokens_times_and_errors_by_kind(small_server: str, tmp_path: Path) -> None:
    workload = requests_for(["ok", "refused", "broken"])
    run = asyncio.run(run_load(small_server, workload, concurrency=3, requests=30))
    assert len(run.results) == 30
    summary = summarize(run, "mixed", "small")
    assert summary.succeeded == 10
    assert summary.errors == {"http_429": 10, "stream_error": 10}
    assert summary.output_tokens_per_s == pytest.approx(10 * 5 / run.duration_s)
    assert summary.ttft_s.p50 is not None and FIRST_TOKEN_DELAY_S <= summary.ttft_s.p50 < FIRST_TOKEN_DELAY_S + 0.1
    assert summary.itl_s.p50 is not None and TOKEN_DELAY_S <= summary.itl_s.p50 < TOKEN_DELAY_S + 0.05
    assert sum(1 for result in run.results if result.cold) == 3  # one first request per model
    latencies = [result.latency for result in run.results if result.error is None]
    assert all(latency >= FIRST_TOKEN_DELAY_S + 4 * TOKEN_DELAY_S for latency in latencies)


def test_a_timed_run_stops_by_itself_and_runs_its_hooks(small_server: str) -> None:
    ticks: list[float] = []

    async def hook(deadline: float) -> None:
        while time.perf_counter() < deadline:
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.1)

    started = time.monotonic()
    run = asyncio.run(run_load(small_server, requests_for(["ok"]), concurrency=4, duration_s=1.0, hooks=(hook,)))
    # The workload never runs out, so ending at all is the point; the bound is the deadline plus the streams in
    # flight (0.13 s each), with room for a loaded machine (tighter bounds failed one unit-test run in three).
    assert time.monotonic() - started < 1.0 + 2.0
    assert all(result.error is None for result in run.results) and len(run.results) >= 4
    assert len(ticks) >= 3  # the hook ran beside the load, every 0.1 s until the deadline


def test_a_hook_finishes_the_step_it_started_before_the_deadline(small_server: str) -> None:
    """A feedback or registration request sent just before the deadline has reached the server: cutting it off
    client-side would leave the hook's counts one short of what the server logged."""
    steps: list[str] = []

    async def hook(deadline: float) -> None:
        await pause(float("inf"), deadline - 0.05)
        steps.append("sent")
        await asyncio.sleep(0.5)  # the server still answering after the load's streams have finished
        steps.append("answered")
        await pause(1.0, deadline)

    run = asyncio.run(run_load(small_server, requests_for(["ok"]), concurrency=2, duration_s=0.5, hooks=(hook,)))
    assert steps == ["sent", "answered"]
    assert run.duration_s >= 0.5 - 0.05 + 0.5


def test_an_unreachable_server_is_an_error_per_request_not_a_crash() -> None:
    run = asyncio.run(run_load("http://127.0.0.1:9", requests_for(["ok"]), concurrency=2, requests=4))
    summary = summarize(run, "down", "none")
    assert summary.succeeded == 0 and summary.errors == {"ConnectError": 4}
    assert summary.ttft_s == Percentiles(p50=None, p90=None, p99=None, mean=None)


def test_percentiles_interpolate_like_numpy() -> None:
    values = [float(v) for v in range(1, 101)]
    found = Percentiles.of(values)
    assert (found.p50, found.p90, found.p99, found.mean) == pytest.approx((50.5, 90.1, 99.01, 50.5))


def test_reports_are_json_markdown_and_png(small_server: str, tmp_path: Path) -> None:
    run = asyncio.run(run_load(small_server, requests_for(["ok", "refused"]), concurrency=2, requests=6))
    summaries = [summarize(run, "mixed", "small"), summarize(run, "mixed", "other")]
    json_path, md_path, png_path = write_reports(summaries, tmp_path, "bench", "# Results")
    data = json.loads(json_path.read_text())
    assert [row["server"] for row in data] == ["small", "other"]
    assert data[0]["errors"] == {"http_429": 3} and data[0]["succeeded"] == 3
    assert md_path.read_text().startswith("# Results") and markdown_table(summaries) in md_path.read_text()
    assert png_path.read_bytes().startswith(b"\x89PNG")
