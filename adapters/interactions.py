"""The interaction log: completions the server answered, kept (sampled and redacted) for feedback and retraining.

The server builds an `InteractionRecord` per completion and hands it to a background writer (server/interaction_log.py);
this module is the storage side, shared with the CLI: batched writes, per-adapter policies (sampling rate and
retention), expiry, and the deletion of one record on request with the versions that learned from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import delete, insert, or_, select

from adapters.database import Database
from adapters.errors import InvalidInputError, NotFoundError
from adapters.naming import check_name
from adapters.redaction import Redactor
from adapters.tables import AdapterVersion, Feedback, Interaction, LogPolicy, utcnow

LEARNED_FROM = "learned_from"
"""Version metadata key: {"interactions": [...], "feedback": [...]} a retrained version learned from."""


class InteractionRecord(BaseModel):
    """What the server knows about one finished completion, before redaction."""

    id: str
    model: str
    adapter: str | None
    version: int | None
    tenant: str
    route: str
    request: dict[str, Any]
    parameters: dict[str, Any]
    outputs: list[str]
    finish_reasons: list[str | None]
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    ttft_ms: float | None
    shadow_of: str | None = None
    created_at: datetime = Field(default_factory=utcnow)


class InteractionView(InteractionRecord):
    """A stored interaction (redacted)."""

    redactions: int

    @classmethod
    def of(cls, row: Interaction) -> InteractionView:
        return cls.model_validate(row, from_attributes=True)


@dataclass(frozen=True)
class LogPolicyView:
    sample_rate: float
    retention_days: float


def check_policy(sample_rate: float, retention_days: float) -> None:
    if not 0 <= sample_rate <= 1:
        raise InvalidInputError(f"sample rate must be between 0 and 1, got {sample_rate}")
    if retention_days <= 0:
        raise InvalidInputError(f"retention must be a positive number of days, got {retention_days}")


class InteractionStore:
    def __init__(self, database: Database) -> None:
        self.db = database

    def write(self, records: list[InteractionRecord], redactor: Redactor | None) -> int:
        """Redact and insert `records` in one transaction; returns the number of spans redacted."""
        rows = []
        redacted_total = 0
        for record in records:
            row = record.model_dump()
            count = 0
            if redactor is not None:
                row["request"], in_request = redactor.value(record.request)
                row["outputs"], in_outputs = redactor.value(record.outputs)
                count = in_request + in_outputs
            row["redactions"] = count
            redacted_total += count
            rows.append(row)
        with self.db.session() as session:
            session.execute(insert(Interaction), rows)
        return redacted_total

    def get(self, completion_id: str) -> InteractionView:
        with self.db.read() as session:
            row = session.get(Interaction, completion_id)
            if row is None:
                raise NotFoundError(f"no logged completion with id {completion_id!r}")
            return InteractionView.of(row)

    def shadow_pairs(self, adapter: str, shadow_version: int) -> list[tuple[InteractionView, InteractionView]]:
        """(live answer, shadow answer) for every request `adapter@shadow_version` answered in the shadow."""
        with self.db.read() as session:
            shadows = session.scalars(
                select(Interaction).where(
                    Interaction.adapter == adapter,
                    Interaction.version == shadow_version,
                    Interaction.shadow_of.is_not(None),
                )
            ).all()
            live = {
                row.id: row
                for row in session.scalars(
                    select(Interaction).where(Interaction.id.in_([row.shadow_of for row in shadows]))
                )
            }
            return [
                (InteractionView.of(live[row.shadow_of]), InteractionView.of(row))
                for row in shadows
                if row.shadow_of in live
            ]

    # --- policies and retention -----------------------------------------------------------------------

    def policies(self) -> dict[str, LogPolicyView]:
        with self.db.read() as session:
            return {
                row.adapter: LogPolicyView(row.sample_rate, row.retention_days)
                for row in session.scalars(select(LogPolicy))
            }

    def set_policy(self, adapter: str, sample_rate: float, retention_days: float, *, updated_by: str) -> LogPolicyView:
        check_name(adapter)
        check_policy(sample_rate, retention_days)
        with self.db.session() as session:
            row = session.get(LogPolicy, adapter)
            if row is None:
                session.add(
                    LogPolicy(
                        adapter=adapter, sample_rate=sample_rate, retention_days=retention_days, updated_by=updated_by
                    )
                )
            else:
                row.sample_rate, row.retention_days, row.updated_by = sample_rate, retention_days, updated_by
        return LogPolicyView(sample_rate, retention_days)

    def delete_expired(self, default_retention_days: float, now: datetime | None = None) -> int:
        """Delete interactions (and their feedback) older than their adapter's retention; returns how many."""
        now = now or utcnow()
        policies = self.policies()
        deleted = 0
        with self.db.session() as session:
            for adapter, policy in policies.items():
                cutoff = now - timedelta(days=policy.retention_days)
                result = session.execute(
                    delete(Interaction).where(Interaction.adapter == adapter, Interaction.created_at < cutoff)
                )
                deleted += result.rowcount or 0  # type: ignore[attr-defined]
            cutoff = now - timedelta(days=default_retention_days)
            others = or_(Interaction.adapter.is_(None), Interaction.adapter.not_in(list(policies) or [""]))
            result = session.execute(delete(Interaction).where(others, Interaction.created_at < cutoff))
            deleted += result.rowcount or 0  # type: ignore[attr-defined]
        return deleted

    # --- deletion requests --------------------------------------------------------------------------------

    def forget(self, completion_id: str) -> tuple[list[str], list[str]]:
        """Delete one interaction and its feedback (a deletion request).

        Returns (feedback ids deleted, versions that learned from it): those versions keep what they learned, so
        the caller decides whether to retrain them without it.
        """
        with self.db.session() as session:
            row = session.get(Interaction, completion_id)
            if row is None:
                raise NotFoundError(f"no logged completion with id {completion_id!r}")
            feedback_ids = list(session.scalars(select(Feedback.id).where(Feedback.completion_id == completion_id)))
            session.execute(delete(Feedback).where(Feedback.completion_id == completion_id))
            session.delete(row)
        return feedback_ids, self.versions_that_learned_from(completion_id, feedback_ids)

    def versions_that_learned_from(self, completion_id: str, feedback_ids: list[str] | None = None) -> list[str]:
        """Every version whose training data included this interaction (or one of these feedback records)."""
        wanted = set(feedback_ids or [])
        with self.db.read() as session:
            rows = session.execute(select(AdapterVersion).order_by(AdapterVersion.id)).scalars().all()
            users = []
            for row in rows:
                learned = (row.meta or {}).get(LEARNED_FROM) or {}
                if completion_id in learned.get("interactions", ()) or wanted & set(learned.get("feedback", ())):
                    users.append(f"{row.adapter.name}@{row.version}")
            return users
