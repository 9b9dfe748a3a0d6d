"""What one running server holds, and the FastAPI dependencies that hand it to routes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from adapters.settings import Settings
from server.admission import Admission
from server.engine import Engine
from server.errors import EngineNotReadyError
from server.metrics import ServerMetrics
from server.prompts import PromptBuilder
from server.resolution import ModelResolver


@dataclass
class ServerState:
    settings: Settings
    model_path: str
    resolver: ModelResolver
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    engine: Engine | None = None
    prompts: PromptBuilder | None = None
    startup_error: str | None = None
    admission: Admission = field(init=False)

    def __post_init__(self) -> None:
        self.admission = Admission(self.settings.max_concurrent_requests, self.metrics.in_flight)

    def attach_engine(self, engine: Engine) -> None:
        self.engine = engine
        self.prompts = PromptBuilder(engine.tokenizer, engine.max_model_len)


@dataclass(frozen=True)
class ReadyServer:
    """The state of a server whose engine is up: routes that generate depend on this."""

    state: ServerState
    engine: Engine
    prompts: PromptBuilder


def get_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.loradock
    return state


def get_ready(state: Annotated[ServerState, Depends(get_state)]) -> ReadyServer:
    if state.engine is None or state.prompts is None or not state.engine.is_running:
        raise EngineNotReadyError("The model is still loading; retry when /ready answers 200.")
    return ReadyServer(state, state.engine, state.prompts)


State = Annotated[ServerState, Depends(get_state)]
Ready = Annotated[ReadyServer, Depends(get_ready)]
