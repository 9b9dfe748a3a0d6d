"""The generation engine: vLLM's `AsyncLLM` in this process, with LoRA enabled.

This is the only module of the server that imports vLLM. The rest of the server speaks in the small neutral
types below (`SamplingOptions` in, `ChoiceDelta` out), which keeps the HTTP layer testable on its own and the
vLLM surface we depend on in one place when vLLM's internals move between releases.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from adapters.settings import VLLM_MULTIPROCESSING, Settings
from server.errors import AdapterLoadError, EngineNotReadyError, InvalidRequestError, ServiceUnavailableError

logger = logging.getLogger(__name__)

GIB = 1 << 30


@dataclass(frozen=True, slots=True)
class LoraTarget:
    """One adapter version as the engine sees it: a stable integer id and a local folder."""

    name: str
    int_id: int
    path: str


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    """What a client asked for, already validated and defaulted by the serving layer."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None
    json_schema: dict[str, Any] | None = None
    json_object: bool = False
    stream: bool = False
    ignore_eos: bool = False
    min_tokens: int = 0


@dataclass(slots=True)
class TokenLogprob:
    token: str
    token_id: int
    logprob: float
    top: list[tuple[str, int, float]]
    """The most likely alternatives as (token, token id, logprob), best first."""


@dataclass(slots=True)
class ChoiceDelta:
    """New output of one choice since the previous delta (or all of it, for non-streamed requests)."""

    index: int
    text: str
    token_count: int
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] | None = field(default=None)


class InferenceEngine(Protocol):
    """What the server needs of an engine: `Engine` below (vLLM in this process) or `RemoteEngine`
    (server/remote_engine.py: vLLM OpenAI servers elsewhere)."""

    tokenizer: Any
    """The base model's Hugging Face tokenizer: prompts are rendered and tokenized by the server itself."""
    max_model_len: int

    @property
    def is_running(self) -> bool: ...

    async def check_health(self) -> None: ...

    def generate(
        self,
        prompt_token_ids: list[int],
        options: SamplingOptions,
        request_id: str,
        lora: LoraTarget | None = None,
    ) -> AsyncGenerator[list[ChoiceDelta], None]: ...

    async def add_lora(self, lora: LoraTarget) -> None: ...

    async def remove_lora(self, int_id: int) -> None: ...

    def shutdown(self) -> None: ...


class Engine:
    """vLLM's AsyncLLM plus the tokenizer it serves with."""

    def __init__(self, llm: Any, max_model_len: int) -> None:
        self._llm = llm
        self.max_model_len = max_model_len
        self.tokenizer = llm.get_tokenizer()

    @classmethod
    def start(cls, settings: Settings, model: str, served_model_name: str) -> Engine:
        """Build the engine (blocking: loads weights and profiles memory; about 30 s on 2 CPU cores)."""
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from server.engine_process import remove_socket_folder

        if model_in_engine_core(settings, cpu=_cpu_build()):
            os.environ[VLLM_MULTIPROCESSING] = "0"
        _start_the_engine_core_from_loradocks_context()
        args = AsyncEngineArgs(
            model=model,
            served_model_name=served_model_name,
            dtype=_dtype(settings),
            max_model_len=settings.max_model_len,
            enable_lora=True,
            max_loras=settings.max_loras,
            max_cpu_loras=settings.max_cpu_loras,
            max_lora_rank=settings.max_lora_rank,  # type: ignore[arg-type]  # checked by Settings
            tensor_parallel_size=settings.tensor_parallel_size,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            kv_cache_memory_bytes=_kv_cache_bytes(settings),
            enforce_eager=settings.enforce_eager,
            seed=settings.seed,
            disable_log_stats=True,
        )
        try:
            llm = AsyncLLM.from_engine_args(args)
        finally:
            remove_socket_folder()
        return cls(llm, llm.model_config.max_model_len)

    @property
    def is_running(self) -> bool:
        return bool(self._llm.is_running) and not self._llm.errored

    async def check_health(self) -> None:
        """Raise EngineNotReadyError unless the engine core answers."""
        try:
            await self._llm.check_health()
        except Exception as exc:
            raise EngineNotReadyError("The inference engine is not healthy.") from exc

    async def generate(
        self,
        prompt_token_ids: list[int],
        options: SamplingOptions,
        request_id: str,
        lora: LoraTarget | None = None,
    ) -> AsyncGenerator[list[ChoiceDelta], None]:
        """Yield each step's new output; closing the iterator early aborts the request in the engine."""
        from vllm.exceptions import GracefulHTTPError, VLLMValidationError
        from vllm.inputs.engine import tokens_input
        from vllm.v1.engine.exceptions import EngineDeadError

        try:
            params = _sampling_params(options)
        except VLLMValidationError as exc:
            raise InvalidRequestError(str(exc.args[0]), param=exc.parameter) from exc
        lora_request = _lora_request(lora)
        stream = self._llm.generate(tokens_input(prompt_token_ids), params, request_id, lora_request=lora_request)
        try:
            async for output in stream:
                yield [_delta(choice, options.logprobs) for choice in output.outputs]
        except VLLMValidationError as exc:
            raise InvalidRequestError(str(exc.args[0]), param=exc.parameter) from exc
        except GracefulHTTPError as exc:
            raise ServiceUnavailableError(exc.message) from exc
        except EngineDeadError as exc:
            raise EngineNotReadyError("The inference engine has stopped.") from exc
        finally:
            await stream.aclose()

    async def add_lora(self, lora: LoraTarget) -> None:
        """Load an adapter into the engine's host-memory LRU now, rather than when a batch first needs it."""
        try:
            await self._llm.add_lora(_lora_request(lora))
        except Exception as exc:
            raise AdapterLoadError(f"The engine could not load adapter {lora.name}: {exc}") from exc

    async def remove_lora(self, int_id: int) -> None:
        await self._llm.remove_lora(int_id)

    def shutdown(self) -> None:
        self._llm.shutdown()


