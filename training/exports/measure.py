"""Measure one runtime on the test prompts: greedy answers, tokens/s single-stream and batched, peak memory.

Each measurement runs in a child process of its own, so that its peak resident memory is that runtime's alone (the
vLLM engine runs inside that child). Answers come from the single-stream pass, one greedy request at a time, the way
quality is judged; the batched pass sends every prompt at once and only counts tokens.

A vLLM measurement's child is forked from a forkserver that imported vLLM while the export went on
(`start_vllm_measurements`): a new interpreter spent 20 to 23 s importing it on 2 vCPUs of AMD EPYC Milan before it
could load a model, and an export measures twice (the teacher and the export; the student before and after). The child's
peak memory still counts the vLLM modules it shares with the forkserver, as a new interpreter counted those it imported:
the demo teacher peaked at 2.92 GB forked and 3.09 GB spawned, with fewer of vLLM's modules imported. An ONNX
measurement is a new interpreter (`python -m training.exports.measure`): forked from the forkserver, its peak memory
would count vLLM and torch, which onnxruntime-genai does not need. The forkserver ends with the export; one interrupted
while the forkserver still imports leaves it finishing its imports first, holding the export's output open as long (up
to 20 s there).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from adapters import processes


class MeasurementError(RuntimeError):
    """The runtime could not load or run the model; the message carries the end of its log."""


class MeasureSpec(BaseModel):
    runtime: Literal["vllm", "onnx"]
    model: str
    """A Hugging Face folder (vLLM) or an onnxruntime-genai folder."""
    adapter: str | None = None
    lora_rank: int = 8
    prompts: list[list[int]]
    """Prompt token ids, rendered with the chat template the server uses."""
    max_new_tokens: int


class Measurement(BaseModel):
    tokens: list[list[int]]
    answers: list[str] = []
    tokens_per_s_single: float
    tokens_per_s_batched: float
    peak_rss_bytes: int
    load_s: float


VLLM_PRELOAD = [
    "training.exports.measure",
    "training.offline_vllm",
    "vllm.entrypoints.llm",
    "vllm.lora.request",
    "vllm.v1.engine.core",
    "vllm.v1.worker.cpu_worker",
    "vllm.model_executor.models.llama",
]
"""What a vLLM measurement imports before it loads a model (Llama, the family of the demo and test models)."""


def start_vllm_measurements() -> None:
    """Start the forkserver that vLLM measurements are forked from, so that its imports overlap the export's work."""
    processes.start_forkserver(VLLM_PRELOAD)


def measure(spec: MeasureSpec, workdir: Path) -> Measurement:
    """Run the measurement in a child process and return what it measured."""
    spec_file, out_file, log = workdir / "measure-spec.json", workdir / "measurement.json", workdir / "measure.log"
    spec_file.write_text(spec.model_dump_json())
    for stale in (out_file, log):
        stale.unlink(missing_ok=True)
    if spec.runtime == "vllm":
        start_vllm_measurements()
        child = multiprocessing.get_context("forkserver").Process(
            target=_forked, args=(spec_file, out_file, log), name="loradock measure"
        )
        child.start()
        try:
            child.join()
        finally:
            if child.is_alive():  # interrupted: the measurement goes with the export
                child.kill()
                child.join()
        failed = child.exitcode != 0
    else:
        command = [sys.executable, "-m", "training.exports.measure", str(spec_file), str(out_file), str(os.getpid())]
        with log.open("wb") as output:
            failed = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT).returncode != 0
    if failed or not out_file.is_file():
        tail = log.read_text(errors="replace")[-3000:] if log.is_file() else ""
        raise MeasurementError(f"measuring {spec.runtime} on {spec.model} failed:\n{tail}")
    return Measurement.model_validate_json(out_file.read_text())


def _forked(spec_file: Path, out_file: Path, log: Path) -> None:
    import setproctitle

    processes.stop_with_the_starting_process()
    processes.write_output_to(log)
    setproctitle.setproctitle(f"loradock measure {spec_file.parent}")  # not the forkserver's command line in `ps`
    _measure_file(spec_file, out_file)


