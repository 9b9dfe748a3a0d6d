"""Remote engines on their own: the routing policy, the wire mapping, and RemoteEngine against a fake vLLM server
(httpx's MockTransport) for what real servers cannot show reliably: loads shared by concurrent requests, a remote
that forgot its adapter, and one that refuses connections. tests/server/test_remote_engine.py runs real ones."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from adapters.settings import Settings
from server.engine import ChoiceDelta, LoraTarget, SamplingOptions
from server.errors import AdapterLoadError, EngineNotReadyError, InvalidRequestError, ServiceUnavailableError
from server.remote_engine import (
    RemoteEngine,
    RemoteEngineError,
    RemoteModels,
    _common_base,
    completion_body,
    parse_chunk,
)
from server.remote_routing import NoReplicaError, Replica, choose

# --- routing -------------------------------------------------------------------------------------------------


def replicas(*in_flight: int) -> list[Replica]:
    return [Replica(f"http://r{i}", up=True, in_flight=load) for i, load in enumerate(in_flight)]


def test_request_goes_to_a_holder_even_when_another_replica_is_idler() -> None:
    r0, r1, r2 = replicas(5, 0, 3)
    r0.adapters.add("a@1")
    assert choose([r0, r1, r2], "a@1") is r0
    r2.adapters.add("a@1")
    assert choose([r0, r1, r2], "a@1") is r2  # the least busy of the holders


def test_adapter_nobody_holds_goes_to_the_least_busy_replica_ties_to_fewest_adapters() -> None:
    r0, r1, r2 = replicas(2, 1, 1)
    r1.adapters.update({"x@1", "y@1"})
    r2.adapters.add("z@1")
    assert choose([r0, r1, r2], "new@1") is r2
    assert choose([r0, r1, r2], None) is r2
    r2.in_flight = 4
    assert choose([r0, r1, r2], None) is r1


def test_down_and_excluded_replicas_are_skipped() -> None:
    r0, r1 = replicas(0, 9)
    r0.adapters.add("a@1")
    r0.up = False
    assert choose([r0, r1], "a@1") is r1
    r0.up = True
    assert choose([r0, r1], "a@1", exclude=[r0]) is r1
    with pytest.raises(NoReplicaError):
        choose([r0, r1], None, exclude=[r0, r1])


# --- the wire --------------------------------------------------------------------------------------------------


def test_completion_body_maps_sampling_options() -> None:
    options = SamplingOptions(
        max_tokens=7,
        temperature=0.5,
        top_p=0.9,
        n=2,
        stop=("\n",),
        seed=3,
        logprobs=2,
        json_schema={"type": "object"},
        stream=False,
        ignore_eos=True,
        min_tokens=1,
    )
    body = completion_body([1, 2, 3], options, "req-1", "a@1")
    assert body["model"] == "a@1" and body["prompt"] == [1, 2, 3] and body["stream"] is True
    assert (body["n"], body["max_tokens"], body["temperature"], body["top_p"]) == (2, 7, 0.5, 0.9)
    assert (body["stop"], body["seed"], body["ignore_eos"], body["min_tokens"]) == (["\n"], 3, True, 1)
    assert body["logprobs"] == 2 and body["return_tokens_as_token_ids"] and body["return_token_ids"]
    assert body["structured_outputs"] == {"json": {"type": "object"}}
    plain = completion_body([1], SamplingOptions(max_tokens=1, json_object=True), "r", "base")
    assert "seed" not in plain and "stop" not in plain and "logprobs" not in plain
    assert plain["structured_outputs"] == {"json_object": True}


# A chunk as vLLM 0.32 streams it (logprobs=2: the sampled token ranked third, so three entries).
CHUNK = {
    "id": "cmpl-abc",
    "object": "text_completion",
    "choices": [
        {
            "index": 1,
            "text": " USS struggled",
            "logprobs": {
                "text_offset": [13, 27],
                "token_logprobs": [-11.09, -10.99],
                "tokens": ["token_id:27880", "token_id:15906"],
                "top_logprobs": [
                    {"token_id:27880": -11.09, "token_id:25288": -9.86, "token_id:16818": -9.92},
                    {"token_id:15906": -10.99, "token_id:47714": -9.82, "token_id:9413": -9.85},
                ],
            },
            "finish_reason": "length",
            "token_ids": [27880, 15906],
        }
    ],
}


def test_chunk_becomes_deltas_with_ids_and_top_k() -> None:
    [delta] = parse_chunk(CHUNK, 2, lambda token_id: f"<{token_id}>")
    assert (delta.index, delta.text, delta.token_count, delta.finish_reason) == (1, " USS struggled", 2, "length")
    assert delta.logprobs is not None
    first = delta.logprobs[0]
    assert (first.token, first.token_id, first.logprob) == ("<27880>", 27880, -11.09)
    assert first.top == [("<25288>", 25288, -9.86), ("<16818>", 16818, -9.92)]
    assert parse_chunk(CHUNK, None, str)[0].logprobs is None
    assert parse_chunk({"choices": [], "usage": {"completion_tokens": 3}}, None, str) == []


def test_error_event_keeps_the_parameter_name() -> None:
    error = {"error": {"message": "seed too large", "type": "Bad Request", "param": "body.seed", "code": 400}}
    with pytest.raises(InvalidRequestError) as refused:
        parse_chunk(error, None, str)
    assert refused.value.param == "seed"
    with pytest.raises(ServiceUnavailableError):
        parse_chunk({"error": {"message": "engine dead", "code": 500}}, None, str)


def test_remote_engines_setting_takes_a_list_commas_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORADOCK_REMOTE_ENGINES", "http://gpu-1:8000/v1, http://gpu-2:8000/")
    assert Settings().remote_engines == ["http://gpu-1:8000", "http://gpu-2:8000"]
    monkeypatch.setenv("LORADOCK_REMOTE_ENGINES", '["http://gpu-3:8000"]')
    assert Settings().remote_engines == ["http://gpu-3:8000"]
    monkeypatch.delenv("LORADOCK_REMOTE_ENGINES")
    assert Settings().remote_engines == []
    with pytest.raises(ValueError, match="not an http"):
        Settings(remote_engines=["gpu-1:8000"])


# --- RemoteEngine against fake remotes --------------------------------------------------------------------------

BASE = RemoteModels("base", "/models/base", 512, {})
ALPHA = LoraTarget("alpha@1", 1, "/store/aa")


class FakeVllm:
    """Just enough of vLLM's OpenAI server: runtime LoRA loading and streamed completions of two tokens."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.adapters: dict[str, str] = {}
        self.loads = 0
        self.completions: list[str] = []
        self.refusing = False

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if self.refusing:
            raise httpx.ConnectError("connection refused", request=request)
        body = json.loads(request.content or b"{}")
        if request.url.path == "/v1/load_lora_adapter":
            self.loads += 1
            await asyncio.sleep(0.05)  # long enough for concurrent requests to pile up
            if not body["lora_path"].startswith("/store/"):
                return httpx.Response(404, json={"error": {"message": "No adapter found", "code": 404}})
            self.adapters[body["lora_name"]] = body["lora_path"]
            return httpx.Response(200, text="Success")
        if request.url.path == "/v1/completions":
            if body["model"] != "base" and body["model"] not in self.adapters:
                return httpx.Response(404, json={"error": {"message": "does not exist", "code": 404}})
            self.completions.append(body["model"])
            chunks = [
                {"choices": [{"index": 0, "text": " hi", "token_ids": [5], "finish_reason": None}]},
                {"choices": [{"index": 0, "text": " there", "token_ids": [6], "finish_reason": "length"}]},
            ]
            text = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
            return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})
        return httpx.Response(404)


