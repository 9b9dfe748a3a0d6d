"""Shadow traffic: while an adapter has a `shadow` alias, that version also answers a copy of each live chat
request, after the live answer is complete. Shadow answers are never returned; they are logged beside the live
answer (`shadow_of`) so that `loradock promote` can compare candidate and prod on real traffic.

Copies are best effort: at most `shadow_max_in_flight` run at once and the rest are skipped (counted), so the
shadow can never crowd out live requests.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from server.resolution import ServedModel
from server.serving.recording import Recorder, Timing
from server.serving.runner import Job, collect, generate
from server.state import ReadyServer

logger = logging.getLogger(__name__)

ROUTE = "shadow"


def mirror(server: ReadyServer, recorder: Recorder, job: Job) -> None:
    """Start the shadow copy of a finished live request in the background (its response is not delayed)."""
    if recorder.served.version is None or not recorder.logged:
        return
    task = asyncio.create_task(_mirror(server, recorder, job))
    server.state.background.add(task)
    task.add_done_callback(server.state.background.discard)


async def _mirror(server: ReadyServer, recorder: Recorder, job: Job) -> None:
    live = recorder.served.version
    assert live is not None
    state = server.state
    try:
        shadow = await state.resolver.shadow_for(live.name)
    except Exception as exc:  # the database is briefly unreachable: no copy this time
        logger.warning("could not look up the shadow of %s: %s", live.name, exc)
        return
    if shadow is None or shadow.version is None or shadow.version.version == live.version:
        return
    if state.shadow_slots.locked():
        state.metrics.shadow_requests.labels(live.name, "skipped").inc()
        return
    await _answer(server, recorder, job, shadow)


async def _answer(server: ReadyServer, recorder: Recorder, job: Job, shadow: ServedModel) -> None:
    state = server.state
    adapter = recorder.served.version.name if recorder.served.version else ""
    async with state.shadow_slots:
        timing = Timing()
        copy = Job(f"shadow-{uuid.uuid4().hex}", job.prompt_token_ids, job.options)
        try:
            done = await collect(copy, generate(server, shadow, copy, ROUTE, timing))
        except Exception as exc:  # overloaded, or the candidate failed to load: the live answer is unaffected
            logger.warning("shadow copy of %s on %s failed: %s", recorder.completion_id, shadow.name, exc)
            state.metrics.shadow_requests.labels(adapter, "error").inc()
            return
    record = recorder.record(
        done.texts,
        done.finish_reasons,
        len(job.prompt_token_ids),
        done.completion_tokens,
        shadow_of=recorder.completion_id,
        timing=timing,
        served=shadow,
        completion_id=copy.request_id,
    )
    state.interaction_log.submit(record)
    state.metrics.shadow_requests.labels(adapter, "ok").inc()
