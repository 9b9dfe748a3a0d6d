"""OpenAI's Files API for fine-tuning data: upload, list, read, download, delete (per tenant)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel

from adapters.fine_tuning import FileObject
from adapters.keys import Principal
from server.auth import Caller
from server.errors import InvalidRequestError
from server.state import State

router = APIRouter(prefix="/v1/files", tags=["files"])

PURPOSES = ("fine-tune",)


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool = False


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


def tenant_of(caller: Principal) -> str | None:
    """Admins see every tenant's files and jobs; everyone else only their own."""
    return None if caller.is_admin else caller.tenant


@router.post("", response_model=FileObject)
async def upload_file(
    state: State,
    caller: Caller,
    file: Annotated[UploadFile, File(description="JSONL (OpenAI chat format), CSV or Parquet training data.")],
    purpose: Annotated[str, Form()],
) -> FileObject:
    """Store a dataset file; its rows are checked now, and a file with bad rows is kept with the reasons."""
    if purpose not in PURPOSES:
        raise InvalidRequestError(f"purpose must be one of {list(PURPOSES)}", param="purpose")
    return await asyncio.to_thread(
        state.hub.fine_tuning.create_file, caller.tenant, file.filename or "upload.jsonl", purpose, file.file
    )


@router.get("")
async def list_files(state: State, caller: Caller, purpose: Annotated[str | None, Query()] = None) -> FileList:
    return FileList(data=await asyncio.to_thread(state.hub.fine_tuning.list_files, tenant_of(caller), purpose))


@router.get("/{file_id}")
async def get_file(file_id: str, state: State, caller: Caller) -> FileObject:
    return await asyncio.to_thread(state.hub.fine_tuning.get_file, file_id, tenant_of(caller))


@router.get("/{file_id}/content", response_class=FileResponse)
async def file_content(file_id: str, state: State, caller: Caller) -> Any:
    path, filename = await asyncio.to_thread(state.hub.fine_tuning.file_path, file_id, tenant_of(caller))
    return FileResponse(path, media_type="application/octet-stream", filename=filename)


@router.delete("/{file_id}")
async def delete_file(file_id: str, state: State, caller: Caller) -> FileDeleted:
    await asyncio.to_thread(state.hub.fine_tuning.delete_file, file_id, tenant_of(caller))
    return FileDeleted(id=file_id)
