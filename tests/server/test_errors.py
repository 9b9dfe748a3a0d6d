"""Every error the API promises, in OpenAI's shape and with the right status, on the real server."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from tests.conftest import SERVER_CONCURRENCY_LIMIT
from tests.helpers import ServerProcess, metric

pytestmark = pytest.mark.integration

BASE = "SmolLM2-135M-Instruct"
HELLO = [{"role": "user", "content": "Hello"}]


def assert_error_shape(body: dict, *, param: str | None = None, code: str | None = None) -> None:
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="hi")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": 5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": 1000}, "n"),
        ({"n": 2, "temperature": 0}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 50}, "top_logprobs"),
        ({"max_tokens": 5, "max_completion_tokens": 5}, "max_completion_tokens"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages.0.content.0",
        ),
    ],
)
def test_invalid_parameter_is_400_naming_it(demo_server: ServerProcess, extra: dict, param: str) -> None:
    body = {"model": BASE, "messages": HELLO, "max_tokens": 4, **extra}
    response = httpx.post(f"{demo_server.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert_error_shape(response.json())
    assert response.json()["error"]["param"].startswith(param), response.json()


def test_invalid_completion_parameters(demo_server: ServerProcess) -> None:
    cases = [
        ({"echo": True}, "echo"),
        ({"prompt": []}, "prompt"),
        ({"prompt": ["text", [1, 2]]}, "prompt"),
        ({"logprobs": 99}, "logprobs"),
        ({"stop": 7}, "stop"),
    ]
    for extra, param in cases:
        body = {"model": BASE, "prompt": "hi", "max_tokens": 2, **extra}
        response = httpx.post(f"{demo_server.url}/v1/completions", json=body, timeout=60)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"].split(".")[0] == param, response.json()


def test_missing_required_field_and_bad_json(demo_server: ServerProcess) -> None:
    missing = httpx.post(f"{demo_server.url}/v1/chat/completions", json={"model": BASE}, timeout=30)
    assert missing.status_code == 400
    assert_error_shape(missing.json(), param="messages")
    garbled = httpx.post(
        f"{demo_server.url}/v1/chat/completions",
        content=b'{"model": "x", "messages": [',
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert garbled.status_code == 400
    assert_error_shape(garbled.json())


def test_prompt_longer_than_context_is_400_context_length_exceeded(client: openai.OpenAI) -> None:
    long_text = "word " * 3000
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=BASE, messages=[{"role": "user", "content": long_text}])
    assert caught.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=BASE, prompt=long_text)
    assert caught.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=BASE, messages=HELLO, max_tokens=5000)
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.param == "max_tokens"


def test_unknown_route_is_404_in_openai_shape(demo_server: ServerProcess) -> None:
    response = httpx.get(f"{demo_server.url}/v1/nothing-here", timeout=10)
    assert response.status_code == 404
    assert_error_shape(response.json())


def _wait_until_idle(server: ServerProcess, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while metric(server, "loradock_requests_in_flight") > 0:
        assert time.monotonic() < deadline, "requests still in flight after their clients left"
        time.sleep(0.2)


def test_overload_is_503_and_abandoned_streams_are_aborted(demo_server: ServerProcess) -> None:
    """The session server admits a fixed number of requests at once; the rest get 503 + Retry-After, and hanging
    up aborts them."""
    aborted_before = metric(demo_server, "loradock_requests_total", outcome="aborted")

    async def flood() -> list[int]:
        async with httpx.AsyncClient(base_url=demo_server.url, timeout=120) as http:
            essay = [{"role": "user", "content": "Write a long essay on the history of Rome."}]
            body = {"model": BASE, "messages": essay, "max_tokens": 1500, "stream": True}
            requests = [
                http.build_request("POST", "/v1/chat/completions", json=body)
                for _ in range(SERVER_CONCURRENCY_LIMIT + 8)
            ]
            responses = await asyncio.gather(*(http.send(request, stream=True) for request in requests))
            refused = [r for r in responses if r.status_code == 503]
            for response in refused:
                assert response.headers["retry-after"]
                body = json.loads(await response.aread())
                assert_error_shape(body, code="server_overloaded")
            statuses = [r.status_code for r in responses]
            for response in responses:
                await response.aclose()
            return statuses

    statuses = asyncio.run(flood())
    assert statuses.count(200) == SERVER_CONCURRENCY_LIMIT and statuses.count(503) == 8, statuses
    _wait_until_idle(demo_server)
    assert (
        metric(demo_server, "loradock_requests_total", outcome="aborted") - aborted_before >= SERVER_CONCURRENCY_LIMIT
    )


def test_client_timeout_aborts_a_whole_response(demo_server: ServerProcess) -> None:
    aborted_before = metric(demo_server, "loradock_requests_total", outcome="aborted", route="chat")
    essay = [{"role": "user", "content": "Write a long essay on the history of Rome."}]
    body = {"model": BASE, "messages": essay, "max_tokens": 1500}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{demo_server.url}/v1/chat/completions", json=body, timeout=1.5)
    _wait_until_idle(demo_server)
    assert metric(demo_server, "loradock_requests_total", outcome="aborted", route="chat") == aborted_before + 1


def test_metrics_count_requests_latency_ttft_tokens_and_errors(
    client: openai.OpenAI, demo_server: ServerProcess
) -> None:
    before = metric(demo_server, "loradock_requests_total", model=BASE, outcome="ok")
    tokens_before = metric(demo_server, "loradock_completion_tokens_total", model=BASE)
    client.chat.completions.create(model=BASE, messages=HELLO, max_tokens=3)
    assert metric(demo_server, "loradock_requests_total", model=BASE, outcome="ok") == before + 1
    assert metric(demo_server, "loradock_completion_tokens_total", model=BASE) >= tokens_before + 1
    assert metric(demo_server, "loradock_time_to_first_token_seconds_count", model=BASE) >= 1
    assert metric(demo_server, "loradock_request_latency_seconds_count", model=BASE) >= 1
    assert metric(demo_server, "loradock_prompt_tokens_total", model=BASE) > 0
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=HELLO)
    assert metric(demo_server, "loradock_errors_total", status="404", code="model_not_found") >= 1
