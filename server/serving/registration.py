"""Registering adapters over HTTP: an upload (files or one archive) or a source the server can reach."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import Request
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile

from adapters.keys import Principal
from adapters.records import VersionView
from adapters.sources import Staged, stage_source, stage_upload
from server.errors import InvalidRequestError, PayloadTooLargeError
from server.state import ServerState

MULTIPART_OVERHEAD = 1 << 20


class RegisterFromSource(BaseModel):
    """JSON body of POST /v1/adapters: a folder or archive path on the server, or `hf://org/repo[@revision]`."""

    name: str
    source: str = Field(min_length=1)
    metadata: dict[str, Any] = Field(default_factory=dict)


async def register_from_request(state: ServerState, request: Request, caller: Principal) -> VersionView:
    content_type = request.headers.get("content-type", "")
    limits = state.hub.registry.limits
    if content_type.startswith("multipart/form-data"):
        declared = int(request.headers.get("content-length") or 0)
        if declared > limits.max_bytes + MULTIPART_OVERHEAD:
            raise PayloadTooLargeError(f"The upload is larger than this server's limit of {limits.max_bytes} bytes.")
        form = await request.form(max_files=limits.max_files + 1, max_fields=16)
        name = _form_text(form.get("name"), "name")
        metadata = _metadata(form.get("metadata"))
        uploads = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if not uploads:
            raise InvalidRequestError("Attach the adapter's files, or one archive of them.", param="file")
        files = [(upload.filename or "", upload.file) for upload in uploads]
        staged: Staged = await asyncio.to_thread(stage_upload, state.hub.store, files, limits)
    elif content_type.startswith("application/json"):
        try:
            body = RegisterFromSource.model_validate_json(await request.body())
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(part) for part in first["loc"]) or None
            raise InvalidRequestError(f"Invalid registration request: {first['msg']}", param=param) from exc
        name, metadata = body.name, body.metadata
        staged = await asyncio.to_thread(stage_source, state.hub.store, body.source, limits)
    else:
        raise InvalidRequestError("Send multipart/form-data (an upload) or application/json (a source).")
    version = await asyncio.to_thread(
        state.hub.registry.register,
        name,
        staged,
        state.resolver.base_spec,
        created_by=caller.label,
        metadata=metadata,
    )
    state.resolver.invalidate()
    return version


def _form_text(value: Any, param: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequestError(f"The form field '{param}' is required.", param=param)
    return value


def _metadata(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    try:
        parsed = json.loads(value) if isinstance(value, str) else None
    except json.JSONDecodeError as exc:
        raise InvalidRequestError("'metadata' must be a JSON object.", param="metadata") from exc
    if not isinstance(parsed, dict):
        raise InvalidRequestError("'metadata' must be a JSON object.", param="metadata")
    return parsed
