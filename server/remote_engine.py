"""Remote engines: the server in front of vLLM's own OpenAI servers (for example one on each GPU node).

`RemoteEngine` has the surface of `server.engine.Engine`, so routes, hot-loading, metrics and the hub work as they
do in-process. The server still renders and tokenizes prompts itself, with the base model's tokenizer loaded here,
and sends token ids to a remote's /v1/completions (chat requests too: their templated prompt is a completion).

Adapters are loaded through vLLM's runtime LoRA API (`POST /v1/load_lora_adapter`, which the remotes offer when
started with `--enable-lora` and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`) from the path of their folder in
loradock's artifact store: every remote must see that store at the same path (shared storage). Which remote serves
a request is server/remote_routing.py's choice. A remote that fails its health check or refuses connections is
skipped until it answers again, and one that restarted (and so forgot its adapters) has them loaded again.

This module speaks HTTP only; server/engine.py stays the one module that imports vLLM.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from adapters.base_models import local_model_folder
from adapters.settings import Settings
from server.engine import ChoiceDelta, LoraTarget, SamplingOptions, TokenLogprob
from server.errors import (
    AdapterLoadError,
    ApiError,
    EngineNotReadyError,
    InvalidRequestError,
    ServiceUnavailableError,
)
from server.remote_routing import NoReplicaError, Replica, choose

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
"""A remote that takes longer to accept a connection is treated as down (the request tries another)."""
HEALTH_TIMEOUT_S = 5.0
HEALTH_INTERVAL_S = 2.0
"""How often every remote's GET /health is probed: a failed one is skipped, a recovered one rejoins."""
START_RETRY_S = 1.0

Decoder = Callable[[int], str]


class RemoteEngineError(RuntimeError):
    """The remote engines cannot be fronted as configured (none answers, or they serve different models)."""


@dataclass(frozen=True, slots=True)
class RemoteModels:
    """What a remote's GET /v1/models lists: its base model and the adapters it holds (name -> folder)."""

    base: str
    root: str | None
    max_model_len: int
    adapters: dict[str, str | None]

    @classmethod
    def parse(cls, payload: Any) -> RemoteModels:
        try:
            cards = payload["data"]
            bases = [card for card in cards if not card.get("parent")]
            base = bases[0]
            return cls(
                base=str(base["id"]),
                root=base.get("root"),
                max_model_len=int(base["max_model_len"]),
                adapters={str(card["id"]): card.get("root") for card in cards if card.get("parent")},
            )
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise RemoteEngineError(f"GET /v1/models did not answer as vLLM's OpenAI server does: {exc!r}") from exc

    def same_base(self, other: RemoteModels) -> bool:
        return (self.base, self.root) == (other.base, other.root)

    def describe(self) -> str:
        return f"{self.base!r} from {self.root} (max_model_len {self.max_model_len})"


