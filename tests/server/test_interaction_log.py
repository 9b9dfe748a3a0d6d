"""The interaction log and the feedback API on the real server: 200 completions, feedback on 50, the export,
redaction, opt-out, 64 concurrent streams, and a database locked mid-run."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import pytest

from adapters.database import open_database
from adapters.errors import NotFoundError
from adapters.fingerprint import BaseModelSpec
from adapters.hub import Hub
from adapters.interactions import InteractionStore
from adapters.naming import DEFAULT_ALIAS, SHADOW_ALIAS
from adapters.records import AliasTarget
from adapters.settings import Settings
from adapters.sources import stage_source
from tests.helpers import LORADOCK, ServerProcess, metric

pytestmark = pytest.mark.integration

T = TypeVar("T")


def _question(i: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": f"Ticket {i}: reach me at user{i}@example.com or +1 415 555 {i:04d}."},
    ]


def _ask(client: openai.OpenAI, i: int, *, stream: bool, headers: dict[str, str] | None = None) -> tuple[str, str, str]:
    """(id, answer, finish reason) of one chat completion with the `alpha` adapter."""
    kwargs: dict[str, Any] = dict(
        model="alpha", messages=_question(i), temperature=0, max_tokens=6, extra_headers=headers or {}
    )
    if not stream:
        reply = client.chat.completions.create(**kwargs)
        return reply.id, reply.choices[0].message.content or "", reply.choices[0].finish_reason or ""
    text, reason, completion_id = "", "", ""
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        completion_id = chunk.id
        for choice in chunk.choices:
            text += choice.delta.content or ""
            reason = choice.finish_reason or reason
    return completion_id, text, reason


def _parallel(function: Callable[[int], T], count: int, workers: int = 16) -> list[T]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(function, range(count)))


def _wait_for(check: Callable[[], bool], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _logged(store: InteractionStore, completion_id: str) -> bool:
    try:
        store.get(completion_id)
    except NotFoundError:
        return False
    return True


def _feedback(server: ServerProcess, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/feedback", json=body, timeout=30)


def test_200_completions_feedback_on_50_and_the_export_has_exactly_the_expected_rows(
    demo_server: ServerProcess, client: openai.OpenAI, tiny_model: Path, tmp_path: Path
) -> None:
    answers = _parallel(lambda i: _ask(client, i, stream=i % 4 == 0), 200)
    database = open_database(f"sqlite:///{demo_server.home / 'loradock.db'}")
    store = InteractionStore(database)
    try:
        _wait_for(lambda: _logged(store, answers[-1][0]))
        stored = store.get(answers[7][0])
        user_turn = stored.request["messages"][1]["content"]
        assert user_turn == "Ticket 7: reach me at [EMAIL] or [PHONE]." and stored.redactions >= 2
        assert (stored.adapter, stored.version, stored.route, stored.tenant) == ("alpha", 1, "chat", "local")
        assert stored.outputs == [answers[7][1]] and stored.finish_reasons == [answers[7][2]]
        assert stored.parameters["max_tokens"] == 6 and stored.prompt_tokens > 0 and stored.latency_ms > 0
        streamed = store.get(answers[8][0])
        assert streamed.outputs == [answers[8][1]] and streamed.ttft_ms is not None

        corrections = {i: f"fixed answer {i}" for i in range(20, 40)}
        for i in range(50):
            body: dict[str, Any] = {"completion_id": answers[i][0]}
            if i < 20:
                body["rating"] = "up"
            elif i < 40:
                body |= {"rating": "down", "correction": f"first try {i}", "labels": ["wrong"]}
            else:
                body["score"] = 0.2
            response = _feedback(demo_server, body)
            assert response.status_code == 201, response.text
        for i in range(20, 25):  # a repeat from the same source updates the record
            repeat = _feedback(
                demo_server, {"completion_id": answers[i][0], "score": 0.1, "correction": corrections[i]}
            )
            assert repeat.status_code == 200 and repeat.json()["correction"] == corrections[i]
        for i in range(25, 40):
            assert (
                _feedback(
                    demo_server, {"completion_id": answers[i][0], "rating": "down", "correction": corrections[i]}
                ).status_code
                == 200
            )
        for i in range(5):  # a second source on the same completion is a record of its own
            assert (
                _feedback(
                    demo_server, {"completion_id": answers[i][0], "rating": "up", "source": "reviewer"}
                ).status_code
                == 201
            )

        listed = httpx.get(
            f"{demo_server.url}/v1/feedback", params={"adapter": "alpha", "limit": 1000}, timeout=30
        ).json()
        assert len(listed["data"]) == 55
        corrected = httpx.get(
            f"{demo_server.url}/v1/feedback", params={"adapter": "alpha", "corrected": "true", "limit": 7}, timeout=30
        ).json()
        assert len(corrected["data"]) == 7 and corrected["has_more"]

        out = tmp_path / "alpha-sft.jsonl"
        env = {**os.environ, "LORADOCK_HOME": str(demo_server.home)}
        done = subprocess.run(
            [str(LORADOCK), "feedback", "export", "alpha", "--format", "sft", "--out", str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        redacted = [stored_turns(store, answers[i][0]) for i in range(50)]
        expected = [
            redacted[i] + [{"role": "assistant", "content": answers[i][1]}]
            for i in range(20)
            if answers[i][2] != "length"
        ]
        expected += [redacted[i] + [{"role": "assistant", "content": corrections[i]}] for i in range(20, 40)]
        assert sorted(json.dumps(row["messages"]) for row in rows) == sorted(json.dumps(turns) for turns in expected)
        assert "rated below --min-score" in done.stdout

        dpo = export_rows(env, tmp_path, "dpo")
        assert len(dpo) == 20
        assert {row["chosen"] for row in dpo} == set(corrections.values())
        assert {row["rejected"] for row in dpo} == {answers[i][1] for i in range(20, 40)}

        # The DPO export feeds `loradock train --method dpo` (TRL's DPO trainer) as it is.
        trained = subprocess.run(
            [
                str(LORADOCK),
                "train",
                "--data",
                str(tmp_path / "alpha-dpo.jsonl"),
                "--method",
                "dpo",
                "--base-model",
                str(tiny_model),
                "--output-dir",
                str(tmp_path / "dpo-run"),
                "--set",
                "max_steps=2",
                "--set",
                "batch_size=4",
                "--set",
                "evaluate=false",
            ],
            env={**env, "LORADOCK_HOME": str(tmp_path / "train-home")},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
        assert (tmp_path / "dpo-run" / "adapter" / "adapter_model.safetensors").is_file()
    finally:
        database.dispose()


def stored_turns(store: InteractionStore, completion_id: str) -> list[dict[str, str]]:
    return list(store.get(completion_id).request["messages"])


def export_rows(env: dict[str, str], tmp_path: Path, fmt: str) -> list[dict[str, Any]]:
    out = tmp_path / f"alpha-{fmt}.jsonl"
    subprocess.run(
        [str(LORADOCK), "feedback", "export", "alpha", "--format", fmt, "--out", str(out)],
        env=env,
        check=True,
        timeout=120,
    )
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_unknown_opted_out_and_malformed_feedback_is_refused(demo_server: ServerProcess, client: openai.OpenAI) -> None:
    unknown = _feedback(demo_server, {"completion_id": "chatcmpl-does-not-exist", "rating": "up"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    opted_out_id = _ask(client, 1, stream=False, headers={"X-Loradock-Log": "off"})[0]
    assert _feedback(demo_server, {"completion_id": opted_out_id, "rating": "up"}).status_code == 404
    logged_id = _ask(client, 2, stream=False)[0]
    for body, param in (
        ({"completion_id": logged_id}, None),
        ({"completion_id": logged_id, "score": 1.5}, "score"),
        ({"completion_id": logged_id, "rating": "meh"}, "rating"),
        ({"completion_id": logged_id, "rating": "up", "source": "Not A Name"}, "source"),
    ):
        response = _feedback(demo_server, body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["param"] == param
    out_of_range = _feedback(demo_server, {"completion_id": logged_id, "rating": "up", "index": 4})
    assert out_of_range.status_code == 400 and "out of range" in out_of_range.json()["error"]["message"]
    assert metric(demo_server, "loradock_interactions_skipped_total", reason="opted_out") >= 1


def test_the_log_keeps_up_with_64_streams_and_a_locked_database_fails_no_request(
    demo_server: ServerProcess, client: openai.OpenAI
) -> None:
    path = demo_server.home / "loradock.db"
    database = open_database(f"sqlite:///{path}")
    store = InteractionStore(database)
    dropped_before = metric(demo_server, "loradock_interactions_dropped_total")
    try:
        answers = _parallel(lambda i: _ask(client, 1000 + i, stream=True), 64, workers=64)
        assert all(answer[2] for answer in answers)
        _wait_for(lambda: all(_logged(store, answer[0]) for answer in answers))
        assert metric(demo_server, "loradock_interactions_dropped_total") == dropped_before

        lock = sqlite3.connect(path, timeout=30, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # every writer now waits, and the log's gives up after 5 s
        try:
            started = time.monotonic()
            blocked = _parallel(lambda i: _ask(client, 2000 + i, stream=i % 2 == 0), 64, workers=64)
            assert all(answer[2] for answer in blocked) and time.monotonic() - started < 60
            _wait_for(lambda: metric(demo_server, "loradock_interactions_dropped_total", reason="database_error") > 0)
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        after = _ask(client, 3000, stream=False)[0]
        _wait_for(lambda: _logged(store, after))
    finally:
        database.dispose()


def test_an_adapters_sampling_policy_applies_within_seconds(demo_server: ServerProcess, client: openai.OpenAI) -> None:
    env = {**os.environ, "LORADOCK_HOME": str(demo_server.home)}

    def policy(rate: str) -> None:
        command = [str(LORADOCK), "interactions", "policy", "beta", "--sample-rate", rate, "--retention-days", "30"]
        subprocess.run(command, env=env, check=True, timeout=60, capture_output=True)

    def beta_sampled_out() -> bool:
        before = metric(demo_server, "loradock_interactions_skipped_total", reason="sampled_out")
        client.chat.completions.create(model="beta", messages=_question(1), max_tokens=2)
        return metric(demo_server, "loradock_interactions_skipped_total", reason="sampled_out") > before

    policy("0")
    try:
        _wait_for(beta_sampled_out)
    finally:
        policy("1")


def test_a_shadow_version_answers_copies_of_live_traffic_never_returned(
    demo_server: ServerProcess, test_adapters: dict[str, Path], demo_base: BaseModelSpec
) -> None:
    hub = Hub.open(Settings(home=demo_server.home, max_lora_rank=16))
    try:
        for folder in (test_adapters["alpha"], test_adapters["beta"]):
            hub.registry.register(
                "gamma", stage_source(hub.store, str(folder), hub.registry.limits), demo_base, created_by="t"
            )
        hub.registry.set_alias("gamma", DEFAULT_ALIAS, [AliasTarget(version=1)], updated_by="t")
        hub.registry.set_alias("gamma", SHADOW_ALIAS, [AliasTarget(version=2)], updated_by="t")
        live = []
        for i in range(6):
            body = {"model": "gamma", "messages": _question(i), "temperature": 0, "max_tokens": 6, "stream": i % 2 == 1}
            response = httpx.post(f"{demo_server.url}/v1/chat/completions", json=body, timeout=120)
            assert response.status_code == 200 and response.headers["x-loradock-adapter-version"] == "1"
            live.append(response.headers["x-request-id"])
        _wait_for(lambda: len(hub.interactions.shadow_pairs("gamma", 2)) == 6)
        pairs = hub.interactions.shadow_pairs("gamma", 2)
        assert sorted(pair[0].id for pair in pairs) == sorted(live)
        assert all(shadow.version == 2 and shadow.shadow_of == first.id for first, shadow in pairs)
        assert any(first.outputs != shadow.outputs for first, shadow in pairs)  # two different adapters answered
        assert _feedback(demo_server, {"completion_id": pairs[0][1].id, "rating": "up"}).status_code == 404
        assert metric(demo_server, "loradock_shadow_requests_total", adapter="gamma", outcome="ok") == 6
    finally:
        hub.close()
