"""Celery tasks. Thin on purpose: load by id, call the pipeline, save, return ids.

Per item and proposer layer, one chord: ``propose`` tasks as the header (one
LLM call each), ``advance`` as the callback. ``advance`` trusts the database,
not the chord's results: it checks the layer's quorum (and, if the preset asks,
whether the proposals already agree), then starts the next layer's chord, or
makes the next aggregation call itself; after the last one the item is done.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any

from celery import Task, chord, group
from celery.utils.log import get_task_logger
from sqlalchemy.orm import Session

from db import repo
from moa.settings import get_settings
from pipeline.consensus import agreement
from pipeline.plan import Plan, layer_verdict
from pipeline.specs import Config
from workers import resources
from workers.app import DB_RETRY, app
from workers.calls import Outcome, attempt_call, perform_call, prepare_call

log = get_task_logger(__name__)

WAIT_FOR_LAYER_S = 1.0  # an early chord callback looks again after this
WAIT_FOR_CALLS_S = 1.0  # a cancelling job waits for calls already sent


# --- starting work ----------------------------------------------------------------------------


def first_layer(plan: Plan) -> int:
    """Items start at layer 1, or at 0 for a preset that is a single call."""
    return 1 if plan.proposer_layers else 0


def start_item(plan: Plan, item_id: int) -> None:
    if plan.proposer_layers:
        start_layer(plan, item_id, 1)
    else:  # a single call: the callback makes it
        advance.apply_async((None, item_id, 0))


def start_layer(plan: Plan, item_id: int, layer: int) -> None:
    header = group(propose.si(item_id, layer, c.slot) for c in plan.layer_calls(layer))
    callback = advance.s(item_id, layer).on_error(item_errored.si(item_id))
    chord(header)(callback)


def restart_item(plan: Plan, item_id: int, layer: int) -> None:
    """Send an item's current step again: its chord for a proposer layer (the keyed calls
    that succeeded are reused, the callback trusts the database), otherwise the callback
    that makes its aggregation call."""
    if plan.parallel(layer):
        start_layer(plan, item_id, layer)
    else:
        advance.delay(None, item_id, max(layer - 1, 0))


def _plan(session: Session, job_id: int) -> Plan:
    return resources.job_plan(job_id, partial(repo.job_config, session, job_id))[1]


SWEEP_LIMIT = 1000  # items restarted per sweep, at most


@app.task(name="moa.sweep", ignore_result=True, **DB_RETRY)
def sweep(stall_after_s: float) -> int:
    """Beat's check for items whose messages were lost: restart them where they stand."""
    with resources.sessions().begin() as session:
        stalled = repo.stalled_items(session, stall_after_s, SWEEP_LIMIT)
        repo.mark_restarted(session, [row.id for row in stalled])
        plans = {job_id: _plan(session, job_id) for job_id in {row.job_id for row in stalled}}
        ending = repo.stalled_endings(session, stall_after_s)
    for row in stalled:
        restart_item(plans[row.job_id], row.id, row.layer)
    for job_id in ending:  # a finalize lost on its way: settling a job is idempotent
        finalize.delay(job_id)
    if stalled or ending:
        log.warning("restarted %d items and %d job endings nothing had moved for %ss",
                    len(stalled), len(ending), stall_after_s)  # fmt: skip
    return len(stalled) + len(ending)


@app.task(name="moa.dispatch", ignore_result=True, **DB_RETRY)
def dispatch(job_id: int) -> int:
    """Fill a job's window of in-flight items; finishing items refill it one by one."""
    window = get_settings().max_in_flight_per_job
    with resources.sessions().begin() as session:
        job = repo.lock_job(session, job_id)
        if job is None or job.status not in ("queued", "in_progress"):
            return 0
        over_budget = job.budget is not None and job.cost >= job.budget
        _, plan = resources.job_plan(job.id, lambda: job.config)
        item_ids: list[int] = []
        if not over_budget:
            repo.mark_job_started(session, job_id)
            room = window - repo.count_in_flight(session, job_id)
            item_ids = repo.claim_queued_items(session, job_id, room, first_layer(plan))
    if over_budget:
        stop_job(job_id, "budget_exceeded")
    for item_id in item_ids:
        start_item(plan, item_id)
    return len(item_ids)


def stop_job(job_id: int, reason: str) -> None:
    with resources.sessions().begin() as session:
        cancelled = repo.cancel_job(session, job_id, reason)
    if cancelled is not None:
        log.info("job %s stopping (%s): %s items cancelled", job_id, reason, cancelled)
        finalize.delay(job_id)


@app.task(name="moa.finalize", bind=True, max_retries=None, ignore_result=True, **DB_RETRY)
def finalize(self: Task, job_id: int) -> str | None:
    """Settle a job's counts and cost from the rows; a cancel waits for calls in flight."""
    with resources.sessions().begin() as session:
        job = repo.get_job(session, job_id)
        if (
            job is not None
            and job.status == "cancelling"
            and repo.job_calls_running(session, job_id)
        ):
            raise self.retry(countdown=WAIT_FOR_CALLS_S)
        status = repo.finalize_job(session, job_id)
        webhook = status is not None and job is not None and job.webhook_url is not None
        ended = job is not None and job.status in repo.JOB_ENDED
        run_id = (job.metadata_ or {}).get("pipeline_run") if job is not None else None
    if webhook:
        from workers.webhooks import deliver_webhook

        deliver_webhook.delay(job_id)
    # A pipeline run's job moves the run on, on every delivery: a redelivered finalize must
    # not lose the message a crash cut off (advancing a run is idempotent).
    if ended and run_id is not None:
        app.send_task("moa.pipeline_advance", (run_id,))
    return status


def stream_channel(item_id: int) -> str:
    return f"moa:stream:{item_id}"


