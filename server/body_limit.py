"""A bound on request bodies, checked before a route reads them: 413 instead of a server filling its memory.

Uvicorn and Starlette read any body size. The bound is the declared Content-Length when there is one (refused
before a byte is read), else the bytes counted as they arrive (chunked uploads). Upload routes get the upload
limits (the route then applies the exact one); every other route gets `max_request_bytes`.
"""

from __future__ import annotations

import json

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapters.settings import Settings
from server.errors import error_body

UPLOAD_PATHS = ("/v1/adapters", "/v1/files")
MULTIPART_OVERHEAD = 1 << 20


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self._json_limit = settings.max_request_bytes
        self._upload_limit = max(settings.max_adapter_bytes, settings.max_file_bytes) + MULTIPART_OVERHEAD

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["path"].rstrip("/").endswith(UPLOAD_PATHS)  # behind a proxy prefix too
        limit = self._upload_limit if upload else self._json_limit
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(send, limit)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI passes HTTPExceptions raised while it reads a body through to the error handlers.
                    raise _too_large(limit)
            return message

        await self.app(scope, counted, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"The request body is larger than this server's limit of {limit} bytes.")


async def _refuse(send: Send, limit: int) -> None:
    body = json.dumps(error_body(_too_large(limit).detail, "invalid_request_error", code="too_large")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
