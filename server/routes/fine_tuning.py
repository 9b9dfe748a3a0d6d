"""OpenAI's fine-tuning jobs API; jobs are run by `loradock worker`, reading the same database."""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from adapters.fine_tuning import Hyperparameters, JobObject, JobRequest, Page
from adapters.records import DB_INT_MAX
from server.auth import Caller
from server.errors import InvalidRequestError
from server.routes.files import tenant_of
from server.state import State

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])

SUFFIX = re.compile(r"^[a-z0-9][a-z0-9._-]{0,39}$")
LORA_OPTIONS = {"r", "alpha", "dropout", "target_modules", "use_dora", "use_rslora", "evaluate"}


class MethodSpec(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["supervised", "dpo"] = "supervised"
    supervised: dict[str, Any] | None = None
    dpo: dict[str, Any] | None = None


class CreateJob(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: Hyperparameters | None = None
    method: MethodSpec | None = None
    suffix: str | None = Field(default=None, max_length=64)
    seed: int | None = Field(default=None, ge=0, le=DB_INT_MAX)
    metadata: dict[str, str] | None = None
    loradock: dict[str, Any] | None = Field(
        default=None, description="LoRA options: r, alpha, dropout, target_modules, use_dora, use_rslora, evaluate."
    )


def _request(body: CreateJob) -> JobRequest:
    method = body.method or MethodSpec()
    settings = (method.supervised if method.type == "supervised" else method.dpo) or {}
    hyper = Hyperparameters.model_validate(settings.get("hyperparameters") or {})
    if body.hyperparameters is not None and not settings:
        hyper = body.hyperparameters  # the older top-level form
    if body.suffix is not None and not SUFFIX.match(body.suffix):
        raise InvalidRequestError(
            "suffix must be 1-40 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit",
            param="suffix",
        )
    unknown = sorted(set(body.loradock or {}) - LORA_OPTIONS)
    if unknown:
        raise InvalidRequestError(f"unknown loradock option {unknown[0]!r}", param=f"loradock.{unknown[0]}")
    return JobRequest(
        model=body.model,
        training_file=body.training_file,
        validation_file=body.validation_file,
        method=method.type,
        hyperparameters=hyper,
        lora=body.loradock or {},
        suffix=body.suffix,
        seed=body.seed,
        metadata=body.metadata,
    )


@router.post("", response_model=JobObject)
async def create_job(body: CreateJob, state: State, caller: Caller) -> JobObject:
    """Queue a job: fine-tune the served base (or continue one of the hub's adapters) on an uploaded file."""
    request = _request(body)
    lora = dict(request.lora)
    if request.model != state.resolver.base.name:
        served = await state.resolver.resolve(request.model, caller)  # 404 / 403 like any request for it
        assert served.version is not None
        lora["init_from"] = served.version.ref
    return await asyncio.to_thread(state.hub.fine_tuning.create_job, caller.tenant, request, lora)


@router.get("")
async def list_jobs(
    state: State,
    caller: Caller,
    after: Annotated[str | None, Query(description="The last job id of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Page:
    return await asyncio.to_thread(state.hub.fine_tuning.list_jobs, tenant_of(caller), after, limit)


@router.get("/{job_id}")
async def get_job(job_id: str, state: State, caller: Caller) -> JobObject:
    return await asyncio.to_thread(state.hub.fine_tuning.get_job, job_id, tenant_of(caller))


@router.post("/{job_id}/cancel")
async def cancel_job(job_id: str, state: State, caller: Caller) -> JobObject:
    return await asyncio.to_thread(state.hub.fine_tuning.cancel_job, job_id, tenant_of(caller))


@router.get("/{job_id}/events")
async def list_events(
    job_id: str,
    state: State,
    caller: Caller,
    after: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Page:
    return await asyncio.to_thread(state.hub.fine_tuning.list_events, job_id, tenant_of(caller), after, limit)


@router.get("/{job_id}/checkpoints")
async def list_checkpoints(
    job_id: str,
    state: State,
    caller: Caller,
    after: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> Page:
    return await asyncio.to_thread(state.hub.fine_tuning.list_checkpoints, job_id, tenant_of(caller), after, limit)
