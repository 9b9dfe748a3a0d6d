"""Liveness, readiness and metrics, for orchestrators and Prometheus."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.errors import EngineNotReadyError, error_body
from server.state import State

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is up (it may still be loading the model)."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "the engine is loading, failed, or has stopped"}})
async def ready(state: State) -> Response:
    """The engine is loaded and answers: send traffic here."""
    if state.engine is None:
        message = state.startup_error or "The model is still loading."
        return JSONResponse(error_body(message, "server_error", code="engine_not_ready"), status_code=503)
    try:
        await state.engine.check_health()
    except EngineNotReadyError as exc:
        return JSONResponse(error_body(exc.message, exc.error_type, code=exc.code), status_code=503)
    return JSONResponse({"status": "ready", "model": state.resolver.base.name})


@router.get("/metrics", response_class=Response)
async def metrics(state: State) -> Response:
    """Prometheus text exposition of this server's metrics."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
