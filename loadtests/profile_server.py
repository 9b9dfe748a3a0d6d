"""Profile loradock's API process under load with py-spy: where its event loop spends the time it is busy.

    loradock models fetch-demo && python -m loadtests.profile_server [--seconds 30] [--concurrency 16] [--gil]

Starts `loradock serve` with 8 adapters, sends streamed chats over the base and the adapters, and samples the API
process (not vLLM's engine core, which is vLLM's own work) with py-spy. Prints the functions that hold the event
loop thread, inclusive and self, and keeps py-spy's raw profile (`server.raw`: one stack per line, what
flamegraph.pl reads). With --gil, py-spy samples only the thread that holds the GIL, and the shares of the
event loop, the drift thread and the rest say who keeps the event loop waiting for it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from adapters.fingerprint import BaseModelSpec
from loadtests.bench import SHORT, load, warm_up
from loadtests.generator import freeze_client_heap
from loadtests.report import summarize
from loadtests.scenarios import uniform, write_adapters
from loadtests.servers import BASE_NAME, EngineConfig, configured_base_model, start_loradock

EVENT_LOOP_FRAME = "asyncio/runners.py"
IDLE_FRAME = "select (selectors.py"
DRIFT_FRAME = "(server/drift_monitor.py"


@dataclass
class LoopProfile:
    samples: int
    """Samples of the event-loop thread that py-spy saw running (it leaves idle ones out)."""
    inclusive: Counter[str]
    own: Counter[str]


def event_loop_profile(raw: Path) -> LoopProfile:
    """Aggregate py-spy's raw stacks ("frame;frame;... count") for the event-loop thread, waiting in select left out."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not any(EVENT_LOOP_FRAME in frame for frame in frames) or IDLE_FRAME in frames[-1]:
            continue
        samples += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
    return LoopProfile(samples, inclusive, own)


def thread_shares(raw: Path) -> Counter[str]:
    """Samples per thread (event loop, drift thread, other) from py-spy's raw stacks, waiting in select left out."""
    shares: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if IDLE_FRAME in stack.rpartition(";")[2]:
            continue
        if EVENT_LOOP_FRAME in stack:
            shares["event loop"] += int(count)
        elif DRIFT_FRAME in stack:
            shares["drift thread"] += int(count)
        else:
            shares["other"] += int(count)
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--gil", action="store_true", help="sample only the thread that holds the GIL")
    args = parser.parse_args()
    model = configured_base_model()
    root = Path(tempfile.mkdtemp(prefix="loradock-profile-"))
    adapters = write_adapters(root / "adapters", BaseModelSpec.from_folder(model), 8, "bench")
    server = start_loradock(root / "server", model, adapters, EngineConfig())
    args.out.mkdir(parents=True, exist_ok=True)
    raw = args.out / "server.raw"
    rate = 100
    try:
        server.wait_ready(900)
        warm_up(server, [BASE_NAME, *adapters])
        freeze_client_heap()
        py_spy = str(Path(sys.executable).parent / "py-spy")
        timing = ["--duration", str(args.seconds), "--rate", str(rate), "--pid", str(server.process.pid)]
        gil = ["--gil"] if args.gil else []
        spy = subprocess.Popen([py_spy, "record", "--format", "raw", "--output", str(raw), *timing, *gil])
        run = load(server, uniform([BASE_NAME, *adapters]), SHORT, args.concurrency, duration_s=args.seconds + 2)
        spy.wait()
    finally:
        server.terminate()
    summary = summarize(run, "profile", "loradock")
    profile = event_loop_profile(raw)
    wall = args.seconds * rate
    print(f"{summary.succeeded} requests, {summary.output_tokens_per_s:.1f} output tokens/s")
    print(f"event loop busy in {profile.samples} of {wall} samples ({profile.samples / wall:.1%} of the time)")
    holds = "holding the GIL" if args.gil else "running"
    for thread, count in thread_shares(raw).most_common():
        print(f"  {thread} {holds} in {count} samples ({count / wall:.1%} of the time)")
    print("inclusive, share of the busy samples:")
    for frame, count in profile.inclusive.most_common(40):
        print(f"  {count / profile.samples:6.1%}  {frame}")
    print("self:")
    for frame, count in profile.own.most_common(15):
        print(f"  {count / profile.samples:6.1%}  {frame}")


if __name__ == "__main__":
    main()
