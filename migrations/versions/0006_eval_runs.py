"""eval runs and their verdicts (`moa eval`)

Revision ID: 0005e
Revises: 0005p
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005e"
down_revision = "0005p"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "eval_runs",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("status", sa.String(20), nullable=False, server_default="running"),
        sa.Column("data_path", sa.Text(), nullable=False),
        sa.Column("data_hash", sa.String(64), nullable=False),
        sa.Column("config", JSONB(), nullable=False),
        sa.Column("jobs", JSONB(), nullable=False, server_default="{}"),
        sa.Column("report", JSONB(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "eval_verdicts",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column(
            "run_id",
            sa.BigInteger(),
            sa.ForeignKey("eval_runs.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("preset", sa.String(100), nullable=False),
        sa.Column("item", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("turn", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("position", sa.String(1), nullable=True),
        sa.Column("value", sa.String(20), nullable=True),
        sa.Column("problem", sa.Text(), nullable=True),
        sa.Column("judge_output", sa.Text(), nullable=True),
        sa.Column("judge_item_id", sa.BigInteger(), nullable=True),
    )
    op.create_index("ix_eval_verdicts_run_preset", "eval_verdicts", ["run_id", "preset"])


def downgrade() -> None:
    op.drop_index("ix_eval_verdicts_run_preset", table_name="eval_verdicts")
    op.drop_table("eval_verdicts")
    op.drop_table("eval_runs")