class RemoteEngine:
    """vLLM OpenAI servers behind one engine surface, with adapter-affine routing."""

    def __init__(
        self, client: httpx.AsyncClient, replicas: list[Replica], base: RemoteModels, tokenizer: Any, decoder: Any
    ) -> None:
        self._client = client
        self._replicas = replicas
        self._base = base
        self.max_model_len = base.max_model_len
        self.tokenizer = tokenizer
        # The prompt builder's thread uses `tokenizer`; a Rust tokenizer must not be used from two threads at once
        # ("Already borrowed"), so logprob tokens are decoded on the event loop with an instance of their own.
        self._decoder = decoder
        self._token_texts: dict[int, str] = {}
        self._targets: dict[int, LoraTarget] = {}
        self._loads: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._listed: dict[str, dict[str, str | None]] = {replica.url: {} for replica in replicas}
        """Adapters each remote listed when it (re)joined, with their folders: checked against a version's own
        folder on first use, as a name may have been loaded from other files by an earlier hub."""
        self._down_reasons: dict[str, str] = {}
        self._running = True
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def start(cls, settings: Settings, model: str) -> RemoteEngine:
        """Load the tokenizer, wait for the remotes (up to `remote_start_timeout_s`) and check they serve one model."""
        tokenizer, decoder = await asyncio.to_thread(_load_tokenizers, model)
        key = settings.remote_api_key
        client = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {key.get_secret_value()}"} if key is not None else None,
            timeout=httpx.Timeout(settings.remote_timeout_s, connect=CONNECT_TIMEOUT_S),
            # Admission (max_concurrent_requests) bounds the streams; the pool must not queue them behind it.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )
        replicas = [Replica(url) for url in settings.remote_engines]
        try:
            found = await _wait_for_remotes(client, replicas, settings.remote_start_timeout_s)
            base = _common_base(found)
        except BaseException:
            await client.aclose()
            raise
        if Path(base.root or base.base).name != Path(model).name:
            logger.warning("the remote engines serve %s, this server's base model is %s", base.describe(), model)
        engine = cls(client, replicas, base, tokenizer, decoder)
        for replica, listing in found.items():
            engine._join(replica, listing)
        engine._spawn(engine._watch())
        logger.info("fronting %d remote engines serving %s", len(replicas), base.describe())
        return engine

    @property
    def is_running(self) -> bool:
        """Until shutdown: remotes come and go (check_health says whether any is up), this front stays."""
        return self._running

    async def check_health(self) -> None:
        """Probe every remote now; raise EngineNotReadyError unless at least one is up."""
        if not self._running:
            raise EngineNotReadyError("The server is shutting down.")
        await self._probe_all()
        if not any(replica.up for replica in self._replicas):
            reasons = "; ".join(f"{url}: {reason}" for url, reason in sorted(self._down_reasons.items()))
            raise EngineNotReadyError(f"No remote engine is healthy ({reasons}).")

    async def generate(
        self,
        prompt_token_ids: list[int],
        options: SamplingOptions,
        request_id: str,
        lora: LoraTarget | None = None,
    ) -> AsyncGenerator[list[ChoiceDelta], None]:
        """Yield each streamed chunk's new output; closing the iterator closes the HTTP stream, which aborts the
        request on the remote."""
        adapter = lora.name if lora is not None else None
        if lora is not None:
            self._targets[lora.int_id] = lora
        body = completion_body(prompt_token_ids, options, request_id, adapter or self._base.base)
        tried: list[Replica] = []
        reloaded = False
        while True:
            replica = self._choose(adapter, tried)
            replica.in_flight += 1
            started = False
            try:
                if lora is not None:
                    await self._ensure_on(replica, lora)
                async with self._client.stream("POST", f"{replica.url}/v1/completions", json=body) as response:
                    if response.status_code == 404 and lora is not None and not reloaded:
                        # The remote restarted (forgetting its adapters) or had this one unloaded: load it again.
                        logger.warning("%s no longer holds adapter %s; loading it again", replica.url, lora.name)
                        replica.adapters.discard(lora.name)
                        reloaded = True
                        continue
                    if response.status_code != 200:
                        await response.aread()
                        raise _remote_error(response.status_code, _error_fields(response), replica.url)
                    started = True
                    async for line in response.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        data = line[len("data:") :].strip()
                        if data == "[DONE]":
                            break
                        step = parse_chunk(json.loads(data), options.logprobs, self._decode, replica.url)
                        if step:
                            yield step
                return
            except httpx.TransportError as exc:
                if started or isinstance(exc, httpx.ReadTimeout | httpx.WriteTimeout):
                    # It may be generating for us still: retrying elsewhere could answer twice.
                    raise ServiceUnavailableError(f"The remote engine {replica.url} failed: {_why(exc)}") from exc
                self._mark_down(replica, _why(exc))
                tried.append(replica)
            finally:
                replica.in_flight -= 1

    async def add_lora(self, lora: LoraTarget) -> None:
        """Make sure a remote holds the adapter (loading it on the least busy one if none does)."""
        self._targets[lora.int_id] = lora
        tried: list[Replica] = []
        while True:
            replica = self._choose(lora.name, tried)
            try:
                await self._ensure_on(replica, lora)
                return
            except httpx.TransportError as exc:
                self._mark_down(replica, _why(exc))
                tried.append(replica)

    async def remove_lora(self, int_id: int) -> None:
        """Unload a retired version from every remote holding it."""
        lora = self._targets.pop(int_id, None)
        if lora is None:
            return
        for replica in self._replicas:
            if lora.name not in replica.adapters or (replica.url, lora.name) in self._loads:
                continue
            replica.adapters.discard(lora.name)
            try:
                response = await self._client.post(
                    f"{replica.url}/v1/unload_lora_adapter", json={"lora_name": lora.name}
                )
            except httpx.HTTPError as exc:
                logger.warning("could not unload adapter %s from %s: %r", lora.name, replica.url, exc)
                continue
            if response.status_code not in (200, 404):  # 404: it had forgotten it already
                logger.warning("%s refused to unload adapter %s: %s", replica.url, lora.name, response.text[:500])

    def shutdown(self) -> None:
        self._running = False
        for task in [*self._tasks, *self._loads.values()]:
            task.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._spawn(self._client.aclose(), loop)

    # --- routing and adapters --------------------------------------------------------------------------

    def _choose(self, adapter: str | None, tried: list[Replica]) -> Replica:
        try:
            return choose(self._replicas, adapter, tried)
        except NoReplicaError:
            down = "; ".join(f"{url}: {reason}" for url, reason in sorted(self._down_reasons.items()))
            raise EngineNotReadyError(f"No remote engine is up to take the request ({down}).") from None

    async def _ensure_on(self, replica: Replica, lora: LoraTarget) -> None:
        """Load `lora` on `replica` unless it holds it; concurrent callers share one load, which a caller that
        goes away (a client hanging up) does not cancel."""
        key = (replica.url, lora.name)
        task = self._loads.get(key)
        if task is None:
            in_place = False
            if lora.name in replica.adapters:
                listed = self._listed[replica.url].pop(lora.name, lora.path)
                if listed == lora.path:
                    return
                in_place = True  # an earlier hub loaded this name from other files
            replica.adapters.add(lora.name)  # routes concurrent requests for it here, to wait for this load
            task = asyncio.create_task(self._load(replica, lora, in_place), name=f"load {lora.name} on {replica.url}")
            self._loads[key] = task
            task.add_done_callback(functools.partial(self._load_done, replica, lora.name))
        await asyncio.shield(task)

    def _load_done(self, replica: Replica, name: str, task: asyncio.Task[None]) -> None:
        del self._loads[(replica.url, name)]
        if task.cancelled() or task.exception() is not None:
            replica.adapters.discard(name)

    async def _load(self, replica: Replica, lora: LoraTarget, in_place: bool) -> None:
        started = time.perf_counter()
        body = {"lora_name": lora.name, "lora_path": lora.path, "load_inplace": in_place}
        response = await self._client.post(f"{replica.url}/v1/load_lora_adapter", json=body)
        if response.status_code == 200:
            logger.info("loaded adapter %s on %s in %.2f s", lora.name, replica.url, time.perf_counter() - started)
            return
        message = _error_fields(response)[0]
        if response.status_code == 400 and await self._holds(replica, lora):
            return  # refused as loaded already: by another server fronting the same remotes, say
        hint = ""
        if response.status_code == 404:
            hint = " (every remote engine must see the artifact store at the path this server uses)"
        raise AdapterLoadError(
            f"The remote engine {replica.url} could not load adapter {lora.name} from {lora.path}: {message}{hint}"
        )

    async def _holds(self, replica: Replica, lora: LoraTarget) -> bool:
        try:
            listing = await _list_models(self._client, replica.url)
        except (httpx.HTTPError, RemoteEngineError):
            return False
        return listing.adapters.get(lora.name) == lora.path

    def _decode(self, token_id: int) -> str:
        text = self._token_texts.get(token_id)
        if text is None:
            text = self._token_texts[token_id] = str(self._decoder.decode([token_id]))
        return text

    # --- health ------------------------------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            try:
                await self._probe_all()
            except Exception:  # never let the watcher die: a remote rejoining depends on it
                logger.exception("probing the remote engines failed")

    async def _probe_all(self) -> None:
        await asyncio.gather(*(self._probe(replica) for replica in self._replicas))

    async def _probe(self, replica: Replica) -> None:
        """GET /health; a remote coming back is listed again (it may have restarted with other adapters)."""
        reason = None
        try:
            response = await self._client.get(f"{replica.url}/health", timeout=HEALTH_TIMEOUT_S)
            if response.status_code != 200:
                reason = f"GET /health answered {response.status_code}"
            elif not replica.up:
                listing = await _list_models(self._client, replica.url)
                if not listing.same_base(self._base) or listing.max_model_len < self.max_model_len:
                    reason = f"serves {listing.describe()}, not {self._base.describe()}"
                else:
                    self._join(replica, listing)
                    logger.info("remote engine %s is up, holding %d adapters", replica.url, len(listing.adapters))
        except (httpx.HTTPError, RemoteEngineError) as exc:
            reason = _why(exc)
        if reason is not None:
            self._mark_down(replica, reason)

    def _join(self, replica: Replica, listing: RemoteModels) -> None:
        loading = {name for url, name in self._loads if url == replica.url}
        replica.adapters = set(listing.adapters) | loading
        self._listed[replica.url] = dict(listing.adapters)
        self._down_reasons.pop(replica.url, None)
        replica.up = True

    def _mark_down(self, replica: Replica, reason: str) -> None:
        if replica.up or self._down_reasons.get(replica.url) != reason:
            logger.warning("remote engine %s is down: %s", replica.url, reason)
        replica.up = False
        self._down_reasons[replica.url] = reason

    def _spawn(self, work: Any, loop: asyncio.AbstractEventLoop | None = None) -> None:
        task = (loop or asyncio.get_running_loop()).create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def completion_body(
    prompt_token_ids: list[int], options: SamplingOptions, request_id: str, model: str
) -> dict[str, Any]:
    """The /v1/completions request for one prompt: always streamed (closing the stream aborts it on the remote),
    with each chunk's token ids (for counts) and logprob tokens as ids (`token_id:123`)."""
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt_token_ids,
        "stream": True,
        "request_id": request_id,
        "n": options.n,
        "max_tokens": options.max_tokens,
        "temperature": options.temperature,
        "top_p": options.top_p,
        # Unset, these come from the model's generation_config.json on vLLM's server; in-process they are off.
        "top_k": 0,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": options.presence_penalty,
        "frequency_penalty": options.frequency_penalty,
        "ignore_eos": options.ignore_eos,
        "min_tokens": options.min_tokens,
        "return_token_ids": True,
    }
    if options.stop:
        body["stop"] = list(options.stop)
    if options.seed is not None:
        body["seed"] = options.seed
    if options.logprobs is not None:
        body["logprobs"] = options.logprobs
        body["return_tokens_as_token_ids"] = True
    if options.json_schema is not None:
        body["structured_outputs"] = {"json": options.json_schema}
    elif options.json_object:
        body["structured_outputs"] = {"json_object": True}
    return body


