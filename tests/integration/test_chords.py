"""MoA on real Celery workers, Valkey and PostgreSQL, against the loopback simulator."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Call, Item, Job

SEQ = "seq="


def sim_requests(sim: Any, model: str) -> list[dict[str, Any]]:
    return httpx.get(f"http://127.0.0.1:{sim.port}/_sim/requests", params={"model": model}).json()


def request_for(requests: list[dict[str, Any]], output: str) -> dict[str, Any]:
    """The simulator's answers start with `[sim model=... seq=N]`: find request N."""
    seq = int(output.split(SEQ, 1)[1].split("]", 1)[0])
    return next(r for r in requests if r["seq"] == seq)


def rows(n: int, prefix: str = "q") -> list[dict[str, Any]]:
    return [
        {"custom_id": f"{prefix}{i}", "prompt": f"Question {i}: why is the sky blue?"}
        for i in range(n)
    ]


def calls_of(db: Session, item_id: int) -> list[Call]:
    return list(
        db.scalars(select(Call).where(Call.item_id == item_id).order_by(Call.layer, Call.slot))
    )


def test_lite_job_records_every_call_and_aggregators_see_every_proposal(submit, wait_job, db, sim):
    job = wait_job(submit(rows(20), "lite"))

    assert (job.status, job.total, job.completed, job.failed) == ("completed", 20, 20, 0)
    items = list(db.scalars(select(Item).where(Item.job_id == job.id).order_by(Item.position)))
    proposer_requests = sim_requests(sim, "sim-proposer")
    aggregator_requests = sim_requests(sim, "sim-aggregator")
    for item in items:
        calls = calls_of(db, item.id)
        keys = [(c.layer, c.slot, c.role) for c in calls]
        assert keys == [(1, s, "proposer") for s in range(3)] + [
            (2, s, "proposer") for s in range(3)
        ] + [(3, 0, "aggregator")]
        for call in calls:
            assert call.status == "succeeded" and call.attempt == 1
            assert call.prompt_tokens > 0 and call.completion_tokens > 0
            assert call.cost > 0 and call.latency_ms is not None
        layer1, layer2, (final,) = calls[:3], calls[3:6], calls[6:]
        assert item.output == final.output
        # Every agent of layer 2 was shown all of layer 1; the aggregator all of layer 2.
        for call in layer2:
            system = request_for(proposer_requests, call.output)["body"]["messages"][0]["content"]
            assert all(p.output in system for p in layer1)
        system = request_for(aggregator_requests, final.output)["body"]["messages"][0]["content"]
        assert all(p.output in system for p in layer2)
        assert f"Question {item.position}:" in final.output
    # Usage of every call is rolled up into the item and the job, in Decimal.
    assert job.cost == db.scalar(select(func.sum(Item.cost)).where(Item.job_id == job.id))
    assert job.cost == sum(c.cost for i in items for c in calls_of(db, i.id))


def test_single_preset_makes_one_call_with_the_query_alone(submit, wait_job, db, sim):
    job = wait_job(submit(rows(3, "s"), "one"))

    assert job.completed == 3
    item = db.scalars(select(Item).where(Item.job_id == job.id, Item.position == 0)).one()
    (call,) = calls_of(db, item.id)
    assert (call.layer, call.slot, call.role) == (1, 0, "aggregator")
    sent = request_for(sim_requests(sim, "sim-aggregator"), call.output)["body"]["messages"]
    assert sent == [{"role": "user", "content": "Question 0: why is the sky blue?"}]


def test_a_repeated_header_task_returns_the_recorded_call_without_calling_again(
    engine, config, workers, db, sim
):
    from db import repo
    from moa.jobs import create_job
    from workers.tasks import propose

    with Session(engine) as session:  # an item in progress at layer 1, no chord started
        job = create_job(session, config, "lite", [json.dumps(rows(1, "r")[0])]).job
        (item_id,) = repo.claim_queued_items(session, job.id, 1, 1)
        session.commit()
    before = sim.stats()["requests"]

    first = propose.delay(item_id, 1, 0).get(timeout=30)
    second = propose.delay(item_id, 1, 0).get(timeout=30)

    assert first == second
    assert sim.stats()["requests"] == before + 1
    call = db.get(Call, first)
    assert (call.status, call.attempt) == ("succeeded", 1)


