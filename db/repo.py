"""Repository functions: every query the workers, CLI and API make. None of them commits."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import DateTime, Row, Table, bindparam, func, or_, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from db.models import CachedResponse, Call, EvalRun, EvalVerdict, Item, Job

TERMINAL_CALL = ("succeeded", "failed")


# --- jobs and items -------------------------------------------------------------------------


def create_job(
    session: Session,
    *,
    preset: str,
    config: dict[str, Any],
    tenant: str = "default",
    idempotency_key: str | None = None,
    budget: Decimal | None = None,
    webhook_url: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Job:
    job = Job(
        tenant=tenant,
        preset=preset,
        config=config,
        idempotency_key=idempotency_key,
        budget=budget,
        webhook_url=webhook_url,
        metadata_=metadata or {},
        status="validating",
    )
    session.add(job)
    session.flush()
    return job


def job_by_key(session: Session, tenant: str, key: str) -> Job | None:
    query = select(Job).where(Job.tenant == tenant, Job.idempotency_key == key)
    return session.scalars(query).first()


def insert_items(session: Session, job_id: int, rows: Sequence[dict[str, Any]]) -> set[int]:
    """Insert one batch; returns the positions inserted. A custom_id already in the job
    is skipped by the unique constraint, so duplicates are found without a set in memory."""
    values = [
        {
            "job_id": job_id,
            "status": "queued",
            "position": r["position"],
            "custom_id": r["custom_id"],
            "messages": r["messages"],
            "metadata_": r.get("metadata", {}),
        }
        for r in rows
    ]
    statement = (
        pg_insert(Item)
        .values(values)
        .on_conflict_do_nothing(constraint="uq_items_job_custom_id")
        .returning(Item.position)
    )
    return set(session.scalars(statement))


def queue_job(session: Session, job_id: int, total: int, request_hash: str | None = None) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(status="queued", total=total, request_hash=request_hash)
    )


def get_job(session: Session, job_id: int) -> Job | None:
    return session.get(Job, job_id)


def list_jobs(
    session: Session, limit: int = 20, tenant: str | None = None, before: int | None = None
) -> Sequence[Job]:
    """Newest first; ``before`` is the cursor (the last id of the previous page)."""
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if tenant is not None:
        query = query.where(Job.tenant == tenant)
    if before is not None:
        query = query.where(Job.id < before)
    return session.scalars(query).all()


def tenant_job(session: Session, tenant: str, job_id: int) -> Job | None:
    """A job only its own tenant can see: another tenant's looks like no job at all."""
    job = session.get(Job, job_id)
    return job if job is not None and job.tenant == tenant else None


def list_items(
    session: Session, job_id: int, *, status: str | None, after: int | None, limit: int
) -> Sequence[Item]:
    query = select(Item).where(Item.job_id == job_id).order_by(Item.position).limit(limit)
    if status is not None:
        query = query.where(Item.status == status)
    if after is not None:
        query = query.where(Item.position > after)
    return session.scalars(query).all()


def items_finished_since(
    session: Session, job_id: int, since: datetime, limit: int = 500
) -> Sequence[Item]:
    query = (
        select(Item)
        .where(Item.job_id == job_id, Item.finished_at > since)
        .order_by(Item.finished_at)
        .limit(limit)
    )
    return session.scalars(query).all()


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


# The per-call path runs these statements thousands of times a second: they are built once,
# on the tables (Core, no ORM bookkeeping), with bind parameters, so SQLAlchemy compiles and
# caches each of them once per process.
_items, _jobs, _calls = (cast(Table, m.__table__) for m in (Item, Job, Call))


@dataclass(frozen=True)
class ItemRow:
    """What a task needs of an item: no ORM object, no job config (plans are cached)."""

    id: int
    job_id: int
    status: str
    layer: int
    messages: list[dict[str, Any]]


_LOAD_ITEM = select(
    _items.c.id, _items.c.job_id, _items.c.status, _items.c.layer, _items.c.messages
).where(_items.c.id == bindparam("item_id"))
_JOB_CONFIG = select(_jobs.c.config).where(_jobs.c.id == bindparam("job_id"))


