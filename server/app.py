"""The app factory: `build_app` wires routes and handlers; the lifespan starts and stops the engine.

The engine loads in the background so that /health answers at once and /ready turns 200 when the model is
up, which is what orchestrators' liveness and readiness probes expect.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from adapters import __version__
from adapters.base_models import local_model_folder, resolve_base_model, served_name_for
from adapters.database import redacted_url
from adapters.fingerprint import BaseModelSpec
from adapters.hub import Hub
from adapters.settings import Settings
from adapters.sources import stage_source
from server.auth import KeyCache
from server.body_limit import BodyLimitMiddleware
from server.engine import InferenceEngine, start_engine
from server.errors import install_error_handlers
from server.openapi import document_errors
from server.resolution import HubResolver
from server.routes import adapters, dashboard, feedback, files, fine_tuning, health, inference
from server.state import ServerState

logger = logging.getLogger(__name__)

FatalHandler = Callable[[str], None]
RETIRED_SWEEP_S = 5.0
ENGINE_WATCH_S = 1.0


def build_state(settings: Settings, static_adapters: dict[str, Path]) -> ServerState:
    """Open the hub, read the base model's shapes and register `--adapter` folders; nothing heavy starts here."""
    model_path = resolve_base_model(settings.base_model, settings.models_dir)
    served_name = settings.served_model_name or served_name_for(model_path)
    base = BaseModelSpec.from_folder(local_model_folder(model_path))
    hub = Hub.open(settings)
    hub.store.sweep_incoming()
    for name, path in sorted(static_adapters.items()):
        staged = stage_source(hub.store, str(path), hub.registry.limits)
        version = hub.registry.register(name, staged, base, created_by="loradock serve --adapter", reuse_identical=True)
        logger.info("adapter %s is %s", name, version.ref)
    resolver = HubResolver(served_name, base, hub, settings.resolution_cache_s)
    return ServerState(settings=settings, model_path=model_path, hub=hub, resolver=resolver, key_cache=KeyCache())


def build_app(state: ServerState, on_fatal: FatalHandler | None = None) -> FastAPI:
    """The FastAPI app for `state`; `on_fatal` is told when the engine cannot start."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state.interaction_log.start()
        state.drift.start()
        background = [
            asyncio.create_task(_load_engine(state, on_fatal)),
            asyncio.create_task(_sweep_retired_adapters(state)),
            asyncio.create_task(_sample_traffic(state)),
        ]
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            for task in list(state.background):
                task.cancel()
            await asyncio.gather(*state.background, return_exceptions=True)
            await asyncio.to_thread(state.interaction_log.close)
            await asyncio.to_thread(state.drift.close)
            if state.prompts is not None:
                state.prompts.close()
            if state.engine is not None:
                state.engine.shutdown()
            state.hub.close()

    app = FastAPI(
        title="loradock",
        version=__version__,
        summary="OpenAI-compatible serving of a base model and its LoRA adapters, with an adapter hub.",
        lifespan=lifespan,
    )
    app.state.loradock = state
    install_error_handlers(app)
    document_errors(app)
    app.add_middleware(BodyLimitMiddleware, settings=state.settings)
    app.include_router(health.router)
    app.include_router(inference.router)
    app.include_router(adapters.router)
    app.include_router(files.router)
    app.include_router(fine_tuning.router)
    app.include_router(feedback.router)
    app.include_router(dashboard.router)
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
    await asyncio.to_thread(state.drift.load_embedder)
    freeze_startup_heap()
    state.attach_engine(engine)
    logger.info("ready: serving %s and the adapters of the hub at %s", name, redacted_url(state.settings.database))
    await _watch_engine(state, engine, on_fatal)


def freeze_startup_heap() -> None:
    """Take every object alive once the engine is up out of the garbage collector's full passes, and turn the
    collector back on (`loradock serve` starts with it off).

    After vLLM, torch and transformers are imported and the engine client and drift's embedding model are loaded,
    this process holds about 900,000 objects that live as long as it does. Python's oldest-generation collection
    walks them all, with the GIL held: on 2 vCPUs each pass took 0.4-0.55 s, and one that fell during a load test
    paused every stream for as long. Frozen, they are skipped, and a full pass only walks what serving allocates.
    vLLM's own OpenAI server freezes its heap too (`freeze_gc_heap`); it is written out here because engine.py is
    the only module that may import vLLM. While the heap grows through the imports, every full pass walks all of
    it again, 2.5-3 s of the process's start in all; off until here, the collector makes this one pass instead.
    """
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    gc.enable()
    logger.info(
        "garbage collector: %d startup objects frozen in %.2f s", gc.get_freeze_count(), time.perf_counter() - started
    )


async def _watch_engine(state: ServerState, engine: InferenceEngine, on_fatal: FatalHandler | None) -> None:
    """An engine that died (its process killed, out of memory) cannot come back in this process: /ready turns
    503 at once and the server exits non-zero, so a supervisor (Kubernetes, systemd) restarts it."""
    while engine.is_running:  # noqa: ASYNC110 - vLLM sets a flag from its monitor thread; there is no event to await
        await asyncio.sleep(ENGINE_WATCH_S)
    state.startup_error = "The inference engine has stopped; the server is exiting so that it can be restarted."
    logger.error("the inference engine has stopped; exiting")
    if on_fatal is not None:
        on_fatal(state.startup_error)


async def _sweep_retired_adapters(state: ServerState) -> None:
    """Versions deprecated or purged (here or on another replica) leave the engine once idle."""
    while True:
        await asyncio.sleep(RETIRED_SWEEP_S)
        if state.adapters is None:
            continue
        try:
            await state.adapters.drop_retired(state.hub.registry)
        except Exception:  # the database may be briefly unreachable; the next sweep tries again
            logger.exception("could not check resident adapters against the hub")


async def _sample_traffic(state: ServerState) -> None:
    """Keep the dashboard's traffic history (server/traffic.py)."""
    while True:
        state.traffic.record()
        await asyncio.sleep(state.settings.dashboard_sample_s)