def fake_engine(count: int = 2) -> tuple[RemoteEngine, list[FakeVllm]]:
    fakes = [FakeVllm(f"http://remote-{i}") for i in range(count)]
    by_host = {httpx.URL(fake.url).host: fake for fake in fakes}

    async def handler(request: httpx.Request) -> httpx.Response:
        return await by_host[request.url.host].handle(request)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    replicas = [Replica(fake.url, up=True) for fake in fakes]
    return RemoteEngine(client, replicas, BASE, tokenizer=None, decoder=None), fakes


async def run(engine: RemoteEngine, lora: LoraTarget | None, request_id: str = "r") -> list[ChoiceDelta]:
    steps = []
    async for step in engine.generate([1, 2], SamplingOptions(max_tokens=2), request_id, lora):
        steps.extend(step)
    return steps


def test_concurrent_first_requests_load_an_adapter_once_then_stick_to_that_remote() -> None:
    async def scenario() -> tuple[list[list[ChoiceDelta]], list[FakeVllm]]:
        engine, fakes = fake_engine()
        results = await asyncio.gather(*(run(engine, ALPHA, f"r{i}") for i in range(5)))
        return list(results), fakes

    results, fakes = asyncio.run(scenario())
    assert all("".join(delta.text for delta in steps) == " hi there" for steps in results)
    assert all(sum(delta.token_count for delta in steps) == 2 for steps in results)
    assert [fake.loads for fake in fakes] == [1, 0]
    assert fakes[0].completions == ["alpha@1"] * 5


