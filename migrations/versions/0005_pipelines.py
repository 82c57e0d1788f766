"""document pipelines: runs (one active per pipeline) and the documents' last reports

Revision ID: 0005p
Revises: 0004
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005p"
down_revision = "0004"
branch_labels = None
depends_on = None

MONEY = sa.Numeric(20, 8)


def _now() -> sa.Column[sa.DateTime]:
    return sa.Column(
        "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
    )


def upgrade() -> None:
    op.create_table(
        "pipeline_runs",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("pipeline", sa.String(100), nullable=False),
        sa.Column("status", sa.String(20), nullable=False, server_default="mapping"),
        sa.Column("trigger", sa.String(20), nullable=False, server_default="manual"),
        sa.Column("force", sa.Boolean(), nullable=False, server_default="false"),
        sa.Column("spec", JSONB(), nullable=False),
        sa.Column("documents", JSONB(), nullable=False, server_default="[]"),
        sa.Column("map_job_id", sa.BigInteger(), sa.ForeignKey("jobs.id", ondelete="SET NULL")),
        sa.Column("reduce_job_id", sa.BigInteger(), sa.ForeignKey("jobs.id", ondelete="SET NULL")),
        sa.Column("processed", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("skipped", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("failed", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("cost", MONEY, nullable=False, server_default="0"),
        sa.Column("index_path", sa.Text()),
        sa.Column("error", sa.Text()),
        _now(),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    # The lock against overlapping runs: one unfinished run per pipeline.
    op.create_index(
        "uq_pipeline_runs_active",
        "pipeline_runs",
        ["pipeline"],
        unique=True,
        postgresql_where=sa.text("finished_at IS NULL"),
    )
    op.create_index(
        "ix_pipeline_runs_pipeline_created", "pipeline_runs", ["pipeline", "created_at"]
    )
    op.create_table(
        "pipeline_documents",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("pipeline", sa.String(100), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("title", sa.Text()),
        sa.Column("report_path", sa.Text()),
        sa.Column(
            "last_run_id",
            sa.BigInteger(),
            sa.ForeignKey("pipeline_runs.id", ondelete="SET NULL"),
        ),
        sa.Column("error", sa.Text()),
        sa.Column("cost", MONEY, nullable=False, server_default="0"),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.UniqueConstraint("pipeline", "path", name="uq_pipeline_documents_pipeline_path"),
    )


def downgrade() -> None:
    op.drop_table("pipeline_documents")
    op.drop_index("ix_pipeline_runs_pipeline_created", table_name="pipeline_runs")
    op.drop_index("uq_pipeline_runs_active", table_name="pipeline_runs")
    op.drop_table("pipeline_runs")
