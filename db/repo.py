"""Repository functions: every query the workers, CLI and API make. None of them commits."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Row, bindparam, func, insert, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from db.models import CachedResponse, Call, Item, Job

TERMINAL_CALL = ("succeeded", "failed")
TERMINAL_ITEM = ("completed", "failed", "cancelled")


# --- jobs and items -------------------------------------------------------------------------


def create_job(
    session: Session,
    *,
    preset: str,
    config: dict[str, Any],
    tenant: str = "default",
    idempotency_key: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Job:
    job = Job(
        tenant=tenant,
        preset=preset,
        config=config,
        idempotency_key=idempotency_key,
        metadata_=metadata or {},
        status="validating",
    )
    session.add(job)
    session.flush()
    return job


def add_items(
    session: Session, job_id: int, rows: Iterable[dict[str, Any]], batch: int = 1000
) -> int:
    """Insert items in batches; each row has position, custom_id, messages, metadata."""
    count = 0
    chunk: list[dict[str, Any]] = []
    for row in rows:
        chunk.append({"job_id": job_id, "status": "queued", **row})
        if len(chunk) >= batch:
            count += _insert_items(session, chunk)
            chunk = []
    if chunk:
        count += _insert_items(session, chunk)
    return count


def _insert_items(session: Session, chunk: list[dict[str, Any]]) -> int:
    rows = [{**r, "metadata_": r.pop("metadata", {})} for r in chunk]
    session.execute(insert(Item), rows)
    return len(rows)


def queue_job(session: Session, job_id: int, total: int) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(status="queued", total=total))


def get_job(session: Session, job_id: int) -> Job | None:
    return session.get(Job, job_id)


def list_jobs(session: Session, limit: int = 20) -> Sequence[Job]:
    return session.scalars(select(Job).order_by(Job.id.desc()).limit(limit)).all()


def lock_job(session: Session, job_id: int) -> Job | None:
    return session.scalars(select(Job).where(Job.id == job_id).with_for_update()).first()


def count_in_flight(session: Session, job_id: int) -> int:
    query = select(func.count()).where(Item.job_id == job_id, Item.status == "in_progress")
    return int(session.scalar(query) or 0)


def claim_queued_items(session: Session, job_id: int, limit: int, layer: int) -> list[int]:
    """Move up to ``limit`` queued items (input order) to in_progress at ``layer``."""
    if limit <= 0:
        return []
    picked = (
        select(Item.id)
        .where(Item.job_id == job_id, Item.status == "queued")
        .order_by(Item.position)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    result = session.execute(
        update(Item)
        .where(Item.id.in_(picked))
        .values(status="in_progress", layer=layer, started_at=func.now())
        .returning(Item.id)
    )
    return sorted(result.scalars().all())


def mark_job_started(session: Session, job_id: int) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued")
        .values(status="in_progress", started_at=func.now())
    )


def get_item_and_job(session: Session, item_id: int) -> tuple[Item, Job] | None:
    row = session.execute(
        select(Item, Job).join(Job, Job.id == Item.job_id).where(Item.id == item_id)
    ).first()
    return (row[0], row[1]) if row else None


def move_item_layer(session: Session, item_id: int, from_layer: int, to_layer: int) -> bool:
    """Compare-and-set of an item's layer: exactly one callback of a layer wins."""
    result = session.execute(
        update(Item)
        .where(Item.id == item_id, Item.layer == from_layer, Item.status == "in_progress")
        .values(layer=to_layer)
        .returning(Item.id)
    )
    return result.first() is not None


@dataclass(frozen=True)
class JobCounts:
    job_id: int
    total: int
    completed: int
    failed: int

    @property
    def done(self) -> bool:
        return self.completed + self.failed >= self.total


