"""Feedback on logged completions: a rating (thumbs or a score), an optional correction, labels and a comment.

One record per (completion, source): a repeat from the same source updates it, so an application can let its
users change their minds. A tenant can only rate its own completions; for anyone else an id is simply unknown.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from sqlalchemy import case, func, select
from sqlalchemy.exc import IntegrityError

from adapters.database import Database
from adapters.errors import InvalidInputError, NotFoundError
from adapters.fine_tuning import Page
from adapters.naming import NAME_PATTERN
from adapters.tables import Feedback, Interaction, utcnow

THUMBS = {"up": 1.0, "down": 0.0}
WELL_RATED = 0.5
"""Scores at or above this count as positive (a thumbs up is 1, a thumbs down 0)."""


class FeedbackInput(BaseModel):
    """The body of POST /v1/feedback."""

    completion_id: str = Field(min_length=1, max_length=64, description="The `id` of the completion rated.")
    rating: Literal["up", "down"] | None = Field(default=None, description="Thumbs up or down.")
    score: float | None = Field(default=None, ge=0, le=1, description="A score from 0 (bad) to 1 (perfect).")
    correction: str | None = Field(default=None, min_length=1, max_length=32_768, description="The ideal answer.")
    labels: list[str] = Field(default_factory=list, max_length=32, description="Free-form tags, e.g. wrong_priority.")
    comment: str | None = Field(default=None, max_length=2048)
    source: str = Field(
        default="default", pattern=NAME_PATTERN.pattern, description="Who rates (end-user, reviewer, ...)."
    )
    index: int = Field(default=0, ge=0, description="Which choice of the completion is rated.")

    @model_validator(mode="after")
    def _rating_or_score(self) -> FeedbackInput:
        if self.rating is None and self.score is None:
            raise ValueError("give a rating ('up' or 'down') or a score between 0 and 1")
        if self.rating is not None and self.score is not None and (self.score >= WELL_RATED) != (self.rating == "up"):
            raise ValueError(f"rating {self.rating!r} contradicts score {self.score}")
        if any(not label or len(label) > 64 for label in self.labels):
            raise ValueError("each label must be 1-64 characters")
        return self

    @property
    def effective_score(self) -> float:
        return self.score if self.score is not None else THUMBS[self.rating or "down"]


NEGATIVE_BELOW = 0.5


class FeedbackSummary(BaseModel):
    count: int
    negative: int
    corrected: int
    mean_score: float


class FeedbackView(BaseModel):
    id: str
    object: Literal["feedback"] = "feedback"
    completion_id: str
    source: str
    index: int
    rating: str | None
    score: float
    correction: str | None
    labels: list[str]
    comment: str | None
    model: str
    adapter: str | None
    version: int | None
    tenant: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: Feedback, interaction: Interaction) -> FeedbackView:
        return cls(
            id=row.id,
            completion_id=row.completion_id,
            source=row.source,
            index=row.choice_index,
            rating=row.rating,
            score=row.score,
            correction=row.correction,
            labels=list(row.labels or []),
            comment=row.comment,
            model=interaction.model,
            adapter=interaction.adapter,
            version=interaction.version,
            tenant=row.tenant,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


class FeedbackFilter(BaseModel):
    """What GET /v1/feedback and `loradock feedback list` can narrow by."""

    adapter: str | None = None
    version: int | None = None
    source: str | None = None
    tenant: str | None = None
    rating: Literal["up", "down"] | None = None
    min_score: float | None = Field(default=None, ge=0, le=1)
    max_score: float | None = Field(default=None, ge=0, le=1)
    corrected: bool | None = None
    since: datetime | None = None


class FeedbackStore:
    def __init__(self, database: Database) -> None:
        self.db = database

    def record(self, body: FeedbackInput, *, tenant: str | None, created_by: str) -> tuple[FeedbackView, bool]:
        """Create or update the (completion, source) record; returns it and whether it is new.

        `tenant` None (an admin) may rate any completion; otherwise only that tenant's.
        """
        for _ in range(2):  # a concurrent first rating from the same source wins the insert; this one then updates
            try:
                return self._record(body, tenant, created_by)
            except IntegrityError:
                continue
        return self._record(body, tenant, created_by)

    def _record(self, body: FeedbackInput, tenant: str | None, created_by: str) -> tuple[FeedbackView, bool]:
        with self.db.session() as session:
            interaction = session.get(Interaction, body.completion_id)
            if interaction is None or interaction.shadow_of is not None or tenant not in (None, interaction.tenant):
                raise NotFoundError(
                    f"no logged completion with id {body.completion_id!r} (completions opted out of logging, "
                    "sampled out, or older than the retention period cannot be rated)"
                )
            if body.index >= len(interaction.outputs):
                raise InvalidInputError(
                    f"index {body.index} is out of range: completion {body.completion_id} has "
                    f"{len(interaction.outputs)} choice(s)"
                )
            row = session.scalar(
                select(Feedback).where(Feedback.completion_id == body.completion_id, Feedback.source == body.source)
            )
            created = row is None
            if row is None:
                row = Feedback(
                    id=f"fb-{secrets.token_hex(12)}",
                    completion_id=body.completion_id,
                    source=body.source,
                    tenant=interaction.tenant,
                    created_by=created_by,
                )
                session.add(row)
            row.choice_index = body.index
            row.rating = body.rating or ("up" if body.effective_score >= WELL_RATED else "down")
            row.score = body.effective_score
            row.correction = body.correction
            row.labels = list(body.labels)
            row.comment = body.comment
            row.updated_at = utcnow()
            session.flush()
            return FeedbackView.of(row, interaction), created

    def for_completion(self, completion_id: str) -> list[FeedbackView]:
        with self.db.read() as session:
            rows = session.execute(
                select(Feedback, Interaction).join(Interaction).where(Feedback.completion_id == completion_id)
            ).all()
            return [FeedbackView.of(feedback, interaction) for feedback, interaction in rows]

    def negatives(self, adapter: str, version: int, limit: int) -> list[bool]:
        """Whether each of the latest `limit` ratings of one version was negative (score below 0.5), newest first:
        the feedback trend drift watches."""
        with self.db.read() as session:
            scores = session.scalars(
                select(Feedback.score)
                .join(Interaction)
                .where(Interaction.adapter == adapter, Interaction.version == version)
                .order_by(Feedback.seq.desc())
                .limit(limit)
            ).all()
        return [score < NEGATIVE_BELOW for score in scores]

    def summary(self) -> dict[str, FeedbackSummary]:
        """Feedback per adapter ("(base)" for the base model): counts, negatives, corrections, mean score."""
        with self.db.read() as session:
            rows = session.execute(
                select(
                    Interaction.adapter,
                    func.count(Feedback.seq),
                    func.sum(case((Feedback.score < NEGATIVE_BELOW, 1), else_=0)),
                    func.count(Feedback.correction),
                    func.avg(Feedback.score),
                )
                .join(Interaction)
                .group_by(Interaction.adapter)
            ).all()
        return {
            adapter or "(base)": FeedbackSummary(
                count=count, negative=int(negative or 0), corrected=corrected, mean_score=float(mean or 0)
            )
            for adapter, count, negative, corrected, mean in rows
        }

    def list(self, where: FeedbackFilter, *, after: str | None = None, limit: int = 100) -> Page:
        """Newest first, `limit` at a time; `after` is the last id of the previous page."""
        with self.db.read() as session:
            query = select(Feedback, Interaction).join(Interaction).order_by(Feedback.seq.desc())
            conditions = {
                "adapter": Interaction.adapter == where.adapter,
                "version": Interaction.version == where.version,
                "source": Feedback.source == where.source,
                "tenant": Feedback.tenant == where.tenant,
                "rating": Feedback.rating == where.rating,
                "min_score": Feedback.score >= (where.min_score or 0),
                "max_score": Feedback.score <= (where.max_score or 0),
                "since": Feedback.updated_at >= where.since if where.since else None,
            }
            for key, condition in conditions.items():
                if getattr(where, key) is not None and condition is not None:
                    query = query.where(condition)
            if where.corrected is not None:
                query = query.where(
                    Feedback.correction.is_not(None) if where.corrected else Feedback.correction.is_(None)
                )
            if after is not None:
                cursor = session.scalar(select(Feedback.seq).where(Feedback.id == after))
                if cursor is None:
                    raise NotFoundError(f"no feedback with id {after!r} (the 'after' cursor)")
                query = query.where(Feedback.seq < cursor)
            rows = session.execute(query.limit(limit + 1)).all()
            data = [FeedbackView.of(feedback, interaction) for feedback, interaction in rows[:limit]]
            return Page.of(data, len(rows) > limit)
