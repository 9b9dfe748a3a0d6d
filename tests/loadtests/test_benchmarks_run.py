"""The benchmark tools on the real server: our load generator and vLLM's own `bench serve`, both with adapters.

Numbers are not asserted here (they live in docs/benchmarks.md and `make bench`); what is checked is that the
tools run end to end against loradock and produce complete, well-formed reports.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from loadtests.embedder_gil import EMBEDDERS
from loadtests.embedder_gil import run as embedder_gil
from loadtests.generator import run_load
from loadtests.reliability_soak import soak
from loadtests.report import summarize, write_reports
from loadtests.scenarios import uniform, workload
from loadtests.training_speed import compare
from loadtests.vllm_bench import BenchRun, bench_serve
from tests.helpers import ServerProcess

pytestmark = pytest.mark.integration

BASE = "SmolLM2-135M-Instruct"


def test_load_generator_reports_a_mixed_run_on_the_real_server(demo_server: ServerProcess, tmp_path: Path) -> None:
    requests = workload(uniform([BASE, "alpha", "beta"]), max_tokens=8)
    run = asyncio.run(run_load(demo_server.url, requests, concurrency=4, requests=12))
    summary = summarize(run, "mixed", "loradock")
    assert summary.succeeded == 12 and summary.errors == {}
    # `ignore_eos` (vLLM's extension) is honoured: every answer is exactly max_tokens long.
    assert [result.output_tokens for result in run.results] == [8] * 12
    assert all(len(result.token_gaps) >= 1 for result in run.results)
    assert summary.ttft_s.p50 is not None and summary.ttft_s.p50 <= summary.latency_s.p50  # type: ignore[operator]
    json_path, md_path, png_path = write_reports([summary], tmp_path, "bench")
    assert json.loads(json_path.read_text())[0]["requests"] == 12
    assert "| mixed | loradock | 4 | 12 | 0 |" in md_path.read_text()
    assert png_path.stat().st_size > 1000


def test_vllm_bench_serve_runs_against_loradock_with_adapters(
    demo_server: ServerProcess, demo_model: Path, tmp_path: Path
) -> None:
    base, adapters = bench_serve(
        [
            BenchRun(demo_server.url, BASE, demo_model, tmp_path / name, 6, 3, 16, 8, lora)
            for name, lora in (("base.json", ()), ("adapters.json", ("alpha", "beta")))
        ]
    )
    assert base["completed"] == 6 and base["failed"] == 0
    result = adapters
    assert result["completed"] == 6 and result["failed"] == 0
    assert result["total_output_tokens"] == 6 * 8
    assert result["output_throughput"] > 0 and result["p50_ttft_ms"] > 0


def test_reliability_soak_counts_every_interaction_and_feedback_it_sent(demo_model: Path, tmp_path: Path) -> None:
    """A 20-second soak (docs/reliability.md reports the 20-minute one) on PostgreSQL, with registrations."""
    figures = soak(1 / 3, tmp_path / "soak", model=demo_model, fill_adapter_cache=False)
    assert figures["failed_requests"] == 0, figures
    assert figures["streamed_requests"] > 0 and figures["registrations"] >= 1 and figures["feedback_expected"] >= 1
    assert figures["completions_logged"] == figures["completions_logged_expected"]
    assert figures["feedback_stored"] == figures["feedback_expected"]
    assert json.loads((tmp_path / "soak" / "soak.json").read_text())["figures"]["minutes"] > 0
    assert (tmp_path / "soak" / "soak.png").stat().st_size > 1000


def test_training_benchmark_times_both_trainers_on_the_same_examples(tiny_model: Path, tmp_path: Path) -> None:
    """Three steps of each trainer on the tiny model: the first is left out of the timing, the other two counted."""
    ours, plain = compare(3, tmp_path, base_model=str(tiny_model), validation_examples=4)
    for run in (ours, plain):
        assert run.steps == 3 and run.seconds > 0
        # 2 timed steps of 8 demo-task examples of 83 to 123 tokens each
        assert 2 * 8 * 83 <= run.tokens <= 2 * 8 * 123
        assert run.validation_loss > 0
    assert (ours.name, plain.name) == ("loradock", "plain Trainer fp32")


def test_embedder_gil_benchmark_measures_each_embedder_beside_busy_cores(tmp_path: Path) -> None:
    results = embedder_gil(1.5, tmp_path)
    assert [result.embedder for result in results] == list(EMBEDDERS)
    for result in results:
        assert result.wakeups > 50 and 0 <= result.p50_ms <= result.p99_ms <= result.max_ms
    assert results[0].batches == 0
    report = json.loads((tmp_path / "embedder_gil.json").read_text())
    assert [entry["embedder"] for entry in report] == list(EMBEDDERS)
    assert (tmp_path / "embedder_gil.png").stat().st_size > 1000
