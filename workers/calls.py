"""One LLM call, made at most once per (item, layer, slot): claim the key, check the
context, the cache and the shared limits, send, record the attempt and the spend."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from celery import Task
from celery.utils.log import get_task_logger
from sqlalchemy.orm import Session

from db import repo
from db.models import Call
from pipeline.cache import cacheable, request_key
from pipeline.cost import call_cost
from pipeline.errors import BadResponse, ContextTooLong, ProviderError
from pipeline.plan import CallPlan
from pipeline.prompts import Message, layer_messages
from pipeline.providers import Completion, Delta
from pipeline.retry import retry_delay
from pipeline.specs import AgentSpec, Config, ModelSpec, ProviderSpec
from pipeline.tokens import check_fits
from workers import resources
from workers.gate import Permit

log = get_task_logger(__name__)

BUSY_CALL_S = 5.0  # another live worker holds the call's lease
NOT_RETRYABLE = {"bad_request", "auth", "context_too_long"}


@dataclass(frozen=True)
class Outcome:
    call_id: int
    status: str  # "succeeded" | "failed"
    text: str | None = None
    error_code: str | None = None
    error: str | None = None
    over_budget: bool = False  # this call took its job's spend to the budget

    @property
    def retryable(self) -> bool:
        return self.error_code not in NOT_RETRYABLE


@dataclass(frozen=True)
class Attempt:
    """One owned call about to be tried: what to send and to whom."""

    claim: repo.Claim
    job_id: int
    spec: ProviderSpec
    model: ModelSpec
    agent: AgentSpec
    messages: list[Message]
    stream_to: str | None = None  # a Redis channel that receives the answer as it comes

    @property
    def call_id(self) -> int:
        return self.claim.call_id


def perform_call(
    task: Task, item: repo.ItemRow, call: CallPlan, config: Config, stream_to: str | None = None
) -> Outcome:
    """Make one keyed call exactly once; a retry or duplicate reuses what is recorded."""
    with resources.sessions().begin() as session:
        prepared = prepare_call(task, session, item, call, config)
    if isinstance(prepared, Outcome):
        return prepared
    return attempt_call(task, replace(prepared, stream_to=stream_to))


def prepare_call(
    task: Task, session: Session, item: repo.ItemRow, call: CallPlan, config: Config
) -> Attempt | Outcome:
    """In the caller's transaction: claim the call's key and gather what it is shown.
    An Outcome means the key was settled before (a retry or a duplicate delivery)."""
    model = config.model(call.agent.model)
    spec = config.providers[model.provider]
    params = {"temperature": call.agent.temperature, "max_tokens": call.agent.max_tokens}
    claim = repo.claim_call(
        session, item_id=item.id, layer=call.layer, slot=call.slot, role=call.role,
        provider=spec.name, model=model.model, params=params, lease_s=spec.timeout_s * 2 + 5,
    )  # fmt: skip
    if not claim.owned:
        return _recorded(session, task, claim)
    shown = [
        text
        for source in call.sources
        for text in repo.layer_outputs(session, item.id, source.layer, source.slots)
    ]
    instruction = call.instruction or spec.aggregate_instruction
    messages = layer_messages(_query(item.messages), shown, instruction)
    return Attempt(claim, item.job_id, spec, model, call.agent, messages)


def attempt_call(task: Task, attempt: Attempt) -> Outcome:
    """Try the claimed call: context check, cache, shared limits, then the provider."""
    started = _utcnow()
    try:
        tokens = check_fits(
            attempt.messages, attempt.model.model, attempt.model.context_window,
            attempt.agent.max_tokens,
        )  # fmt: skip
    except ContextTooLong as error:  # never sent: it could not fit
        return _failed(task, attempt, error, started, 0)
    key = _cache_key(attempt)
    if key is not None:
        hit = _from_cache(attempt, key, started)
        if hit is not None:
            return hit
    permit = resources.gate().enter(attempt.spec, attempt.model, tokens + attempt.agent.max_tokens)
    if isinstance(permit, float):
        with resources.sessions().begin() as session:
            wait = permit + random.uniform(0, 0.25)
            repo.release_call(session, attempt.call_id, wait)
        raise task.retry(countdown=wait)
    return _send(task, attempt, permit, key)


def _send(task: Task, attempt: Attempt, permit: Permit, key: str | None) -> Outcome:
    gate, started, clock = resources.gate(), _utcnow(), time.perf_counter()
    try:
        completion = _complete(attempt)
    except ProviderError as error:
        gate.failed(attempt.spec, error)
        return _failed(task, attempt, error, started, _ms_since(clock))
    finally:
        gate.leave(permit)
    gate.succeeded(attempt.spec)
    model = attempt.model
    cost = call_cost(
        completion.prompt_tokens,
        completion.completion_tokens,
        model.input_per_1m,
        model.output_per_1m,
    )
    latency = _ms_since(clock)
    with resources.sessions().begin() as session:
        spend = repo.complete_and_spend(
            session, attempt.call_id, attempt.job_id, output=completion.text,
            prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens,
            usage_estimated=not completion.usage_reported, cost=cost, latency_ms=latency,
            attempt=repo.attempt_entry(
                attempt.claim.attempt, started, latency, "ok", worker=_hostname(task)
            ),
        )  # fmt: skip
        if key is not None:
            repo.cache_response(
                session, key, provider=attempt.spec.name, model=model.model,
                output=completion.text, prompt_tokens=completion.prompt_tokens,
                completion_tokens=completion.completion_tokens,
            )  # fmt: skip
    return Outcome(attempt.call_id, "succeeded", completion.text, over_budget=spend.over_budget)


def _complete(attempt: Attempt) -> Completion:
    provider = resources.provider(attempt.spec)
    model, messages, agent = attempt.model.model, attempt.messages, attempt.agent
    if attempt.stream_to is None:
        return provider.complete(
            model, messages, temperature=agent.temperature, max_tokens=agent.max_tokens
        )
    events = provider.stream(
        model, messages, temperature=agent.temperature, max_tokens=agent.max_tokens
    )
    return publish_stream(events, attempt.stream_to)


def publish_stream(events: Iterator[Delta | Completion], channel: str) -> Completion:
    """Relay each piece of the answer to ``channel`` (the API streams it to its client)."""
    redis = resources.redis()
    redis.publish(channel, json.dumps({"restart": True}))  # a retry starts the answer over
    for event in events:
        if isinstance(event, Completion):
            return event
        redis.publish(channel, json.dumps({"delta": event.text}))
    raise BadResponse("the stream ended without a final completion")


def _cache_key(attempt: Attempt) -> str | None:
    if not cacheable(attempt.spec.cache, attempt.agent.temperature):
        return None
    params = {"temperature": attempt.agent.temperature, "max_tokens": attempt.agent.max_tokens}
    return request_key(attempt.spec.name, attempt.model.model, attempt.messages, params)


def _from_cache(attempt: Attempt, key: str, started: datetime) -> Outcome | None:
    """A cache hit is recorded as a call of its own, with cost 0 and marked cached."""
    with resources.sessions().begin() as session:
        hit = repo.cached_response(session, key)
        if hit is None:
            return None
        repo.complete_call(
            session, attempt.call_id, output=hit.output, prompt_tokens=hit.prompt_tokens,
            completion_tokens=hit.completion_tokens, usage_estimated=False, cost=Decimal(0),
            latency_ms=0, cached=True,
            attempt=repo.attempt_entry(attempt.claim.attempt, started, 0, "cached"),
        )  # fmt: skip
    return Outcome(attempt.call_id, "succeeded", hit.output)


def _recorded(session: Session, task: Task, claim: repo.Claim) -> Outcome:
    if claim.status not in repo.TERMINAL_CALL:
        raise task.retry(countdown=BUSY_CALL_S)
    call = session.get(Call, claim.call_id)
    assert call is not None
    return Outcome(claim.call_id, call.status, call.output, call.error_code, call.error)


def _failed(
    task: Task, attempt: Attempt, error: ProviderError, started: datetime, latency_ms: int
) -> Outcome:
    """Record the attempt; retry through Celery (never a sleeping thread) or give up."""
    number = attempt.claim.attempt
    spec = attempt.spec
    delay = retry_delay(
        error,
        number,
        max_attempts=spec.max_attempts,
        base_s=spec.retry_base_s,
        cap_s=spec.retry_cap_s,
    )
    extra: dict[str, Any] = {"error": error.message, "worker": _hostname(task)}
    if delay is not None:
        extra["retry_in_s"] = round(delay, 3)
    entry = repo.attempt_entry(number, started, latency_ms, error.code, **extra)
    with resources.sessions().begin() as session:
        repo.fail_call(
            session, attempt.call_id, code=error.code, message=error.message,
            latency_ms=latency_ms, attempt=entry, retry_in_s=delay,
        )  # fmt: skip
    if delay is not None:
        log.info(
            "call %s attempt %s: %s; retry in %.1fs", attempt.call_id, number, error.code, delay
        )
        raise task.retry(countdown=delay)
    return Outcome(attempt.call_id, "failed", error_code=error.code, error=error.message)


def _hostname(task: Task) -> str:
    return str(task.request.hostname or "")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _query(messages: list[dict[str, Any]]) -> list[Message]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _ms_since(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
