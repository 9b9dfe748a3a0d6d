"""What the benchmarks send: ticket prompts spread over the base and adapters, uniform or Zipf-popular, and the
ops work (registrations, alias moves) that runs beside the load."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from adapters.fingerprint import BaseModelSpec
from loadtests.drift_calibration import tickets
from loadtests.generator import Request, pause
from tests.adapter_factory import write_adapter
from tests.helpers import adapter_files, upload_adapter
from training.demo_task import SYSTEM_PROMPT

Picker = Callable[[random.Random], str]


def constant(model: str) -> Picker:
    return lambda _rng: model


def uniform(models: Sequence[str]) -> Picker:
    return lambda rng: rng.choice(models)


def zipf(models: Sequence[str], exponent: float = 1.0) -> Picker:
    """Popularity falling as 1/rank**exponent over `models` (rank 1 first): a few hot adapters, a long cold tail."""
    weights = 1.0 / np.arange(1, len(models) + 1) ** exponent
    cumulative = list(np.cumsum(weights / weights.sum()))
    return lambda rng: models[min(int(np.searchsorted(cumulative, rng.random())), len(models) - 1)]


def workload(pick: Picker, max_tokens: int, seed: int = 0, prompts: int = 500) -> Iterator[Request]:
    """Endless support-ticket chats (the demo task's prompts), each to the model `pick` draws."""
    rng = random.Random(seed)
    texts = tickets(prompts, seed=seed)
    while True:
        for text in texts:
            messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}]
            yield Request(pick(rng), messages, max_tokens)


def write_adapters(root: Path, base: BaseModelSpec, count: int, prefix: str, first_seed: int = 0) -> dict[str, Path]:
    """`count` distinct rank-8 adapters on q_proj and v_proj (about 0.9 MB each), written in seconds."""
    return {
        f"{prefix}-{index:04d}": write_adapter(root / f"{prefix}-{index:04d}", base, seed=first_seed + index)
        for index in range(count)
    }


def register_all(url: str, adapters: dict[str, Path], workers: int = 4) -> float:
    """Upload every adapter through the hub API, as ops tooling would; returns registrations per second."""

    def register(item: tuple[str, Path]) -> None:
        response = upload_adapter(url, item[0], adapter_files(item[1]))
        if response.status_code != 201:
            raise RuntimeError(f"registering {item[0]} failed: {response.status_code} {response.text}")

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(register, adapters.items()))
    return len(adapters) / (time.perf_counter() - started)


@dataclass
class Churn:
    """Ops work during load: new versions of one adapter registered, and its `live` alias moved to each in turn.

    Requests for `NAME:live` must keep succeeding throughout, served by whichever version the alias names.
    """

    url: str
    name: str
    folders: list[Path]
    every_s: float = 2.0
    registered: int = 0
    alias_moves: int = 0
    failures: list[str] = field(default_factory=list)
    uploaded: int = 0
    """Folders used so far: a second call goes on with the next one rather than registering the same again."""

    async def __call__(self, deadline: float) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=120) as client:
            for folder in self.folders[self.uploaded :]:
                if time.perf_counter() >= deadline:
                    return
                self.uploaded += 1
                response = await asyncio.to_thread(upload_adapter, self.url, self.name, adapter_files(folder))
                if response.status_code != 201:
                    self.failures.append(f"register: {response.status_code} {response.text[:200]}")
                    continue
                self.registered += 1
                version = response.json()["version"]
                moved = await client.put(f"/v1/adapters/{self.name}/aliases/live", json={"version": version})
                if moved.status_code == 200:
                    self.alias_moves += 1
                else:
                    self.failures.append(f"alias: {moved.status_code} {moved.text[:200]}")
                await pause(self.every_s, deadline)
