"""Which remote engine a request goes to: one that already holds its adapter, else the least busy one.

Pure bookkeeping, no I/O: server/remote_engine.py does the HTTP and keeps these records current, and the policy
is tested on its own. Affinity matters because loading an adapter on a remote costs a round trip and a read of
its files there, and every remote holding a copy spends host (and GPU) memory on it; spreading *new* adapters
over the least busy remotes keeps both the load and the adapters even across them.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field


class NoReplicaError(Exception):
    """No remote engine is up (or every one was tried already)."""


@dataclass(eq=False)
class Replica:
    """One remote vLLM OpenAI server as the router sees it."""

    url: str
    up: bool = False
    """It answered its last health check and serves the expected base model."""
    in_flight: int = 0
    """Requests routed to it that have not finished."""
    adapters: set[str] = field(default_factory=set)
    """Names of the adapters it holds, or is loading right now (requests for those wait for that load)."""


def choose(replicas: Sequence[Replica], adapter: str | None, exclude: Collection[Replica] = ()) -> Replica:
    """The replica for a request of `adapter` (None: the base model), skipping those down or in `exclude`.

    Among the replicas holding the adapter, the one with the fewest requests in flight; when none holds it (and
    for the base model), the least busy replica, ties going to the one holding the fewest adapters, then to the
    first listed.
    """
    candidates = [replica for replica in replicas if replica.up and replica not in exclude]
    if not candidates:
        raise NoReplicaError
    if adapter is not None:
        holders = [replica for replica in candidates if adapter in replica.adapters]
        if holders:
            candidates = holders
    return min(candidates, key=lambda replica: (replica.in_flight, len(replica.adapters)))
