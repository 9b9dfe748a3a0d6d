"""The benchmark suite: loradock against vLLM's own server in one run, many adapters, ops under load, a soak, and
training speed; then the table of goals.

    loradock models fetch-demo && python -m loadtests.bench [--full] [--out bench-results]

`make bench` runs the short profile (about 8 minutes on 2 CPU cores); `--full` is what docs/benchmarks.md reports.

Both servers run at once over the same model, engine settings and 8 adapters; the load generator alternates
between them run by run (one server idle while the other is measured), so slow drifts of the machine hit both.
loradock runs with its production defaults: interaction log and drift monitoring on.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from adapters.fingerprint import BaseModelSpec
from loadtests.generator import Hook, Run, Workload, freeze_client_heap, pause, run_load
from loadtests.report import Summary, summarize, write_reports
from loadtests.scenarios import Churn, Picker, constant, register_all, uniform, workload, write_adapters, zipf
from loadtests.servers import BASE_NAME, EngineConfig, configured_base_model, start_loradock, start_vllm
from loadtests.training_speed import TrainingRun, compare
from loadtests.vllm_bench import BenchRun, bench_serve
from tests.helpers import ServerProcess, metric

console = Console()

LORADOCK, VLLM = "loradock", "vllm"


@dataclass(frozen=True)
class Profile:
    rounds: int
    """Runs per (scenario, concurrency, server), alternating servers; their requests are pooled."""
    requests_at_1: int
    requests_at_16: int
    max_tokens: int
    many_adapters: int
    many_requests: int
    vllm_bench_prompts: int
    churn_s: float
    soak_s: float
    training_steps: int


SHORT = Profile(
    rounds=1,
    requests_at_1=3,
    requests_at_16=16,
    max_tokens=32,
    many_adapters=1000,
    many_requests=32,
    vllm_bench_prompts=16,
    churn_s=10,
    soak_s=20,
    training_steps=5,
)
FULL = Profile(
    rounds=2,
    requests_at_1=8,
    requests_at_16=48,
    max_tokens=32,
    many_adapters=1000,
    many_requests=160,
    vllm_bench_prompts=64,
    churn_s=30,
    soak_s=120,
    training_steps=40,
)


def load(server: ServerProcess, pick: Picker, profile: Profile, concurrency: int, **kwargs: Any) -> Run:
    requests: Workload = workload(pick, profile.max_tokens, seed=concurrency)
    return asyncio.run(run_load(server.url, requests, concurrency=concurrency, **kwargs))


def pooled(runs: list[Run]) -> Run:
    return Run([r for run in runs for r in run.results], sum(run.duration_s for run in runs), runs[0].concurrency)


def warm_up(server: ServerProcess, models: list[str]) -> None:
    """One request per model, so adapter loads and first-batch costs stay out of the overhead runs."""
    asyncio.run(
        run_load(server.url, iter(next(workload(constant(m), 4)) for m in models), concurrency=1, requests=len(models))
    )


def ready_and_warm(servers: dict[str, ServerProcess], models: list[str]) -> None:
    """Wait for every server, warm each with one request per model and freeze the client's heap: what a side-by-side
    comparison does before its first measured run."""
    with console.status(f"starting {', '.join(servers)}"):
        for server in servers.values():
            server.wait_ready(900)
    for server in servers.values():
        warm_up(server, models)
    freeze_client_heap()


def overhead(servers: dict[str, ServerProcess], adapters: list[str], profile: Profile) -> list[Summary]:
    scenarios: dict[str, Picker] = {"base": constant(BASE_NAME), "8 adapters": uniform(adapters)}
    runs: dict[tuple[str, int, str], list[Run]] = {}
    plan = [(name, c) for name in scenarios for c in (1, 16)]
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("overhead runs", total=len(plan) * profile.rounds * len(servers))
        for round_ in range(profile.rounds):
            for name, concurrency in plan:
                order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
                for server_name in order:
                    requests = profile.requests_at_1 if concurrency == 1 else profile.requests_at_16
                    run = load(servers[server_name], scenarios[name], profile, concurrency, requests=requests)
                    runs.setdefault((name, concurrency, server_name), []).append(run)
                    progress.advance(task)
    return [summarize(pooled(rs), name, server, {"rounds": len(rs)}) for (name, c, server), rs in runs.items()]


def vllm_client(
    servers: dict[str, ServerProcess], model: Path, adapters: list[str], profile: Profile, out: Path
) -> list[dict[str, Any]]:
    plan = [
        (
            label,
            server_name,
            BenchRun(
                server.url,
                BASE_NAME,
                model,
                out / f"vllm-bench-{server_name}-{label.replace(' ', '-')}.json",
                prompts=profile.vllm_bench_prompts,
                concurrency=16,
                lora_modules=tuple(lora),
            ),
        )
        for label, lora in (("base", []), ("8 adapters", adapters))
        for server_name, server in servers.items()
    ]
    results = bench_serve([run for _, _, run in plan])
    return [
        {"scenario": label, "server": server_name, **_vllm_figures(result)}
        for (label, server_name, _), result in zip(plan, results, strict=True)
    ]


def _vllm_figures(result: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "completed",
        "failed",
        "request_throughput",
        "output_throughput",
        "p50_ttft_ms",
        "p99_ttft_ms",
        "p50_itl_ms",
        "p50_tpot_ms",
        "p50_e2el_ms",
    )
    return {key: result.get(key) for key in keys}


def adapter_load_seconds(server: ServerProcess) -> tuple[float, float]:
    return metric(server, "loradock_adapter_load_seconds_sum"), metric(server, "loradock_adapter_load_seconds_count")


def many_adapters(server: ServerProcess, base: BaseModelSpec, root: Path, profile: Profile) -> list[Summary]:
    """Register `many_adapters` adapters over HTTP, then single-adapter vs Zipf over 100 and over all of them."""
    with console.status(f"writing {profile.many_adapters} adapters"):
        folders = write_adapters(root / "many", base, profile.many_adapters, "zipf", first_seed=100)
    with console.status(f"registering {profile.many_adapters} adapters over HTTP"):
        rate = register_all(server.url, folders)
    console.print(f"registered {len(folders)} adapters: {rate:.1f} per second")
    names = list(folders)
    random.Random(0).shuffle(names)  # popularity rank has nothing to do with registration order
    summaries = []
    plans: list[tuple[str, Picker]] = [
        ("1 adapter", constant(names[0])),
        ("zipf 100", zipf(names[:100])),
        (f"zipf {len(names)}", zipf(names)),
    ]
    for name, pick in plans:
        before = adapter_load_seconds(server)
        run = load(server, pick, profile, 16, requests=profile.many_requests)
        after = adapter_load_seconds(server)
        loads = after[1] - before[1]
        extra = {
            "registered": len(names),
            "registrations_per_s": rate,
            "adapter_loads": loads,
            "adapter_load_mean_s": (after[0] - before[0]) / loads if loads else None,
            "distinct_adapters": len({r.model for r in run.results}),
        }
        summaries.append(summarize(run, name, LORADOCK, extra))
    return summaries


def churn(server: ServerProcess, base: BaseModelSpec, root: Path, adapters: list[str], profile: Profile) -> Summary:
    """Requests to `churn:live` and 8 other adapters while new versions are registered and `live` follows them."""
    folders = list(write_adapters(root / "churn", base, 64, "churn", first_seed=5000).values())
    register_all(server.url, {"churn": folders[0]})
    ops = Churn(server.url, "churn", folders[1:], every_s=1.0)
    asyncio.run(ops(time.perf_counter() + 1))  # registers version 2 and points `live` at it before the load
    pick = uniform(["churn:live", *adapters])
    run = load(server, pick, profile, 16, duration_s=profile.churn_s, hooks=(ops,))
    extra = {"registrations": ops.registered, "alias_moves": ops.alias_moves, "ops_failures": ops.failures}
    return summarize(run, "registrations + alias moves", LORADOCK, extra)


class MemorySampler:
    """Resident memory of a server's whole process tree (API process, engine core, workers) during a run."""

    def __init__(self, server: ServerProcess, every_s: float = 2.0) -> None:
        self._root = psutil.Process(server.process.pid)
        self._every_s = every_s
        self.samples: list[tuple[float, float]] = []

    def rss_mib(self) -> float:
        processes = [self._root, *self._root.children(recursive=True)]
        return float(sum(p.memory_info().rss for p in processes if p.is_running())) / (1 << 20)

    async def __call__(self, deadline: float) -> None:
        start = time.perf_counter()
        while time.perf_counter() < deadline:
            self.samples.append((time.perf_counter() - start, self.rss_mib()))
            await pause(self._every_s, deadline)


