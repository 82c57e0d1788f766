"""OpenAI-compatible chat completions where ``model`` is a MoA preset. Each request is a
one-item job on the same Celery pipeline, recorded and costed like any other."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import weakref
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from api.deps import Caller, Config, moa_config
from api.errors import ApiError
from api.schemas import ChatRequest
from db import repo
from moa.jobs import JobOptions, Limits, create_job
from moa.settings import Settings
from workers import resources

router = APIRouter(prefix="/v1", tags=["openai"])
WAIT_S = 600.0


@router.get("/models")
def models(caller: Caller) -> dict[str, Any]:
    presets = moa_config().presets
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "moa-batch",
             "description": spec.description}
            for name, spec in sorted(presets.items())
        ],
    }  # fmt: skip


# One client (and its connection pool) per event loop of the API process, not per request.
_stream_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = (
    weakref.WeakKeyDictionary()
)


def _stream_redis(url: str) -> aioredis.Redis:
    loop = asyncio.get_running_loop()
    client = _stream_clients.get(loop)
    if client is None:
        client = _stream_clients[loop] = aioredis.from_url(url)
    return client


@router.post("/chat/completions", response_model=None)
async def chat_completions(body: ChatRequest, caller: Caller, config: Config) -> Any:
    job_id, item_id = await run_in_threadpool(_create, config, caller.tenant, body)
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    if not body.stream:
        item, job = await _wait(item_id)
        return _completion(completion_id, body.model, item, job)
    pubsub = _stream_redis(config.effective_redis_url).pubsub()
    await pubsub.subscribe(f"moa:stream:{item_id}")  # before dispatch: no piece is missed
    await run_in_threadpool(_dispatch, job_id)
    return StreamingResponse(_chunks(pubsub, completion_id, body.model, item_id),
                             media_type="text/event-stream")  # fmt: skip


def _create(config: Settings, tenant: str, body: ChatRequest) -> tuple[int, int]:
    presets = moa_config()
    if body.model not in presets.presets:
        known = ", ".join(sorted(presets.presets))
        raise ApiError(404, "model_not_found", f"no preset {body.model!r}; presets: {known}")
    line = json.dumps({"custom_id": "chat", "messages": [m.model_dump() for m in body.messages]})
    limits = Limits(max_items=1, max_prompt_chars=config.max_prompt_chars)
    options = JobOptions(
        tenant=tenant,
        limits=limits,
        stream_final=body.stream,
        metadata={"source": "chat.completions"},
    )
    with resources.sessions()() as session:
        job = create_job(session, presets, body.model, [line], options).job
        item_id = repo.list_items(session, job.id, status=None, after=None, limit=1)[0].id
        session.commit()
        job_id = job.id
    if not body.stream:
        _dispatch(job_id)
    return job_id, item_id


def _dispatch(job_id: int) -> None:
    from workers.tasks import dispatch

    dispatch.delay(job_id)


def _finished(item_id: int) -> bool:
    """A light poll (the item's row, not its job's config) of whether the item has ended."""
    with resources.sessions()() as session:
        item = repo.load_item(session, item_id)
        return item is not None and item.status not in ("queued", "in_progress")


def _ended(item_id: int) -> tuple[Any, Any]:
    with resources.sessions()() as session:
        loaded = repo.get_item_and_job(session, item_id)
        assert loaded is not None
        return loaded


async def _wait(item_id: int) -> tuple[Any, Any]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if await run_in_threadpool(_finished, item_id):
            return await run_in_threadpool(_ended, item_id)
        await asyncio.sleep(0.1)
    raise ApiError(504, "timeout", f"no answer within {WAIT_S:.0f}s; see /v1/items/{item_id}/trace")


def _usage(job: Any) -> dict[str, int]:
    # Every call MoA made counts: this is what the request was billed for.
    prompt, completion = int(job.prompt_tokens), int(job.completion_tokens)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _completion(completion_id: str, model: str, item: Any, job: Any) -> dict[str, Any]:
    if item.status != "completed":
        # A prompt too long for the preset's models is the caller's error, as OpenAI's 400
        # context_length_exceeded; any other failure is the models' (a bad gateway).
        status = 400 if item.error_code == "context_too_long" else 502
        raise ApiError(status, item.error_code or "moa_failed", item.error or "the MoA run failed")
    message = {"role": "assistant", "content": item.output}
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": _usage(job),
    }


def _chunk(
    completion_id: str,
    model: str,
    delta: dict[str, Any],
    finish: str | None = None,
    usage: dict[str, int] | None = None,
) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [] if usage else [choice],
    }
    if usage:
        body["usage"] = usage
    return f"data: {json.dumps(body)}\n\n".encode()


async def _chunks(
    pubsub: Any, completion_id: str, model: str, item_id: int
) -> AsyncIterator[bytes]:
    """The final aggregator's tokens as OpenAI chunks, then the usage, then [DONE]."""
    sent = False
    try:
        yield _chunk(completion_id, model, {"role": "assistant", "content": ""})
        async for piece in _pieces(pubsub, item_id):
            sent = True
            yield _chunk(completion_id, model, {"content": piece})
        item, job = await _wait(item_id)
        if item.status == "completed" and not sent and item.output:
            yield _chunk(completion_id, model, {"content": item.output})  # e.g. an early stop
        if item.status != "completed":
            error = {"error": {"code": item.error_code, "message": item.error}}
            yield f"data: {json.dumps(error)}\n\n".encode()
        yield _chunk(completion_id, model, {}, finish="stop")
        yield _chunk(completion_id, model, {}, usage=_usage(job))
        yield b"data: [DONE]\n\n"
    finally:
        await pubsub.aclose()


async def _pieces(pubsub: Any, item_id: int) -> AsyncIterator[str]:
    """Pieces published by the worker until its "done"; if the item ends without one (a
    failure, an early stop), whatever is still buffered, then stop."""
    deadline = time.monotonic() + WAIT_S
    ended = False
    while time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if message is None:
            if ended:
                return  # the item is over and nothing more came
            ended = await run_in_threadpool(_finished, item_id)
            continue
        data = json.loads(message["data"])
        if data.get("done"):
            return
        if "delta" in data:
            yield data["delta"]
