"""Benchmark: what drift monitoring costs responses, on a real server under 64 concurrent streams.

    loradock models fetch-demo && python -m loadtests.drift_overhead [--requests-per-stream 5] [--max-tokens 16]

Starts `loradock serve` twice over the demo model with one adapter, drift off then on (everything else equal),
sends the same support tickets from 64 concurrent streaming clients, and compares latency, time to first token and
throughput. With drift on it then checks that every completion reached the drift windows (none dropped) and
reads the drift thread's own evaluation time. Also times the request path's share alone (queueing one
completion). Prints a table and writes JSON and a bar chart.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai

from adapters.base_models import resolve_base_model
from adapters.settings import Settings
from loadtests.drift_calibration import tickets
from server.drift_monitor import Completion, DriftMonitor
from server.metrics import ServerMetrics
from tests.helpers import ServerProcess, make_lora_adapter, metric
from training.demo_task import SYSTEM_PROMPT

STREAMS = 64
ADAPTER = "bench"


def stream_once(client: openai.OpenAI, prompt: str, max_tokens: int) -> tuple[float, float]:
    """(seconds to the last token, seconds to the first) of one streamed chat completion."""
    started = time.perf_counter()
    first = None
    messages: Any = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
    for chunk in client.chat.completions.create(
        model=ADAPTER, messages=messages, max_tokens=max_tokens, temperature=0, stream=True
    ):
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter()
    end = time.perf_counter()
    return end - started, (first or end) - started


def run_server(model: Path, adapter: Path, drift: bool, prompts: list[str], max_tokens: int) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix=f"drift-{'on' if drift else 'off'}-"))
    env = {"LORADOCK_DRIFT": str(drift).lower(), "LORADOCK_MAX_LORA_RANK": "16"}
    server = ServerProcess(home, ["--base-model", str(model), "--adapter", f"{ADAPTER}={adapter}"], env=env)
    try:
        server.wait_ready(600)
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=600)
        for prompt in prompts[:8]:
            stream_once(client, prompt, max_tokens)
        measured = prompts[8:]
        started = time.perf_counter()
        with ThreadPoolExecutor(STREAMS) as pool:
            timings = list(pool.map(lambda p: stream_once(client, p, max_tokens), measured))
        elapsed = time.perf_counter() - started
        latencies = sorted(t[0] for t in timings)
        first = sorted(t[1] for t in timings)
        result: dict[str, Any] = {
            "drift": drift,
            "requests": len(measured),
            "throughput_rps": len(measured) / elapsed,
            "latency_p50_s": statistics.median(latencies),
            "latency_p95_s": latencies[int(len(latencies) * 0.95) - 1],
            "ttft_p50_s": statistics.median(first),
            "ttft_p95_s": first[int(len(first) * 0.95) - 1],
        }
        if drift:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                view = httpx.get(f"{server.url}/v1/adapters/{ADAPTER}/drift", timeout=30).json()
                if sum(v["observed"] or 0 for v in view["versions"]) >= len(prompts):
                    break
                time.sleep(1)
            result["observed"] = sum(v["observed"] or 0 for v in view["versions"])
            result["dropped"] = metric(server, "loradock_drift_observations_total", outcome="dropped")
            count = metric(server, "loradock_drift_evaluation_seconds_count")
            result["evaluations"] = count
            result["evaluation_mean_s"] = metric(server, "loradock_drift_evaluation_seconds_sum") / max(count, 1)
        return result
    finally:
        server.terminate()


def request_path_cost(completions: int = 20_000) -> list[float]:
    """Seconds per `observe` call (what a finished request pays), with the drift thread not draining."""
    settings = Settings(home=Path(tempfile.mkdtemp()), drift_queue_size=completions)
    monitor = DriftMonitor(settings, ServerMetrics())
    request = {"messages": [{"role": "user", "content": "My order #12345 is late."}]}
    costs = []
    for _ in range(completions):
        item = Completion(ADAPTER, 1, 1, request, '{"category": "shipping"}', "stop", keep_text=True)
        before = time.perf_counter()
        monitor.observe(item)
        costs.append(time.perf_counter() - before)
    monitor.close()
    return costs


def plot(results: list[dict[str, Any]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["latency_p50_s", "latency_p95_s", "ttft_p50_s", "ttft_p95_s"]
    figure, axis = plt.subplots(figsize=(7, 3.6))
    for offset, result in zip((-0.2, 0.2), results, strict=True):
        axis.bar(
            [i + offset for i in range(len(names))],
            [result[name] for name in names],
            width=0.4,
            label=f"drift {'on' if result['drift'] else 'off'}",
            color="#1f77b4" if result["drift"] else "#999999",
        )
    axis.set_xticks(range(len(names)), [name.removesuffix("_s").replace("_", " ") for name in names])
    axis.set_ylabel("seconds")
    axis.set_title(f"{STREAMS} concurrent streams: drift off vs on")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests-per-stream", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    costs = sorted(cost * 1e6 for cost in request_path_cost())
    print(f"request path (queue one completion): median {statistics.median(costs):.1f} us, p99 {costs[-200]:.1f} us")
    model = Path(resolve_base_model(Settings().base_model, Settings().models_dir))
    adapter = make_lora_adapter(model, Path(tempfile.mkdtemp()) / ADAPTER, seed=3)
    prompts = tickets(8 + STREAMS * args.requests_per_stream, seed=2)
    results = [run_server(model, adapter, drift, prompts, args.max_tokens) for drift in (False, True)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "drift_overhead.json").write_text(json.dumps(results, indent=2))
    print(f"{'':8}{'req/s':>8}{'p50 s':>8}{'p95 s':>8}{'ttft p50':>10}{'ttft p95':>10}")
    for result in results:
        print(
            f"{'drift ' + ('on' if result['drift'] else 'off'):8}{result['throughput_rps']:8.2f}"
            f"{result['latency_p50_s']:8.2f}{result['latency_p95_s']:8.2f}"
            f"{result['ttft_p50_s']:10.2f}{result['ttft_p95_s']:10.2f}"
        )
    on = results[1]
    print(
        f"drift on: {on['observed']:.0f} of {len(prompts)} completions in the windows, {on['dropped']:.0f} dropped; "
        f"{on['evaluations']:.0f} evaluations, {on['evaluation_mean_s'] * 1000:.0f} ms each (in the drift thread)"
    )
    print(f"chart: {plot(results, args.out / 'drift_overhead.png')}")


if __name__ == "__main__":
    main()
