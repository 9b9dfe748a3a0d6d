"""Drift: reference profiles per version and the history of window evaluations.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "drift_profiles",
        sa.Column("lora_id", sa.Integer(), sa.ForeignKey("adapter_versions.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("prompts", sa.Integer(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
    )
    op.create_table(
        "drift_snapshots",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("adapter", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("window", sa.String(16), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("replica", sa.String(128), nullable=False),
    )
    op.create_index("ix_drift_snapshots_created_at", "drift_snapshots", ["created_at"])
    op.create_index("ix_drift_snapshots_adapter", "drift_snapshots", ["adapter"])


def downgrade() -> None:
    op.drop_table("drift_snapshots")
    op.drop_table("drift_profiles")