def load_item(session: Session, item_id: int) -> ItemRow | None:
    row = session.execute(_LOAD_ITEM, {"item_id": item_id}).first()
    return ItemRow(*row) if row else None


def job_config(session: Session, job_id: int) -> dict[str, Any]:
    return dict(session.execute(_JOB_CONFIG, {"job_id": job_id}).scalar_one())


def move_item_layer(
    session: Session,
    item_id: int,
    from_layer: int,
    to_layer: int,
    notes: dict[str, Any] | None = None,
) -> bool:
    """Compare-and-set of an item's layer: exactly one callback of a layer wins."""
    values: dict[Any, Any] = {Item.layer: to_layer}
    if notes:
        values[Item.notes] = _merged(Item.notes, notes)
    result = session.execute(
        update(Item)
        .where(Item.id == item_id, Item.layer == from_layer, Item.status == "in_progress")
        .values(values)
        .returning(Item.id)
    )
    return result.first() is not None


def _merged(column: Any, patch: dict[str, Any]) -> Any:
    return column.op("||")(bindparam(None, patch, type_=JSONB))


@dataclass(frozen=True)
class JobCounts:
    job_id: int
    total: int
    completed: int
    failed: int
    cancelled: int = 0

    @property
    def done(self) -> bool:
        return self.completed + self.failed + self.cancelled >= self.total


@dataclass(frozen=True)
class ItemEnd:
    output: str | None = None
    error_code: str | None = None
    error: str | None = None
    retryable: bool | None = None
    notes: dict[str, Any] | None = None

    @property
    def status(self) -> str:
        return "failed" if self.error_code else "completed"


def finish_item(session: Session, item_id: int, end: ItemEnd) -> JobCounts | None:
    """End an in-progress item once and count it in its job.

    Returns the job's new counts, or None when the item had already ended (a
    duplicate delivery, or a cancel), so the caller does nothing twice.
    """
    usage = _item_usage(item_id)
    values: dict[Any, Any] = {
        Item.status: end.status,
        Item.output: end.output,
        Item.error_code: end.error_code,
        Item.error: end.error,
        Item.error_retryable: end.retryable,
        Item.prompt_tokens: usage[0],
        Item.completion_tokens: usage[1],
        Item.cost: usage[2],
        Item.finished_at: func.now(),
    }
    if end.notes:
        values[Item.notes] = _merged(Item.notes, end.notes)
    finished = session.execute(
        update(Item)
        .where(Item.id == item_id, Item.status == "in_progress")
        .values(values)
        .returning(Item.job_id)
    ).first()
    if finished is None:
        return None
    counter = Job.completed if end.status == "completed" else Job.failed
    row = session.execute(
        update(Job)
        .where(Job.id == finished[0])
        .values({counter: counter + 1})
        .returning(Job.id, Job.total, Job.completed, Job.failed, Job.cancelled)
    ).one()
    return JobCounts(*row)


def _item_usage(item_id: int) -> tuple[Any, Any, Any]:
    def total(column: Any) -> Any:
        return (
            select(func.coalesce(func.sum(column), 0))
            .where(Call.item_id == item_id)
            .scalar_subquery()
        )

    return total(Call.prompt_tokens), total(Call.completion_tokens), total(Call.cost)


def _seconds_ago(seconds: float) -> Any:
    return func.now() - func.make_interval(0, 0, 0, 0, 0, 0, seconds)


_RESTARTED_AT = Item.notes["restarted_at"].astext.cast(DateTime(timezone=True))


def mark_restarted(session: Session, item_ids: Sequence[int]) -> None:
    """Note on each item when the sweeper restarted it: `moa trace` shows it, and the
    sweeper leaves the item alone for another quiet period."""
    if item_ids:
        session.execute(
            update(Item)
            .where(Item.id.in_(item_ids))
            .values(notes=Item.notes.op("||")(func.jsonb_build_object("restarted_at", func.now())))
        )


