"""What one running server holds, and the FastAPI dependencies that hand it to routes."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from adapters.hub import Hub
from adapters.settings import Settings
from server.adapter_cache import AdapterCache
from server.admission import Admission
from server.drift_monitor import DriftMonitor
from server.engine import InferenceEngine
from server.errors import EngineNotReadyError
from server.interaction_log import InteractionLog
from server.limits import KeyLimits
from server.metrics import ServerMetrics
from server.prompts import PromptBuilder
from server.resolution import HubResolver
from server.traffic import TrafficHistory

if TYPE_CHECKING:
    from server.auth import KeyCache


@dataclass
class ServerState:
    settings: Settings
    model_path: str
    hub: Hub
    resolver: HubResolver
    key_cache: KeyCache
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    engine: InferenceEngine | None = None
    prompts: PromptBuilder | None = None
    adapters: AdapterCache | None = None
    startup_error: str | None = None
    started_at: float = field(default_factory=time.time)
    admission: Admission = field(init=False)
    key_limits: KeyLimits = field(init=False)
    interaction_log: InteractionLog = field(init=False)
    drift: DriftMonitor = field(init=False)
    traffic: TrafficHistory = field(init=False)
    shadow_slots: asyncio.Semaphore = field(init=False)
    background: set[asyncio.Task[None]] = field(default_factory=set)
    """Tasks started by requests that outlive them (shadow copies), kept referenced until they finish."""

    def __post_init__(self) -> None:
        self.admission = Admission(self.settings.max_concurrent_requests, self.metrics.in_flight)
        self.key_limits = KeyLimits(self.settings)
        self.interaction_log = InteractionLog(self.settings, self.metrics)
        self.drift = DriftMonitor(self.settings, self.metrics, self.admission.idle_s)
        self.traffic = TrafficHistory(self.metrics)
        self.shadow_slots = asyncio.Semaphore(self.settings.shadow_max_in_flight)

    def attach_engine(self, engine: InferenceEngine) -> None:
        self.engine = engine
        self.prompts = PromptBuilder(
            engine.tokenizer, engine.max_model_len, self.settings.max_prompt_tokens, self.settings.max_output_tokens
        )
        self.adapters = AdapterCache(engine, self.metrics, self.settings.max_cpu_loras)


@dataclass(frozen=True)
class ReadyServer:
    """The state of a server whose engine is up: routes that generate depend on this."""

    state: ServerState
    engine: InferenceEngine
    prompts: PromptBuilder
    adapters: AdapterCache


def get_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.loradock
    return state


def get_ready(state: Annotated[ServerState, Depends(get_state)]) -> ReadyServer:
    engine, prompts, adapters = state.engine, state.prompts, state.adapters
    if engine is None or prompts is None or adapters is None or not engine.is_running:
        raise EngineNotReadyError("The model is still loading; retry when /ready answers 200.")
    return ReadyServer(state, engine, prompts, adapters)


State = Annotated[ServerState, Depends(get_state)]
Ready = Annotated[ReadyServer, Depends(get_ready)]
