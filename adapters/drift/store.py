"""Drift in the hub's database: reference profiles per version and the history of window evaluations.

Servers write snapshots as they evaluate; `loradock drift` and the dashboard read them, so drift can be looked
at from any machine that reaches the database, and after a restart.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from adapters.database import Database
from adapters.drift.profile import DriftProfile
from adapters.drift.reports import WindowReport
from adapters.tables import DriftProfileRow, DriftSnapshot


class SnapshotView(BaseModel):
    created_at: datetime
    adapter: str
    version: int
    replica: str
    report: WindowReport


class ProfileInfo(BaseModel):
    lora_id: int
    source: str
    prompts: int
    created_at: datetime
    created_by: str


class DriftStore:
    def __init__(self, database: Database) -> None:
        self._database = database

    def save_profile(self, lora_id: int, profile: DriftProfile, *, created_by: str, replace: bool = False) -> bool:
        """Store `profile` for the version `lora_id`; False if it already had one and `replace` is off (a profile
        another replica built from production traffic at the same moment, say)."""
        row = DriftProfileRow(
            lora_id=lora_id,
            source=profile.source,
            prompts=profile.prompts,
            payload=profile.to_bytes(),
            created_at=profile.created_at,
            created_by=created_by,
        )
        try:
            with self._database.session() as session:
                if replace:
                    session.execute(delete(DriftProfileRow).where(DriftProfileRow.lora_id == lora_id))
                session.add(row)
        except IntegrityError:
            return False
        return True

    def load_profile(self, lora_id: int) -> DriftProfile | None:
        with self._database.read() as session:
            payload = session.scalar(select(DriftProfileRow.payload).where(DriftProfileRow.lora_id == lora_id))
        return DriftProfile.from_bytes(payload) if payload is not None else None

    def profile_created(self, lora_id: int) -> datetime | None:
        """When the version's profile was built (a cheap check for a replaced profile), None if it has none."""
        with self._database.read() as session:
            return session.scalar(select(DriftProfileRow.created_at).where(DriftProfileRow.lora_id == lora_id))

    def profiles(self, lora_ids: set[int]) -> dict[int, ProfileInfo]:
        with self._database.read() as session:
            rows = session.execute(
                select(
                    DriftProfileRow.lora_id,
                    DriftProfileRow.source,
                    DriftProfileRow.prompts,
                    DriftProfileRow.created_at,
                    DriftProfileRow.created_by,
                ).where(DriftProfileRow.lora_id.in_(lora_ids))
            ).all()
        return {row.lora_id: ProfileInfo.model_validate(row, from_attributes=True) for row in rows}

    def add_snapshots(self, snapshots: list[SnapshotView]) -> None:
        with self._database.session() as session:
            session.add_all(
                DriftSnapshot(
                    created_at=snapshot.created_at,
                    adapter=snapshot.adapter,
                    version=snapshot.version,
                    window=snapshot.report.window,
                    status=snapshot.report.status.value,
                    n=snapshot.report.n,
                    report=snapshot.report.model_dump(mode="json"),
                    replica=snapshot.replica,
                )
                for snapshot in snapshots
            )

    def history(self, adapter: str, *, since: datetime | None = None, limit: int = 2000) -> list[SnapshotView]:
        """Snapshots of `adapter`, oldest first (the latest `limit` of them)."""
        query = select(DriftSnapshot).where(DriftSnapshot.adapter == adapter)
        if since is not None:
            query = query.where(DriftSnapshot.created_at >= since)
        with self._database.read() as session:
            rows = session.scalars(query.order_by(DriftSnapshot.id.desc()).limit(limit)).all()
            return [_view(row) for row in reversed(rows)]

    def latest(self, adapter: str) -> list[SnapshotView]:
        """The newest snapshot of each (version, window) of `adapter`."""
        newest = (
            select(func.max(DriftSnapshot.id))
            .where(DriftSnapshot.adapter == adapter)
            .group_by(DriftSnapshot.version, DriftSnapshot.window)
        )
        with self._database.read() as session:
            rows = session.scalars(
                select(DriftSnapshot).where(DriftSnapshot.id.in_(newest)).order_by(DriftSnapshot.version)
            ).all()
            return [_view(row) for row in rows]

    def prune(self, before: datetime) -> int:
        with self._database.session() as session:
            result = session.execute(delete(DriftSnapshot).where(DriftSnapshot.created_at < before))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _view(row: DriftSnapshot) -> SnapshotView:
    return SnapshotView(
        created_at=row.created_at,
        adapter=row.adapter,
        version=row.version,
        replica=row.replica,
        report=WindowReport.model_validate(row.report),
    )
