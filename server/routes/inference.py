"""The OpenAI-compatible inference routes; the work happens in server/serving."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from server.auth import Caller
from server.protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from server.serving.chat import create_chat_completion
from server.serving.completion import create_completion
from server.state import Ready, State

router = APIRouter(prefix="/v1", tags=["inference"])

STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "JSON, or server-sent events when streaming"}
}


@router.post("/chat/completions", response_model=None, responses=STREAM_DOC)
async def chat_completions(body: ChatCompletionRequest, server: Ready, request: Request, caller: Caller) -> Response:
    """Create a chat completion with the base model or an adapter (`NAME`, `NAME@VERSION`, `NAME:ALIAS`)."""
    return await create_chat_completion(server, body, request, caller)


@router.post("/completions", response_model=None, responses=STREAM_DOC)
async def completions(body: CompletionRequest, server: Ready, request: Request, caller: Caller) -> Response:
    """Create a text completion with the base model or an adapter."""
    return await create_completion(server, body, request, caller)


@router.get("/models")
async def list_models(state: State, caller: Caller) -> ModelList:
    """Every model name this caller may use: the base, and each adapter, version and alias (parent: the base)."""
    base = state.resolver.base.name
    cards = [ModelCard(id=base, created=int(state.started_at), root=base)]
    for name, version in await state.resolver.servable(caller):
        cards.append(ModelCard(id=name, created=int(version.created_at.timestamp()), root=version.ref, parent=base))
    return ModelList(data=cards)
