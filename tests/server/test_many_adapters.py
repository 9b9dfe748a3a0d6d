"""Hundreds of adapters on one engine: registered while serving, loaded on demand, never mixed up."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from adapters.fingerprint import BaseModelSpec
from tests.adapter_factory import write_adapter
from tests.helpers import ServerProcess, adapter_files, upload_adapter

pytestmark = pytest.mark.integration

BASE = "SmolLM2-135M-Instruct"
REGISTERED, USED, CONCURRENT = 200, 50, 64
PROMPT = [{"role": "user", "content": "Tell me about your day."}]


def _metric(server: ServerProcess, name: str) -> float:
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _distance(ours: dict[str, float], theirs: dict[str, float]) -> float:
    """Mean absolute log-probability difference over both top-5 sets (a token missing from one counts as -20)."""
    tokens = set(ours) | set(theirs)
    return sum(abs(ours.get(t, -20.0) - theirs.get(t, -20.0)) for t in tokens) / len(tokens)


def test_many_adapters_concurrently_each_answer_as_when_alone(
    demo_server: ServerProcess, demo_base: BaseModelSpec, tmp_path: Path
) -> None:
    for index in range(REGISTERED):
        folder = write_adapter(
            tmp_path / f"a{index}", demo_base, seed=1000 + index, rank=8, modules=("q_proj", "v_proj")
        )
        response = upload_adapter(demo_server.url, f"many-{index:03d}", adapter_files(folder))
        assert response.status_code == 201, response.text
    names = [f"many-{index:03d}" for index in range(0, REGISTERED, REGISTERED // USED)][:USED]
    client = openai.OpenAI(base_url=f"{demo_server.url}/v1", api_key="unused", max_retries=0, timeout=600)

    def ask(model: str) -> tuple[str, dict[str, float]]:
        """The greedy answer, and the first token's top-5 log-probabilities (the adapter's fingerprint)."""
        reply = client.chat.completions.create(
            model=model, messages=PROMPT, temperature=0, max_tokens=6, logprobs=True, top_logprobs=5
        )
        assert reply.model == (model if model == BASE else f"{model}@1")
        first = reply.choices[0].logprobs.content[0].top_logprobs
        return reply.choices[0].message.content or "", {top.token: top.logprob for top in first}

    solo = {name: ask(name) for name in [BASE, *names]}
    assert len({answer for answer, _ in solo.values()}) >= USED * 0.8, "the test adapters should answer differently"
    # Base requests ride along: with every LoRA slot of the engine taken, they must still get the bare base.
    jobs = [BASE if i % 8 == 0 else names[i % USED] for i in range(CONCURRENT)]
    with ThreadPoolExecutor(max_workers=CONCURRENT) as pool:
        answers = list(pool.map(ask, jobs))
    # CPU batches are not bit-exact, so greedy text may drift on near-ties; the first token's distribution only
    # moves by rounding. A request served by another adapter would carry that adapter's distribution instead.
    exact = 0
    for model, (text, fingerprint) in zip(jobs, answers, strict=True):
        distance = {name: _distance(fingerprint, theirs) for name, (_, theirs) in solo.items()}
        nearest = min(distance, key=distance.__getitem__)
        assert nearest == model and distance[model] < 0.25, (model, nearest, distance[model], distance[nearest])
        exact += text == solo[model][0]
    assert exact >= CONCURRENT * 0.5, f"only {exact} of {CONCURRENT} concurrent answers equal their solo answer"
    assert _metric(demo_server, "loradock_adapter_load_seconds_count") >= USED
    assert _metric(demo_server, "loradock_adapters_resident") <= 32
