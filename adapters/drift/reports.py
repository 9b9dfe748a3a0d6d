"""What a drift evaluation reports (the API's and the stored snapshots' shape): light, no numpy or scipy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel


@dataclass(frozen=True)
class Thresholds:
    """The scores at which a test warns and alerts."""

    warn: float
    alert: float


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    ALERT = "alert"
    INSUFFICIENT = "insufficient_data"


SEVERITY = {Status.INSUFFICIENT: -1, Status.OK: 0, Status.WARN: 1, Status.ALERT: 2}


def worst(statuses: Sequence[Status]) -> Status:
    return max(statuses, key=SEVERITY.__getitem__, default=Status.INSUFFICIENT)


class CheckResult(BaseModel):
    test: str
    target: str
    method: str
    n: int
    status: Status
    score: float | None = None
    warn_at: float | None = None
    alert_at: float | None = None
    p_value: float | None = None

    @classmethod
    def scored(
        cls, test: str, target: str, method: str, n: int, score: float, limits: Thresholds, p: float | None
    ) -> CheckResult:
        status = Status.ALERT if score >= limits.alert else Status.WARN if score >= limits.warn else Status.OK
        return cls(
            test=test,
            target=target,
            method=method,
            n=n,
            status=status,
            score=round(score, 6),
            warn_at=round(limits.warn, 6),
            alert_at=round(limits.alert, 6),
            p_value=None if p is None else round(p, 6),
        )

    @classmethod
    def insufficient(cls, test: str, target: str, method: str, n: int) -> CheckResult:
        return cls(test=test, target=target, method=method, n=n, status=Status.INSUFFICIENT)


class DriftedExample(BaseModel):
    prompt: str
    similarity: float
    """Cosine similarity to the closest reference prompt: the lower, the less it resembles the training data."""


class WindowReport(BaseModel):
    window: str
    """count (the latest N completions) or time (those of the last T seconds)."""
    size: str
    n: int
    start: datetime | None
    end: datetime | None
    status: Status
    checks: list[CheckResult]
    examples: list[DriftedExample]


class VersionDrift(BaseModel):
    version: int
    status: Status
    observed: int | None = None
    """Completions this server has seen of this version (None when read from stored snapshots)."""
    profile: dict[str, Any] | None = None
    profiling: dict[str, int] | None = None
    """While a version with no profile collects its first production prompts: collected and needed."""
    windows: list[WindowReport]


class HistoryPoint(BaseModel):
    created_at: datetime
    version: int
    window: str
    status: Status
    n: int
    scores: dict[str, float]


class AdapterDrift(BaseModel):
    object: str = "adapter.drift"
    adapter: str
    status: Status
    source: str
    """live (this server's windows) or stored (the latest snapshots in the hub, from any replica)."""
    replica: str | None
    versions: list[VersionDrift]
    history: list[HistoryPoint]
