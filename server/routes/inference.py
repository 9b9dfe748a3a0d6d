"""The OpenAI-compatible inference routes; the work happens in server/serving."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from server.protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from server.serving.chat import create_chat_completion
from server.serving.completion import create_completion
from server.state import Ready, State

router = APIRouter(prefix="/v1", tags=["inference"])

STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "JSON, or server-sent events when streaming"}
}


@router.post("/chat/completions", response_model=None, responses=STREAM_DOC)
async def chat_completions(body: ChatCompletionRequest, server: Ready, request: Request) -> Response:
    """Create a chat completion with the base model or an adapter."""
    return await create_chat_completion(server, body, request)


@router.post("/completions", response_model=None, responses=STREAM_DOC)
async def completions(body: CompletionRequest, server: Ready, request: Request) -> Response:
    """Create a text completion with the base model or an adapter."""
    return await create_completion(server, body, request)


@router.get("/models")
async def list_models(state: State) -> ModelList:
    """Every servable model: the base, and each adapter with the base as its parent."""
    base = state.resolver.base.name
    return ModelList(
        data=[
            ModelCard(
                id=served.name,
                created=served.created,
                root=served.lora.path if served.lora else state.model_path,
                parent=base if served.lora else None,
            )
            for served in state.resolver.servable()
        ]
    )
