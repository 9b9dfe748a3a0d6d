"""The hub's tables (SQLAlchemy 2 ORM). Migrations in adapters/migrations create and evolve them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

ACTIVE, DEPRECATED, PURGED = "active", "deprecated", "purged"
"""The statuses of a version: served; kept for lineage and rollback but refused (410); files deleted."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Timestamps stored in UTC and read back timezone-aware on every database.

    PostgreSQL keeps the zone; SQLite has no timestamp type and hands back naive values, which the API would then
    print without an offset (not RFC 3339, so clients and schema validators reject them).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Aware values are stored as UTC (SQLite would drop the offset unconverted); naive ones are UTC already."""
        if value is not None and value.tzinfo is not None:
            return value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        list[Any]: JSON,
        datetime: UtcDateTime(),
    }


class Adapter(Base):
    """A named adapter; its content lives in immutable versions."""

    __tablename__ = "adapters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
    tenant: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """The tenant that owns it (a fine-tuning job's), whose keys may use it; None: managed by ops."""

    versions: Mapped[list[AdapterVersion]] = relationship(
        back_populates="adapter", order_by="AdapterVersion.version", lazy="selectin"
    )
    aliases: Mapped[list[Alias]] = relationship(back_populates="adapter", order_by="Alias.name", lazy="selectin")


class AdapterVersion(Base):
    """One immutable version of an adapter. Its primary key is the LoRA id the engine knows it by: stable across
    restarts and identical on every replica that shares the database."""

    __tablename__ = "adapter_versions"
    __table_args__ = (UniqueConstraint("adapter_id", "version", name="uq_adapter_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="active")
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    rank: Mapped[int] = mapped_column(Integer)
    alpha: Mapped[float] = mapped_column(Float)
    target_modules: Mapped[list[Any]] = mapped_column()
    base_fingerprint: Mapped[dict[str, Any]] = mapped_column()
    base_fingerprint_sha256: Mapped[str] = mapped_column(String(64), index=True)
    source_kind: Mapped[str] = mapped_column(String(16))
    source_uri: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)

    adapter: Mapped[Adapter] = relationship(back_populates="versions")
    artifacts: Mapped[list[Artifact]] = relationship(
        back_populates="version", order_by="Artifact.created_at", lazy="selectin", cascade="all, delete-orphan"
    )


class Artifact(Base):
    """An export of one adapter version (merged model, ONNX build, distilled student): its lineage is the version
    it came from and, for an export of an export (the ONNX build of a student), the artifact it was built from."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("version_id", "label", name="uq_artifact_label"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    label: Mapped[str] = mapped_column(String(64))
    """Unique per version (`merged`, `onnx-int4`, `distilled`, `distilled-onnx-int8`): a new export replaces it."""
    parent_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    report: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))

    version: Mapped[AdapterVersion] = relationship(back_populates="artifacts")


class Alias(Base):
    """A movable name for one version, or a weighted split over several (`prod` = v3 90 %, v4 10 %)."""

    __tablename__ = "aliases"

    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    targets: Mapped[list[Any]] = mapped_column()
    """[{"version": 3, "weight": 0.9}, {"version": 4, "weight": 0.1}]"""
    previous_targets: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    """What the alias pointed at before its last move: `loradock rollback` moves it back in one step."""
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    updated_by: Mapped[str] = mapped_column(String(128))

    adapter: Mapped[Adapter] = relationship(back_populates="aliases")


class ApiKey(Base):
    """An API key, stored as its sha256 (keys are 190 random bits, so a fast hash does not help guessing)."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    scope: Mapped[str] = mapped_column(String(16))
    tenant: Mapped[str] = mapped_column(String(64))
    adapters: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    description: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)
    requests_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_concurrent: Mapped[int | None] = mapped_column(Integer, nullable=True)


class DataFile(Base):
    """An uploaded file (OpenAI's Files API), checked on upload; its bytes live under $LORADOCK_HOME/files."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    filename: Mapped[str] = mapped_column(String(256))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    status_details: Mapped[str | None] = mapped_column(String(4096), nullable=True)
    shape: Mapped[str | None] = mapped_column(String(32), nullable=True)
    rows: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FineTuningJob(Base):
    """A fine-tuning job (OpenAI's fine-tuning API), run by `loradock worker`."""

    __tablename__ = "fine_tuning_jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, unique=True)
    """Creation order, for cursor pagination."""
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    model: Mapped[str] = mapped_column(String(256))
    training_file: Mapped[str] = mapped_column(String(40))
    validation_file: Mapped[str | None] = mapped_column(String(40), nullable=True)
    method: Mapped[str] = mapped_column(String(16))
    hyperparameters: Mapped[dict[str, Any]] = mapped_column()
    lora: Mapped[dict[str, Any]] = mapped_column()
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(Integer)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    status: Mapped[str] = mapped_column(String(24), index=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(256), nullable=True, unique=True)
    adapter_ref: Mapped[str | None] = mapped_column(String(80), nullable=True)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    run_dir: Mapped[str | None] = mapped_column(String(1024), nullable=True)


class FineTuningEvent(Base):
    __tablename__ = "fine_tuning_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    level: Mapped[str] = mapped_column(String(8))
    message: Mapped[str] = mapped_column(String(2048))
    type: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class FineTuningCheckpoint(Base):
    __tablename__ = "fine_tuning_checkpoints"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Interaction(Base):
    """One logged completion (sampled, redacted), keyed by the `id` its response carried."""

    __tablename__ = "interactions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    model: Mapped[str] = mapped_column(String(256))
    """The model string the response reported (`support-tickets@3`, or the base model's name)."""
    adapter: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    route: Mapped[str] = mapped_column(String(16))
    request: Mapped[dict[str, Any]] = mapped_column()
    """{"messages": [...]} for chat, {"prompt": ...} for text completions (redacted)."""
    parameters: Mapped[dict[str, Any]] = mapped_column()
    outputs: Mapped[list[Any]] = mapped_column()
    """One text per choice (redacted)."""
    finish_reasons: Mapped[list[Any]] = mapped_column()
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    redactions: Mapped[int] = mapped_column(Integer, default=0)
    shadow_of: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    """For a shadow answer (a candidate answering a copy of live traffic, never returned): the live completion."""


class Feedback(Base):
    """A rating, and optionally a correction, of one logged completion; one record per (completion, source)."""

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("completion_id", "source", name="uq_feedback_source"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    completion_id: Mapped[str] = mapped_column(ForeignKey("interactions.id", ondelete="CASCADE"), index=True)
    source: Mapped[str] = mapped_column(String(64))
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    choice_index: Mapped[int] = mapped_column(Integer, default=0)
    rating: Mapped[str | None] = mapped_column(String(8), nullable=True)
    score: Mapped[float] = mapped_column(Float)
    correction: Mapped[str | None] = mapped_column(Text, nullable=True)
    labels: Mapped[list[Any]] = mapped_column(default=list)
    comment: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))


class LogPolicy(Base):
    """How much of one adapter's traffic is logged and for how long (unset: the server's defaults)."""

    __tablename__ = "log_policies"

    adapter: Mapped[str] = mapped_column(String(64), primary_key=True)
    sample_rate: Mapped[float] = mapped_column(Float)
    retention_days: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    updated_by: Mapped[str] = mapped_column(String(128))


class DriftProfileRow(Base):
    """A version's reference profile for drift (adapters/drift/profile.py), as one compressed numpy archive."""

    __tablename__ = "drift_profiles"

    lora_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id", ondelete="CASCADE"), primary_key=True)
    source: Mapped[str] = mapped_column(String(16))
    prompts: Mapped[int] = mapped_column(Integer)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))


class DriftSnapshot(Base):
    """One evaluation of a drift window, kept for the history chart and for `loradock drift` on any machine."""

    __tablename__ = "drift_snapshots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    adapter: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    window: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(24))
    n: Mapped[int] = mapped_column(Integer)
    report: Mapped[dict[str, Any]] = mapped_column()
    replica: Mapped[str] = mapped_column(String(128))
