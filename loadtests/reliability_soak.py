"""The reliability soak: a bounded run of mixed load with registrations and feedback, then what the database kept
counted against what was sent, and the server's memory over time.

    loradock models fetch-demo && python -m loadtests.reliability_soak [--minutes 20] [--out bench-results/soak]

One `loradock serve` with its production defaults (interaction log, drift) on the machine's PostgreSQL (a fresh
database, dropped afterwards) serves streamed chats over the base, 8 adapters and `soak-churn:live`, while a new
version of `soak-churn` is registered and `live` moved to it every 15 s, and a client rates completions (with a
correction now and then) every second. The figures go to docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import create_engine, text

from adapters.fingerprint import BaseModelSpec
from loadtests.bench import MemorySampler, warm_up
from loadtests.generator import Run, pause, run_load
from loadtests.report import Summary, markdown_table, summarize
from loadtests.scenarios import Churn, register_all, uniform, workload, write_adapters
from loadtests.servers import BASE_NAME, EngineConfig, configured_base_model, start_loradock
from tests.conftest import fresh_postgres_database

console = Console()
CONCURRENCY = 8
MAX_TOKENS = 32
WARMUP_SHARE = 0.25
"""Memory growth is measured from the end of the first quarter of the run (caches, pools and JIT warm by then)."""


@dataclass
class FeedbackClient:
    """An application rating its completions: a non-streamed chat, then its feedback, once a second."""

    url: str
    models: list[str]
    completions: int = 0
    feedback: int = 0
    failures: list[str] = field(default_factory=list)

    async def __call__(self, deadline: float) -> None:
        import httpx

        async with httpx.AsyncClient(base_url=self.url, timeout=120) as client:
            turn = 0
            while time.perf_counter() < deadline:
                model = self.models[turn % len(self.models)]
                messages = [{"role": "user", "content": f"Ticket {turn}: my invoice is wrong."}]
                reply = await client.post(
                    "/v1/chat/completions", json={"model": model, "messages": messages, "max_tokens": MAX_TOKENS}
                )
                if reply.status_code != 200:
                    self.failures.append(f"chat {model}: {reply.status_code} {reply.text[:200]}")
                else:
                    self.completions += 1
                    rating: dict[str, Any] = {"completion_id": reply.json()["id"], "rating": ("up", "down")[turn % 2]}
                    if turn % 5 == 0:
                        rating["correction"] = '{"priority": "high"}'
                    rated = await client.post("/v1/feedback", json=rating)
                    if rated.status_code == 201:
                        self.feedback += 1
                    else:
                        self.failures.append(f"feedback: {rated.status_code} {rated.text[:200]}")
                turn += 1
                await pause(1.0, deadline)


def count_rows(database_url: str, table: str) -> int:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


def wait_for_rows(database_url: str, table: str, expected: int, timeout_s: float = 120) -> int:
    """The table's row count once it reaches `expected`, or at `timeout_s`: the interaction log's writer drains its
    queue in the background, and on a slow machine it is still writing when the load stops."""
    deadline = time.monotonic() + timeout_s
    while (count := count_rows(database_url, table)) < expected and time.monotonic() < deadline:
        time.sleep(1.0)
    return count


def soak(minutes: float, out: Path, model: Path | None = None, fill_adapter_cache: bool = True) -> dict[str, Any]:
    """Run the soak over `model` (default: the configured base model) and report its figures.

    Warm-up fills the engine's host-memory adapter cache first (`max_cpu_loras` adapters, one request each): it is
    bounded, but at four new versions a minute it would take most of the run to fill, and its growth would read
    as a leak. Memory growth is then measured from the end of the first quarter of the run.
    """
    if model is None:
        model = configured_base_model()
    base = BaseModelSpec.from_folder(model)
    with tempfile.TemporaryDirectory(prefix="loradock-soak-") as scratch, fresh_postgres_database() as url:
        root = Path(scratch)
        adapters = write_adapters(root / "adapters", base, 8, "soak")
        churn_folders = list(write_adapters(root / "churn", base, int(minutes * 4) + 2, "churn", 9000).values())
        config = EngineConfig()
        server = start_loradock(root / "home", model, adapters, config, env={"LORADOCK_DATABASE_URL": url})
        try:
            server.wait_ready()
            register_all(server.url, {"soak-churn": churn_folders[0]})
            models = [BASE_NAME, *adapters, "soak-churn"]
            if fill_adapter_cache:
                filler = write_adapters(root / "fill", base, config.max_cpu_loras, "fill", first_seed=20_000)
                register_all(server.url, filler)
                models += list(filler)
            warm_up(server, models)
            churn = Churn(server.url, "soak-churn", churn_folders[1:], every_s=15.0)
            asyncio.run(churn(time.perf_counter() + 1))  # version 2 and the `live` alias exist before the load
            sampler = MemorySampler(server, every_s=5.0)
            feedback = FeedbackClient(server.url, [BASE_NAME, *list(adapters)[:2], "soak-churn:live"])
            pick = uniform([BASE_NAME, *adapters, "soak-churn:live"])
            console.print(f"soak: {minutes:g} minutes at concurrency {CONCURRENCY}")
            run = asyncio.run(
                run_load(
                    server.url,
                    workload(pick, MAX_TOKENS, seed=7),
                    concurrency=CONCURRENCY,
                    duration_s=minutes * 60,
                    hooks=(sampler, churn, feedback),
                )
            )
            succeeded = sum(result.error is None for result in run.results)
            interactions = wait_for_rows(url, "interactions", succeeded + feedback.completions + len(models))
            feedback_rows = wait_for_rows(url, "feedback", feedback.feedback)
        finally:
            server.terminate()
    summary = summarize(run, f"soak {minutes:g} min", "loradock")
    return report(summary, run, sampler, churn, feedback, interactions, feedback_rows, len(models), out)


def report(
    summary: Summary,
    run: Run,
    sampler: MemorySampler,
    churn: Churn,
    feedback: FeedbackClient,
    interactions: int,
    feedback_rows: int,
    warm_up_requests: int,
    out: Path,
) -> dict[str, Any]:
    rss = [value for _, value in sampler.samples]
    warm = rss[int(len(rss) * WARMUP_SHARE) :] or rss
    sent_interactions = summary.succeeded + feedback.completions + warm_up_requests
    figures = {
        "minutes": run.duration_s / 60,
        "streamed_requests": summary.requests,
        "failed_requests": sum(summary.errors.values()) + len(feedback.failures) + len(churn.failures),
        "errors": summary.errors,
        "client_failures": feedback.failures[:20],
        "ops_failures": churn.failures[:20],
        "registrations": churn.registered,
        "alias_moves": churn.alias_moves,
        "completions_logged_expected": sent_interactions,
        "completions_logged": interactions,
        "feedback_expected": feedback.feedback,
        "feedback_stored": feedback_rows,
        "rss_mib_after_warmup": warm[0] if warm else None,
        "rss_mib_end": warm[-1] if warm else None,
        "rss_mib_max_after_warmup": max(warm) if warm else None,
        "rss_growth_after_warmup": (warm[-1] / warm[0] - 1) if warm else None,
        "output_tokens_per_s": summary.output_tokens_per_s,
        "requests_per_s": summary.requests_per_s,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(
        json.dumps({"figures": figures, "summary": summary.model_dump(mode="json")}, indent=2)
    )
    (out / "soak.md").write_text(markdown_table([summary]) + "\n")
    plot(run, sampler, out / "soak.png")
    return figures


def plot(run: Run, sampler: MemorySampler, path: Path) -> None:
    """Memory of the whole process tree, and completed requests per minute, over the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (memory, rate) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    memory.plot([t / 60 for t, _ in sampler.samples], [rss for _, rss in sampler.samples])
    memory.set_ylabel("RSS of the server (MiB)")
    memory.set_ylim(bottom=0)
    start = min(result.started for result in run.results)
    minutes = [int((result.ended - start) // 60) for result in run.results if result.error is None]
    counts = [minutes.count(minute) for minute in range(max(minutes) + 1)] if minutes else []
    rate.bar([minute + 0.5 for minute in range(len(counts))], counts, width=0.8)
    rate.set_ylabel("requests completed per minute")
    rate.set_xlabel("minutes into the soak")
    figure.suptitle("loradock reliability soak: mixed load, registrations and feedback")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=Path("bench-results/soak"))
    args = parser.parse_args()
    figures = soak(args.minutes, args.out)
    table = Table("figure", "value")
    for name, value in figures.items():
        table.add_row(name, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)
    console.print(f"reports in {args.out}/ (soak.json, soak.md, soak.png)")


if __name__ == "__main__":
    main()
