"""SQLAlchemy models of jobs, items and calls. The schema itself is made only by Alembic."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

MONEY = Numeric(20, 8)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSONB,
        list[dict[str, Any]]: JSONB,
    }


def _now_column() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(100), nullable=False, server_default="default")
    status: Mapped[str] = mapped_column(String(20), nullable=False, server_default="validating")
    preset: Mapped[str] = mapped_column(String(100), nullable=False)
    config: Mapped[dict[str, Any]] = mapped_column(nullable=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))  # what the key was used for
    budget: Mapped[Decimal | None] = mapped_column(MONEY)  # stop dispatching at this spend
    reason: Mapped[str | None] = mapped_column(String(50))  # why it stopped: budget_exceeded, ...
    webhook_url: Mapped[str | None] = mapped_column(String(2000))
    webhook_sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", nullable=False, server_default="{}"
    )
    total: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    completed: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    failed: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    cancelled: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    # Spent so far: every call adds its usage when it is recorded, so a budget sees it at once.
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    cost: Mapped[Decimal] = mapped_column(MONEY, nullable=False, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now_column()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        Index("ix_jobs_tenant_created", "tenant", "created_at"),
    )


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False)
    position: Mapped[int] = mapped_column(Integer, nullable=False)  # input order, from 0
    custom_id: Mapped[str] = mapped_column(String(200), nullable=False)
    messages: Mapped[list[dict[str, Any]]] = mapped_column(nullable=False)
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", nullable=False, server_default="{}"
    )
    status: Mapped[str] = mapped_column(String(20), nullable=False, server_default="queued")
    layer: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    output: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(50))
    error: Mapped[str | None] = mapped_column(Text)
    error_retryable: Mapped[bool | None] = mapped_column()
    # What happened on the way that the answer alone does not show: degraded layers, early stop.
    notes: Mapped[dict[str, Any]] = mapped_column(nullable=False, server_default="{}")
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    cost: Mapped[Decimal] = mapped_column(MONEY, nullable=False, server_default="0")
    created_at: Mapped[datetime] = _now_column()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("job_id", "custom_id", name="uq_items_job_custom_id"),
        UniqueConstraint("job_id", "position", name="uq_items_job_position"),
        Index("ix_items_job_status", "job_id", "status"),
    )


class Call(Base):
    __tablename__ = "calls"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), nullable=False)
    layer: Mapped[int] = mapped_column(Integer, nullable=False)
    slot: Mapped[int] = mapped_column(Integer, nullable=False)
    role: Mapped[str] = mapped_column(String(20), nullable=False)
    provider: Mapped[str] = mapped_column(String(100), nullable=False)
    model: Mapped[str] = mapped_column(String(200), nullable=False)
    params: Mapped[dict[str, Any]] = mapped_column(nullable=False, server_default="{}")
    status: Mapped[str] = mapped_column(String(20), nullable=False, server_default="running")
    output: Mapped[str | None] = mapped_column(Text)
    prompt_tokens: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    usage_estimated: Mapped[bool] = mapped_column(nullable=False, server_default="false")
    cost: Mapped[Decimal] = mapped_column(MONEY, nullable=False, server_default="0")
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1")
    error_code: Mapped[str | None] = mapped_column(String(50))
    error: Mapped[str | None] = mapped_column(Text)
    # One entry per provider attempt: when, how long, outcome, and the wait before the next.
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(nullable=False, server_default="[]")
    cached: Mapped[bool] = mapped_column(nullable=False, server_default="false")
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now_column()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("item_id", "layer", "slot", name="uq_calls_item_layer_slot"),
    )


class CachedResponse(Base):
    """A provider's answer kept for identical deterministic requests (temperature 0)."""

    __tablename__ = "response_cache"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    provider: Mapped[str] = mapped_column(String(100), nullable=False)
    model: Mapped[str] = mapped_column(String(200), nullable=False)
    output: Mapped[str] = mapped_column(Text, nullable=False)
    prompt_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    completion_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = _now_column()


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False, unique=True)
    created_at: Mapped[datetime] = _now_column()