def parse_chunk(payload: Any, top_k: int | None, decode: Decoder, url: str = "remote") -> list[ChoiceDelta]:
    """One streamed completion chunk as deltas (none for a usage-only chunk); an error event raises."""
    if "error" in payload:
        error = payload["error"]
        raise _remote_error(int(error.get("code") or 500), (str(error.get("message")), error.get("param")), url)
    deltas = []
    for choice in payload.get("choices") or []:
        logprobs = choice.get("logprobs")
        deltas.append(
            ChoiceDelta(
                index=int(choice["index"]),
                text=choice.get("text") or "",
                token_count=len(choice.get("token_ids") or ()),
                finish_reason=choice.get("finish_reason"),
                logprobs=_logprobs(logprobs, top_k, decode) if top_k is not None and logprobs is not None else None,
            )
        )
    return deltas


def _logprobs(payload: dict[str, Any], top_k: int, decode: Decoder) -> list[TokenLogprob]:
    """vLLM lists the top k plus the sampled token (k + 1 when it ranked lower), unordered; keep OpenAI's k."""
    result = []
    tops = payload.get("top_logprobs") or [None] * len(payload["tokens"])
    for token, logprob, top in zip(payload["tokens"], payload["token_logprobs"], tops, strict=True):
        token_id = _token_id(token)
        ranked = sorted(((_token_id(key), value) for key, value in (top or {}).items()), key=lambda item: -item[1])
        result.append(
            TokenLogprob(
                token=decode(token_id),
                token_id=token_id,
                logprob=-9999.0 if logprob is None else float(logprob),
                top=[(decode(tid), tid, float(value)) for tid, value in ranked[:top_k]],
            )
        )
    return result