def soak(server: ServerProcess, adapters: list[str], profile: Profile) -> Summary:
    sampler = MemorySampler(server)
    hook: Hook = sampler
    pick = uniform([BASE_NAME, *adapters])
    run = load(server, pick, profile, 8, duration_s=profile.soak_s, hooks=(hook,))
    samples = [rss for _, rss in sampler.samples]
    warm = samples[len(samples) // 4 :] or samples
    extra = {
        "rss_mib_start": samples[0] if samples else None,
        "rss_mib_after_warmup": warm[0] if warm else None,
        "rss_mib_end": samples[-1] if samples else None,
        "rss_growth_after_warmup": (warm[-1] / warm[0] - 1) if warm else None,
    }
    return summarize(run, f"soak {profile.soak_s:.0f} s", LORADOCK, extra)


@dataclass
class Goal:
    name: str
    measured: float | None
    target: str
    met: bool | None
    unit: str = ""


def _find(summaries: list[Summary], scenario: str, server: str, concurrency: int) -> Summary:
    return next(s for s in summaries if (s.scenario, s.server, s.concurrency) == (scenario, server, concurrency))


def goals(summaries: list[Summary], client: list[dict[str, Any]], training: list[TrainingRun]) -> list[Goal]:
    result = []
    for scenario in ("base", "8 adapters"):
        for concurrency in (1, 16):
            ours, theirs = (
                _find(summaries, scenario, LORADOCK, concurrency),
                _find(summaries, scenario, VLLM, concurrency),
            )
            ratio = ours.output_tokens_per_s / theirs.output_tokens_per_s
            result.append(
                Goal(f"{scenario}, c={concurrency}: output tok/s vs vLLM", ratio, ">= 0.95x", ratio >= 0.95, "x")
            )
            delta = ((ours.ttft_s.p50 or 0) - (theirs.ttft_s.p50 or 0)) * 1000
            result.append(
                Goal(f"{scenario}, c={concurrency}: TTFT p50 minus vLLM's", delta, "<= 15 ms", delta <= 15, " ms")
            )
    for scenario in ("base", "8 adapters"):
        ours_c = next(r for r in client if (r["scenario"], r["server"]) == (scenario, LORADOCK))
        theirs_c = next(r for r in client if (r["scenario"], r["server"]) == (scenario, VLLM))
        ratio = ours_c["output_throughput"] / theirs_c["output_throughput"]
        result.append(
            Goal(f"vllm bench serve, {scenario}, c=16: output tok/s vs vLLM", ratio, ">= 0.95x", ratio >= 0.95, "x")
        )
    single = next(s for s in summaries if s.scenario == "1 adapter")
    widest = next(s for s in summaries if s.scenario == f"zipf {s.extra.get('registered')}")  # over every adapter
    ratio = widest.output_tokens_per_s / single.output_tokens_per_s
    result.append(Goal(f"{widest.scenario}: output tok/s vs 1 adapter", ratio, ">= 0.7x", ratio >= 0.7, "x"))
    errors = sum(widest.errors.values())
    result.append(Goal(f"{widest.scenario}: errors", errors, "0", errors == 0))
    penalty = widest.cold_penalty_s
    result.append(
        Goal(
            f"{widest.scenario}: cold minus warm TTFT p50",
            None if penalty is None else penalty * 1000,
            "<= 500 ms",
            penalty is not None and penalty <= 0.5,
            " ms",
        )
    )
    if training:
        ours_t, plain = training
        ratio = ours_t.tokens_per_s / plain.tokens_per_s
        result.append(Goal("LoRA SFT tokens/s vs plain Trainer fp32", ratio, ">= 1.5x", ratio >= 1.5, "x"))
        gap = ours_t.validation_loss - plain.validation_loss
        result.append(Goal("validation loss minus plain Trainer's", gap, "<= 0.05", gap <= 0.05))
    return result


def goal_table(rows: list[Goal]) -> str:
    lines = ["| goal | measured | target | met |", "|---|---|---|---|"]
    for goal in rows:
        measured = "-" if goal.measured is None else f"{goal.measured:.2f}{goal.unit}"
        lines.append(f"| {goal.name} | {measured} | {goal.target} | {'yes' if goal.met else 'NO'} |")
    return "\n".join(lines)


def show(rows: list[Goal]) -> None:
    table = Table(title="loradock goals")
    for column in ("goal", "measured", "target", "met"):
        table.add_column(column)
    for goal in rows:
        measured = "-" if goal.measured is None else f"{goal.measured:.2f}{goal.unit}"
        table.add_row(goal.name, measured, goal.target, "[green]yes[/green]" if goal.met else "[red]NO[/red]")
    console.print(table)


def step(title: str, work: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    console.rule(title)
    result = work()
    console.print(f"[dim]{title}: {time.perf_counter() - started:.0f} s[/dim]")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the longer profile docs/benchmarks.md reports")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument(
        "--cpu-pinned-worker",
        action="store_true",
        help="on the CPU, both servers run the model in vLLM's pinned worker (README: LORADOCK_CPU_PINNED_WORKER)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    profile = FULL if args.full else SHORT
    started = time.perf_counter()
    model = configured_base_model()
    base = BaseModelSpec.from_folder(model)
    root = Path(tempfile.mkdtemp(prefix="loradock-bench-"))
    eight = write_adapters(root / "eight", base, 8, "bench")
    names = list(eight)
    config = EngineConfig(cpu_pinned_worker=args.cpu_pinned_worker)
    servers = {
        LORADOCK: start_loradock(root / LORADOCK, model, eight, config),
        VLLM: start_vllm(root / VLLM, model, eight, config),
    }
    summaries: list[Summary] = []
    client: list[dict[str, Any]] = []
    try:
        ready_and_warm(servers, [BASE_NAME, *names])
        summaries += step("overhead: loradock vs vLLM's server", lambda: overhead(servers, names, profile))
        client = step("vllm bench serve against both", lambda: vllm_client(servers, model, names, profile, args.out))
        servers[VLLM].terminate()
        ours = servers[LORADOCK]
        summaries += step("many adapters", lambda: many_adapters(ours, base, root, profile))
        summaries.append(
            step("registrations and alias moves under load", lambda: churn(ours, base, root, names, profile))
        )
        summaries.append(step("soak", lambda: soak(ours, names, profile)))
    finally:
        for server in servers.values():
            server.terminate()
    training = (
        [] if args.skip_training else step("training speed", lambda: compare(profile.training_steps, root / "training"))
    )
    write_reports(summaries, args.out, "bench")  # kept even if the goals below cannot be computed
    rows = goals(summaries, client, training)
    preamble = "\n\n".join([goal_table(rows), _client_table(client), _training_table(training)])
    paths = write_reports(summaries, args.out, "bench", preamble)
    show(rows)
    console.print(f"reports: {', '.join(str(p) for p in paths)} ({time.perf_counter() - started:.0f} s in all)")


def _client_table(client: list[dict[str, Any]]) -> str:
    lines = [
        "| vllm bench serve (c=16) | server | completed | failed | req/s | out tok/s | TTFT p50 ms | ITL p50 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in client:
        lines.append(
            f"| {r['scenario']} | {r['server']} | {r['completed']} | {r['failed']} | {r['request_throughput']:.2f} "
            f"| {r['output_throughput']:.1f} | {r['p50_ttft_ms']:.0f} | {r['p50_itl_ms']:.0f} |"
        )
    return "\n".join(lines)


def _training_table(training: list[TrainingRun]) -> str:
    if not training:
        return ""
    lines = ["| training | steps | seconds | tokens/s | validation loss |", "|---|---|---|---|---|"]
    for run in training:
        lines.append(
            f"| {run.name} | {run.steps} | {run.seconds:.1f} | {run.tokens_per_s:.1f} | {run.validation_loss:.4f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
