"""Moving `prod` to a retrained candidate only when it is no worse, and back in one step.

`loradock retrain` stores in the candidate's metadata how it compared with the prod version of the time, on each
evaluation set (`comparison`). Promotion reads that record: every set must score at least prod's score minus the
margin. Optionally the candidate first answers a copy of live traffic as a shadow (never returned), or takes a
canary share of prod; `loradock rollback` restores what prod pointed at before its last move.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Literal

from adapters.errors import ConflictError, NotFoundError
from adapters.hub import Hub
from adapters.naming import CANDIDATE_ALIAS, DEFAULT_ALIAS, SHADOW_ALIAS
from adapters.records import AdapterView, AliasTarget, AliasView, VersionView

COMPARISON = "comparison"
"""Candidate metadata key written by `loradock retrain`: {"against": "NAME@V", "sets": {set: {...}}}."""

Outcome = Literal["promoted", "canary", "shadow_started", "shadow_waiting", "refused"]


@dataclass(frozen=True)
class Gate:
    evaluation_set: str
    metric: str
    count: int
    prod: float
    candidate: float
    margin: float

    @property
    def passed(self) -> bool:
        return self.candidate >= self.prod - self.margin


@dataclass(frozen=True)
class ShadowSummary:
    compared: int
    agreement: float
    """Share of live requests the candidate answered exactly as prod did."""
    fixes: int
    """Live answers that were corrected by feedback and that the candidate answered with the correction."""
    prod_latency_ms: float
    candidate_latency_ms: float


@dataclass
class Promotion:
    outcome: Outcome
    candidate: VersionView
    prod_before: int | None
    gates: list[Gate] = field(default_factory=list)
    shadow: ShadowSummary | None = None
    reason: str = ""


def current_prod(adapter: AdapterView, candidate: int) -> int | None:
    """The version prod serves besides the candidate (during a canary: the other side), else the newest other one."""
    prod = _alias(adapter, DEFAULT_ALIAS)
    if prod is not None:
        others = [target.version for target in prod.targets if target.version != candidate]
        return max(others) if others else candidate
    active = [version.version for version in adapter.active_versions if version.version != candidate]
    return max(active) if active else None


def gates(candidate: VersionView, prod_version: int | None, margin: float) -> list[Gate]:
    """One gate per evaluation set of the candidate's comparison; refuses a comparison with a stale prod."""
    comparison: dict[str, Any] = candidate.metadata.get(COMPARISON) or {}
    if not comparison:
        raise ConflictError(f"{candidate.ref} has no comparison with prod; it was not made by `loradock retrain`")
    against = comparison.get("against")
    expected = f"{candidate.name}@{prod_version}" if prod_version is not None else None
    if against != expected:
        raise ConflictError(
            f"{candidate.ref} was compared with {against}, but prod is now {expected}; "
            "run `loradock retrain` again so that the comparison is with what is in production"
        )
    return [
        Gate(name, scores["metric"], scores["count"], scores["prod"], scores["candidate"], margin)
        for name, scores in comparison["sets"].items()
        if scores.get("count")
    ]


def shadow_summary(hub: Hub, name: str, candidate: int) -> ShadowSummary:
    pairs = hub.interactions.shadow_pairs(name, candidate)
    if not pairs:
        return ShadowSummary(0, 0.0, 0, 0.0, 0.0)
    corrections: dict[str, str] = {}
    for live, _ in pairs:
        for record in hub.feedback.for_completion(live.id):
            if record.correction:
                corrections[live.id] = record.correction
    same = sum(live.outputs == shadow.outputs for live, shadow in pairs)
    fixes = sum(1 for live, shadow in pairs if live.id in corrections and shadow.outputs[:1] == [corrections[live.id]])
    return ShadowSummary(
        compared=len(pairs),
        agreement=same / len(pairs),
        fixes=fixes,
        prod_latency_ms=statistics.median(live.latency_ms for live, _ in pairs),
        candidate_latency_ms=statistics.median(shadow.latency_ms for _, shadow in pairs),
    )