def _dtype(settings: Settings) -> str:
    """`auto` is float32 on the CPU. In bfloat16, vLLM's CPU kernels (AMX and oneDNN on recent Xeons) give
    batch-dependent results: measured on a Sapphire Rapids host, 9 of 24 greedy answers of the base model changed
    when requests were batched together, and adapters' answers drifted far from their answers alone; in float32,
    none did. Set LORADOCK_DTYPE=bfloat16 to trade that for speed."""
    if settings.dtype == "auto" and _cpu_build():
        return "float32"
    return settings.dtype


def model_in_engine_core(settings: Settings, *, cpu: bool) -> bool:
    """Whether the model runs inside vLLM's engine-core process rather than in a worker process of its own.

    vLLM's CPU platform starts a worker process even for one device, pins it to all cores but one, and leaves that
    one to the engine-core loop, which waits on the worker during each step. On 2 cores that halves the arithmetic:
    measured on 2 vCPUs of AMD EPYC Milan, both servers of the benchmark served the base model at 92 and 85 output
    tokens/s at concurrency 16 with the worker in the engine core, against 52 and 54 with vLLM's layout, and
    `loradock serve` was ready in 29 s instead of 55, one process (vLLM, torch and transformers imported once
    more, about 1 GB resident) fewer. On a GPU vLLM already runs one device's worker in the engine core.
    """
    return cpu and settings.tensor_parallel_size == 1 and not settings.cpu_pinned_worker


def _start_the_engine_core_from_loradocks_context() -> None:
    """vLLM starts its engine core from the context `server.engine_process.engine_core_context` gives: forked from
    the forkserver when `loradock serve` started one, otherwise by vLLM's own start method, and stopping when this
    process dies in either case."""
    import vllm.v1.engine.utils as engine_utils
    from vllm.utils.system_utils import get_mp_context

    from server.engine_process import engine_core_context, forkserver_started

    engine_utils.get_mp_context = lambda: engine_core_context(
        "forkserver" if forkserver_started() else get_mp_context().get_start_method()
    )


def _kv_cache_bytes(settings: Settings) -> int | None:
    if settings.kv_cache_gib is not None:
        return int(settings.kv_cache_gib * GIB)
    # On the CPU, vLLM would otherwise claim a share of all host memory; 1 GiB holds hundreds of short chats.
    if _cpu_build() and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        return GIB
    return None


def _cpu_build() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def _sampling_params(options: SamplingOptions) -> Any:
    from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

    structured = None
    if options.json_schema is not None:
        structured = StructuredOutputsParams(json=options.json_schema)
    elif options.json_object:
        structured = StructuredOutputsParams(json_object=True)
    return SamplingParams(
        n=options.n,
        max_tokens=options.max_tokens,
        temperature=options.temperature,
        top_p=options.top_p,
        stop=list(options.stop) or None,
        seed=options.seed,
        presence_penalty=options.presence_penalty,
        frequency_penalty=options.frequency_penalty,
        logprobs=options.logprobs,
        structured_outputs=structured,
        ignore_eos=options.ignore_eos,
        min_tokens=options.min_tokens,
        output_kind=RequestOutputKind.DELTA if options.stream else RequestOutputKind.FINAL_ONLY,
    )


def _lora_request(lora: LoraTarget | None) -> Any:
    from vllm.lora.request import LoRARequest

    if lora is None:
        return None

    return LoRARequest(lora_name=lora.name, lora_int_id=lora.int_id, lora_path=lora.path)


def _delta(choice: Any, top_k: int | None) -> ChoiceDelta:
    return ChoiceDelta(
        index=choice.index,
        text=choice.text,
        token_count=len(choice.token_ids),
        finish_reason=choice.finish_reason,
        logprobs=_logprobs(choice.token_ids, choice.logprobs, top_k or 0) if choice.logprobs is not None else None,
    )


def _logprobs(token_ids: Sequence[int], steps: Sequence[dict[int, Any]], top_k: int) -> list[TokenLogprob]:
    """vLLM returns the top k plus the sampled token (k + 1 entries when it ranked lower); keep OpenAI's k."""
    result = []
    for token_id, candidates in zip(token_ids, steps, strict=True):
        chosen = candidates[token_id]
        ranked = sorted(candidates.items(), key=lambda item: item[1].rank)[:top_k]
        result.append(
            TokenLogprob(
                token=chosen.decoded_token or "",
                token_id=token_id,
                logprob=_finite(chosen.logprob),
                top=[(lp.decoded_token or "", tid, _finite(lp.logprob)) for tid, lp in ranked],
            )
        )
    return result


def _finite(logprob: float) -> float:
    """JSON has no -inf; OpenAI reports impossible tokens as -9999."""
    return max(logprob, -9999.0)


async def start_engine(settings: Settings, model: str, served_model_name: str) -> InferenceEngine:
    """Start the engine without blocking the event loop, so /health answers while weights load: vLLM in this
    process, or a front for the vLLM servers of `settings.remote_engines`."""
    if settings.remote_engines:
        from server.remote_engine import RemoteEngine  # it imports this module's types

        return await RemoteEngine.start(settings, model)
    return await asyncio.to_thread(Engine.start, settings, model, served_model_name)