def finish_item(
    session: Session,
    item_id: int,
    *,
    output: str | None = None,
    error_code: str | None = None,
    error: str | None = None,
) -> JobCounts | None:
    """End an in-progress item once and roll its usage into the job's counts.

    Returns the job's new counts, or None when the item was already finished
    (a duplicate delivery), so the caller does nothing twice.
    """
    status = "failed" if error_code else "completed"
    usage = (
        select(
            func.coalesce(func.sum(Call.prompt_tokens), 0),
            func.coalesce(func.sum(Call.completion_tokens), 0),
            func.coalesce(func.sum(Call.cost), 0),
        )
        .where(Call.item_id == item_id)
        .subquery()
    )
    columns = list(usage.c)
    finished = session.execute(
        update(Item)
        .where(Item.id == item_id, Item.status == "in_progress")
        .values(
            status=status,
            output=output,
            error_code=error_code,
            error=error,
            prompt_tokens=select(columns[0]).scalar_subquery(),
            completion_tokens=select(columns[1]).scalar_subquery(),
            cost=select(columns[2]).scalar_subquery(),
            finished_at=func.now(),
        )
        .returning(Item.job_id, Item.prompt_tokens, Item.completion_tokens, Item.cost)
    ).first()
    if finished is None:
        return None
    return _count_item(session, tuple(finished), status)


def _count_item(session: Session, finished: tuple[Any, ...], status: str) -> JobCounts:
    job_id, prompt_tokens, completion_tokens, cost = finished
    counter = Job.completed if status == "completed" else Job.failed
    row = session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(
            {
                counter: counter + 1,
                Job.prompt_tokens: Job.prompt_tokens + prompt_tokens,
                Job.completion_tokens: Job.completion_tokens + completion_tokens,
                Job.cost: Job.cost + cost,
            }
        )
        .returning(Job.id, Job.total, Job.completed, Job.failed)
    ).one()
    return JobCounts(*row)


def finalize_job(session: Session, job_id: int) -> bool:
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(("queued", "in_progress", "finalizing")))
        .values(status="completed", finished_at=func.now())
        .returning(Job.id)
    )
    return result.first() is not None


# --- calls ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    call_id: int
    attempt: int
    owned: bool  # True: this task makes the call; False: see ``status``
    status: str


def claim_call(
    session: Session,
    *,
    item_id: int,
    layer: int,
    slot: int,
    role: str,
    provider: str,
    model: str,
    params: dict[str, Any],
    lease_s: float,
) -> Claim:
    """Take the (item, layer, slot) key unless it succeeded or a live lease holds it."""
    lease = func.now() + timedelta(seconds=lease_s)
    values = pg_insert(Call).values(
        item_id=item_id,
        layer=layer,
        slot=slot,
        role=role,
        provider=provider,
        model=model,
        params=params,
        status="running",
        attempt=1,
        lease_until=lease,
    )
    statement = values.on_conflict_do_update(
        constraint="uq_calls_item_layer_slot",
        set_={
            "status": "running",
            "attempt": Call.attempt + 1,
            "lease_until": lease,
            "error": None,
            "error_code": None,
        },
        where=(Call.status.in_(("retrying", "pending")))
        | ((Call.status == "running") & (Call.lease_until < func.now())),
    ).returning(Call.id, Call.attempt)
    row = session.execute(statement).first()
    if row is not None:
        return Claim(call_id=row[0], attempt=row[1], owned=True, status="running")
    existing = session.execute(
        select(Call.id, Call.attempt, Call.status).where(
            Call.item_id == item_id, Call.layer == layer, Call.slot == slot
        )
    ).one()
    return Claim(call_id=existing[0], attempt=existing[1], owned=False, status=existing[2])


def _log_attempt(entry: dict[str, Any]) -> Any:
    """``attempts || [entry]``: the attempt log grows in the same UPDATE."""
    return Call.attempts.op("||")(bindparam(None, [entry], type_=JSONB))


def attempt_entry(
    attempt: int, started: datetime, latency_ms: int, outcome: str, **extra: Any
) -> dict[str, Any]:
    return {
        "n": attempt,
        "at": started.isoformat(),
        "latency_ms": latency_ms,
        "outcome": outcome,
        **extra,
    }


