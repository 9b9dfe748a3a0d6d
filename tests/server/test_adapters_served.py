"""LoRA adapters served beside the base on one engine: each request gets the model it named."""

from __future__ import annotations

import difflib
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

pytestmark = pytest.mark.integration

BASE = "SmolLM2-135M-Instruct"
MODELS = (BASE, "alpha", "beta")
PROMPTS = [
    "What is the capital of France?",
    "Name three colours.",
    "How many legs does a spider have?",
    "Say hello in Spanish.",
]


def ask(client: openai.OpenAI, model: str, prompt: str) -> str:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=24
    )
    assert reply.model == (model if model == BASE else f"{model}@1")
    return reply.choices[0].message.content or ""


@pytest.fixture(scope="module")
def solo_answers(client: openai.OpenAI) -> dict[tuple[str, str], str]:
    """Each model's greedy answer to each prompt, sent alone."""
    return {(model, prompt): ask(client, model, prompt) for model in MODELS for prompt in PROMPTS}


def test_each_adapter_answers_differently_from_the_base(solo_answers: dict[tuple[str, str], str]) -> None:
    for prompt in PROMPTS:
        answers = {model: solo_answers[model, prompt] for model in MODELS}
        assert len(set(answers.values())) == 3, answers


def test_concurrent_mixed_requests_come_back_from_the_model_they_named(
    client: openai.OpenAI, solo_answers: dict[tuple[str, str], str]
) -> None:
    """24 requests at once over base + 2 adapters; CPU batches are not bit-exact, so compare by similarity.

    A request served by the wrong model (cross-talk) would resemble another model's solo answer; one touched
    by batch rounding still resembles its own model's answer more than any other's.
    """
    jobs = [(MODELS[i % 3], PROMPTS[i % len(PROMPTS)]) for i in range(24)]
    with ThreadPoolExecutor(max_workers=24) as pool:
        answers = list(pool.map(lambda job: ask(client, *job), jobs))
    exact = 0
    for (model, prompt), answer in zip(jobs, answers, strict=True):
        similarity = {m: difflib.SequenceMatcher(None, answer, solo_answers[m, prompt]).ratio() for m in MODELS}
        assert max(similarity, key=similarity.__getitem__) == model, (model, prompt, answer, similarity)
        exact += answer == solo_answers[model, prompt]
    assert exact >= len(jobs) // 2, f"only {exact} of {len(jobs)} concurrent answers equal their solo answer"
