"""Exports of adapter versions recorded in the hub: merged models, ONNX builds and distilled students.

An export is assembled in the store's staging area by the training side and handed over here whole: the files go
into the content-addressed store and the row is written in one transaction, so an export is either fully listed
and downloadable or absent. A new export with the same label replaces the old one only once it is stored.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from adapters.database import Database
from adapters.errors import NotFoundError
from adapters.records import ArtifactView
from adapters.store import ArtifactStore
from adapters.tables import PURGED, Adapter, AdapterVersion, Artifact

ARTIFACT_KINDS = ("merged", "onnx", "distilled")


class ArtifactRegistry:
    def __init__(self, database: Database, store: ArtifactStore) -> None:
        self.db = database
        self.store = store

    def add(
        self,
        name: str,
        version: int,
        staged: Path,
        *,
        kind: str,
        label: str,
        report: dict[str, Any],
        created_by: str,
        parent_id: str | None = None,
    ) -> ArtifactView:
        """Store the folder `staged` (inside the store's staging area; consumed) as an export of NAME@VERSION."""
        try:
            if kind not in ARTIFACT_KINDS:
                raise ValueError(f"unknown artifact kind {kind!r}; expected one of {', '.join(ARTIFACT_KINDS)}")
            size = sum(path.stat().st_size for path in staged.rglob("*") if path.is_file())
            with self.db.read() as session:
                _version_row(session, name, version)  # refuse before storing anything
            stored = self.store.commit(staged)
            try:
                with self.db.session() as session:
                    row = _version_row(session, name, version)
                    replaced = next((old for old in row.artifacts if old.label == label), None)
                    replaced_sha = replaced.sha256 if replaced is not None else None
                    if replaced is not None:
                        row.artifacts.remove(replaced)
                        session.flush()
                    artifact = Artifact(
                        id=f"art-{secrets.token_hex(12)}",
                        kind=kind,
                        label=label,
                        parent_id=parent_id,
                        sha256=stored.sha256,
                        size_bytes=size,
                        report=report,
                        created_by=created_by,
                    )
                    row.artifacts.append(artifact)
                    session.flush()
                    view = ArtifactView.of(artifact)
            except BaseException:
                if stored.created:
                    self.remove_unreferenced(stored.sha256)
                raise
            if replaced_sha is not None and replaced_sha != stored.sha256:
                self.remove_unreferenced(replaced_sha)
            return view
        finally:
            self.store.discard(staged)

    def get(self, name: str, version: int, artifact_id: str) -> tuple[ArtifactView, Path]:
        """The artifact and the folder that holds its files."""
        with self.db.read() as session:
            row = _version_row(session, name, version)
            found = next((artifact for artifact in row.artifacts if artifact.id == artifact_id), None)
            if found is None:
                raise NotFoundError(f"{name}@{version} has no artifact {artifact_id!r}")
            view = ArtifactView.of(found)
        return view, self.store.path(view.sha256)

    def by_label(self, name: str, version: int, label: str) -> tuple[ArtifactView, Path] | None:
        with self.db.read() as session:
            row = _version_row(session, name, version)
            found = next((artifact for artifact in row.artifacts if artifact.label == label), None)
            view = ArtifactView.of(found) if found is not None else None
        return (view, self.store.path(view.sha256)) if view is not None else None

    def drop_all(self, session: Session, row: AdapterVersion) -> list[str]:
        """Remove the rows of a version's artifacts inside the caller's transaction; returns their content hashes
        for `remove_unreferenced` once that transaction has committed."""
        hashes = [artifact.sha256 for artifact in row.artifacts]
        row.artifacts.clear()
        return hashes

    def remove_unreferenced(self, sha256: str) -> None:
        """Delete stored content that no live version and no artifact points at any more."""
        with self.db.read() as session:
            versions = session.scalar(
                select(func.count())
                .select_from(AdapterVersion)
                .where(AdapterVersion.sha256 == sha256, AdapterVersion.status != PURGED)
            )
            artifacts = session.scalar(select(func.count()).select_from(Artifact).where(Artifact.sha256 == sha256))
        if not versions and not artifacts:
            self.store.remove(sha256)


def _version_row(session: Session, name: str, version: int) -> AdapterVersion:
    row = session.scalar(
        select(AdapterVersion).join(Adapter).where(Adapter.name == name, AdapterVersion.version == version)
    )
    if row is None:
        raise NotFoundError(f"no adapter version {name}@{version}")
    if row.status == PURGED:
        raise NotFoundError(f"{name}@{version} was purged")
    return row
