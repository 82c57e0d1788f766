"""Batch jobs on real workers: cancel, crash and resume, retry, budgets, idempotency, early
stop, Self-MoA-Seq windows, skipping invalid lines."""

from __future__ import annotations

import json
import re
from collections import Counter
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Call, Item, Job
from moa.jobs import IdempotencyConflict, JobOptions, create_job, reopen
from moa.simulator import SimConfig, SimServer
from pipeline.specs import load_config
from tests.conftest import drained, job_calls, questions, redeliver_unacked, start_job, wait_for

CONFIG = """
[providers.slow]
base_url = "SLOW_URL"
timeout_s = 2
[providers.fast]
base_url = "FAST_URL"
timeout_s = 2
max_attempts = 1
breaker_threshold = 0
[models.slow]
provider = "slow"
model = "slow-model"
input_per_1m = "1000"
output_per_1m = "2000"
[models.fast]
provider = "fast"
model = "fast-model"
[models.flaky]
provider = "fast"
model = "flaky-model"
[models.same]
provider = "fast"
model = "same-model"
[presets.slow-lite]
aggregator = "slow"
[[presets.slow-lite.layers]]
agents = [{ model = "slow", samples = 3 }]
[[presets.slow-lite.layers]]
agents = [{ model = "slow", samples = 3 }]
[presets.flaky]
aggregator = "fast"
[[presets.flaky.layers]]
agents = ["flaky", "fast", "fast"]
min_ok = 3
[presets.agreeing]
aggregator = "fast"
early_stop = true
[[presets.agreeing.layers]]
agents = [{ model = "same", samples = 3 }]
[[presets.agreeing.layers]]
agents = [{ model = "same", samples = 3 }]
[presets.seq]
aggregator = "fast"
window = 2
[[presets.seq.layers]]
agents = [{ model = "fast", samples = 5 }]
"""


@pytest.fixture(scope="module")
def slow_sim():
    with SimServer(SimConfig(latency_ms=300)) as server:
        yield server


@pytest.fixture(scope="module")
def fast_sim():
    with SimServer(SimConfig()) as server:
        yield server


@pytest.fixture(scope="module")
def jobs_config(slow_sim, fast_sim, tmp_path_factory) -> Any:
    path = tmp_path_factory.mktemp("jobs") / "moa.toml"
    text = CONFIG.replace("SLOW_URL", slow_sim.base_url).replace("FAST_URL", fast_sim.base_url)
    path.write_text(text, encoding="utf-8")
    return load_config(path)


@pytest.fixture
def start(engine, jobs_config, workers):
    def _start(preset: str, n: int, prefix: str = "x", **options: Any) -> int:
        return start_job(engine, jobs_config, preset, questions(n, prefix), **options)

    return _start


def job_row(engine, job_id: int) -> Job:
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def sim_count(sim: SimServer, model: str) -> int:
    return int(sim.stats()["by_model"].get(model, 0))


def test_cancel_keeps_finished_results_and_stops_calling_the_provider(
    engine, db, start, wait_job, slow_sim, services
):
    from moa.jobs import cancel
    from workers.tasks import finalize

    job_id = start("slow-lite", 30, prefix="cancel")
    wait_for(lambda: job_row(engine, job_id).completed >= 2, 60, "two items to finish")
    with Session(engine) as session:
        cancel(session, job_id)
        session.commit()
    finalize.delay(job_id)

    job = wait_job(job_id)
    assert job.status == "cancelled" and job.reason == "cancelled_by_user"
    assert job.completed >= 2 and job.completed + job.failed + job.cancelled == 30
    statuses = Counter(db.scalars(select(Item.status).where(Item.job_id == job_id)))
    assert statuses == {"completed": job.completed, "cancelled": job.cancelled}
    assert all(
        i.output
        for i in db.scalars(select(Item).where(Item.job_id == job_id, Item.status == "completed"))
    )
    calls = job_calls(db, job_id)
    assert not [c for c in calls if c.status == "running"]
    assert job.cost == sum(c.cost for c in calls)  # what ran after the cancel is counted too
    seen = sim_count(slow_sim, "slow-model")
    # Every task queued or taken (now handed out again) has run to its end by now.
    redeliver_unacked(services.redis_url)
    wait_for(lambda: drained(services), 60, "the queues to drain")
    assert sim_count(slow_sim, "slow-model") == seen  # no orphan task called the provider
    assert len(job_calls(db, job_id)) == len(calls)


def test_a_crashed_proposer_pool_and_a_resume_answer_every_item_once(
    engine, db, start, wait_job, workers, slow_sim
):
    job_id = start("slow-lite", 20, prefix="crash")
    wait_for(lambda: len([c for c in job_calls(db, job_id) if c.status == "succeeded"]) >= 10,
             60, "some calls to succeed")  # fmt: skip
    assert workers.kill("proposers") >= 1  # mid-job: chords lose their header tasks
    workers.start("proposers")
    workers.wait_ready()
    with Session(engine) as session:
        reopened = reopen(session, job_id, ("queued", "in_progress", "cancelled"), None)
        session.commit()
    assert reopened > 0
    from workers.tasks import dispatch

    dispatch.delay(job_id)

    job = wait_job(job_id, timeout_s=120)
    assert (job.status, job.completed, job.failed) == ("completed", 20, 0)
    calls = job_calls(db, job_id)
    keys = Counter((c.item_id, c.layer, c.slot) for c in calls)
    assert len(keys) == 20 * 7 and set(keys.values()) == {1}
    assert all(c.status == "succeeded" and c.cost > 0 for c in calls)
    assert job.cost == sum(c.cost for c in calls)


