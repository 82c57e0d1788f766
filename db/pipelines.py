"""Repository functions of document pipelines: runs, their lock, documents' last reports.

None of them commits; the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import distinct, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from db.models import Call, Item, PipelineDocument, PipelineRun


def claim_run(
    session: Session, pipeline: str, spec: dict[str, Any], *, force: bool, trigger: str
) -> int | None:
    """A new run, or None when one of this pipeline is still active.

    The partial unique index (one unfinished run per pipeline) decides: of two
    racing transactions, the second waits for the first and then inserts nothing.
    """
    statement = (
        pg_insert(PipelineRun)
        .values(pipeline=pipeline, spec=spec, force=force, trigger=trigger, status="mapping")
        .on_conflict_do_nothing(
            index_elements=["pipeline"], index_where=PipelineRun.finished_at.is_(None)
        )
        .returning(PipelineRun.id)
    )
    return session.scalar(statement)


def active_run(session: Session, pipeline: str) -> PipelineRun | None:
    query = select(PipelineRun).where(
        PipelineRun.pipeline == pipeline, PipelineRun.finished_at.is_(None)
    )
    return session.scalars(query).first()


def get_run(session: Session, run_id: int) -> PipelineRun | None:
    return session.get(PipelineRun, run_id)


def lock_run(session: Session, run_id: int) -> PipelineRun | None:
    query = select(PipelineRun).where(PipelineRun.id == run_id).with_for_update()
    return session.scalars(query).first()


def list_runs(session: Session, pipeline: str, limit: int = 20) -> Sequence[PipelineRun]:
    query = (
        select(PipelineRun)
        .where(PipelineRun.pipeline == pipeline)
        .order_by(PipelineRun.id.desc())
        .limit(limit)
    )
    return session.scalars(query).all()


def last_runs(session: Session) -> dict[str, PipelineRun]:
    latest = select(func.max(PipelineRun.id)).group_by(PipelineRun.pipeline)
    runs = session.scalars(select(PipelineRun).where(PipelineRun.id.in_(latest)))
    return {run.pipeline: run for run in runs}


def known_documents(session: Session, pipeline: str) -> dict[str, PipelineDocument]:
    query = select(PipelineDocument).where(PipelineDocument.pipeline == pipeline)
    return {doc.path: doc for doc in session.scalars(query)}


def save_document(session: Session, pipeline: str, path: str, values: dict[str, Any]) -> None:
    """Record a document's new report (sha256, fingerprint, title, report_path, ...)."""
    statement = pg_insert(PipelineDocument).values(pipeline=pipeline, path=path, **values)
    statement = statement.on_conflict_do_update(
        constraint="uq_pipeline_documents_pipeline_path",
        set_={**values, "updated_at": func.now()},
    )
    session.execute(statement)


@dataclass(frozen=True)
class ItemResult:
    status: str
    output: str | None
    error: str | None
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal
    calls: int
    models: tuple[str, ...]


def item_results(session: Session, job_id: int) -> dict[str, ItemResult]:
    """Every item of a job by custom_id, with its usage and the models its calls used."""
    query = (
        select(
            Item.custom_id, Item.status, Item.output, Item.error, Item.prompt_tokens,
            Item.completion_tokens, Item.cost, func.count(Call.id),
            func.array_remove(func.array_agg(distinct(Call.model)), None),
        )
        .outerjoin(Call, Call.item_id == Item.id)
        .where(Item.job_id == job_id)
        .group_by(Item.id)
    )  # fmt: skip
    return {
        row[0]: ItemResult(
            status=row[1],
            output=row[2],
            error=row[3],
            prompt_tokens=int(row[4]),
            completion_tokens=int(row[5]),
            cost=row[6],
            calls=int(row[7]),
            models=tuple(sorted(row[8] or ())),
        )
        for row in session.execute(query)
    }
