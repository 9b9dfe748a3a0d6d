"""The servers a benchmark compares, started with the same model and the same engine settings.

loradock runs vLLM's `AsyncLLM` in its own process; the baseline is vLLM's own OpenAI server
(`python -m vllm.entrypoints.openai.api_server`) over the same folder, with the same adapters loaded at start.
Both load loradock's CPU LoRA kernels, which vLLM installs in every engine process through its plugin entry point,
so the engines are the same and only the HTTP layers differ. On the CPU both run the model where loradock runs it
by default, inside the engine-core process (`server.engine.model_in_engine_core`), or both in vLLM's pinned worker.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from adapters.base_models import resolve_base_model
from adapters.settings import VLLM_MULTIPROCESSING, Settings
from tests.helpers import ServerProcess

BASE_NAME = "SmolLM2-135M-Instruct"


def configured_base_model() -> Path:
    """The folder of the base model loradock's settings name (the demo model unless `LORADOCK_BASE_MODEL` says
    otherwise): what every benchmark runs on."""
    settings = Settings()
    return Path(resolve_base_model(settings.base_model, settings.models_dir))


@dataclass(frozen=True, slots=True)
class EngineConfig:
    dtype: str = "float32"
    max_model_len: int = 2048
    max_loras: int = 16
    """As many adapters per batch as the benchmark's highest concurrency, so no request waits for a slot."""
    max_cpu_loras: int = 64
    max_lora_rank: int = 8
    kv_cache_bytes: int = 1 << 30
    seed: int = 0
    max_concurrent_requests: int = 256
    cpu_pinned_worker: bool = False


def start_loradock(
    home: Path, model: Path, adapters: dict[str, Path], config: EngineConfig, env: dict[str, str] | None = None
) -> ServerProcess:
    """`loradock serve` with its production defaults (interaction log and drift on), adapters registered at start."""
    args = ["--base-model", str(model), "--served-model-name", BASE_NAME]
    for name, path in adapters.items():
        args += ["--adapter", f"{name}={path}"]
    settings = {
        "LORADOCK_DTYPE": config.dtype,
        "LORADOCK_MAX_MODEL_LEN": str(config.max_model_len),
        "LORADOCK_MAX_LORAS": str(config.max_loras),
        "LORADOCK_MAX_CPU_LORAS": str(config.max_cpu_loras),
        "LORADOCK_MAX_LORA_RANK": str(config.max_lora_rank),
        "LORADOCK_KV_CACHE_GIB": str(config.kv_cache_bytes / (1 << 30)),
        "LORADOCK_SEED": str(config.seed),
        "LORADOCK_MAX_CONCURRENT_REQUESTS": str(config.max_concurrent_requests),
        "LORADOCK_CPU_PINNED_WORKER": str(config.cpu_pinned_worker).lower(),
        **(env or {}),
    }
    return ServerProcess(home, args, env=settings)


def start_vllm(home: Path, model: Path, adapters: dict[str, Path], config: EngineConfig) -> ServerProcess:
    """vLLM's own OpenAI server on the same model and engine settings, runtime LoRA loading allowed."""
    args = [
        "--model",
        str(model),
        "--served-model-name",
        BASE_NAME,
        "--host",
        "127.0.0.1",
        "--dtype",
        config.dtype,
        "--max-model-len",
        str(config.max_model_len),
        "--enable-lora",
        "--max-loras",
        str(config.max_loras),
        "--max-cpu-loras",
        str(config.max_cpu_loras),
        "--max-lora-rank",
        str(config.max_lora_rank),
        "--kv-cache-memory-bytes",
        str(config.kv_cache_bytes),
        "--seed",
        str(config.seed),
        "--disable-log-stats",
        "--disable-uvicorn-access-log",
    ]
    if adapters:
        args += ["--lora-modules", *(f"{name}={path}" for name, path in adapters.items())]
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", VLLM_MULTIPROCESSING: "1" if config.cpu_pinned_worker else "0"}
    command = (sys.executable, "-m", "vllm.entrypoints.openai.api_server")
    return ServerProcess(home, args, env=env, command=command, ready_path="/health")