def test_retry_failed_items_reuses_their_successful_calls(engine, db, start, wait_job, fast_sim):
    from workers.tasks import dispatch

    script = {"model": "flaky-model", "faults": ["500", "500"]}
    fast_sim.script(script["model"], script["faults"])
    job = wait_job(start("flaky", 4, prefix="flaky"))
    assert (job.completed, job.failed) == (2, 2)
    fast_before = sim_count(fast_sim, "fast-model")

    with Session(engine) as session:
        assert reopen(session, job.id, ("failed",), None) == 2
        session.commit()
    dispatch.delay(job.id)
    job = wait_job(job.id)

    assert (job.status, job.completed, job.failed) == ("completed", 4, 0)
    # The two items' fast proposals were reused; only their aggregators were new calls.
    assert sim_count(fast_sim, "fast-model") == fast_before + 2
    flaky = [c for c in job_calls(db, job.id) if c.model == "flaky-model"]
    retried = [c for c in flaky if len(c.attempts) == 2]
    assert len(retried) == 2 and all(c.status == "succeeded" for c in flaky)


def test_a_budget_stops_the_job_within_the_calls_in_flight(engine, db, start, wait_job, workers):
    budget = Decimal("0.50")
    job = wait_job(start("slow-lite", 40, prefix="budget", budget=budget), timeout_s=120)

    assert (job.status, job.reason) == ("cancelled", "budget_exceeded")
    calls = job_calls(db, job.id)
    assert job.cost == sum(c.cost for c in calls) >= budget
    in_flight_bound = 8 + 4  # proposer and aggregator threads of the test pools
    assert job.cost - budget <= in_flight_bound * max(c.cost for c in calls)
    assert job.cancelled > 0 and job.completed + job.failed + job.cancelled == 40


def test_agreeing_proposals_stop_the_item_after_the_first_layer(db, start, wait_job):
    job = wait_job(start("agreeing", 2, prefix="agree"))

    assert job.completed == 2
    for item in db.scalars(select(Item).where(Item.job_id == job.id)):
        calls = db.scalars(select(Call).where(Call.item_id == item.id)).all()
        assert {c.layer for c in calls} == {1}
        assert item.notes["early_stop"]["layer"] == 1
        assert item.notes["early_stop"]["calls_saved"] == 4
        assert "all 3 proposals" in item.notes["early_stop"]["reason"]
        assert item.output == calls[0].output


def test_self_moa_seq_windows_carry_the_synthesis(db, start, wait_job, fast_sim):
    job = wait_job(start("seq", 1, prefix="seq"))

    assert job.completed == 1
    item = db.scalars(select(Item).where(Item.job_id == job.id)).one()
    steps = db.scalars(
        select(Call).where(Call.item_id == item.id, Call.layer > 1).order_by(Call.layer)
    ).all()
    assert [c.layer for c in steps] == [2, 3, 4]  # 5 samples, 2 at a time
    requests = httpx.get(f"http://127.0.0.1:{fast_sim.port}/_sim/requests").json()
    by_seq = {r["seq"]: r for r in requests}
    for previous, step in zip([None, *steps], steps, strict=False):
        seq = int(re.search(r"seq=(\d+)", step.output).group(1))
        system = by_seq[seq]["body"]["messages"][0]["content"]
        assert len(re.findall(r"^\[\d+\] ", system, re.MULTILINE)) <= 2 + 1
        if previous is not None:
            assert previous.output in system
    assert item.output == steps[-1].output


def test_the_same_idempotency_key_returns_the_same_job_or_a_conflict(engine, jobs_config):
    lines = [json.dumps({"custom_id": "a", "prompt": "idem"})]
    options = JobOptions(idempotency_key="nightly-2026-11-22")
    with Session(engine) as session:
        first = create_job(session, jobs_config, "seq", lines, options)
        session.commit()
        again = create_job(session, jobs_config, "seq", lines, options)
        assert (again.job.id, again.created) == (first.job.id, False)
        with pytest.raises(IdempotencyConflict, match="different request"):
            create_job(
                session,
                jobs_config,
                "seq",
                [json.dumps({"custom_id": "b", "prompt": "x"})],
                options,
            )
        session.rollback()
        count = session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.idempotency_key == options.idempotency_key)
        )
    assert count == 1


def test_skip_invalid_runs_the_valid_lines_and_reports_the_others(engine, jobs_config):
    lines = ['{"custom_id": "a", "prompt": "ok"}', "{broken", '{"custom_id": "a", "prompt": "dup"}',
             '{"custom_id": "b", "prompt": "ok"}']  # fmt: skip
    with Session(engine) as session:
        submitted = create_job(session, jobs_config, "seq", lines, JobOptions(skip_invalid=True))
        session.commit()
        assert submitted.job.total == 2
        assert [(e.line, e.message.split(" ")[0]) for e in submitted.skipped] == [
            (2, "invalid"),
            (3, "duplicate"),
        ]
        ids = session.scalars(
            select(Item.custom_id).where(Item.job_id == submitted.job.id).order_by(Item.position)
        )
        assert list(ids) == ["a", "b"]


def test_a_non_positive_budget_is_refused(engine, jobs_config):
    from pipeline.inputs import InputError

    with Session(engine) as session, pytest.raises(InputError, match="budget must be positive"):
        create_job(session, jobs_config, "seq", ['{"custom_id": "a", "prompt": "x"}'],
                   JobOptions(budget=Decimal("-1")))  # fmt: skip
