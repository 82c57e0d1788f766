"""Celery tasks. Thin on purpose: load by id, call the pipeline, save, return ids.

Per item and layer, one chord: ``propose`` tasks as the header (one LLM call
each), ``advance`` as the callback. ``advance`` trusts the database, not the
chord's results: it checks the layer's quorum, then starts the next layer's
chord or makes the final aggregator call and finishes the item.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from celery import Task, chord, group
from celery.utils.log import get_task_logger
from sqlalchemy.orm import Session

from db import repo
from db.models import Call, Item, Job
from moa.settings import get_settings
from pipeline.cache import cacheable, request_key
from pipeline.cost import call_cost
from pipeline.errors import ContextTooLong, ProviderError
from pipeline.plan import CallPlan, Plan, layer_verdict
from pipeline.prompts import Message, layer_messages
from pipeline.retry import retry_delay
from pipeline.specs import AgentSpec, Config, ModelSpec, ProviderSpec
from pipeline.tokens import check_fits
from workers import resources
from workers.app import app
from workers.gate import Permit

log = get_task_logger(__name__)

WAIT_FOR_LAYER_S = 1.0  # an early chord callback looks again after this
BUSY_CALL_S = 5.0  # another live worker holds the call's lease


# --- starting work ----------------------------------------------------------------------------


def first_layer(plan: Plan) -> int:
    """Items start at layer 1, or at 0 for a preset that is a single call."""
    return 1 if plan.proposer_layers else 0


def start_item(plan: Plan, item_id: int) -> None:
    start_layer(plan, item_id, first_layer(plan))


def start_layer(plan: Plan, item_id: int, layer: int) -> None:
    if layer == 0:
        advance.apply_async((None, item_id, 0))
        return
    header = group(propose.si(item_id, layer, c.slot) for c in plan.layer_calls(layer))
    callback = advance.s(item_id, layer).on_error(item_errored.si(item_id))
    chord(header)(callback)


@app.task(name="moa.dispatch")
def dispatch(job_id: int) -> int:
    """Fill a job's window of in-flight items; finishing items refill it one by one."""
    window = get_settings().max_in_flight_per_job
    with resources.sessions().begin() as session:
        job = repo.lock_job(session, job_id)
        if job is None or job.status not in ("queued", "in_progress"):
            return 0
        _, plan = resources.job_plan(job.id, job.config)
        repo.mark_job_started(session, job_id)
        room = window - repo.count_in_flight(session, job_id)
        item_ids = repo.claim_queued_items(session, job_id, room, first_layer(plan))
    for item_id in item_ids:
        start_item(plan, item_id)
    return len(item_ids)


# --- one LLM call -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    call_id: int
    status: str  # "succeeded" | "failed"
    text: str | None = None
    error_code: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Attempt:
    """One owned call about to be tried: what to send and to whom."""

    claim: repo.Claim
    spec: ProviderSpec
    model: ModelSpec
    agent: AgentSpec
    messages: list[Message]

    @property
    def call_id(self) -> int:
        return self.claim.call_id


def perform_call(task: Task, item: Item, call: CallPlan, config: Config) -> Outcome:
    """Make one keyed call exactly once; a retry or duplicate reuses what is recorded."""
    model = config.model(call.agent.model)
    spec = config.providers[model.provider]
    params = {"temperature": call.agent.temperature, "max_tokens": call.agent.max_tokens}
    with resources.sessions().begin() as session:
        claim = repo.claim_call(
            session, item_id=item.id, layer=call.layer, slot=call.slot, role=call.role,
            provider=spec.name, model=model.model, params=params, lease_s=spec.timeout_s * 2 + 30,
        )  # fmt: skip
        if not claim.owned:
            return _recorded(session, task, claim)
        previous = repo.layer_outputs(session, item.id, call.layer - 1) if call.layer > 1 else []
    instruction = call.instruction or spec.aggregate_instruction
    messages = layer_messages(_query(item), previous, instruction)
    return _attempt(task, Attempt(claim, spec, model, call.agent, messages))


def _attempt(task: Task, attempt: Attempt) -> Outcome:
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
            repo.release_call(session, attempt.call_id)
        raise task.retry(countdown=permit + random.uniform(0, 0.25))
    return _send(task, attempt, permit, key)