def _token_id(token: str) -> int:
    """`token_id:123` (vLLM's `return_tokens_as_token_ids`) -> 123."""
    return int(token.rpartition(":")[2])


def _error_fields(response: httpx.Response) -> tuple[str, str | None]:
    """(message, param) of an OpenAI-shaped error body, or its text."""
    try:
        error = response.json()["error"]
        return str(error["message"]), error.get("param")
    except (ValueError, KeyError, TypeError):
        return response.text[:500] or f"HTTP {response.status_code}", None


def _remote_error(status: int, fields: tuple[str, str | None], url: str) -> ApiError:
    """A remote's refusal as ours: the client's fault stays a 400 naming the parameter, the rest is a 503."""
    message, param = fields
    if 400 <= status < 500 and status not in (404, 408, 429):
        # vLLM names body fields as pydantic locates them: `body.seed`.
        return InvalidRequestError(message, param=param.removeprefix("body.") if param else None)
    return ServiceUnavailableError(f"The remote engine {url} answered {status}: {message}")


async def _list_models(client: httpx.AsyncClient, url: str) -> RemoteModels:
    response = await client.get(f"{url}/v1/models", timeout=HEALTH_TIMEOUT_S)
    response.raise_for_status()
    try:
        payload = response.json()
    except ValueError as exc:
        raise RemoteEngineError(f"{url}/v1/models did not answer JSON") from exc
    return RemoteModels.parse(payload)


