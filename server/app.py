"""The app factory: `build_app` wires routes and handlers; the lifespan starts and stops the engine.

The engine loads in the background so that /health answers at once and /ready turns 200 when the model is
up, which is what orchestrators' liveness and readiness probes expect.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from adapters import __version__
from adapters.base_models import resolve_base_model, served_name_for
from adapters.settings import Settings
from server.engine import start_engine
from server.errors import install_error_handlers
from server.resolution import ModelResolver
from server.routes import health, inference
from server.state import ServerState

logger = logging.getLogger(__name__)

FatalHandler = Callable[[str], None]


def build_state(settings: Settings, adapters: dict[str, Path]) -> ServerState:
    """Resolve the base model and the static adapters; raises before anything heavy starts."""
    model_path = resolve_base_model(settings.base_model, settings.models_dir)
    served_name = settings.served_model_name or served_name_for(model_path)
    return ServerState(settings=settings, model_path=model_path, resolver=ModelResolver(served_name, adapters))


def build_app(state: ServerState, on_fatal: FatalHandler | None = None) -> FastAPI:
    """The FastAPI app for `state`; `on_fatal` is told when the engine cannot start or dies."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(_load_engine(state, on_fatal))
        try:
            yield
        finally:
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
            if state.prompts is not None:
                state.prompts.close()
            if state.engine is not None:
                state.engine.shutdown()

    app = FastAPI(
        title="loradock",
        version=__version__,
        summary="OpenAI-compatible serving of a base model and its LoRA adapters.",
        lifespan=lifespan,
    )
    app.state.loradock = state
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(inference.router)
    return app


async def _load_engine(state: ServerState, on_fatal: FatalHandler | None) -> None:
    name = state.resolver.base.name
    logger.info("loading %s from %s", name, state.model_path)
    try:
        engine = await start_engine(state.settings, state.model_path, name)
    except Exception as exc:
        state.startup_error = f"The engine failed to start: {exc}"
        logger.exception("the engine failed to start")
        if on_fatal is not None:
            on_fatal(state.startup_error)
        return
    state.attach_engine(engine)
    logger.info("ready: serving %s and %d adapter(s)", name, len(state.resolver.servable()) - 1)
