"""Benchmark: what drift monitoring costs an adapter's first token at concurrency 1, against vLLM's own server.

    loradock models fetch-demo && python -m loadtests.drift_ttft [--rounds 4] [--requests 12] [--max-tokens 32]

Four servers run at once over the same model, engine settings and 8 adapters: loradock as it ships (drift holds
finished completions back while requests are in flight), loradock with drift taking each completion in at once
(`LORADOCK_DRIFT_BATCH_S=0`), loradock with drift off, and vLLM's own server. They take turns run by run, at
concurrency 1, over the 8 adapters and then at the base model, which drift does not watch; each cell pools its
rounds. Drift watches adapter versions only, so a gap that drift causes shows at the adapters and not at the
base. Prints the table and writes JSON, Markdown and a PNG plot (docs/benchmarks.md, "Results on AVX2").
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from adapters.fingerprint import BaseModelSpec
from loadtests.bench import pooled, ready_and_warm
from loadtests.generator import Run, run_load
from loadtests.report import markdown_table, summarize, write_reports
from loadtests.scenarios import constant, uniform, workload, write_adapters
from loadtests.servers import BASE_NAME, EngineConfig, configured_base_model, start_loradock, start_vllm
from tests.helpers import ServerProcess

console = Console()

LORADOCK_VARIANTS = {
    "loradock": {},
    "loradock, drift at once": {"LORADOCK_DRIFT_BATCH_S": "0"},
    "loradock, drift off": {"LORADOCK_DRIFT": "false"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=12, help="requests per run (one server, one scenario)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    model = configured_base_model()
    root = Path(tempfile.mkdtemp(prefix="loradock-drift-ttft-"))
    eight = write_adapters(root / "eight", BaseModelSpec.from_folder(model), 8, "bench")
    names = list(eight)
    config = EngineConfig()
    servers: dict[str, ServerProcess] = {
        name: start_loradock(root / f"loradock-{index}", model, eight, config, env=env)
        for index, (name, env) in enumerate(LORADOCK_VARIANTS.items())
    }
    servers["vllm"] = start_vllm(root / "vllm", model, eight, config)
    scenarios = {"8 adapters": uniform(names), "base": constant(BASE_NAME)}
    runs: dict[tuple[str, str], list[Run]] = {}
    try:
        ready_and_warm(servers, [BASE_NAME, *names])
        with Progress(console=console) as progress:
            task = progress.add_task("runs at concurrency 1", total=args.rounds * len(scenarios) * len(servers))
            for round_ in range(args.rounds):
                for scenario, pick in scenarios.items():
                    for name, server in servers.items():
                        requests = workload(pick, args.max_tokens, seed=round_)
                        run = asyncio.run(run_load(server.url, requests, concurrency=1, requests=args.requests))
                        runs.setdefault((scenario, name), []).append(run)
                        progress.advance(task)
    finally:
        for server in servers.values():
            server.terminate()
    summaries = [summarize(pooled(cell), scenario, name) for (scenario, name), cell in runs.items()]
    console.print(markdown_table(summaries))
    paths = write_reports(summaries, args.out, "drift_ttft")
    console.print(f"reports: {', '.join(str(path) for path in paths)}")


if __name__ == "__main__":
    main()
