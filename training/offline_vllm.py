"""The vLLM engines the training side runs (evaluation answers, export measurements), set up the way the server
sets up its own.

float32 on vLLM's CPU build, as `server/engine.py` runs it: bfloat16 kernels round differently with the batch on
recent Xeons, which blurs comparisons of greedy answers, and on CPUs without native bfloat16 (AVX2 only, such as
AMD Milan) vLLM emulates it: the demo task's evaluation took over 10 minutes there in bfloat16, against about one
in float32.

Eager, never compiled: vLLM's CPU backend runs every LoRA-enabled engine (the server's, and a teacher measured with
its adapter) eagerly, but compiles a model without LoRA with inductor first. A merged export's measurement spent
117 of its seconds compiling the merged model, and its speed was then compared with an eager teacher's.

In this process, without vLLM's engine-core and worker processes: each of those imports vLLM, torch and
transformers again (about 18 of an engine's 30 s start on 2 cores), and on the CPU the worker is pinned to one
core with the other kept for the engine-core loop, while an evaluation is the only work here and gets both.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from adapters.settings import SUPPORTED_LORA_RANKS, VLLM_MULTIPROCESSING

KV_CACHE_BYTES = 1 << 30
MIN_MODEL_LEN = 256


@contextmanager
def offline_llm(model: str, *, max_model_len: int, lora_rank: int | None = None) -> Iterator[Any]:
    """A `vllm.LLM` over `model`, with room for one LoRA adapter of `lora_rank` when one is given; on exit the
    engine is shut down and this process is left as it was, so that another engine can start in it."""
    import torch
    from vllm import LLM
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
    from vllm.platforms import current_platform

    options: dict[str, Any] = {}
    if lora_rank is not None:
        rank = min(supported for supported in SUPPORTED_LORA_RANKS if supported >= lora_rank)
        options = {"enable_lora": True, "max_loras": 1, "max_lora_rank": rank}
    set_num_threads = torch.set_num_threads  # vLLM's CPU worker replaces it with a no-op for its process
    previous = os.environ.get(VLLM_MULTIPROCESSING)
    os.environ[VLLM_MULTIPROCESSING] = "0"
    engine = None
    try:
        engine = LLM(
            model=model,
            dtype="float32" if current_platform.is_cpu() else "auto",
            max_model_len=max(max_model_len, MIN_MODEL_LEN),
            kv_cache_memory_bytes=KV_CACHE_BYTES,
            seed=0,
            enforce_eager=True,
            **options,
        )
        yield engine
    finally:
        if engine is not None:
            engine.llm_engine.engine_core.shutdown()
            del engine
        cleanup_dist_env_and_memory()
        torch.set_num_threads = set_num_threads
        if previous is None:
            os.environ.pop(VLLM_MULTIPROCESSING, None)
        else:
            os.environ[VLLM_MULTIPROCESSING] = previous
        gc.collect()
