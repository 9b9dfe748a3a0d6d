"""The production loop: logged interactions, feedback, log policies, and alias history for rollback.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("aliases") as batch:
        batch.add_column(sa.Column("previous_targets", sa.JSON(), nullable=True))
    op.create_table(
        "interactions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("adapter", sa.String(64), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("route", sa.String(16), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("outputs", sa.JSON(), nullable=False),
        sa.Column("finish_reasons", sa.JSON(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("redactions", sa.Integer(), nullable=False),
        sa.Column("shadow_of", sa.String(64), nullable=True),
    )
    for column in ("created_at", "adapter", "tenant", "shadow_of"):
        op.create_index(f"ix_interactions_{column}", "interactions", [column])
    op.create_table(
        "feedback",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(40), nullable=False, unique=True),
        sa.Column("completion_id", sa.String(64), sa.ForeignKey("interactions.id", ondelete="CASCADE"), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("choice_index", sa.Integer(), nullable=False),
        sa.Column("rating", sa.String(8), nullable=True),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("correction", sa.Text(), nullable=True),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("comment", sa.String(2048), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.UniqueConstraint("completion_id", "source", name="uq_feedback_source"),
    )
    op.create_index("ix_feedback_completion_id", "feedback", ["completion_id"])
    op.create_index("ix_feedback_tenant", "feedback", ["tenant"])
    op.create_table(
        "log_policies",
        sa.Column("adapter", sa.String(64), primary_key=True),
        sa.Column("sample_rate", sa.Float(), nullable=False),
        sa.Column("retention_days", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(128), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("log_policies")
    op.drop_table("feedback")
    op.drop_table("interactions")
    with op.batch_alter_table("aliases") as batch:
        batch.drop_column("previous_targets")
