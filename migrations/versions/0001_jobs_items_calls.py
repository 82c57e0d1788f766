"""jobs, items and calls

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

MONEY = sa.Numeric(20, 8)


def _created_at() -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(
        "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
    )


def _ts(name: str) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def _count(name: str, kind: type = sa.Integer) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, kind(), server_default="0", nullable=False)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(100), server_default="default", nullable=False),
        sa.Column("status", sa.String(20), server_default="validating", nullable=False),
        sa.Column("preset", sa.String(100), nullable=False),
        sa.Column("config", JSONB(), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("metadata", JSONB(), server_default="{}", nullable=False),
        _count("total"),
        _count("completed"),
        _count("failed"),
        _count("prompt_tokens", sa.BigInteger),
        _count("completion_tokens", sa.BigInteger),
        sa.Column("cost", MONEY, server_default="0", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _created_at(),
        _ts("started_at"),
        _ts("finished_at"),
        sa.UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
    )
    op.create_index("ix_jobs_tenant_created", "jobs", ["tenant", "created_at"])

    op.create_table(
        "items",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column(
            "job_id", sa.BigInteger(), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("custom_id", sa.String(200), nullable=False),
        sa.Column("messages", JSONB(), nullable=False),
        sa.Column("metadata", JSONB(), server_default="{}", nullable=False),
        sa.Column("status", sa.String(20), server_default="queued", nullable=False),
        _count("layer"),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("error_code", sa.String(50), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _count("prompt_tokens", sa.BigInteger),
        _count("completion_tokens", sa.BigInteger),
        sa.Column("cost", MONEY, server_default="0", nullable=False),
        _created_at(),
        _ts("started_at"),
        _ts("finished_at"),
        sa.UniqueConstraint("job_id", "custom_id", name="uq_items_job_custom_id"),
        sa.UniqueConstraint("job_id", "position", name="uq_items_job_position"),
    )
    op.create_index("ix_items_job_status", "items", ["job_id", "status"])

    op.create_table(
        "calls",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column(
            "item_id",
            sa.BigInteger(),
            sa.ForeignKey("items.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("layer", sa.Integer(), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("provider", sa.String(100), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("params", JSONB(), server_default="{}", nullable=False),
        sa.Column("status", sa.String(20), server_default="running", nullable=False),
        sa.Column("output", sa.Text(), nullable=True),
        _count("prompt_tokens"),
        _count("completion_tokens"),
        sa.Column("usage_estimated", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("cost", MONEY, server_default="0", nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("attempt", sa.Integer(), server_default="1", nullable=False),
        sa.Column("error_code", sa.String(50), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _ts("lease_until"),
        _created_at(),
        _ts("finished_at"),
        sa.UniqueConstraint("item_id", "layer", "slot", name="uq_calls_item_layer_slot"),
    )


def downgrade() -> None:
    op.drop_table("calls")
    op.drop_table("items")
    op.drop_table("jobs")