def stalled_endings(session: Session, stall_after_s: float) -> list[int]:
    """Jobs left finalizing or cancelling for ``stall_after_s`` since their last item ended:
    the finalize message that settles them was lost."""
    last_item = select(func.max(Item.finished_at)).where(Item.job_id == Job.id).scalar_subquery()
    query = select(Job.id).where(
        Job.status.in_(("finalizing", "cancelling")),
        func.greatest(Job.created_at, Job.started_at, last_item) < _seconds_ago(stall_after_s),
    )
    return list(session.scalars(query))


def stalled_items(
    session: Session, stall_after_s: float, limit: int
) -> Sequence[Row[int, int, int]]:
    """(item id, job id, layer) of in-progress items of running jobs that nothing has moved
    for ``stall_after_s``: no call is being made or waits for a retry that is due (each
    holds a lease: the call's timeout, or its wait and a grace), no call began or ended
    since, and the sweeper has not restarted the item since. Their messages were lost."""
    live = (
        select(Call.id)
        .where(
            Call.item_id == Item.id,
            or_(
                Call.status.in_(("running", "retrying", "pending"))
                & (Call.lease_until >= func.now()),
                (Call.status == "running") & Call.lease_until.is_(None),
            ),
        )
        .exists()
    )
    last_call = (
        select(func.max(func.coalesce(Call.finished_at, Call.created_at)))
        .where(Call.item_id == Item.id)
        .scalar_subquery()
    )
    query = (
        select(Item.id, Item.job_id, Item.layer)
        .join(Job, Job.id == Item.job_id)
        .where(Item.status == "in_progress", Job.status == "in_progress", ~live)
        .where(
            func.greatest(Item.started_at, last_call, _RESTARTED_AT) < _seconds_ago(stall_after_s)
        )
        .order_by(Item.id)
        .limit(limit)
    )
    return session.execute(query).all()


def begin_finalizing(session: Session, job_id: int) -> bool:
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(("queued", "in_progress")))
        .values(status="finalizing")
        .returning(Job.id)
    )
    return result.first() is not None


def job_calls_running(session: Session, job_id: int) -> int:
    """Calls a live worker may still be making. A call whose lease ran out was left by a
    worker that died: nothing will finish it, so a cancel must not wait for it."""
    query = (
        select(func.count())
        .select_from(Call)
        .join(Item, Item.id == Call.item_id)
        .where(
            Item.job_id == job_id,
            Call.status == "running",
            or_(Call.lease_until.is_(None), Call.lease_until >= func.now()),
        )
    )
    return int(session.scalar(query) or 0)


def finalize_job(session: Session, job_id: int) -> str | None:
    """Settle a finalizing or cancelling job from the rows themselves; returns its end status."""
    job = lock_job(session, job_id)
    if job is None or job.status not in ("finalizing", "cancelling"):
        return None
    if job.status == "cancelling":
        _abandon_calls(session, job_id)
    counts = _status_counts(session, job_id)
    spent = session.execute(
        select(
            func.coalesce(func.sum(Call.prompt_tokens), 0),
            func.coalesce(func.sum(Call.completion_tokens), 0),
            func.coalesce(func.sum(Call.cost), 0),
        )
        .join(Item, Item.id == Call.item_id)
        .where(Item.job_id == job_id, Call.cached.is_(False))
    ).one()
    job.completed, job.failed, job.cancelled = (counts[s] for s in COUNTED)
    job.prompt_tokens, job.completion_tokens, job.cost = spent
    job.status = "completed" if job.status == "finalizing" else "cancelled"
    job.finished_at = func.now()
    return job.status


def _abandon_calls(session: Session, job_id: int) -> None:
    """A cancelled job's calls that nothing will finish: one waiting for its retry (the retry
    finds the item cancelled and sends nothing) or one whose worker died (its lease ran out)."""
    session.execute(
        update(Call)
        .where(
            Call.item_id.in_(select(Item.id).where(Item.job_id == job_id)),
            or_(
                Call.status == "retrying",
                (Call.status == "running") & (Call.lease_until < func.now()),
            ),
        )
        .values(
            status="failed",
            error_code="abandoned",
            error="not finished: the job was cancelled before this call could be retried",
            lease_until=None,
            finished_at=func.now(),
        )
    )


