"""Submitting jobs and reading them back: the service layer the CLI and the API share."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session

from db import repo
from db.models import Item, Job
from pipeline.inputs import InputError, InputRow, LineError, read_rows
from pipeline.specs import Config


@dataclass(frozen=True)
class Limits:
    max_items: int = 1_000_000
    max_prompt_chars: int = 100_000


def create_job(
    session: Session,
    config: Config,
    preset: str,
    lines: Iterable[bytes | str],
    *,
    limits: Limits = Limits(),
    tenant: str = "default",
) -> Job:
    """Create a queued job from JSONL lines in the caller's transaction.

    Any invalid line raises InputError listing them all; the caller rolls back,
    so no half-created job is left behind.
    """
    snapshot = config.snapshot(preset)  # raises ConfigError for an unknown preset
    job = repo.create_job(session, preset=preset, config=snapshot, tenant=tenant)
    errors: list[LineError] = []
    rows = _valid_rows(
        read_rows(lines, max_prompt_chars=limits.max_prompt_chars, max_items=limits.max_items),
        errors,
    )
    total = repo.add_items(session, job.id, rows)
    if errors:
        raise InputError(errors)
    if total == 0:
        raise InputError([LineError(0, "the input has no items")])
    repo.queue_job(session, job.id, total)
    return job


def _valid_rows(
    parsed: Iterable[InputRow | LineError], errors: list[LineError]
) -> Iterator[dict[str, Any]]:
    position = 0
    for entry in parsed:
        if isinstance(entry, LineError):
            errors.append(entry)
            continue
        if errors:
            continue  # keep validating, stop inserting: the job will be rolled back
        yield {
            "position": position,
            "custom_id": entry.custom_id,
            "messages": entry.messages,
            "metadata": entry.metadata,
        }
        position += 1


def result_record(item: Item) -> dict[str, Any]:
    return {
        "custom_id": item.custom_id,
        "status": item.status,
        "output": item.output,
        "error": {"code": item.error_code, "message": item.error} if item.error_code else None,
        "prompt_tokens": item.prompt_tokens,
        "completion_tokens": item.completion_tokens,
        "cost": str(item.cost),
        "item_id": item.id,
        "metadata": item.metadata_,
    }


def job_record(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "status": job.status,
        "preset": job.preset,
        "request_counts": {"total": job.total, "completed": job.completed, "failed": job.failed},
        "prompt_tokens": job.prompt_tokens,
        "completion_tokens": job.completion_tokens,
        "cost": str(job.cost if job.cost is not None else Decimal(0)),
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "error": job.error,
    }