def test_remote_that_forgot_an_adapter_gets_it_again() -> None:
    async def scenario() -> list[FakeVllm]:
        engine, fakes = fake_engine(1)
        await run(engine, ALPHA)
        fakes[0].adapters.clear()  # as after a restart
        await run(engine, ALPHA)
        return fakes

    fakes = asyncio.run(scenario())
    assert fakes[0].loads == 2 and fakes[0].completions == ["alpha@1", "alpha@1"]


def test_remote_refusing_connections_is_skipped() -> None:
    async def scenario() -> tuple[RemoteEngine, list[FakeVllm]]:
        engine, fakes = fake_engine()
        await engine.add_lora(ALPHA)  # on remote 0
        fakes[0].refusing = True
        await run(engine, ALPHA)
        await run(engine, None)
        return engine, fakes

    engine, fakes = asyncio.run(scenario())
    assert fakes[1].completions == ["alpha@1", "base"]
    assert [replica.up for replica in engine._replicas] == [False, True]


def test_no_remote_up_and_unloadable_adapter_are_clear_errors() -> None:
    async def scenario() -> dict[str, Any]:
        engine, fakes = fake_engine()
        errors: dict[str, Any] = {}
        with pytest.raises(AdapterLoadError) as bad:
            await run(engine, LoraTarget("broken@1", 2, "/elsewhere/bb"))
        errors["load"] = bad.value
        for fake in fakes:
            fake.refusing = True
        with pytest.raises(EngineNotReadyError) as none_up:
            await run(engine, None)
        errors["none"] = none_up.value
        return errors

    errors = asyncio.run(scenario())
    assert "broken@1" in errors["load"].message and "artifact store" in errors["load"].message
    assert "No remote engine is up" in errors["none"].message


def test_remotes_serving_different_models_are_refused_at_start() -> None:
    other = RemoteModels("other", "/models/other", 512, {})
    found = {Replica("http://gpu-1"): BASE, Replica("http://gpu-2"): other}
    with pytest.raises(RemoteEngineError, match=r"gpu-1.*'base'.*gpu-2.*'other'"):
        _common_base(found)
    shorter = RemoteModels("base", "/models/base", 256, {"alpha@1": "/store/aa"})
    assert _common_base({Replica("http://gpu-1"): BASE, Replica("http://gpu-2"): shorter}).max_model_len == 256


def test_late_remote_joins_only_if_it_serves_the_same_model() -> None:
    listings = {
        "http://remote-0": {"data": [{"id": "base", "root": "/models/base", "max_model_len": 512}]},
        "http://remote-1": {"data": [{"id": "other", "root": "/models/other", "max_model_len": 512}]},
    }

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200)
        return httpx.Response(200, json=listings[f"http://{request.url.host}"])

    async def scenario() -> list[Replica]:
        replicas = [Replica("http://remote-0"), Replica("http://remote-1")]
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        engine = RemoteEngine(client, replicas, BASE, tokenizer=None, decoder=None)
        await engine.check_health()
        return replicas

    joined, refused = asyncio.run(scenario())
    assert joined.up and not refused.up