# --- the chord's header and callback ----------------------------------------------------------


def _load(session: Session, item_id: int) -> tuple[repo.ItemRow, Config, Plan] | None:
    """The item, and its job's config and plan (parsed once per process)."""
    item = repo.load_item(session, item_id)
    if item is None or item.status != "in_progress":
        return None  # cancelled, finished or gone: nothing to do
    config, plan = resources.job_plan(item.job_id, lambda: repo.job_config(session, item.job_id))
    return item, config, plan


def _spent(outcome: Outcome, job_id: int) -> Outcome:
    if outcome.over_budget:
        stop_job(job_id, "budget_exceeded")
    return outcome


@app.task(name="moa.propose", bind=True, max_retries=None, **DB_RETRY)
def propose(self: Task, item_id: int, layer: int, slot: int) -> int | None:
    with resources.sessions().begin() as session:  # one transaction: load, claim, inputs
        loaded = _load(session, item_id)
        if loaded is None:
            return None  # spend nothing
        item, config, plan = loaded
        prepared = prepare_call(self, session, item, plan.call(layer, slot), config)
    if isinstance(prepared, Outcome):
        return prepared.call_id
    return _spent(attempt_call(self, prepared), item.job_id).call_id


@app.task(name="moa.advance", bind=True, max_retries=None, ignore_result=True, **DB_RETRY)
def advance(self: Task, _results: Any, item_id: int, layer: int) -> None:
    """Layer ``layer`` is done (0: nothing ran yet): move the item on, once."""
    with resources.sessions().begin() as session:
        loaded = _load(session, item_id)
    if loaded is None:
        return
    item, config, plan = loaded
    if item.layer == layer:
        if not _close_layer(self, plan, item_id, layer):
            return
    elif item.layer != layer + 1:
        return  # a stale duplicate of an earlier callback
    following = layer + 1
    if plan.parallel(following):
        start_layer(plan, item_id, following)
        return
    final = following == plan.aggregator_layer
    channel = stream_channel(item_id) if final and plan.stream_final else None
    call = plan.call(following, 0)
    outcome = _spent(perform_call(self, item, call, config, channel), item.job_id)
    if outcome.status == "failed":
        end = repo.ItemEnd(
            error_code=outcome.error_code, error=outcome.error, retryable=outcome.retryable
        )
        finish(plan, item_id, end)
    elif final:
        finish(plan, item_id, repo.ItemEnd(output=outcome.text))
        if channel is not None:
            resources.redis().publish(channel, '{"done": true}')
    else:  # the next window of a sequential aggregation, as a task of its own
        advance.delay(None, item_id, following)


def _close_layer(task: Task, plan: Plan, item_id: int, layer: int) -> bool:
    """Judge the layer and move the item on; False when the item ended here."""
    with resources.sessions().begin() as session:
        end, notes = _judge_layer(task, session, plan, item_id, layer) if layer else (None, {})
        moved = end is None and repo.move_item_layer(session, item_id, layer, layer + 1, notes)
    if end is not None:
        finish(plan, item_id, replace(end, notes={**(end.notes or {}), **notes}))
    return moved


def _judge_layer(
    task: Task, session: Session, plan: Plan, item_id: int, layer: int
) -> tuple[repo.ItemEnd | None, dict[str, Any]]:
    """The quorum, then an early stop: how the item ends here, if it does, and notes."""
    calls = repo.layer_calls(session, item_id, layer)
    slots = len(plan.layer_calls(layer))
    verdict = layer_verdict({c.slot: c.status for c in calls}, slots, plan.min_ok(layer), layer)
    if verdict.action == "wait":
        raise task.retry(countdown=WAIT_FOR_LAYER_S)
    if verdict.action == "fail":
        return repo.ItemEnd(error_code="quorum_not_met", error=verdict.reason, retryable=True), {}
    notes = {f"degraded_layer_{layer}": f"{verdict.failed} of {slots} calls failed"}
    outputs = [c.output or "" for c in calls if c.status == "succeeded"]
    end = _early_stop(plan, layer, outputs) if plan.parallel(layer) else None
    return end, notes if verdict.degraded else {}


def _early_stop(plan: Plan, layer: int, outputs: list[str]) -> repo.ItemEnd | None:
    """Agreeing proposals end the item here, with the reason and the calls it saved."""
    rule = plan.preset.early_stop
    if rule is None:
        return None
    agreed = agreement(outputs, rule.method, rule.threshold)
    if agreed is None:
        return None
    note = {"layer": layer, "reason": agreed.reason, "calls_saved": plan.calls_after(layer)}
    return repo.ItemEnd(output=agreed.text, notes={"early_stop": note})


@app.task(name="moa.item_errored", ignore_result=True, **DB_RETRY)
def item_errored(item_id: int) -> None:
    """Errback of a chord whose task raised past its retries: the item fails, the job goes on."""
    with resources.sessions().begin() as session:
        loaded = _load(session, item_id)
    if loaded is None:
        return
    error = "a task of this item failed; see the worker logs"
    finish(
        loaded[2], item_id, repo.ItemEnd(error_code="internal_error", error=error, retryable=True)
    )


def finish(plan: Plan, item_id: int, end: repo.ItemEnd) -> None:
    """End the item once, count it, and start the next queued item of its job."""
    next_ids: list[int] = []
    with resources.sessions().begin() as session:
        counts = repo.finish_item(session, item_id, end)
        if counts is None:
            return
        if counts.done:
            finalizing = repo.begin_finalizing(session, counts.job_id)
        else:
            finalizing = False
            next_ids = repo.claim_queued_items(session, counts.job_id, 1, first_layer(plan))
    if finalizing:
        finalize.delay(counts.job_id)
    for next_id in next_ids:
        start_item(plan, next_id)