def test_duplicates_after_an_item_finished_change_nothing(submit, wait_job, db, sim):
    from workers.tasks import advance, propose

    job = wait_job(submit(rows(2, "d"), "lite"))
    item = db.scalars(select(Item).where(Item.job_id == job.id, Item.position == 0)).one()
    before = sim.stats()["requests"]
    first = calls_of(db, item.id)

    # What at-least-once delivery can do: run a header task and callbacks again, late.
    assert propose.delay(item.id, 1, 0).get(timeout=30) is None
    advance.delay(None, item.id, 1).get(timeout=30)
    advance.delay(None, item.id, 2).get(timeout=30)

    assert sim.stats()["requests"] == before
    db.expire_all()
    again = calls_of(db, item.id)
    assert [(c.id, c.attempt, c.cost, c.output) for c in again] == [
        (c.id, c.attempt, c.cost, c.output) for c in first
    ]
    job_after = db.get(Job, job.id)
    assert (job_after.completed, job_after.failed, job_after.cost) == (2, 0, job.cost)


def test_layer_below_quorum_fails_the_item_with_a_reason(submit, wait_job, db):
    job = wait_job(submit(rows(2, "f"), "quorum"))

    assert (job.status, job.completed, job.failed) == ("completed", 0, 2)
    for item in db.scalars(select(Item).where(Item.job_id == job.id)):
        assert item.status == "failed"
        assert item.error_code == "quorum_not_met"
        assert item.error == "layer 1: 1 of 3 proposals succeeded, 2 required"
        calls = calls_of(db, item.id)
        assert Counter(c.status for c in calls) == {"succeeded": 1, "failed": 2}
        assert {c.error_code for c in calls if c.status == "failed"} == {"unavailable"}
        assert all(c.layer == 1 for c in calls)  # the aggregator was never called


def test_layer_with_enough_proposals_goes_on_and_keeps_the_failures(submit, wait_job, db, sim):
    job = wait_job(submit(rows(1, "g"), "degraded"))

    assert (job.completed, job.failed) == (1, 0)
    item = db.scalars(select(Item).where(Item.job_id == job.id)).one()
    calls = calls_of(db, item.id)
    assert [(c.layer, c.status) for c in calls] == [
        (1, "succeeded"), (1, "failed"), (1, "failed"), (2, "succeeded")
    ]  # fmt: skip
    system = request_for(sim_requests(sim, "sim-aggregator"), calls[-1].output)["body"]["messages"][
        0
    ]
    assert "[1] " in system["content"] and "[2] " not in system["content"]


@pytest.mark.parametrize(
    "lines, expected",
    [
        (['{"custom_id": "a", "prompt": "x"}', "{not json"], "line 2: invalid JSON"),
        (
            ['{"custom_id": "a", "prompt": "x"}', '{"custom_id": "a", "prompt": "y"}'],
            "line 2: duplicate",
        ),
        (['{"prompt": "x"}'], "line 1: 'custom_id' is required"),
        ([""], "the input has no items"),
    ],
)
def test_invalid_input_is_reported_by_line_and_leaves_no_job(engine, config, lines, expected):
    from moa.jobs import create_job
    from pipeline.inputs import InputError

    with Session(engine) as session:
        jobs_before = session.scalar(select(func.count()).select_from(Job))
        with pytest.raises(InputError) as raised:
            create_job(session, config, "lite", lines)
        session.rollback()
        assert expected in str(raised.value)
        assert session.scalar(select(func.count()).select_from(Job)) == jobs_before


def test_migrations_build_exactly_the_models(engine):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from db.models import Base

    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == [], json.dumps([str(d) for d in diff])
