"""POST /v1/chat/completions: messages in, assistant turns out (streamed or whole)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from fastapi import Request, Response
from fastapi.responses import StreamingResponse

from adapters.keys import Principal
from server.engine import ChoiceDelta, TokenLogprob
from server.errors import InvalidRequestError
from server.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    ChatTokenLogprob,
    TopLogprob,
    Usage,
)
from server.resolution import ServedModel
from server.serving.options import sampling_options
from server.serving.recording import Recorder, Timing, chat_payload, recorder_for
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
from server.serving.shadow import mirror
from server.state import ReadyServer

ROUTE = "chat"


async def create_chat_completion(
    server: ReadyServer, request: ChatCompletionRequest, http: Request, principal: Principal
) -> Response:
    timing = Timing()
    served = await server.state.resolver.resolve(request.model, principal, request.user)
    http.state.model_label = served.name
    if request.max_tokens is not None and request.max_completion_tokens is not None:
        raise InvalidRequestError(
            "Give either 'max_tokens' or 'max_completion_tokens', not both.", param="max_completion_tokens"
        )
    if request.top_logprobs is not None and not request.logprobs:
        raise InvalidRequestError("'top_logprobs' needs 'logprobs' set to true.", param="top_logprobs")
    prompt = await server.prompts.chat(request.messages)
    requested = request.max_completion_tokens or request.max_tokens
    max_param = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
    max_tokens = server.prompts.max_tokens_for(len(prompt), requested, "messages", max_param)
    logprobs = (request.top_logprobs or 0) if request.logprobs else None
    options = sampling_options(request, server.state.settings, max_tokens=max_tokens, logprobs=logprobs)
    job = Job(f"chatcmpl-{uuid.uuid4().hex}", prompt, options, owner=principal)
    payload = chat_payload(request.messages)
    recorder = recorder_for(server, http, principal, served, ROUTE, job.request_id, request, payload, timing)
    stream = generate(server, served, job, ROUTE, timing)
    if request.stream:
        started = await start_all([stream])
        body = _chunks(job, served, request, merge(started), server, recorder)
        return StreamingResponse(body, media_type="text/event-stream", headers=response_headers(job.request_id, served))
    response = await until_disconnected(http, _collect(job, served, stream))
    if response is None:  # the client is gone; nobody reads this
        return Response(status_code=499)
    if recorder is not None:
        choices = response.choices
        recorder.finish(
            [choice.message.content for choice in choices],
            [choice.finish_reason for choice in choices],
            response.usage.prompt_tokens,
            response.usage.completion_tokens,
        )
        mirror(server, recorder, job)
    return Response(
        response.model_dump_json(), media_type="application/json", headers=response_headers(job.request_id, served)
    )


async def _collect(job: Job, served: ServedModel, stream: Steps) -> ChatCompletionResponse:
    done = await collect(job, stream)
    return ChatCompletionResponse(
        id=job.request_id,
        model=served.name,
        choices=[
            ChatChoice(
                index=index,
                message=AssistantMessage(content=text),
                logprobs=_logprobs(done.logprobs[index]) if done.logprobs is not None else None,
                finish_reason=done.finish_reasons[index],
            )
            for index, text in enumerate(done.texts)
        ],
        usage=Usage.of(len(job.prompt_token_ids), done.completion_tokens),
    )


async def _chunks(
    job: Job,
    served: ServedModel,
    request: ChatCompletionRequest,
    steps: AsyncIterator[tuple[int, list[ChoiceDelta]]],
    server: ReadyServer,
    recorder: Recorder | None,
) -> AsyncIterator[str]:
    created = int(time.time())
    texts = [""] * job.options.n
    finish_reasons: list[str | None] = [None] * job.options.n

    def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> str:
        payload = ChatCompletionChunk(
            id=job.request_id, created=created, model=served.name, choices=choices, usage=usage
        )
        return sse(payload.model_dump_json(exclude_none=True))

    yield chunk([ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content="")) for i in range(job.options.n)])
    generated = 0
    try:
        async for _, step in steps:
            choices = []
            for delta in step:
                generated += delta.token_count
                texts[delta.index] += delta.text
                finish_reasons[delta.index] = delta.finish_reason or finish_reasons[delta.index]
                if not delta.text and delta.finish_reason is None and not delta.logprobs:
                    continue
                choices.append(
                    ChatChunkChoice(
                        index=delta.index,
                        delta=ChatDelta(content=delta.text),
                        logprobs=_logprobs(delta.logprobs) if delta.logprobs is not None else None,
                        finish_reason=delta.finish_reason,
                    )
                )
            if choices:
                yield chunk(choices)
        if request.include_usage:
            yield chunk([], Usage.of(len(job.prompt_token_ids), generated))
    except Exception as exc:
        yield sse_error(exc)
        recorder = None
    yield SSE_DONE
    if recorder is not None:
        recorder.finish(texts, finish_reasons, len(job.prompt_token_ids), generated)
        mirror(server, recorder, job)


def _logprobs(tokens: list[TokenLogprob]) -> ChatLogprobs:
    return ChatLogprobs(
        content=[
            ChatTokenLogprob(
                token=token.token,
                logprob=token.logprob,
                bytes=list(token.token.encode()),
                top_logprobs=[
                    TopLogprob(token=text, logprob=logprob, bytes=list(text.encode())) for text, _, logprob in token.top
                ],
            )
            for token in tokens
        ]
    )