def cancel_job(session: Session, job_id: int, reason: str = "cancelled_by_user") -> int | None:
    """Stop a job: unfinished items are cancelled (tasks still queued for them become
    no-ops), finished ones stay. Returns the items cancelled, None if the job was over.

    Items are locked before the job, the order in which a finishing item takes them, so a
    cancel and a finish cannot deadlock.
    """
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    if status not in CANCELLABLE:
        return None
    result = session.execute(
        update(Item)
        .where(Item.job_id == job_id, Item.status.in_(("queued", "in_progress")))
        .values(status="cancelled", finished_at=func.now())
        .returning(Item.id)
    )
    cancelled = len(result.all())
    started = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(CANCELLABLE))
        .values(status="cancelling", reason=reason)
        .returning(Job.id)
    ).first()
    return cancelled if started is not None else None


CANCELLABLE = ("validating", "queued", "in_progress", "finalizing")


def reopen_items(session: Session, job_id: int, statuses: Sequence[str]) -> int:
    """Put a job's items with these statuses back in the queue, from the first layer.

    Their succeeded calls stay and are reused; failed calls of failed items get a
    fresh set of attempts.
    """
    items = select(Item.id).where(Item.job_id == job_id, Item.status.in_(statuses))
    session.execute(  # calls a cancel settled unfinished are tried again, afresh
        update(Call)
        .where(Call.item_id.in_(items), Call.error_code == "abandoned")
        .values(status="pending", attempt=0, finished_at=None)
    )
    if "failed" in statuses:
        failed_items = select(Item.id).where(Item.job_id == job_id, Item.status == "failed")
        session.execute(
            update(Call)
            .where(Call.item_id.in_(failed_items), Call.status == "failed")
            .values(status="pending", attempt=0, finished_at=None)
        )
    result = session.execute(
        update(Item)
        .where(Item.id.in_(items))
        .values(
            status="queued", layer=0, output=None, error_code=None, error=None,
            error_retryable=None, finished_at=None,
        )
        .returning(Item.id)
    )  # fmt: skip
    reopened = len(result.all())
    if reopened:
        _recount(session, job_id)
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status="queued", reason=None, finished_at=None)
        )
    return reopened


COUNTED = ("completed", "failed", "cancelled")  # the item statuses a job counts
JOB_ENDED = ("completed", "failed", "cancelled")  # a job there changes no more by itself


def _status_counts(session: Session, job_id: int) -> defaultdict[str, int]:
    query = select(Item.status, func.count()).where(Item.job_id == job_id).group_by(Item.status)
    return defaultdict(int, {status: int(n) for status, n in session.execute(query)})


def _recount(session: Session, job_id: int) -> None:
    counts = _status_counts(session, job_id)
    session.execute(
        update(Job).where(Job.id == job_id).values({status: counts[status] for status in COUNTED})
    )


def mark_webhook_sent(session: Session, job_id: int) -> bool:
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.webhook_sent_at.is_(None))
        .values(webhook_sent_at=func.now())
        .returning(Job.id)
    )
    return result.first() is not None


def set_budget(session: Session, job_id: int, budget: Decimal | None) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(budget=budget))


def layer_mix(session: Session, job_id: int) -> dict[int, int]:
    """How many in-progress items are at each layer (for progress displays)."""
    query = (
        select(Item.layer, func.count())
        .where(Item.job_id == job_id, Item.status == "in_progress")
        .group_by(Item.layer)
    )
    return {int(layer): int(n) for layer, n in session.execute(query)}


# --- calls ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    call_id: int
    attempt: int
    owned: bool  # True: this task makes the call; False: see ``status``
    status: str