def complete_call(
    session: Session,
    call_id: int,
    *,
    output: str,
    prompt_tokens: int,
    completion_tokens: int,
    usage_estimated: bool,
    cost: Decimal,
    latency_ms: int,
    attempt: dict[str, Any],
    cached: bool = False,
) -> None:
    session.execute(
        update(Call)
        .where(Call.id == call_id)
        .values(
            status="succeeded",
            output=output,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            usage_estimated=usage_estimated,
            cost=cost,
            cached=cached,
            latency_ms=latency_ms,
            attempts=_log_attempt(attempt),
            lease_until=None,
            finished_at=func.now(),
        )
    )


def fail_call(
    session: Session,
    call_id: int,
    *,
    code: str,
    message: str,
    final: bool,
    latency_ms: int | None,
    attempt: dict[str, Any],
) -> None:
    session.execute(
        update(Call)
        .where(Call.id == call_id)
        .values(
            status="failed" if final else "retrying",
            error_code=code,
            error=message,
            latency_ms=latency_ms,
            attempts=_log_attempt(attempt),
            lease_until=None,
            finished_at=func.now() if final else None,
        )
    )


def release_call(session: Session, call_id: int) -> None:
    """Give a claimed call back untried (a shared limit said wait): no attempt is counted."""
    session.execute(
        update(Call)
        .where(Call.id == call_id, Call.status == "running")
        .values(status="pending", attempt=Call.attempt - 1, lease_until=None)
    )


def cached_response(session: Session, key: str) -> CachedResponse | None:
    return session.get(CachedResponse, key)


def cache_response(
    session: Session, key: str, *, provider: str, model: str, output: str, prompt_tokens: int,
    completion_tokens: int,
) -> None:  # fmt: skip
    statement = pg_insert(CachedResponse).values(
        key=key, provider=provider, model=model, output=output, prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )  # fmt: skip
    session.execute(statement.on_conflict_do_nothing(index_elements=["key"]))


def layer_calls(session: Session, item_id: int, layer: int) -> Sequence[Call]:
    query = select(Call).where(Call.item_id == item_id, Call.layer == layer).order_by(Call.slot)
    return session.scalars(query).all()


def layer_outputs(session: Session, item_id: int, layer: int) -> list[str]:
    query = (
        select(Call.output)
        .where(Call.item_id == item_id, Call.layer == layer, Call.status == "succeeded")
        .order_by(Call.slot)
    )
    return [text for text in session.scalars(query) if text is not None]


# --- reading results ------------------------------------------------------------------------


def item_calls(session: Session, item_id: int) -> Sequence[Call]:
    query = select(Call).where(Call.item_id == item_id).order_by(Call.layer, Call.slot)
    return session.scalars(query).all()


def iter_results(session: Session, job_id: int, batch: int = 500) -> Iterator[Item]:
    """Items of a job in input order, streamed without loading them all."""
    query = select(Item).where(Item.job_id == job_id).order_by(Item.position)
    yield from session.scalars(query.execution_options(yield_per=batch))


def cost_by_layer(session: Session, job_id: int) -> Sequence[Row[Any]]:
    """Calls, tokens, cost and mean latency per (layer, role, model) of a job."""
    query = (
        select(
            Call.layer,
            Call.role,
            Call.model,
            func.count().label("calls"),
            func.count().filter(Call.status == "failed").label("failed"),
            func.sum(Call.prompt_tokens).label("prompt_tokens"),
            func.sum(Call.completion_tokens).label("completion_tokens"),
            func.sum(Call.cost).label("cost"),
            func.avg(Call.latency_ms).label("latency_ms"),
        )
        .join(Item, Item.id == Call.item_id)
        .where(Item.job_id == job_id)
        .group_by(Call.layer, Call.role, Call.model)
        .order_by(Call.layer, Call.role, Call.model)
    )
    return session.execute(query).all()