def _send(task: Task, attempt: Attempt, permit: Permit, key: str | None) -> Outcome:
    gate, started, clock = resources.gate(), _utcnow(), time.perf_counter()
    try:
        completion = resources.provider(attempt.spec).complete(
            attempt.model.model, attempt.messages, temperature=attempt.agent.temperature,
            max_tokens=attempt.agent.max_tokens,
        )  # fmt: skip
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
        repo.complete_call(
            session, attempt.call_id, output=completion.text,
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
    return Outcome(attempt.call_id, "succeeded", completion.text)


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
            final=delay is None, latency_ms=latency_ms, attempt=entry,
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


def _query(item: Item) -> list[Message]:
    return [{"role": m["role"], "content": m["content"]} for m in item.messages]


def _ms_since(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


def _load(item_id: int) -> tuple[Item, Job, Config, Plan] | None:
    with resources.sessions().begin() as session:
        loaded = repo.get_item_and_job(session, item_id)
    if loaded is None:
        return None
    item, job = loaded
    config, plan = resources.job_plan(job.id, job.config)
    return item, job, config, plan


# --- the chord's header and callback ----------------------------------------------------------


@app.task(name="moa.propose", bind=True, max_retries=None)
def propose(self: Task, item_id: int, layer: int, slot: int) -> int | None:
    loaded = _load(item_id)
    if loaded is None or loaded[0].status != "in_progress":
        return None  # cancelled or gone: spend nothing
    item, _, config, plan = loaded
    return perform_call(self, item, plan.call(layer, slot), config).call_id


@app.task(name="moa.advance", bind=True, max_retries=None)
def advance(self: Task, _results: Any, item_id: int, layer: int) -> None:
    """The callback of layer ``layer`` (0: the item has no proposer layers)."""
    loaded = _load(item_id)
    if loaded is None or loaded[0].status != "in_progress":
        return
    item, _, config, plan = loaded
    if item.layer == layer:
        if not _close_layer(self, plan, item_id, layer):
            return
    elif item.layer != layer + 1:
        return  # a stale duplicate of an earlier callback
    if layer + 1 < plan.aggregator_layer:
        start_layer(plan, item_id, layer + 1)
        return
    outcome = perform_call(self, item, plan.aggregator_call(), config)
    finish(plan, item_id, outcome.text, outcome.error_code, outcome.error)


def _close_layer(task: Task, plan: Plan, item_id: int, layer: int) -> bool:
    """Check the quorum and move the item on; False when the item ended here."""
    failed_reason: str | None = None
    with resources.sessions().begin() as session:
        if layer >= 1:
            calls = repo.layer_calls(session, item_id, layer)
            statuses = {c.slot: c.status for c in calls}
            verdict = layer_verdict(
                statuses, len(plan.layer_calls(layer)), plan.min_ok(layer), layer
            )
            if verdict.action == "wait":
                raise task.retry(countdown=WAIT_FOR_LAYER_S)
            failed_reason = verdict.reason if verdict.action == "fail" else None
        moved = failed_reason is None and repo.move_item_layer(session, item_id, layer, layer + 1)
    if failed_reason is not None:
        finish(plan, item_id, None, "quorum_not_met", failed_reason)
    return moved


@app.task(name="moa.item_errored")
def item_errored(item_id: int) -> None:
    """Errback of a chord whose task raised past its retries: the item fails, the job goes on."""
    loaded = _load(item_id)
    if loaded is None:
        return
    finish(
        loaded[3], item_id, None, "internal_error", "a task of this item failed; see worker logs"
    )


def finish(
    plan: Plan, item_id: int, output: str | None, error_code: str | None, error: str | None
) -> None:
    """End the item once, roll its usage into the job, start the next queued item."""
    next_ids: list[int] = []
    with resources.sessions().begin() as session:
        counts = repo.finish_item(
            session, item_id, output=output, error_code=error_code, error=error
        )
        if counts is None:
            return
        if counts.done:
            repo.finalize_job(session, counts.job_id)
        else:
            next_ids = repo.claim_queued_items(session, counts.job_id, 1, first_layer(plan))
    for next_id in next_ids:
        start_item(plan, next_id)
