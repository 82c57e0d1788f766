"""The batch API: submit, list, inspect, cancel, stream results and progress, trace items."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import IO, Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from api.deps import DB, Caller, Config, moa_config
from api.errors import ApiError, not_found
from api.schemas import MAX_ID, JobCreate
from db import repo
from moa.jobs import (
    IdempotencyConflict,
    JobOptions,
    JobStateError,
    Limits,
    cancel,
    create_job,
    job_record,
    result_record,
)
from moa.settings import Settings
from workers import resources

router = APIRouter(prefix="/v1", tags=["jobs"])
JobId = Annotated[int, Path(ge=1, le=MAX_ID)]
JSONL_TYPES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines")
MAX_URL = 2000


def _job_or_404(session: Any, tenant: str, job_id: int) -> Any:
    job = repo.tenant_job(session, tenant, job_id)
    if job is None:
        raise not_found(f"job {job_id}")
    return job


# --- submitting ------------------------------------------------------------------------------


@router.post(
    "/jobs",
    status_code=201,
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": JobCreate.model_json_schema()},
                "application/x-ndjson": {"schema": {"type": "string"}},
            },
            "required": True,
        }
    },
)
async def submit_job(
    request: Request,
    caller: Caller,
    config: Config,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    preset: Annotated[str | None, Query(max_length=100)] = None,
    budget: Annotated[str | None, Query(max_length=40)] = None,
    skip_invalid: bool = False,
    webhook_url: Annotated[str | None, Query(max_length=MAX_URL)] = None,
) -> JSONResponse:
    """Create a job from JSON (``{"preset", "items": [...]}``) or a JSONL body streamed in
    (``Content-Type: application/x-ndjson`` with ``?preset=``)."""
    _check_size(request, config)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind in JSONL_TYPES:
        if not preset:
            raise ApiError(400, "invalid_request", "a JSONL body needs ?preset=NAME")
        spool = await _spool(request, config.max_request_bytes)
        options = _options(
            caller.tenant, idempotency_key, _amount(budget), skip_invalid, webhook_url, config
        )
        return await run_in_threadpool(_create_from_file, preset, spool, options)
    body = _parse_json(await _read(request, config.max_request_bytes))
    lines = [json.dumps(item) for item in body.items]
    url = str(body.webhook_url) if body.webhook_url else None
    options = _options(caller.tenant, idempotency_key, body.budget, body.skip_invalid, url, config)
    return await run_in_threadpool(_create, body.preset, lines, options)


def _check_size(request: Request, config: Settings) -> None:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > config.max_request_bytes:
        raise ApiError(413, "too_large", f"the body is over {config.max_request_bytes} bytes")


async def _read(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"the body is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _spool(request: Request, limit: int) -> IO[bytes]:
    """The JSONL body, kept on disk past 1 MB, so a big batch does not sit in memory."""
    spool = tempfile.SpooledTemporaryFile(max_size=1_000_000)  # noqa: SIM115 - closed by the reader
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            spool.close()
            raise ApiError(413, "too_large", f"the body is over {limit} bytes")
        spool.write(chunk)
    spool.seek(0)
    return spool


def _parse_json(raw: bytes) -> JobCreate:
    try:
        return JobCreate.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:20]
        )
        raise ApiError(400, "invalid_request", problems) from None


def _amount(value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ApiError(400, "invalid_request", f"budget {value!r} is not a number") from None
    if not amount.is_finite() or amount <= 0:
        raise ApiError(400, "invalid_request", "budget must be a positive amount")
    return amount


def _options(
    tenant: str, key: str | None, budget: Decimal | None, skip: bool, webhook: str | None,
    config: Settings,
) -> JobOptions:  # fmt: skip
    if webhook is not None:
        if not webhook.startswith(("http://", "https://")):
            raise ApiError(400, "invalid_request", "webhook_url must be an http(s) URL")
        if len(webhook) > MAX_URL:  # the column's size; a JSON body's URL is not limited before
            raise ApiError(400, "invalid_request", f"webhook_url is over {MAX_URL} characters")
        if not config.webhook_secret:
            raise ApiError(
                400, "webhooks_disabled", "webhooks need MOA_WEBHOOK_SECRET on the server"
            )
    limits = Limits(max_items=config.max_items, max_prompt_chars=config.max_prompt_chars)
    # An empty Idempotency-Key is no key: stored as "", a second one would clash with it.
    return JobOptions(
        tenant=tenant, idempotency_key=key or None, budget=budget, skip_invalid=skip,
        limits=limits, webhook_url=webhook,
    )  # fmt: skip


def _create_from_file(preset: str, spool: IO[bytes], options: JobOptions) -> JSONResponse:
    with spool:
        return _create(preset, spool, options)


def _create(preset: str, lines: Any, options: JobOptions) -> JSONResponse:
    from workers.tasks import dispatch

    presets = moa_config()
    with resources.sessions()() as session:
        try:
            submitted = create_job(session, presets, preset, lines, options)
        except IdempotencyConflict as exc:
            raise ApiError(409, "idempotency_conflict", str(exc)) from None
        session.commit()
        record = job_record(submitted.job)
    if not submitted.created:
        return JSONResponse(record, status_code=200)
    dispatch.delay(submitted.job.id)
    record["skipped"] = [{"line": e.line, "message": e.message} for e in submitted.skipped]
    return JSONResponse(record, status_code=201)


# --- reading ---------------------------------------------------------------------------------


@router.get("/jobs")
def list_jobs(
    caller: Caller,
    session: DB,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[int | None, Query(ge=1, le=MAX_ID, description="cursor: next_cursor")] = None,
) -> dict[str, Any]:
    jobs = repo.list_jobs(session, limit + 1, tenant=caller.tenant, before=after)
    page = [job_record(j) for j in jobs[:limit]]
    more = len(jobs) > limit
    return {"data": page, "has_more": more, "next_cursor": page[-1]["id"] if more else None}


@router.get("/jobs/{job_id}")
def get_job(job_id: JobId, caller: Caller, session: DB) -> dict[str, Any]:
    return job_record(_job_or_404(session, caller.tenant, job_id))


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: JobId, caller: Caller, session: DB) -> dict[str, Any]:
    from workers.tasks import finalize

    job = _job_or_404(session, caller.tenant, job_id)
    try:
        cancel(session, job_id)
    except JobStateError as exc:
        raise ApiError(409, "not_cancellable", str(exc)) from None
    session.commit()
    finalize.delay(job_id)
    return job_record(job)  # reloaded after the commit


@router.get("/jobs/{job_id}/items")
def list_items(
    job_id: JobId,
    caller: Caller,
    session: DB,
    status: Annotated[
        str | None, Query(pattern="^(queued|in_progress|completed|failed|cancelled)$")
    ] = None,
    after: Annotated[
        int | None, Query(ge=0, le=2**31 - 1, description="cursor: next_cursor")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    _job_or_404(session, caller.tenant, job_id)
    items = repo.list_items(session, job_id, status=status, after=after, limit=limit + 1)
    page = [{**result_record(i), "position": i.position, "layer": i.layer} for i in items[:limit]]
    more = len(items) > limit
    return {"data": page, "has_more": more, "next_cursor": page[-1]["position"] if more else None}


@router.get("/jobs/{job_id}/results")
def results(job_id: JobId, caller: Caller, session: DB) -> StreamingResponse:
    """Every item's result as JSONL, in input order, streamed."""
    _job_or_404(session, caller.tenant, job_id)

    def lines() -> Iterator[bytes]:
        with resources.sessions()() as reader:
            for item in repo.iter_results(reader, job_id):
                yield (json.dumps(result_record(item), ensure_ascii=False) + "\n").encode()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.get("/jobs/{job_id}/events")