class ApiKey(Base):
    """Only a SHA-256 of the key is kept; the key itself is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[int] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = _now_column()
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class PipelineRun(Base):
    """One run of a document pipeline. At most one run of a pipeline is active at a time:
    the partial unique index is the lock that two racing beat ticks meet."""

    __tablename__ = "pipeline_runs"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    pipeline: Mapped[str] = mapped_column(String(100), nullable=False)
    # mapping -> (reducing ->) completed | failed; finished_at is set with the end status.
    status: Mapped[str] = mapped_column(String(20), nullable=False, server_default="mapping")
    trigger: Mapped[str] = mapped_column(String(20), nullable=False, server_default="manual")
    force: Mapped[bool] = mapped_column(nullable=False, server_default="false")
    spec: Mapped[dict[str, Any]] = mapped_column(nullable=False)  # the pipeline as run
    # Per document: path, sha256, title, parts, status, error, report (the run's plan).
    documents: Mapped[list[dict[str, Any]]] = mapped_column(nullable=False, server_default="[]")
    map_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    reduce_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    processed: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    skipped: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    failed: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    cost: Mapped[Decimal] = mapped_column(MONEY, nullable=False, server_default="0")
    index_path: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now_column()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index(
            "uq_pipeline_runs_active",
            "pipeline",
            unique=True,
            postgresql_where=text("finished_at IS NULL"),
        ),
        Index("ix_pipeline_runs_pipeline_created", "pipeline", "created_at"),
    )


class PipelineDocument(Base):
    """The last good report of each document: unchanged content and settings reuse it."""

    __tablename__ = "pipeline_documents"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    pipeline: Mapped[str] = mapped_column(String(100), nullable=False)
    path: Mapped[str] = mapped_column(Text, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)  # instruction, preset...
    title: Mapped[str | None] = mapped_column(Text)
    report_path: Mapped[str | None] = mapped_column(Text)
    last_run_id: Mapped[int | None] = mapped_column(
        ForeignKey("pipeline_runs.id", ondelete="SET NULL")
    )
    error: Mapped[str | None] = mapped_column(Text)
    cost: Mapped[Decimal] = mapped_column(MONEY, nullable=False, server_default="0")
    updated_at: Mapped[datetime] = _now_column()

    __table_args__ = (
        UniqueConstraint("pipeline", "path", name="uq_pipeline_documents_pipeline_path"),
    )


class EvalRun(Base):
    """One `moa eval`: what was run (presets, models, temperatures, seeds, the data's hash),
    the jobs that ran it, and the report."""

    __tablename__ = "eval_runs"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    status: Mapped[str] = mapped_column(String(20), nullable=False, server_default="running")
    data_path: Mapped[str] = mapped_column(Text, nullable=False)
    data_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    config: Mapped[dict[str, Any]] = mapped_column(nullable=False)
    jobs: Mapped[dict[str, Any]] = mapped_column(nullable=False, server_default="{}")
    report: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now_column()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class EvalVerdict(Base):
    """A judge's reply (or an exact-match check) on one answer of one preset."""

    __tablename__ = "eval_verdicts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(
        ForeignKey("eval_runs.id", ondelete="CASCADE"), nullable=False
    )
    preset: Mapped[str] = mapped_column(String(100), nullable=False)
    item: Mapped[str] = mapped_column(String(200), nullable=False)
    kind: Mapped[str] = mapped_column(String(20), nullable=False)  # pairwise, rating, exact
    turn: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1")
    position: Mapped[str | None] = mapped_column(String(1))  # pairwise: the preset shown as A/B
    value: Mapped[str | None] = mapped_column(String(20))  # A, B, tie, 7, true; None: invalid
    problem: Mapped[str | None] = mapped_column(Text)  # why a verdict is invalid
    judge_output: Mapped[str | None] = mapped_column(Text)
    judge_item_id: Mapped[int | None] = mapped_column(BigInteger)  # the judge call's item

    __table_args__ = (Index("ix_eval_verdicts_run_preset", "run_id", "preset"),)