def promote(
    hub: Hub,
    name: str,
    *,
    margin: float,
    canary: float | None = None,
    shadow_min_requests: int = 0,
    shadow_min_agreement: float = 0.0,
    updated_by: str = "loradock promote",
) -> Promotion:
    """Check the gates, then (after an optional shadow period) move prod to the candidate, or a canary share."""
    if canary is not None and not 0 < canary < 1:
        raise ConflictError(f"--canary is the candidate's share of prod traffic, between 0 and 1; got {canary}")
    registry = hub.registry
    adapter = registry.get_adapter(name)
    candidate_alias = _alias(adapter, CANDIDATE_ALIAS)
    if candidate_alias is None:
        raise NotFoundError(f"{name} has no {CANDIDATE_ALIAS!r} version; make one with `loradock retrain {name}`")
    candidate = registry.get_version(name, candidate_alias.targets[0].version)
    prod_before = current_prod(adapter, candidate.version)
    result = Promotion("refused", candidate, prod_before, gates(candidate, prod_before, margin))
    failed = [gate for gate in result.gates if not gate.passed]
    if failed:
        result.reason = "; ".join(
            f"{gate.evaluation_set}: {gate.metric} {gate.candidate:.3f} < prod {gate.prod:.3f} - margin {margin:g}"
            for gate in failed
        )
        return result
    if shadow_min_requests:
        shadow = _alias(adapter, SHADOW_ALIAS)
        if shadow is None or shadow.targets[0].version != candidate.version:
            registry.set_alias(name, SHADOW_ALIAS, [AliasTarget(version=candidate.version)], updated_by=updated_by)
            result.outcome = "shadow_started"
            return result
        result.shadow = shadow_summary(hub, name, candidate.version)
        if result.shadow.compared < shadow_min_requests:
            result.outcome = "shadow_waiting"
            result.reason = f"{result.shadow.compared} of {shadow_min_requests} live requests compared so far"
            return result
        if result.shadow.agreement < shadow_min_agreement:
            result.reason = (
                f"the candidate agreed with prod on {result.shadow.agreement:.0%} of live requests, "
                f"below --shadow-min-agreement {shadow_min_agreement:.0%}"
            )
            return result
        registry.delete_alias(name, SHADOW_ALIAS)
    if canary is not None and prod_before is not None and prod_before != candidate.version:
        targets = [
            AliasTarget(version=prod_before, weight=round(1 - canary, 6)),
            AliasTarget(version=candidate.version, weight=canary),
        ]
        registry.set_alias(name, DEFAULT_ALIAS, targets, updated_by=updated_by)
        result.outcome = "canary"
        return result
    registry.set_alias(name, DEFAULT_ALIAS, [AliasTarget(version=candidate.version)], updated_by=updated_by)
    registry.delete_alias(name, CANDIDATE_ALIAS)
    result.outcome = "promoted"
    return result


def rollback(hub: Hub, name: str, *, updated_by: str = "loradock rollback") -> AliasView:
    """Prod back to the version(s) it served before its last move, in one step.

    After a canary followed by a full promotion the previous state is the canary split; rolling back then means
    the versions of that split other than the one now in prod, so that one command always leaves the new version.
    A shadow of the version rolled away from stops too.
    """
    adapter = hub.registry.get_adapter(name)
    prod = _alias(adapter, DEFAULT_ALIAS)
    if prod is None:
        raise NotFoundError(f"{name} has no {DEFAULT_ALIAS!r} alias to roll back")
    if not prod.previous_targets:
        raise ConflictError(f"{name}:{DEFAULT_ALIAS} has never moved; there is nothing to roll back to")
    current = {target.version for target in prod.targets}
    targets = list(prod.previous_targets)
    if len(current) == 1 and len(targets) > 1:
        targets = [target for target in targets if target.version not in current] or targets
    if len(targets) == 1:
        targets = [AliasTarget(version=targets[0].version)]
    view = hub.registry.set_alias(name, DEFAULT_ALIAS, targets, updated_by=updated_by)
    if _alias(adapter, SHADOW_ALIAS) is not None:
        hub.registry.delete_alias(name, SHADOW_ALIAS)
    return view


def _alias(adapter: AdapterView, alias: str) -> AliasView | None:
    return next((item for item in adapter.aliases if item.name == alias), None)
