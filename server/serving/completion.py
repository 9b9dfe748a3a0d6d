"""POST /v1/completions: plain prompts in (one or a batch, as text or token ids), continuations out."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import Request, Response
from fastapi.responses import StreamingResponse

from adapters.keys import Principal
from server.engine import ChoiceDelta, TokenLogprob
from server.errors import InvalidRequestError
from server.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    Usage,
)
from server.resolution import ServedModel
from server.serving.options import sampling_options
from server.serving.recording import Recorder, Timing, recorder_for
from server.serving.runner import (
    SSE_DONE,
    Job,
    Steps,
    collect,
    generate,
    merge,
    response_headers,
    sse,
    sse_error,
    start_all,
    until_disconnected,
)
from server.state import ReadyServer

ROUTE = "completions"


async def create_completion(
    server: ReadyServer, request: CompletionRequest, http: Request, principal: Principal
) -> Response:
    timing = Timing()
    served = await server.state.resolver.resolve(request.model, principal, request.user)
    http.state.model_label = served.name
    if request.echo:
        raise InvalidRequestError("'echo' is not supported by this server.", param="echo")
    if request.suffix:
        raise InvalidRequestError("'suffix' is not supported by this server.", param="suffix")
    request_id = f"cmpl-{uuid.uuid4().hex}"
    prompts = await _prompts(server, request)
    server.state.key_limits.check_prompts(principal, len(prompts))
    jobs = []
    requested = request.max_tokens
    cap = server.prompts.max_output_tokens
    if "max_tokens" not in request.model_fields_set and cap is not None:
        requested = min(requested, cap)  # OpenAI's default of 16 is not the client's request: keep it in the cap
    for position, prompt in enumerate(prompts):
        max_tokens = server.prompts.max_tokens_for(len(prompt), requested, "prompt", "max_tokens")
        options = sampling_options(request, server.state.settings, max_tokens=max_tokens, logprobs=request.logprobs)
        jobs.append(Job(f"{request_id}-{position}", prompt, options, position, owner=principal))
    payload = {"prompt": request.prompt}
    recorder = recorder_for(server, http, principal, served, ROUTE, request_id, request, payload, timing)
    streams = [generate(server, served, job, ROUTE, timing) for job in jobs]
    headers = response_headers(request_id, served)
    if request.stream:
        started = await start_all(streams)
        body = _chunks(request_id, jobs, served, request, merge(started), recorder)
        return StreamingResponse(body, media_type="text/event-stream", headers=headers)
    response = await until_disconnected(http, _collect(request_id, jobs, served, streams))
    if response is None:  # the client is gone; nobody reads this
        return Response(status_code=499)
    if recorder is not None:
        choices = sorted(response.choices, key=lambda choice: choice.index)
        usage = response.usage
        assert usage is not None
        recorder.finish(
            [choice.text for choice in choices],
            [choice.finish_reason for choice in choices],
            usage.prompt_tokens,
            usage.completion_tokens,
        )
    return Response(response.model_dump_json(), media_type="application/json", headers=headers)


async def _prompts(server: ReadyServer, request: CompletionRequest) -> list[list[int]]:
    """Every accepted prompt form as token ids: text, a batch of texts, token ids, a batch of token ids."""
    prompt = request.prompt
    if isinstance(prompt, str):
        return [await server.prompts.text(prompt)]
    if not prompt:
        raise InvalidRequestError("'prompt' must not be empty.", param="prompt")
    if isinstance(prompt[0], int):
        return [_checked_ids(prompt, "prompt")]  # type: ignore[arg-type]
    batch = []
    for position, item in enumerate(prompt):
        if isinstance(item, str):
            batch.append(await server.prompts.text(item))
        else:
            batch.append(_checked_ids(item, f"prompt.{position}"))  # type: ignore[arg-type]
    return batch


def _checked_ids(token_ids: list[int], param: str) -> list[int]:
    if not token_ids:
        raise InvalidRequestError("A prompt of token ids must not be empty.", param=param)
    return token_ids


async def _collect(request_id: str, jobs: list[Job], served: ServedModel, streams: list[Steps]) -> CompletionResponse:
    tasks = [asyncio.ensure_future(_collect_one(job, stream)) for job, stream in zip(jobs, streams, strict=True)]
    try:
        outcomes = await asyncio.gather(*tasks)
    except BaseException:
        # One prompt failed (a limit, the engine): the others must stop generating now, not run to max_tokens.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    choices = [choice for per_prompt in outcomes for choice in per_prompt[0]]
    generated = sum(per_prompt[1] for per_prompt in outcomes)
    prompt_tokens = sum(len(job.prompt_token_ids) for job in jobs)
    return CompletionResponse(
        id=request_id, model=served.name, choices=choices, usage=Usage.of(prompt_tokens, generated)
    )


async def _collect_one(job: Job, stream: Steps) -> tuple[list[CompletionChoice], int]:
    done = await collect(job, stream)
    first_index = job.position * job.options.n
    choices = [
        CompletionChoice(
            index=first_index + index,
            text=text,
            logprobs=_logprobs(done.logprobs[index], 0) if done.logprobs is not None else None,
            finish_reason=done.finish_reasons[index],
        )
        for index, text in enumerate(done.texts)
    ]
    return choices, done.completion_tokens


async def _chunks(
    request_id: str,
    jobs: list[Job],
    served: ServedModel,
    request: CompletionRequest,
    steps: AsyncIterator[tuple[int, list[ChoiceDelta]]],
    recorder: Recorder | None,
) -> AsyncIterator[str]:
    created = int(time.time())
    n = request.n
    offsets = [0] * (n * len(jobs))
    texts = [""] * (n * len(jobs))
    finish_reasons: list[str | None] = [None] * (n * len(jobs))
    generated = 0
    try:
        async for position, step in steps:
            choices = []
            for delta in step:
                generated += delta.token_count
                index = position * n + delta.index
                texts[index] += delta.text
                finish_reasons[index] = delta.finish_reason or finish_reasons[index]
                if not delta.text and delta.finish_reason is None and not delta.logprobs:
                    continue
                logprobs = None
                if delta.logprobs is not None:
                    logprobs = _logprobs(delta.logprobs, offsets[index])
                offsets[index] += len(delta.text)
                choices.append(
                    CompletionChoice(index=index, text=delta.text, logprobs=logprobs, finish_reason=delta.finish_reason)
                )
            if choices:
                chunk = CompletionResponse(id=request_id, created=created, model=served.name, choices=choices)
                yield sse(chunk.model_dump_json(exclude_none=True))
        if request.include_usage:
            prompt_tokens = sum(len(job.prompt_token_ids) for job in jobs)
            usage = CompletionResponse(
                id=request_id,
                created=created,
                model=served.name,
                choices=[],
                usage=Usage.of(prompt_tokens, generated),
            )
            yield sse(usage.model_dump_json(exclude_none=True))
    except Exception as exc:
        yield sse_error(exc)
        recorder = None
    yield SSE_DONE
    if recorder is not None:
        recorder.finish(texts, finish_reasons, sum(len(job.prompt_token_ids) for job in jobs), generated)


def _logprobs(tokens: list[TokenLogprob], start_offset: int) -> CompletionLogprobs:
    offsets = []
    offset = start_offset
    for token in tokens:
        offsets.append(offset)
        offset += len(token.token)
    return CompletionLogprobs(
        tokens=[token.token for token in tokens],
        token_logprobs=[token.logprob for token in tokens],
        top_logprobs=[{text: logprob for text, _, logprob in token.top} for token in tokens],
        text_offset=offsets,
    )
