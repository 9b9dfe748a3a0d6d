"""Pure logic of the benchmark reports: the event-loop profile aggregation and the goals table."""

from __future__ import annotations

from pathlib import Path

from loadtests.bench import LORADOCK, VLLM, goal_table, goals
from loadtests.generator import Result, Run
from loadtests.profile_server import event_loop_profile, thread_shares
from loadtests.report import summarize
from loadtests.training_speed import TrainingRun

LOOP = "<module> (loradock:6);Runner.run (asyncio/runners.py:118)"


def test_profile_keeps_the_busy_event_loop_thread_only(tmp_path: Path) -> None:
    raw = tmp_path / "server.raw"
    raw.write_text(
        f"{LOOP};create_chat_completion (server/serving/chat.py:73);PromptBuilder.chat (server/prompts.py:48) 3\n"
        f"{LOOP};RequestResponseCycle.send (uvicorn/protocols/http/httptools_impl.py:544) 1\n"
        f"{LOOP};_PollLikeSelector.select (selectors.py:415) 50\n"
        "_bootstrap (threading.py:1002);_worker (concurrent/futures/thread.py:81) 40\n"
    )
    profile = event_loop_profile(raw)
    assert profile.samples == 4
    assert profile.inclusive["create_chat_completion (server/serving/chat.py:73)"] == 3
    assert profile.own.most_common(1) == [("PromptBuilder.chat (server/prompts.py:48)", 3)]
    drift = "_bootstrap (threading.py:1002);DriftMonitor._run (server/drift_monitor.py:180)"
    with raw.open("a") as stream:
        stream.write(f"{drift};Embedder.embed (adapters/drift/features.py:88) 7\n")
    assert thread_shares(raw) == {"event loop": 4, "drift thread": 7, "other": 40}


def run(tokens: int, seconds: float, ttft: float, *, model: str = "m", errors: int = 0) -> Run:
    results = [Result(model, 0.0, ended=seconds, first_token=ttft, output_tokens=tokens)]
    results += [Result(model, 0.0, ended=seconds, error="http_503") for _ in range(errors)]
    return Run(results, seconds, 1)


def test_goals_compare_servers_adapters_and_training() -> None:
    summaries = []
    for scenario in ("base", "8 adapters"):
        for concurrency in (1, 16):
            for server, tokens, ttft in ((LORADOCK, 97, 0.210), (VLLM, 100, 0.200)):
                summary = summarize(run(tokens, 1.0, ttft), scenario, server)
                summaries.append(summary.model_copy(update={"concurrency": concurrency}))
    extra = {"registered": 1000}
    summaries.append(summarize(run(100, 1.0, 0.2), "1 adapter", LORADOCK, extra))
    summaries.append(summarize(run(60, 1.0, 0.2, errors=1), "zipf 1000", LORADOCK, extra))
    client = [
        {"scenario": s, "server": server, "output_throughput": 50.0}
        for s in ("base", "8 adapters")
        for server in (LORADOCK, VLLM)
    ]
    training = [TrainingRun("loradock", 10, 10.0, 3000, 0.50), TrainingRun("plain", 10, 20.0, 3000, 0.49)]
    rows = {row.name: row for row in goals(summaries, client, training)}
    assert rows["base, c=16: output tok/s vs vLLM"].met is True  # 0.97x
    ttft = rows["8 adapters, c=1: TTFT p50 minus vLLM's"]
    assert round(ttft.measured or 0, 3) == 10.0 and ttft.met is True
    assert rows["zipf 1000: output tok/s vs 1 adapter"].met is False  # 0.6x
    assert rows["zipf 1000: errors"].measured == 1 and rows["zipf 1000: errors"].met is False
    assert rows["LoRA SFT tokens/s vs plain Trainer fp32"].measured == 2.0
    assert "| zipf 1000: errors | 1.00 | 0 | NO |" in goal_table(list(rows.values()))
