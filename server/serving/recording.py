"""What a request leaves behind: its interaction log record and its drift observation, decided before
generation and submitted when it finished.

Only finished completions are recorded (a failed or abandoned request has no answer to rate), and submitting
never waits: see server/interaction_log.py and server/drift_monitor.py. Drift sees every completion of an
adapter, sampled out of the log or not; an opted-out one counts in the statistics but is never shown as an example.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from adapters.interactions import InteractionRecord
from adapters.keys import Principal
from server.drift_monitor import Completion
from server.interaction_log import OPT_OUT_HEADER, opted_out
from server.protocol import ChatMessage, GenerationRequest
from server.resolution import ServedModel
from server.state import ReadyServer

NOT_PARAMETERS = frozenset({"model", "messages", "prompt", "stream", "stream_options", "user"})


@dataclass
class Timing:
    """When a request arrived and when its first token came (the runner fills that in)."""

    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None


@dataclass
class Recorder:
    server: ReadyServer
    completion_id: str
    served: ServedModel
    tenant: str
    route: str
    request: dict[str, Any]
    parameters: dict[str, Any]
    timing: Timing
    logged: bool
    """In the interaction log (else only drift watches it)."""
    opted_out: bool

    def finish(
        self, outputs: list[str], finish_reasons: list[str | None], prompt_tokens: int, completion_tokens: int
    ) -> None:
        state = self.server.state
        if self.logged:
            state.interaction_log.submit(self.record(outputs, finish_reasons, prompt_tokens, completion_tokens))
        version = self.served.version
        if version is not None and state.drift.enabled:
            state.drift.observe(
                Completion(
                    version.name,
                    version.version,
                    version.lora_id,
                    self.request,
                    outputs[0] if outputs else "",
                    finish_reasons[0] if finish_reasons else None,
                    keep_text=not self.opted_out,
                )
            )

    def record(
        self,
        outputs: list[str],
        finish_reasons: list[str | None],
        prompt_tokens: int,
        completion_tokens: int,
        *,
        shadow_of: str | None = None,
        timing: Timing | None = None,
        served: ServedModel | None = None,
        completion_id: str | None = None,
    ) -> InteractionRecord:
        timing = timing or self.timing
        served = served or self.served
        version = served.version
        first = timing.first_token
        return InteractionRecord(
            id=completion_id or self.completion_id,
            model=served.name,
            adapter=version.name if version is not None else None,
            version=version.version if version is not None else None,
            tenant=self.tenant,
            route=self.route,
            request=self.request,
            parameters=self.parameters,
            outputs=outputs,
            finish_reasons=finish_reasons,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_ms=(time.perf_counter() - timing.started) * 1000,
            ttft_ms=(first - timing.started) * 1000 if first is not None else None,
            shadow_of=shadow_of,
        )


def recorder_for(
    server: ReadyServer,
    http: Request,
    principal: Principal,
    served: ServedModel,
    route: str,
    completion_id: str,
    request: GenerationRequest,
    payload: dict[str, Any],
    timing: Timing,
) -> Recorder | None:
    """A recorder if this request is to be logged (logging on, no opt-out header, inside the sample) or watched
    for drift (an adapter answers it), else None."""
    adapter = served.version.name if served.version is not None else None
    header = http.headers.get(OPT_OUT_HEADER)
    logged = server.state.interaction_log.wants(adapter, header)
    if not logged and (adapter is None or not server.state.drift.enabled):
        return None
    parameters = (
        request.model_dump(mode="json", exclude=set(NOT_PARAMETERS), exclude_none=True, by_alias=True)
        if logged
        else {}  # only the log keeps parameters; drift needs none, so the request path skips the dump
    )
    return Recorder(
        server, completion_id, served, principal.tenant, route, payload, parameters, timing, logged, opted_out(header)
    )


def chat_payload(messages: list[ChatMessage]) -> dict[str, Any]:
    """Messages as plain {"role", "content"} text (content parts joined): the shape training files use."""
    plain = []
    for message in messages:
        content = message.content
        if isinstance(content, list):
            content = "".join(part.text or "" for part in content)
        plain.append({"role": message.role, "content": content or ""})
    return {"messages": plain}