_LEASE = func.now() + func.make_interval(0, 0, 0, 0, 0, 0, bindparam("lease_s"))
_CLAIM = (
    pg_insert(_calls)
    .values(
        item_id=bindparam("item_id"),
        layer=bindparam("layer"),
        slot=bindparam("slot"),
        role=bindparam("role"),
        provider=bindparam("provider"),
        model=bindparam("model"),
        params=bindparam("params", type_=JSONB),
        status="running",
        attempt=1,
        lease_until=_LEASE,
    )
    .on_conflict_do_update(
        constraint="uq_calls_item_layer_slot",
        set_={
            "status": "running",
            "attempt": _calls.c.attempt + 1,
            "lease_until": _LEASE,
            "error": None,
            "error_code": None,
        },
        where=_calls.c.status.in_(("retrying", "pending"))
        | ((_calls.c.status == "running") & (_calls.c.lease_until < func.now())),
    )
    .returning(_calls.c.id, _calls.c.attempt)
)
_CALL_BY_KEY = select(_calls.c.id, _calls.c.attempt, _calls.c.status).where(
    _calls.c.item_id == bindparam("item_id"),
    _calls.c.layer == bindparam("layer"),
    _calls.c.slot == bindparam("slot"),
)


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
    key = {"item_id": item_id, "layer": layer, "slot": slot}
    values = {**key, "role": role, "provider": provider, "model": model, "params": params,
              "lease_s": lease_s}  # fmt: skip
    row = session.execute(_CLAIM, values).first()
    if row is not None:
        return Claim(call_id=row[0], attempt=row[1], owned=True, status="running")
    existing = session.execute(_CALL_BY_KEY, key).one()
    return Claim(call_id=existing[0], attempt=existing[1], owned=False, status=existing[2])


_ATTEMPTS_PLUS = _calls.c.attempts.op("||")(bindparam("entry", type_=JSONB))
_COMPLETE = (
    update(_calls)
    .where(_calls.c.id == bindparam("call_id"))
    .values(
        status="succeeded",
        output=bindparam("output"),
        prompt_tokens=bindparam("prompt_tokens"),
        completion_tokens=bindparam("completion_tokens"),
        usage_estimated=bindparam("usage_estimated"),
        cost=bindparam("cost"),
        cached=bindparam("cached"),
        latency_ms=bindparam("latency_ms"),
        attempts=_ATTEMPTS_PLUS,
        lease_until=None,
        finished_at=func.now(),
    )
)
_FAIL = (
    update(_calls)
    .where(_calls.c.id == bindparam("call_id"))
    .values(
        status=bindparam("status"),
        error_code=bindparam("code"),
        error=bindparam("message"),
        latency_ms=bindparam("latency_ms"),
        attempts=_ATTEMPTS_PLUS,
        lease_until=bindparam("lease_until"),
        finished_at=bindparam("finished_at"),
    )
)


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
        _COMPLETE,
        {
            "call_id": call_id, "output": output, "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens, "usage_estimated": usage_estimated,
            "cost": cost, "cached": cached, "latency_ms": latency_ms, "entry": [attempt],
        },
    )  # fmt: skip


@dataclass(frozen=True)
class Spend:
    cost: Decimal
    budget: Decimal | None
    status: str

    @property
    def over_budget(self) -> bool:
        return self.budget is not None and self.cost >= self.budget


_ADD_SPEND = (
    update(_jobs)
    .where(_jobs.c.id == bindparam("job_id"))
    .values(
        cost=_jobs.c.cost + bindparam("cost"),
        prompt_tokens=_jobs.c.prompt_tokens + bindparam("prompt_tokens"),
        completion_tokens=_jobs.c.completion_tokens + bindparam("completion_tokens"),
    )
    .returning(_jobs.c.cost, _jobs.c.budget, _jobs.c.status)
)


# The answer and its job's running totals in one round trip: the call's update rides along as
# a data-modifying CTE (PostgreSQL runs it whether or not the outer statement reads it).
_COMPLETE_AND_SPEND = _ADD_SPEND.add_cte(_COMPLETE.cte("completed"))


def complete_and_spend(session: Session, call_id: int, job_id: int, **answer: Any) -> Spend:
    """Record a paid call's answer and add it to its job's running totals (so budgets and
    progress see it at once), in one statement."""
    values = {
        "call_id": call_id, "job_id": job_id, "output": answer["output"],
        "prompt_tokens": answer["prompt_tokens"], "completion_tokens": answer["completion_tokens"],
        "usage_estimated": answer["usage_estimated"], "cost": answer["cost"], "cached": False,
        "latency_ms": answer["latency_ms"], "entry": [answer["attempt"]],
    }  # fmt: skip
    return Spend(*session.execute(_COMPLETE_AND_SPEND, values).one())