async def _wait_for_remotes(
    client: httpx.AsyncClient, replicas: list[Replica], timeout_s: float
) -> dict[Replica, RemoteModels]:
    """Every remote's model list, polling those not up yet until `timeout_s`; then those that answered."""
    deadline = time.monotonic() + timeout_s
    found: dict[Replica, RemoteModels] = {}
    errors: dict[str, str] = {}
    while True:
        missing = [replica for replica in replicas if replica not in found]
        results = await asyncio.gather(
            *(_list_models(client, replica.url) for replica in missing), return_exceptions=True
        )
        for replica, result in zip(missing, results, strict=True):
            if isinstance(result, RemoteModels):
                found[replica] = result
            elif isinstance(result, RemoteEngineError):
                raise RemoteEngineError(f"{replica.url}: {result}")
            elif isinstance(result, httpx.HTTPError):
                errors[replica.url] = _why(result)
            else:
                raise result
        if len(found) == len(replicas) or time.monotonic() >= deadline:
            break
        await asyncio.sleep(START_RETRY_S)
    late = [f"{replica.url} ({errors.get(replica.url)})" for replica in replicas if replica not in found]
    if not found:
        raise RemoteEngineError(f"No remote engine answered GET /v1/models within {timeout_s:g} s: {', '.join(late)}")
    if late:
        logger.warning("starting without remote engines %s: each joins once it answers", ", ".join(late))
    return found


def _common_base(found: dict[Replica, RemoteModels]) -> RemoteModels:
    """The one base model every remote serves, with the shortest context among them; refuse a mix."""
    (first_replica, first), *others = found.items()
    for replica, listing in others:
        if not listing.same_base(first):
            raise RemoteEngineError(
                f"The remote engines serve different models: {first_replica.url} serves {first.describe()}, "
                f"{replica.url} serves {listing.describe()}. Every remote engine must serve the same base model "
                "(same --model and --served-model-name)."
            )
    max_model_len = min(listing.max_model_len for listing in found.values())
    return RemoteModels(first.base, first.root, max_model_len, {})


def _load_tokenizers(model: str) -> tuple[Any, Any]:
    """Two instances of the base model's tokenizer: one for prompts (the prompt builder's thread), one for
    decoding logprob tokens on the event loop."""
    from transformers import AutoTokenizer

    folder = local_model_folder(model)
    return AutoTokenizer.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def _why(exc: Exception) -> str:
    """`ConnectError: All connection attempts failed`; some httpx errors have no message (`ReadError`)."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
