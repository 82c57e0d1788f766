"""job lifecycle: request hash, budget, stop reason, cancelled count; item notes and retryable

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("request_hash", sa.String(64), nullable=True))
    op.add_column("jobs", sa.Column("budget", sa.Numeric(20, 8), nullable=True))
    op.add_column("jobs", sa.Column("reason", sa.String(50), nullable=True))
    op.add_column("jobs", sa.Column("cancelled", sa.Integer(), server_default="0", nullable=False))
    op.add_column("items", sa.Column("error_retryable", sa.Boolean(), nullable=True))
    op.add_column("items", sa.Column("notes", JSONB(), server_default="{}", nullable=False))


def downgrade() -> None:
    op.drop_column("items", "notes")
    op.drop_column("items", "error_retryable")
    op.drop_column("jobs", "cancelled")
    op.drop_column("jobs", "reason")
    op.drop_column("jobs", "budget")
    op.drop_column("jobs", "request_hash")
