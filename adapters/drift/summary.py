"""An adapter's drift as the API, the CLI and the dashboard show it: per version, with the history of snapshots."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from adapters.drift.reports import AdapterDrift, HistoryPoint, Status, VersionDrift, worst
from adapters.drift.store import DriftStore, SnapshotView
from adapters.records import AdapterView

HISTORY = timedelta(hours=24)


def history_points(snapshots: list[SnapshotView]) -> list[HistoryPoint]:
    return [
        HistoryPoint(
            created_at=snapshot.created_at,
            version=snapshot.version,
            window=snapshot.report.window,
            status=snapshot.report.status,
            n=snapshot.report.n,
            scores={check.test: check.score for check in snapshot.report.checks if check.score is not None},
        )
        for snapshot in snapshots
    ]


def stored_versions(store: DriftStore, adapter: AdapterView) -> list[VersionDrift]:
    """Each version's latest stored windows, with its profile's summary."""
    latest = store.latest(adapter.name)
    profiles = store.profiles({version.lora_id for version in adapter.versions})
    numbers = {version.version: version.lora_id for version in adapter.versions}
    versions = []
    for number in sorted({snapshot.version for snapshot in latest} | {v.version for v in adapter.versions}):
        windows = [snapshot.report for snapshot in latest if snapshot.version == number]
        profile = profiles.get(numbers.get(number, -1))
        if not windows and profile is None:
            continue
        versions.append(
            VersionDrift(
                version=number,
                status=worst([window.status for window in windows]),
                profile=profile.model_dump(mode="json") if profile else None,
                windows=windows,
            )
        )
    return versions


def adapter_drift(
    store: DriftStore,
    adapter: AdapterView,
    *,
    live: list[VersionDrift] | None = None,
    replica: str | None = None,
    history: timedelta = HISTORY,
) -> AdapterDrift:
    """`live` versions (a server's own windows) when given, else the stored ones; the history is always stored."""
    versions = live if live else stored_versions(store, adapter)
    since = datetime.now(UTC) - history
    return AdapterDrift(
        adapter=adapter.name,
        status=worst([version.status for version in versions]) if versions else Status.INSUFFICIENT,
        source="live" if live else "stored",
        replica=replica if live else None,
        versions=versions,
        history=history_points(store.history(adapter.name, since=since)),
    )
