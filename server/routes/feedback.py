"""Feedback on completions: POST /v1/feedback rates (and corrects) one answer; admins read it back with filters."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from adapters.errors import NotFoundError
from adapters.feedback import FeedbackFilter, FeedbackInput, FeedbackView
from adapters.fine_tuning import Page
from adapters.records import DB_INT_MAX
from server.auth import Admin, Caller
from server.routes.files import tenant_of
from server.state import State

router = APIRouter(prefix="/v1/feedback", tags=["feedback"])

LOG_WAIT_S = 5.0
"""A rating may arrive before the writer thread stored its completion; this is how long it waits for that."""


@router.post("", responses={201: {"model": FeedbackView}, 200: {"model": FeedbackView}})
async def post_feedback(body: FeedbackInput, state: State, caller: Caller, response: Response) -> FeedbackView:
    """Rate a completion by its `id` (thumbs or a 0..1 score), optionally with the ideal answer; a repeat from the
    same `source` updates the record. 404: unknown id, or another tenant's completion."""
    feedback = state.hub.feedback
    tenant = tenant_of(caller)
    try:
        view, created = await asyncio.to_thread(feedback.record, body, tenant=tenant, created_by=caller.label)
    except NotFoundError:
        await asyncio.to_thread(state.interaction_log.flush, LOG_WAIT_S)
        view, created = await asyncio.to_thread(feedback.record, body, tenant=tenant, created_by=caller.label)
    response.status_code = 201 if created else 200
    corrected = "yes" if view.correction else "no"
    state.metrics.feedback.labels(view.adapter or "(base)", view.rating or "none", corrected).inc()
    return view


@router.get("")
async def list_feedback(
    state: State,
    _admin: Admin,
    adapter: Annotated[str | None, Query(description="Only completions of this adapter.")] = None,
    version: Annotated[int | None, Query(ge=1, le=DB_INT_MAX)] = None,
    source: Annotated[str | None, Query()] = None,
    tenant: Annotated[str | None, Query()] = None,
    rating: Annotated[Literal["up", "down"] | None, Query()] = None,
    min_score: Annotated[float | None, Query(ge=0, le=1)] = None,
    max_score: Annotated[float | None, Query(ge=0, le=1)] = None,
    corrected: Annotated[bool | None, Query(description="Only records with (true) or without (false) one.")] = None,
    since: Annotated[datetime | None, Query(description="Updated at or after this time (ISO 8601).")] = None,
    after: Annotated[str | None, Query(description="The last feedback id of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Page:
    """Feedback records, newest first (admin keys only)."""
    where = FeedbackFilter(
        adapter=adapter,
        version=version,
        source=source,
        tenant=tenant,
        rating=rating,
        min_score=min_score,
        max_score=max_score,
        corrected=corrected,
        since=since,
    )
    return await asyncio.to_thread(state.hub.feedback.list, where, after=after, limit=limit)
