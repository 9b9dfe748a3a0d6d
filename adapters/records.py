"""Read-only views of hub records: what the registry returns, the ops API sends and the CLI prints."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from adapters.tables import AdapterVersion, Alias, Artifact


class SourceView(BaseModel):
    kind: str
    uri: str


class ArtifactView(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    kind: str = Field(description="merged, onnx or distilled")
    label: str = Field(description="Unique per version: merged, onnx-int4, distilled, distilled-onnx-int8, ...")
    parent_id: str | None = Field(default=None, description="The artifact this one was built from, if any.")
    sha256: str
    size_bytes: int
    report: dict[str, Any] = Field(description="Quality, size, speed and memory against the teacher.")
    created_at: datetime
    created_by: str

    @classmethod
    def of(cls, row: Artifact) -> ArtifactView:
        return cls(
            id=row.id,
            kind=row.kind,
            label=row.label,
            parent_id=row.parent_id,
            sha256=row.sha256,
            size_bytes=row.size_bytes,
            report=dict(row.report or {}),
            created_at=row.created_at,
            created_by=row.created_by,
        )


class VersionView(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    version: int
    lora_id: int = Field(description="The stable integer id the engine knows this version by.")
    status: str
    sha256: str
    size_bytes: int
    rank: int
    alpha: float
    target_modules: list[str]
    base_fingerprint: dict[str, Any]
    base_fingerprint_sha256: str
    source: SourceView
    created_at: datetime
    created_by: str
    metadata: dict[str, Any]
    owner: str | None = Field(default=None, description="The tenant that owns the adapter (None: ops-managed).")
    artifacts: list[ArtifactView] = Field(default_factory=list, description="Exports made from this version.")

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @classmethod
    def of(cls, row: AdapterVersion, name: str, owner: str | None = None) -> VersionView:
        return cls(
            name=name,
            owner=owner,
            version=row.version,
            lora_id=row.id,
            status=row.status,
            sha256=row.sha256,
            size_bytes=row.size_bytes,
            rank=row.rank,
            alpha=row.alpha,
            target_modules=list(row.target_modules),
            base_fingerprint=dict(row.base_fingerprint),
            base_fingerprint_sha256=row.base_fingerprint_sha256,
            source=SourceView(kind=row.source_kind, uri=row.source_uri),
            created_at=row.created_at,
            created_by=row.created_by,
            metadata=dict(row.meta or {}),
            artifacts=[ArtifactView.of(artifact) for artifact in row.artifacts],
        )


DB_INT_MAX = 2**31 - 1
"""The largest value an INTEGER column holds on PostgreSQL; numbers from clients are bounded by it."""


class AliasTarget(BaseModel):
    model_config = ConfigDict(frozen=True)

    version: int = Field(ge=1, le=DB_INT_MAX)
    weight: float = Field(default=1.0, gt=0, allow_inf_nan=False)


class AliasView(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    targets: list[AliasTarget]
    previous_targets: list[AliasTarget] | None = Field(default=None, description="Before the last move.")
    updated_at: datetime
    updated_by: str

    @classmethod
    def of(cls, row: Alias) -> AliasView:
        previous = row.previous_targets
        return cls(
            name=row.name,
            targets=[AliasTarget(**target) for target in row.targets],
            previous_targets=[AliasTarget(**target) for target in previous] if previous else None,
            updated_at=row.updated_at,
            updated_by=row.updated_by,
        )


class AdapterView(BaseModel):
    name: str
    created_at: datetime
    created_by: str
    owner: str | None = None
    versions: list[VersionView]
    aliases: list[AliasView]

    @property
    def active_versions(self) -> list[VersionView]:
        return [version for version in self.versions if version.status == "active"]


class ApiKeyView(BaseModel):
    id: int
    prefix: str
    scope: str
    tenant: str
    adapters: list[str] | None
    description: str
    created_at: datetime
    revoked_at: datetime | None
    requests_per_minute: int | None = None
    max_concurrent: int | None = None
