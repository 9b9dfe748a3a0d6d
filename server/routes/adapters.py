"""The ops API of the hub: register adapters, read them, move aliases, retire versions."""

from __future__ import annotations

import asyncio
import shutil
import tarfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as PathParameter
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field, model_validator
from starlette.background import BackgroundTask

from adapters.drift.reports import AdapterDrift
from adapters.drift.sample import ProfileSample, store_sample_profile
from adapters.drift.summary import adapter_drift
from adapters.errors import NotFoundError
from adapters.keys import Principal
from adapters.records import DB_INT_MAX, AdapterView, AliasTarget, AliasView, VersionView
from server.auth import Admin, Caller
from server.errors import PermissionDeniedError
from server.serving.registration import RegisterFromSource, register_from_request
from server.state import ServerState, State

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])
VersionNumber = Annotated[int, PathParameter(ge=1, le=DB_INT_MAX, description="A version number (1, 2, ...).")]

REGISTER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["name", "file"],
                    "properties": {
                        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,63}$"},
                        "metadata": {"type": "string", "description": "a JSON object"},
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "adapter_config.json + adapter_model.safetensors, or one .zip/.tar.gz",
                        },
                    },
                }
            },
            "application/json": {"schema": RegisterFromSource.model_json_schema()},
        },
    }
}


class AdapterList(BaseModel):
    object: str = "list"
    data: list[AdapterView]


class AliasUpdate(BaseModel):
    """Point an alias at one `version`, or split it over `targets` by weight."""

    version: int | None = Field(default=None, ge=1, le=DB_INT_MAX)
    targets: list[AliasTarget] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> AliasUpdate:
        if (self.version is None) == (self.targets is None):
            raise ValueError("give either 'version' or 'targets'")
        return self

    def resolved_targets(self) -> list[AliasTarget]:
        return self.targets if self.targets is not None else [AliasTarget(version=self.version or 0)]


def _visible(caller: Principal, adapter: AdapterView | VersionView) -> None:
    if not (caller.may_use(adapter.name) or adapter.owner == caller.tenant):
        raise PermissionDeniedError(f"This API key may not see adapter {adapter.name!r}.")


async def _readable(
    state: ServerState, caller: Principal, name: str, read: Any, *args: Any
) -> AdapterView | VersionView:
    """Read a record this key may see; for keys limited to some adapters, anything else is 403, found or not."""
    try:
        record = await asyncio.to_thread(read, *args)
    except NotFoundError:
        if not caller.may_use(name):
            raise PermissionDeniedError(f"This API key may not see adapter {name!r}.") from None
        raise
    _visible(caller, record)
    return record  # type: ignore[no-any-return]


async def _unload_retired(state: ServerState) -> None:
    """Drop retired versions from this replica's engine now; other replicas' sweeps follow within seconds."""
    state.resolver.invalidate()
    if state.adapters is not None:
        await state.adapters.drop_retired(state.hub.registry)


@router.post("", status_code=201, openapi_extra=REGISTER_BODY)
async def register_adapter(request: Request, state: State, caller: Admin) -> VersionView:
    """Register a new version: upload files or an archive (multipart), or name a source (JSON)."""
    return await register_from_request(state, request, caller)


@router.get("")
async def list_adapters(state: State, caller: Caller) -> AdapterList:
    """Every adapter this key may see, with versions and aliases."""
    only = None if caller.is_admin or caller.adapters is None else set(caller.adapters)
    return AdapterList(data=await asyncio.to_thread(state.hub.registry.list_adapters, only, caller.tenant))


@router.get("/{name}")
async def get_adapter(name: str, state: State, caller: Caller) -> AdapterView:
    adapter = await _readable(state, caller, name, state.hub.registry.get_adapter, name)
    assert isinstance(adapter, AdapterView)
    return adapter


@router.get("/{name}/drift")
async def get_drift(name: str, state: State, caller: Caller) -> AdapterDrift:
    """Drift of each served version against its reference profile: statuses, per-test scores with thresholds,
    windows, the most drifted prompts, and the last day's history."""
    adapter = await _readable(state, caller, name, state.hub.registry.get_adapter, name)
    assert isinstance(adapter, AdapterView)
    live = state.drift.versions(name)
    return await asyncio.to_thread(adapter_drift, state.hub.drift, adapter, live=live, replica=state.drift.replica)