def events(job_id: JobId, caller: Caller, session: DB) -> StreamingResponse:
    """Server-sent events: ``item`` as items end, ``progress`` (counts, layers, cost), ``end``."""
    _job_or_404(session, caller.tenant, job_id)
    return StreamingResponse(_event_stream(job_id), media_type="text/event-stream")


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _item_event(item: Any) -> dict[str, Any]:
    return {
        "id": item.id,
        "custom_id": item.custom_id,
        "status": item.status,
        "cost": str(item.cost),
        "error_code": item.error_code,
    }


def _event_stream(job_id: int, poll_s: float = 0.5) -> Iterator[bytes]:
    since = datetime.fromtimestamp(0, UTC)
    while True:
        with resources.sessions()() as session:
            job = repo.get_job(session, job_id)
            assert job is not None
            for item in repo.items_finished_since(session, job_id, since):
                since = max(since, item.finished_at or since)
                yield _sse("item", _item_event(item))
            progress = {**job_record(job), "layers": repo.layer_mix(session, job_id)}
        yield _sse("progress", progress)
        if job.status in repo.JOB_ENDED:
            yield _sse("end", {"status": job.status})
            return
        time.sleep(poll_s)


@router.get("/items/{item_id}/trace")
def trace(
    item_id: Annotated[int, Path(ge=1, le=MAX_ID)], caller: Caller, session: DB
) -> dict[str, Any]:
    """Every call of an item, layer by layer: who answered, what it cost, how long it took."""
    loaded = repo.get_item_and_job(session, item_id)
    if loaded is None or loaded[1].tenant != caller.tenant:
        raise not_found(f"item {item_id}")
    item, _ = loaded
    calls = [
        {
            "layer": c.layer, "slot": c.slot, "role": c.role, "provider": c.provider,
            "model": c.model, "status": c.status, "output": c.output,
            "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
            "cost": str(c.cost), "cached": c.cached, "usage_estimated": c.usage_estimated,
            "latency_ms": c.latency_ms, "attempts": c.attempts, "error_code": c.error_code,
            "error": c.error,
        }
        for c in repo.item_calls(session, item_id)
    ]  # fmt: skip
    return {**result_record(item), "job_id": item.job_id, "calls": calls}
