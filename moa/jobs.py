"""Submitting jobs and reading them back: the service layer the CLI and the API share."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session

from db import repo
from db.models import Item, Job
from pipeline.errors import MoaError
from pipeline.inputs import InputError, InputRow, LineError, read_rows
from pipeline.specs import Config


@dataclass(frozen=True)
class Limits:
    max_items: int = 1_000_000
    max_prompt_chars: int = 100_000


@dataclass(frozen=True)
class JobOptions:
    tenant: str = "default"
    idempotency_key: str | None = None
    budget: Decimal | None = None  # stop dispatching once this much is spent
    skip_invalid: bool = False  # accept the valid lines, report the others
    limits: Limits = Limits()
    webhook_url: str | None = None  # told of the job's end: job.completed, job.cancelled, ...
    stream_final: bool = False  # the final answer's tokens are published as they come
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Submitted:
    job: Job
    created: bool  # False: the idempotency key matched an earlier, identical request
    skipped: list[LineError] = field(default_factory=list)


class IdempotencyConflict(MoaError):
    """The idempotency key was used before for a different request."""


BATCH = 1000


def create_job(
    session: Session,
    config: Config,
    preset: str,
    lines: Iterable[bytes | str],
    options: JobOptions = JobOptions(),
) -> Submitted:
    """Create a queued job from JSONL lines, streamed, in the caller's transaction.

    Invalid lines raise InputError listing them all (unless ``skip_invalid``); the
    caller rolls back, so no half-created job is left behind.
    """
    snapshot = config.snapshot(preset)  # raises ConfigError for an unknown preset
    if options.stream_final:
        snapshot["stream_final"] = True
    budget = options.budget  # NaN and Infinity are Decimals too; NaN cannot even be compared
    if budget is not None and not (budget.is_finite() and budget > 0):
        raise InputError([LineError(0, f"the budget must be positive, not {budget}")])
    digest = _Digest(preset, options)
    if options.idempotency_key:
        existing = repo.job_by_key(session, options.tenant, options.idempotency_key)
        if existing is not None:
            return _replayed(existing, digest.of(lines))
    job = repo.create_job(
        session, preset=preset, config=snapshot, tenant=options.tenant,
        idempotency_key=options.idempotency_key, budget=options.budget,
        webhook_url=options.webhook_url, metadata=options.metadata,
    )  # fmt: skip
    total, errors = _ingest(session, job.id, digest.reading(lines), options.limits)
    if errors and not options.skip_invalid:
        raise InputError(errors)
    if total == 0:
        raise InputError(errors or [LineError(0, "the input has no items")])
    repo.queue_job(session, job.id, total, digest.hexdigest())
    return Submitted(job, True, errors)


def _replayed(existing: Job, request_hash: str) -> Submitted:
    if existing.request_hash != request_hash:
        raise IdempotencyConflict(
            f"idempotency key {existing.idempotency_key!r} was used for a different request "
            f"(job {existing.id})"
        )
    return Submitted(existing, False)


def _ingest(
    session: Session, job_id: int, lines: Iterable[bytes | str], limits: Limits
) -> tuple[int, list[LineError]]:
    """Insert valid rows in batches; duplicates are found by the database, by line."""
    errors: list[LineError] = []
    total = 0
    parsed = read_rows(
        lines, max_prompt_chars=limits.max_prompt_chars, max_items=limits.max_items, dedupe=False
    )
    for batch in _batches(parsed, errors):
        inserted = repo.insert_items(session, job_id, batch)
        total += len(inserted)
        errors.extend(
            LineError(row["line"], f"duplicate custom_id {row['custom_id']!r}")
            for row in batch
            if row["position"] not in inserted
        )
    return total, sorted(errors, key=lambda e: e.line)


def _batches(
    parsed: Iterable[InputRow | LineError], errors: list[LineError]
) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for position, entry in enumerate(e for e in parsed if not _is_error(e, errors)):
        assert isinstance(entry, InputRow)
        batch.append({
            "line": entry.line, "position": position, "custom_id": entry.custom_id,
            "messages": entry.messages, "metadata": entry.metadata,
        })  # fmt: skip
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _is_error(entry: InputRow | LineError, errors: list[LineError]) -> bool:
    if isinstance(entry, LineError):
        errors.append(entry)
        return True
    return False


class _Digest:
    """A hash of what a request asks for, to tell a retried request from another one."""

    def __init__(self, preset: str, options: JobOptions):
        self._hash = hashlib.sha256()
        header = {
            "preset": preset,
            "budget": str(options.budget),
            "skip": options.skip_invalid,
            "webhook": options.webhook_url,
        }
        self._hash.update(json.dumps(header, sort_keys=True).encode())

    def reading(self, lines: Iterable[bytes | str]) -> Iterator[bytes | str]:
        for line in lines:
            self._hash.update(line.encode() if isinstance(line, str) else line)
            self._hash.update(b"\n")
            yield line

    def of(self, lines: Iterable[bytes | str]) -> str:
        for _ in self.reading(lines):
            pass
        return self.hexdigest()

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class JobStateError(MoaError):
    """The job is not in a state that allows this (e.g. resuming a job being cancelled)."""


def cancel(session: Session, job_id: int) -> int:
    """Cancel a job; the caller commits, then sends ``finalize``."""
    job = repo.get_job(session, job_id)
    if job is None:
        raise JobStateError(f"no job {job_id}")
    cancelled = repo.cancel_job(session, job_id)
    if cancelled is None:
        raise JobStateError(f"job {job_id} is {job.status}: nothing to cancel")
    return cancelled


def reopen(session: Session, job_id: int, statuses: tuple[str, ...], budget: Decimal | None) -> int:
    """Queue a job's items in ``statuses`` again; the caller commits, then dispatches.

    Rows are locked items first, job last, the order every other writer uses."""
    job = repo.get_job(session, job_id)
    if job is None:
        raise JobStateError(f"no job {job_id}")
    if job.status in ("validating", "cancelling", "finalizing"):
        raise JobStateError(f"job {job_id} is {job.status}; try again when it has settled")
    reopened = repo.reopen_items(session, job_id, statuses)
    if budget is not None:
        repo.set_budget(session, job_id, budget)
    if reopened == 0 and job.status not in ("queued", "in_progress"):
        raise JobStateError(f"job {job_id} is {job.status} and has no items to run again")
    return reopened


UNFINISHED = ("queued", "in_progress", "cancelled")


def result_record(item: Item) -> dict[str, Any]:
    error = None
    if item.error_code:
        error = {"code": item.error_code, "message": item.error, "retryable": item.error_retryable}
    return {
        "custom_id": item.custom_id,
        "status": item.status,
        "output": item.output,
        "error": error,
        "prompt_tokens": item.prompt_tokens,
        "completion_tokens": item.completion_tokens,
        "cost": f"{item.cost:f}",
        "item_id": item.id,
        "metadata": item.metadata_,
        "notes": item.notes or {},
    }


def job_record(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "status": job.status,
        "preset": job.preset,
        "request_counts": {
            "total": job.total,
            "completed": job.completed,
            "failed": job.failed,
            "cancelled": job.cancelled,
        },
        "budget": str(job.budget) if job.budget is not None else None,
        "reason": job.reason,
        "prompt_tokens": job.prompt_tokens,
        "completion_tokens": job.completion_tokens,
        "cost": f"{job.cost if job.cost is not None else Decimal(0):f}",
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "error": job.error,
        "metadata": job.metadata_ or {},  # e.g. which pipeline run or eval a job belongs to
    }