@router.put("/{name}/versions/{version}/drift-profile", status_code=201)
async def set_drift_profile(
    name: str, version: VersionNumber, sample: ProfileSample, state: State, caller: Admin
) -> dict[str, Any]:
    """Build the version's drift reference from a sample of the prompts (and answers) it is meant for; 409 if it
    has one and `replace` is not set."""
    view = await asyncio.to_thread(state.hub.registry.get_version, name, version)
    return await asyncio.to_thread(
        store_sample_profile, state.hub.drift, view, sample, state.drift.embedder, f"api:{caller.label}"
    )


@router.get("/{name}/versions/{version}")
async def get_version(name: str, version: VersionNumber, state: State, caller: Caller) -> VersionView:
    view = await _readable(state, caller, name, state.hub.registry.get_version, name, version)
    assert isinstance(view, VersionView)
    return view


@router.get(
    "/{name}/versions/{version}/download",
    response_class=FileResponse,
    responses={200: {"content": {"application/gzip": {}}, "description": "the version's files as a .tar.gz"}},
)
async def download_version(name: str, version: VersionNumber, state: State, caller: Caller) -> FileResponse:
    """The version's files (adapter_config.json, adapter_model.safetensors, ...) as one .tar.gz."""
    view = await _readable(state, caller, name, state.hub.registry.get_version, name, version)
    assert isinstance(view, VersionView)
    folder = state.hub.store.path(view.sha256)
    if not folder.is_dir():
        raise NotFoundError(f"the files of {view.ref} were purged")
    return await _tar_gz_response(state, folder, f"{name}-v{version}.tar.gz")


@router.get(
    "/{name}/versions/{version}/artifacts/{artifact_id}/download",
    response_class=FileResponse,
    responses={200: {"content": {"application/gzip": {}}, "description": "the export's files as a .tar.gz"}},
)
async def download_artifact(
    name: str, version: VersionNumber, artifact_id: str, state: State, caller: Caller
) -> FileResponse:
    """An export of the version (merged model, ONNX build, distilled student) with its report, as one .tar.gz."""
    await _readable(state, caller, name, state.hub.registry.get_version, name, version)
    artifact, folder = await asyncio.to_thread(state.hub.registry.artifacts.get, name, version, artifact_id)
    if not folder.is_dir():
        raise NotFoundError(f"the files of artifact {artifact_id} are gone from the store")
    return await _tar_gz_response(state, folder, f"{name}-v{version}-{artifact.label}.tar.gz")


async def _tar_gz_response(state: ServerState, folder: Path, filename: str) -> FileResponse:
    """The folder packed into a scratch .tar.gz that is deleted once sent."""
    archive = await asyncio.to_thread(_tar_gz, folder, state.hub.store.staging())
    return FileResponse(
        archive,
        media_type="application/gzip",
        filename=filename,
        background=BackgroundTask(shutil.rmtree, archive.parent, ignore_errors=True),
    )


def _tar_gz(folder: Path, scratch: Path) -> Path:
    archive = scratch / "adapter.tar.gz"
    with tarfile.open(archive, "w:gz") as bundle:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                bundle.add(path, arcname=path.relative_to(folder).as_posix())
    return archive


@router.put("/{name}/aliases/{alias}")
async def set_alias(name: str, alias: str, update: AliasUpdate, state: State, caller: Admin) -> AliasView:
    """Move an alias atomically; the next requests for `NAME:ALIAS` (and `NAME` for `prod`) follow it."""
    view = await asyncio.to_thread(
        state.hub.registry.set_alias, name, alias, update.resolved_targets(), updated_by=caller.label
    )
    state.resolver.invalidate()
    return view


@router.delete("/{name}/aliases/{alias}", status_code=204)
async def delete_alias(name: str, alias: str, state: State, caller: Admin) -> Response:
    await asyncio.to_thread(state.hub.registry.delete_alias, name, alias)
    state.resolver.invalidate()
    return Response(status_code=204)


@router.delete("/{name}/versions/{version}")
async def retire_version(
    name: str,
    version: VersionNumber,
    state: State,
    caller: Admin,
    purge: Annotated[bool, Query(description="Also delete the files once nothing references them.")] = False,
) -> VersionView:
    """Deprecate a version (new requests get 410; in-flight ones finish), or purge it with its files."""
    registry = state.hub.registry
    view = await asyncio.to_thread(registry.purge if purge else registry.deprecate, name, version)
    await _unload_retired(state)
    return view
