"""The OpenAI-compatible API on the real engine and demo model, driven by the official `openai` client."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import psutil
import pytest

from server.engine_process import PRELOAD
from tests.helpers import ServerProcess

pytestmark = pytest.mark.integration

BASE = "SmolLM2-135M-Instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def test_models_lists_base_and_adapters_with_parent(client: openai.OpenAI) -> None:
    models = {model.id: model for model in client.models.list()}
    assert {BASE, "alpha", "alpha@1", "beta", "beta@1"} <= set(models)
    assert models["alpha"].model_extra["parent"] == BASE
    assert models[BASE].model_extra["parent"] is None
    assert all(model.object == "model" for model in models.values())


def test_the_model_runs_inside_the_engine_core_process(demo_server: ServerProcess) -> None:
    """Without a worker process of its own, pinned to one of two cores on the CPU (`model_in_engine_core`)."""
    names = [child.name() for child in psutil.Process(demo_server.process.pid).children(recursive=True)]
    assert any("EngineCor" in name for name in names), names
    assert not any("Worker" in name for name in names), names


def test_the_engine_core_is_forked_from_the_servers_forkserver(demo_server: ServerProcess) -> None:
    """Which imported vLLM's engine core while the API process imported vLLM (`server/engine_process.py`)."""
    api = psutil.Process(demo_server.process.pid)
    engine = next(child for child in api.children(recursive=True) if "EngineCor" in child.name())
    forkserver = engine.parent()
    assert forkserver is not None and forkserver.ppid() == api.pid
    command = " ".join(forkserver.cmdline())
    assert "multiprocessing.forkserver" in command and all(module in command for module in PRELOAD), command


def test_converted_demo_model_knows_the_capital_of_france(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=BASE, messages=FRANCE, temperature=0, max_tokens=30)
    assert "Paris" in (reply.choices[0].message.content or "")
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == BASE
    assert reply.id.startswith("chatcmpl-")
    assert reply.usage is not None and reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0


def test_chat_stream_matches_whole_answer_and_reports_usage(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=BASE, messages=FRANCE, temperature=0, max_tokens=20)
    chunks = list(
        client.chat.completions.create(
            model=BASE,
            messages=FRANCE,
            temperature=0,
            max_tokens=20,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].message.content
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_sse_stream_ends_with_done(demo_server: ServerProcess) -> None:
    body = {"model": BASE, "messages": FRANCE, "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{demo_server.url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(event.startswith("data: ") for event in events)


def test_text_completion_streamed_and_not(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=BASE, prompt="The capital of France is", temperature=0, max_tokens=8)
    assert whole.object == "text_completion"
    streamed = "".join(
        chunk.choices[0].text
        for chunk in client.completions.create(
            model=BASE, prompt="The capital of France is", temperature=0, max_tokens=8, stream=True
        )
        if chunk.choices
    )
    assert streamed == whole.choices[0].text
    assert "Paris" in whole.choices[0].text


def test_completion_takes_a_batch_of_prompts_and_token_ids(client: openai.OpenAI) -> None:
    batch = client.completions.create(
        model=BASE, prompt=["One, two,", "Red, green,"], temperature=0.7, n=2, max_tokens=4
    )
    assert sorted(choice.index for choice in batch.choices) == [0, 1, 2, 3]
    assert 0 < batch.usage.completion_tokens <= 16
    token_ids = client.completions.create(model=BASE, prompt=[[1, 2, 3], [4, 5]], temperature=0, max_tokens=2)
    assert sorted(choice.index for choice in token_ids.choices) == [0, 1]
    assert token_ids.usage.prompt_tokens == 5


def test_stop_sequence_ends_the_text(client: openai.OpenAI) -> None:
    prompt = "1, 2, 3, 4, 5, 6, 7,"
    free = client.completions.create(model=BASE, prompt=prompt, temperature=0, max_tokens=12).choices[0]
    assert " 9" in free.text
    stopped = client.completions.create(model=BASE, prompt=prompt, temperature=0, max_tokens=12, stop=[" 9"]).choices[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[: free.text.index(" 9")]


def test_max_tokens_gives_finish_reason_length(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=BASE, messages=FRANCE, max_tokens=2)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 2
    capped = client.chat.completions.create(model=BASE, messages=FRANCE, max_completion_tokens=3)
    assert capped.usage.completion_tokens == 3


def test_n_gives_that_many_choices(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=BASE, messages=FRANCE, n=2, temperature=0.8, max_tokens=12)
    assert [choice.index for choice in reply.choices] == [0, 1]
    streamed = client.chat.completions.create(
        model=BASE, messages=FRANCE, n=2, temperature=0.8, max_tokens=6, stream=True
    )
    assert {choice.index for chunk in streamed for choice in chunk.choices} == {0, 1}


def test_same_seed_same_text(client: openai.OpenAI) -> None:
    story = [{"role": "user", "content": "Write one sentence about a cat."}]
    texts = [
        client.chat.completions.create(model=BASE, messages=story, temperature=0.8, seed=1234, max_tokens=30)
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert texts[0] == texts[1]


def test_logprobs_and_top_logprobs(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=BASE, messages=FRANCE, temperature=0, max_tokens=4, logprobs=True, top_logprobs=3
    )
    content = reply.choices[0].logprobs.content
    assert len(content) == 4
    assert "".join(token.token for token in content) == reply.choices[0].message.content
    for token in content:
        assert len(token.top_logprobs) == 3
        assert token.logprob <= 0
        assert token.top_logprobs[0].logprob >= token.top_logprobs[-1].logprob
    text = client.completions.create(model=BASE, prompt="Paris is", max_tokens=3, logprobs=2, temperature=0)
    logprobs = text.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 3
    assert all(len(top) <= 2 for top in logprobs.top_logprobs)


def test_json_schema_response_validates(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model=BASE,
        messages=[{"role": "user", "content": "Give the capital of France as JSON with city and country."}],
        response_format={"type": "json_schema", "json_schema": {"name": "capital", "schema": schema}},
        temperature=0,
        max_tokens=60,
    )
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)


def test_json_object_response_parses(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=BASE,
        messages=[{"role": "user", "content": "Describe Paris as a JSON object."}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=60,
    )
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(reply.choices[0].message.content), dict)
    else:  # cut by max_tokens: still a JSON object as far as it got
        assert reply.choices[0].message.content.lstrip().startswith("{")


def test_unknown_fields_are_ignored(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=BASE,
        messages=FRANCE,
        max_tokens=2,
        extra_body={"not_an_openai_field": 1, "metadata": {"a": "b"}},
    )
    assert reply.choices[0].message.content


def test_user_field_is_accepted(client: openai.OpenAI) -> None:
    assert client.chat.completions.create(model=BASE, messages=FRANCE, max_tokens=2, user="tenant-42").choices