def _measure_file(spec_file: Path, out_file: Path) -> None:
    out_file.write_text(_run(MeasureSpec.model_validate_json(spec_file.read_text())).model_dump_json())


def _run(spec: MeasureSpec) -> Measurement:
    started = time.perf_counter()
    if spec.runtime == "vllm":
        single, batched = _vllm(spec)
    else:
        single, batched = _onnx(spec)
    load_and_run_s = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    tokens, single_s = single
    batched_tokens, batched_s = batched
    return Measurement(
        tokens=tokens,
        tokens_per_s_single=sum(map(len, tokens)) / single_s,
        tokens_per_s_batched=batched_tokens / batched_s,
        peak_rss_bytes=peak,
        load_s=load_and_run_s - single_s - batched_s,
    )


Timed = tuple[list[list[int]], float]


def _vllm(spec: MeasureSpec) -> tuple[Timed, tuple[int, float]]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    from training.offline_vllm import offline_llm

    longest = max(map(len, spec.prompts)) + spec.max_new_tokens
    params = SamplingParams(temperature=0, max_tokens=spec.max_new_tokens)
    lora = LoRARequest("teacher", 1, spec.adapter) if spec.adapter is not None else None
    inputs = [TokensPrompt(prompt_token_ids=prompt) for prompt in spec.prompts]
    rank = spec.lora_rank if spec.adapter is not None else None
    with offline_llm(spec.model, max_model_len=longest, lora_rank=rank) as engine:
        engine.generate(inputs[:1], params, lora_request=lora, use_tqdm=False)  # warm-up: kernels, LoRA load
        tokens: list[list[int]] = []
        started = time.perf_counter()
        for prompt in inputs:
            output = engine.generate([prompt], params, lora_request=lora, use_tqdm=False)[0]
            tokens.append(list(output.outputs[0].token_ids))
        single_s = time.perf_counter() - started
        started = time.perf_counter()
        outputs = engine.generate(inputs, params, lora_request=lora, use_tqdm=False)
        batched_s = time.perf_counter() - started
    return (tokens, single_s), (sum(len(output.outputs[0].token_ids) for output in outputs), batched_s)


def _onnx(spec: MeasureSpec) -> tuple[Timed, tuple[int, float]]:
    import numpy as np
    import onnxruntime_genai as og

    model = og.Model(spec.model)
    config = json.loads((Path(spec.model) / "genai_config.json").read_text())["model"]
    pad, eos = config["pad_token_id"], config["eos_token_id"]
    stops = set(eos if isinstance(eos, list) else [eos])

    def generate(batch: list[list[int]]) -> list[list[int]]:
        width = max(map(len, batch))
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=width + spec.max_new_tokens, do_sample=False, batch_size=len(batch))
        generator = og.Generator(model, params)
        # Right-padded with the pad id, the layout onnxruntime-genai's own Tokenizer.encode_batch produces.
        padded = np.full((len(batch), width), pad, dtype=np.int32)
        for row, prompt in enumerate(batch):
            padded[row, : len(prompt)] = prompt
        generator.append_tokens(padded)
        while not generator.is_done():
            generator.generate_next_token()
        answers = []
        for row in range(len(batch)):
            new = [int(token) for token in generator.get_sequence(row)[width:]]
            end = next((i for i, token in enumerate(new) if token in stops), len(new))
            answers.append(new[: end + 1] if end < len(new) else new)
        return answers

    generate(spec.prompts[:1])  # warm-up
    started = time.perf_counter()
    tokens = [generate([prompt])[0] for prompt in spec.prompts]
    single_s = time.perf_counter() - started
    started = time.perf_counter()
    batched = generate(spec.prompts)
    batched_s = time.perf_counter() - started
    return (tokens, single_s), (sum(map(len, batched)), batched_s)


if __name__ == "__main__":
    processes.die_with_parent(int(sys.argv[3]))
    _measure_file(Path(sys.argv[1]), Path(sys.argv[2]))