def fail_call(
    session: Session,
    call_id: int,
    *,
    code: str,
    message: str,
    latency_ms: int | None,
    attempt: dict[str, Any],
    retry_in_s: float | None,
) -> None:
    """A failed attempt: final, or (``retry_in_s``) the call waits for its retry."""
    final = retry_in_s is None
    session.execute(
        _FAIL,
        {
            "call_id": call_id, "status": "failed" if final else "retrying", "code": code,
            "message": message, "latency_ms": latency_ms, "entry": [attempt],
            "finished_at": datetime.now(UTC) if final else None,
            "lease_until": None if retry_in_s is None else _wait_lease(retry_in_s),
        },
    )  # fmt: skip


WAIT_GRACE_S = 60.0  # a retry due now may still sit in a queue a while


def _wait_lease(wait_s: float) -> datetime:
    """Until when a call waiting ``wait_s`` for its retry counts as in hand (the sweeper
    leaves it alone); past it, the retry's message was lost."""
    return datetime.now(UTC) + timedelta(seconds=wait_s + WAIT_GRACE_S)


def release_call(session: Session, call_id: int, wait_s: float) -> None:
    """Give a claimed call back untried (a shared limit said wait): no attempt is counted."""
    session.execute(
        update(Call)
        .where(Call.id == call_id, Call.status == "running")
        .values(status="pending", attempt=Call.attempt - 1, lease_until=_wait_lease(wait_s))
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


_OUTPUTS = (
    select(_calls.c.slot, _calls.c.output)
    .where(
        _calls.c.item_id == bindparam("item_id"),
        _calls.c.layer == bindparam("layer"),
        _calls.c.status == "succeeded",
    )
    .order_by(_calls.c.slot)
)


def layer_outputs(
    session: Session, item_id: int, layer: int, slots: Sequence[int] | None = None
) -> list[str]:
    """A layer's successful outputs in slot order (only ``slots`` when given)."""
    rows = session.execute(_OUTPUTS, {"item_id": item_id, "layer": layer})
    wanted = None if slots is None else set(slots)
    return [text for slot, text in rows if text is not None and (wanted is None or slot in wanted)]


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


# --- eval runs ------------------------------------------------------------------------------


def create_eval_run(
    session: Session, *, data_path: str, data_hash: str, config: dict[str, Any]
) -> EvalRun:
    run = EvalRun(data_path=data_path, data_hash=data_hash, config=config, jobs={})
    session.add(run)
    session.flush()
    return run


def get_eval_run(session: Session, run_id: int) -> EvalRun | None:
    return session.get(EvalRun, run_id)


def set_eval_jobs(session: Session, run_id: int, jobs: dict[str, Any]) -> None:
    session.execute(update(EvalRun).where(EvalRun.id == run_id).values(jobs=jobs))


def finish_eval_run(
    session: Session,
    run_id: int,
    *,
    status: str,
    report: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    values = {"status": status, "report": report, "error": error, "finished_at": func.now()}
    session.execute(update(EvalRun).where(EvalRun.id == run_id).values(**values))


def add_eval_verdicts(session: Session, run_id: int, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        session.execute(pg_insert(EvalVerdict), [{**row, "run_id": run_id} for row in rows])


def job_statuses(session: Session, job_ids: Sequence[int]) -> dict[int, str]:
    rows = session.execute(select(Job.id, Job.status).where(Job.id.in_(job_ids)))
    return {job_id: status for job_id, status in rows}


def item_seconds(session: Session, job_id: int) -> dict[str, float]:
    """Wall time from start to end of each finished item of a job, by custom_id."""
    seconds = func.extract("epoch", Item.finished_at - Item.started_at)
    rows = session.execute(
        select(Item.custom_id, seconds).where(
            Item.job_id == job_id, Item.finished_at.is_not(None), Item.started_at.is_not(None)
        )
    )
    return {custom_id: float(value) for custom_id, value in rows}
